//! X509-SVIDs: a certificate chain carrying a SPIFFE ID, with its private key.
//!
//! Implements the SPIFFE X509-SVID standard (`standards/X509-SVID.md`). An [`X509Svid`] is
//! checked once, when built: the leaf and every certificate above it follow the profile (see
//! [`ProfileError`]) and the private key belongs to the leaf. Checking that a chain is trusted
//! is a separate step, [`verify_x509_svid`], because it needs the bundles and the time.

mod profile;
mod verify;

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::PublicKeyData;
use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::time::ASN1Time;

use crate::id::SpiffeId;
use crate::key::{KeyError, KeyPair};

pub use profile::ProfileError;
pub use verify::{verify_x509_svid, VerifyError};

pub(crate) use profile::{check_leaf, check_signing_cert, uri_sans};

/// Longest certificate chain accepted, leaf included; real SVID chains have one to three.
pub const MAX_CHAIN_LEN: usize = 16;

/// Why bytes could not be turned into an [`X509Svid`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SvidError {
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
    /// The PEM text could not be read or holds no `CERTIFICATE` block.
    #[error("PEM input is not usable: {0}")]
    BadPem(String),
    /// A certificate breaks the X509-SVID profile.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// The private key is not a supported PKCS#8 key.
    #[error("SVID private key is not usable: {0}")]
    BadPrivateKey(#[source] KeyError),
    /// The private key does not belong to the leaf certificate.
    #[error("private key does not match the public key of the leaf certificate for `{0}`")]
    KeyMismatch(String),
}

/// An X509-SVID: leaf certificate first, then the intermediates that link it to its trust
/// domain's bundle, and the leaf's private key.
///
/// `Debug` never shows the private key.
#[derive(Clone)]
pub struct X509Svid {
    spiffe_id: SpiffeId,
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl X509Svid {
    /// Builds an SVID from DER certificates (leaf first) and an unencrypted PKCS#8 DER key.
    ///
    /// # Errors
    ///
    /// Returns [`SvidError`] if a certificate does not parse, breaks the profile, or the key is
    /// unusable or belongs to another certificate.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        private_key_pkcs8_der: Vec<u8>,
    ) -> Result<Self, SvidError> {
        if chain.is_empty() {
            return Err(SvidError::EmptyChain);
        }
        if chain.len() > MAX_CHAIN_LEN {
            return Err(SvidError::ChainTooLong(chain.len()));
        }

        let leaf = parse_cert(&chain[0], 0)?;
        let spiffe_id = check_leaf(&leaf)?;
        for (position, der) in chain.iter().enumerate().skip(1) {
            check_signing_cert(&parse_cert(der, position)?, position)?;
        }

        let key =
            KeyPair::from_pkcs8_der(&private_key_pkcs8_der).map_err(SvidError::BadPrivateKey)?;
        if key.rcgen().der_bytes() != leaf.public_key().subject_public_key.data.as_ref() {
            return Err(SvidError::KeyMismatch(spiffe_id.to_string()));
        }

        let not_before = asn1_time(leaf.validity().not_before);
        let not_after = asn1_time(leaf.validity().not_after);
        drop(leaf);
        Ok(Self {
            spiffe_id,
            chain,
            key: private_key_pkcs8_der,
            not_before,
            not_after,
        })
    }

    /// Wraps a chain this crate has just issued for `key`, skipping the checks of
    /// [`X509Svid::new`]: the issuer built the leaf to the profile and for this very key.
    pub(crate) fn from_issued(
        spiffe_id: SpiffeId,
        chain: Vec<CertificateDer<'static>>,
        private_key_pkcs8_der: Vec<u8>,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Self {
        Self {
            spiffe_id,
            chain,
            key: private_key_pkcs8_der,
            not_before,
            not_after,
        }
    }

    /// Builds an SVID from concatenated DER certificates (the Workload API's `x509_svid`) and
    /// an unencrypted PKCS#8 DER key (`x509_svid_key`).
    ///
    /// # Errors
    ///
    /// As [`X509Svid::new`].
    pub fn from_der(chain_der: &[u8], private_key_pkcs8_der: &[u8]) -> Result<Self, SvidError> {
        Self::new(
            split_concatenated_der(chain_der)?,
            private_key_pkcs8_der.to_vec(),
        )
    }

    /// Builds an SVID from PEM `CERTIFICATE` blocks (leaf first) and a PEM `PRIVATE KEY`.
    ///
    /// # Errors
    ///
    /// Returns [`SvidError::BadPem`] if the PEM cannot be read, otherwise as [`X509Svid::new`].
    pub fn from_pem(chain_pem: &str, private_key_pem: &str) -> Result<Self, SvidError> {
        let chain = certificates_from_pem(chain_pem)?;
        let key = pem::parse_many(private_key_pem)
            .map_err(|e| SvidError::BadPem(e.to_string()))?
            .into_iter()
            .find(|b| b.tag() == "PRIVATE KEY")
            .ok_or_else(|| SvidError::BadPem("no PRIVATE KEY block".to_owned()))?;
        Self::new(chain, key.into_contents())
    }

    /// The SPIFFE ID of the leaf.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// The whole chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The leaf certificate.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    /// The certificates after the leaf.
    pub fn intermediates(&self) -> &[CertificateDer<'static>] {
        &self.chain[1..]
    }

    /// The private key as unencrypted PKCS#8 DER. Handle with care: this is the secret.
    pub fn private_key_pkcs8_der(&self) -> &[u8] {
        &self.key
    }

    /// The private key as a PEM `PRIVATE KEY` block. Handle with care: this is the secret.
    pub fn private_key_pem(&self) -> String {
        pem::encode(&pem::Pem::new("PRIVATE KEY", self.key.clone()))
    }

    /// The chain as concatenated DER, the form of the Workload API's `x509_svid` field.
    pub fn chain_der(&self) -> Vec<u8> {
        self.chain.iter().flat_map(|c| c.iter().copied()).collect()
    }

    /// The chain as PEM `CERTIFICATE` blocks, leaf first.
    pub fn chain_pem(&self) -> String {
        certificates_to_pem(&self.chain)
    }

    /// Start of the leaf's validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of the leaf's validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
}

impl fmt::Debug for X509Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X509Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("chain_len", &self.chain.len())
            .field("not_after", &format_time(self.not_after))
            .field("private_key", &"<redacted>")
            .finish()
    }
}

/// Splits concatenated DER certificates into single certificates.
///
/// # Errors
///
/// Returns [`SvidError::EmptyChain`], [`SvidError::ChainTooLong`] or
/// [`SvidError::MalformedCertificate`] naming the certificate that does not parse.
pub fn split_concatenated_der(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, SvidError> {
    if bytes.is_empty() {
        return Err(SvidError::EmptyChain);
    }
    let mut rest = bytes;
    let mut certs = Vec::new();
    while !rest.is_empty() {
        if certs.len() == MAX_CHAIN_LEN {
            return Err(SvidError::ChainTooLong(certs.len() + 1));
        }
        let (after, _) = x509_parser::parse_x509_certificate(rest).map_err(|e| {
            SvidError::MalformedCertificate {
                position: certs.len(),
                reason: e.to_string(),
            }
        })?;
        let len = rest.len() - after.len();
        certs.push(CertificateDer::from(rest[..len].to_vec()));
        rest = after;
    }
    Ok(certs)
}

/// Reads every `CERTIFICATE` block of a PEM document, in order.
///
/// # Errors
///
/// Returns [`SvidError::BadPem`] if the text is not PEM or has no certificate.
pub fn certificates_from_pem(text: &str) -> Result<Vec<CertificateDer<'static>>, SvidError> {
    let certs: Vec<_> = pem::parse_many(text)
        .map_err(|e| SvidError::BadPem(e.to_string()))?
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| CertificateDer::from(b.into_contents()))
        .collect();
    if certs.is_empty() {
        return Err(SvidError::BadPem("no CERTIFICATE block".to_owned()));
    }
    Ok(certs)
}

/// Encodes certificates as PEM `CERTIFICATE` blocks.
pub fn certificates_to_pem(certs: &[CertificateDer<'_>]) -> String {
    certs
        .iter()
        .map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.to_vec())))
        .collect()
}

/// Parses one DER certificate with nothing after it.
pub(crate) fn parse_cert<'a>(
    der: &'a [u8],
    position: usize,
) -> Result<X509Certificate<'a>, SvidError> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Ok(cert),
        Ok((_, _)) => Err(SvidError::MalformedCertificate {
            position,
            reason: "trailing bytes after the certificate".to_owned(),
        }),
        Err(e) => Err(SvidError::MalformedCertificate {
            position,
            reason: e.to_string(),
        }),
    }
}

/// An ASN.1 time as a `SystemTime` (times before 1970 become the epoch).
pub(crate) fn asn1_time(t: ASN1Time) -> SystemTime {
    let secs = u64::try_from(t.timestamp()).unwrap_or(0);
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// A time as RFC 3339 UTC with whole seconds, for messages and logs.
pub(crate) fn format_time(t: SystemTime) -> String {
    let dt = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}
