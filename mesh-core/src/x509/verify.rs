//! Verifying an X509-SVID chain against trust bundles.
//!
//! Implements section 5 of the SPIFFE X509-SVID standard: the chain must lead from the leaf to
//! an X.509 authority in the bundle of the leaf's own trust domain. Path building and signature
//! checks are done by rustls-webpki with the aws-lc-rs algorithms; the SPIFFE profile and the
//! validity window are checked here first so each failure has its own, precise error.

use std::time::{SystemTime, UNIX_EPOCH};

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use webpki::{EndEntityCert, ExtendedKeyUsageValidator, KeyPurposeId, KeyPurposeIdIter};

use super::{asn1_time, check_leaf, check_signing_cert, format_time, parse_cert, SvidError};
use super::{ProfileError, MAX_CHAIN_LEN};
use crate::bundle::BundleSet;
use crate::id::{SpiffeId, TrustDomain};

/// DER content of the id-kp-serverAuth OID, 1.3.6.1.5.5.7.3.1.
const EKU_SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
/// DER content of the id-kp-clientAuth OID, 1.3.6.1.5.5.7.3.2.
const EKU_CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

/// Why an X509-SVID chain is not accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// No certificate was given.
    #[error("certificate chain is empty")]
    EmptyChain,
    /// More certificates than [`MAX_CHAIN_LEN`].
    #[error("certificate chain has {0} certificates; at most 16 are accepted")]
    ChainTooLong(usize),
    /// A certificate is not valid DER X.509.
    #[error("certificate {position} of the chain is not a valid X.509 certificate: {reason}")]
    MalformedCertificate {
        /// Index of the certificate in the chain (0 = leaf).
        position: usize,
        /// What the parser reported.
        reason: String,
    },
    /// A certificate breaks the X509-SVID profile.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// The bundle set has no bundle for the leaf's trust domain.
    #[error("no bundle for trust domain `{0}`")]
    NoBundle(TrustDomain),
    /// The bundle of the leaf's trust domain has no X.509 authority.
    #[error("bundle of trust domain `{0}` has no X.509 authority")]
    EmptyBundle(TrustDomain),
    /// A certificate's validity ended before `now`.
    #[error("certificate {position} of the chain expired at {not_after} (now {now})")]
    Expired {
        /// Index of the certificate in the chain (0 = leaf).
        position: usize,
        /// End of its validity, RFC 3339.
        not_after: String,
        /// The time of the check, RFC 3339.
        now: String,
    },
    /// A certificate's validity starts after `now`.
    #[error("certificate {position} of the chain is not valid before {not_before} (now {now})")]
    NotYetValid {
        /// Index of the certificate in the chain (0 = leaf).
        position: usize,
        /// Start of its validity, RFC 3339.
        not_before: String,
        /// The time of the check, RFC 3339.
        now: String,
    },
    /// No path leads from the leaf to an authority of its trust domain's bundle.
    #[error("certificate chain for `{spiffe_id}` does not lead to a trusted authority of its trust domain: {reason}")]
    UntrustedChain {
        /// The leaf's SPIFFE ID.
        spiffe_id: String,
        /// What path building reported.
        reason: String,
    },
}

impl From<SvidError> for VerifyError {
    fn from(e: SvidError) -> Self {
        match e {
            SvidError::EmptyChain => VerifyError::EmptyChain,
            SvidError::ChainTooLong(n) => VerifyError::ChainTooLong(n),
            SvidError::Profile(p) => VerifyError::Profile(p),
            SvidError::MalformedCertificate { position, reason } => {
                VerifyError::MalformedCertificate { position, reason }
            }
            other => VerifyError::MalformedCertificate {
                position: 0,
                reason: other.to_string(),
            },
        }
    }
}

/// Verifies an X509-SVID chain (leaf first) at time `now` and returns the leaf's SPIFFE ID.
///
/// The leaf and every certificate sent with it must follow the X509-SVID profile, all of them
/// must be valid at `now`, and the chain must lead to an X.509 authority in the bundle of the
/// leaf's trust domain, with the signature algorithms of aws-lc-rs. An extended key usage, if
/// present, must allow TLS client or server authentication.
///
/// # Errors
///
/// Returns the [`VerifyError`] for the first check that fails, in the order: chain shape,
/// profile, bundle lookup, validity window, path building.
pub fn verify_x509_svid(
    chain: &[CertificateDer<'_>],
    bundles: &BundleSet,
    now: SystemTime,
) -> Result<SpiffeId, VerifyError> {
    if chain.is_empty() {
        return Err(VerifyError::EmptyChain);
    }
    if chain.len() > MAX_CHAIN_LEN {
        return Err(VerifyError::ChainTooLong(chain.len()));
    }

    let mut parsed = Vec::with_capacity(chain.len());
    for (position, der) in chain.iter().enumerate() {
        parsed.push(parse_cert(der, position)?);
    }
    let spiffe_id = check_leaf(&parsed[0])?;
    for (position, cert) in parsed.iter().enumerate().skip(1) {
        check_signing_cert(cert, position)?;
    }

    let trust_domain = spiffe_id.trust_domain();
    let bundle = bundles
        .get(trust_domain)
        .ok_or_else(|| VerifyError::NoBundle(trust_domain.clone()))?;
    if bundle.x509_authorities().is_empty() {
        return Err(VerifyError::EmptyBundle(trust_domain.clone()));
    }

    for (position, cert) in parsed.iter().enumerate() {
        let not_before = asn1_time(cert.validity().not_before);
        let not_after = asn1_time(cert.validity().not_after);
        if now < not_before {
            return Err(VerifyError::NotYetValid {
                position,
                not_before: format_time(not_before),
                now: format_time(now),
            });
        }
        if now > not_after {
            return Err(VerifyError::Expired {
                position,
                not_after: format_time(not_after),
                now: format_time(now),
            });
        }
    }
    drop(parsed);

    let untrusted = |reason: String| VerifyError::UntrustedChain {
        spiffe_id: spiffe_id.to_string(),
        reason,
    };
    let anchors: Vec<TrustAnchor<'_>> = bundle
        .x509_authorities()
        .iter()
        .filter_map(|der| webpki::anchor_from_trusted_cert(der).ok())
        .collect();
    if anchors.is_empty() {
        return Err(untrusted("no authority of the bundle parses".to_owned()));
    }
    let leaf = EndEntityCert::try_from(&chain[0]).map_err(|e| untrusted(e.to_string()))?;
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &chain[1..],
        UnixTime::since_unix_epoch(since_epoch),
        TlsAuthUsage,
        None,
        None,
    )
    .map_err(|e| untrusted(e.to_string()))?;
    Ok(spiffe_id)
}

/// Accepts a certificate without extended key usage, or with one that allows TLS client or
/// server authentication: an SVID authenticates its holder in either role.
struct TlsAuthUsage;

impl ExtendedKeyUsageValidator for TlsAuthUsage {
    fn validate(&self, iter: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        let server = KeyPurposeId::new(EKU_SERVER_AUTH);
        let client = KeyPurposeId::new(EKU_CLIENT_AUTH);
        let mut present = Vec::new();
        for id in iter {
            let id = id?;
            if id == server || id == client {
                return Ok(());
            }
            present.push(id.to_decoded_oid());
        }
        if present.is_empty() {
            return Ok(());
        }
        Err(webpki::Error::RequiredEkuNotFoundContext(
            webpki::RequiredEkuNotFoundContext {
                required: webpki::KeyUsage::client_auth(),
                present,
            },
        ))
    }
}
