//! One X.509 signing authority, and the X509-SVIDs it issues.
//!
//! An [`X509Issuer`] is a CA certificate with its key and the chain that links it to a root:
//! a self-signed root made here, a team's own CA loaded from PEM ([`UpstreamCa`], signing
//! directly), or an intermediate made here under that CA. Leaves follow section 4 of the
//! X509-SVID standard exactly; see [`X509Issuer::issue_for_public_key`].

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SignatureAlgorithm, SigningKey,
};
use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::CaError;
use crate::id::{SpiffeId, TrustDomain};
use crate::key::{KeyPair, KeyType};
use crate::x509::{self, X509Svid, MAX_CHAIN_LEN};

/// How far back a new certificate's notBefore is set, to absorb clock skew between machines.
pub const BACKDATE: Duration = Duration::from_secs(30);

/// Smallest RSA modulus accepted in a leaf public key, in bits.
const MIN_RSA_BITS: usize = 2048;

/// Appended to a key error: how to convert the usual other key formats.
const PKCS8_HINT: &str =
    " (an `EC PRIVATE KEY` or `RSA PRIVATE KEY` file converts with `openssl pkcs8 -topk8 -nocrypt`)";

/// Longest CSR accepted, in bytes; real ones are well under 4 KiB.
const MAX_CSR_LEN: usize = 64 * 1024;

/// What the caller decides about a new X509-SVID: whom it names, for which DNS names, for how
/// long. Nothing of this comes from a CSR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvidRequest {
    /// The SPIFFE ID, the leaf's only URI SAN. Must have a path.
    pub spiffe_id: SpiffeId,
    /// DNS SANs, possibly none.
    pub dns_names: Vec<String>,
    /// Requested lifetime; capped by the issuer's own notAfter and the CA's maximum SVID TTL.
    pub ttl: Duration,
}

impl SvidRequest {
    /// A request for `spiffe_id` valid for `ttl`, without DNS names.
    pub fn new(spiffe_id: SpiffeId, ttl: Duration) -> Self {
        Self {
            spiffe_id,
            dns_names: Vec::new(),
            ttl,
        }
    }

    /// Adds DNS SANs.
    #[must_use]
    pub fn with_dns_names(mut self, dns_names: impl IntoIterator<Item = String>) -> Self {
        self.dns_names.extend(dns_names);
        self
    }
}

/// A team's existing CA, loaded from PEM, so the mesh chains to the team's private root.
///
/// `Debug` never shows the private key.
pub struct UpstreamCa {
    /// The CA certificate first, then its issuers up to and including the root.
    full_chain: Vec<CertificateDer<'static>>,
    key: KeyPair,
}

/// How a CA built on an [`UpstreamCa`] signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamMode {
    /// Sign SVIDs directly with the upstream CA's key. Its certificate never rotates here.
    Direct,
    /// Make an intermediate CA under the upstream CA and sign with it; the intermediate
    /// rotates like a self-made root does.
    Intermediate,
}

impl UpstreamCa {
    /// Reads the CA certificate, its private key (unencrypted PKCS#8 `PRIVATE KEY`) and,
    /// optionally, the certificates above it up to the root. Further certificates after the
    /// first in `cert_pem` count as chain too, so a "full chain" file works as is.
    ///
    /// If there is no chain, the CA certificate must be self-issued (a root).
    ///
    /// # Errors
    ///
    /// Returns [`CaError::InvalidCa`] or [`CaError::Key`] saying what is wrong; the chain's
    /// links and the key are checked when a [`X509Issuer`] is made from it.
    pub fn from_pem(
        cert_pem: &str,
        key_pem: &str,
        chain_pem: Option<&str>,
    ) -> Result<Self, CaError> {
        let mut full_chain = x509::certificates_from_pem(cert_pem)
            .map_err(|e| CaError::InvalidCa(format!("CA certificate: {e}")))?;
        if let Some(chain) = chain_pem {
            full_chain.extend(
                x509::certificates_from_pem(chain)
                    .map_err(|e| CaError::InvalidCa(format!("CA chain: {e}")))?,
            );
        }
        let key = KeyPair::from_pkcs8_pem(key_pem)
            .map_err(|e| CaError::InvalidCa(format!("CA private key: {e}{PKCS8_HINT}")))?;
        Ok(Self { full_chain, key })
    }

    /// As [`UpstreamCa::from_pem`], reading the files; errors name the file.
    ///
    /// # Errors
    ///
    /// Returns [`CaError::File`] for a file that cannot be read or parsed.
    pub fn from_files(cert: &Path, key: &Path, chain: Option<&Path>) -> Result<Self, CaError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| CaError::File {
                path: p.to_owned(),
                reason: e.to_string(),
            })
        };
        let file_error = |path: &Path, reason: String| CaError::File {
            path: path.to_owned(),
            reason,
        };

        let mut full_chain = x509::certificates_from_pem(&read(cert)?)
            .map_err(|e| file_error(cert, e.to_string()))?;
        if let Some(chain) = chain {
            full_chain.extend(
                x509::certificates_from_pem(&read(chain)?)
                    .map_err(|e| file_error(chain, e.to_string()))?,
            );
        }
        let key = KeyPair::from_pkcs8_pem(&read(key)?)
            .map_err(|e| file_error(key, format!("{e}{PKCS8_HINT}")))?;
        Ok(Self { full_chain, key })
    }

    /// The CA certificate.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.full_chain[0]
    }

    /// The root the chain ends at; this goes into the trust bundle.
    pub fn root(&self) -> &CertificateDer<'static> {
        &self.full_chain[self.full_chain.len() - 1]
    }

    /// The CA certificate first, then its issuers up to and including the root.
    pub fn full_chain(&self) -> &[CertificateDer<'static>] {
        &self.full_chain
    }

    /// An issuer that signs directly with this CA (mode [`UpstreamMode::Direct`]).
    ///
    /// # Errors
    ///
    /// As [`X509Issuer::from_chain`].
    pub fn issuer(&self, trust_domain: &TrustDomain) -> Result<X509Issuer, CaError> {
        let key = KeyPair::from_pkcs8_der(self.key.pkcs8_der())?;
        X509Issuer::from_chain(trust_domain, self.full_chain.clone(), key)
    }
}

impl fmt::Debug for UpstreamCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamCa")
            .field("chain_len", &self.full_chain.len())
            .field("key", &self.key)
            .finish()
    }
}

/// A CA certificate with its key, ready to sign X509-SVIDs (and intermediates).
///
/// It keeps the parsed issuer name and key identifier, so issuing does no parsing of the CA.
/// `Debug` never shows the private key.
pub struct X509Issuer {
    trust_domain: TrustDomain,
    /// Signing certificate first, root last (one element for a root that signs itself).
    full_chain: Vec<CertificateDer<'static>>,
    key: Arc<KeyPair>,
    issuer: rcgen::Issuer<'static, SignerKey>,
    not_before: SystemTime,
    not_after: SystemTime,
    path_len: Option<u32>,
    max_svid_ttl: Option<Duration>,
}

impl X509Issuer {
    /// Makes a new self-signed root CA for `trust_domain`, valid from `now` (back-dated by
    /// [`BACKDATE`]) for `ttl`.
    ///
    /// The certificate has `cA` true with pathLen 0 (it signs leaves only), keyUsage
    /// keyCertSign and cRLSign (critical), a subject key identifier, and the trust domain's
    /// SPIFFE ID (no path) as its only URI SAN.
    ///
    /// # Errors
    ///
    /// Returns [`CaError::Certificate`] if the certificate cannot be built.
    pub fn self_signed(
        trust_domain: &TrustDomain,
        key: KeyPair,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<Self, CaError> {
        let not_before = whole_seconds(now - BACKDATE);
        let not_after = whole_seconds(now + ttl);
        let params = ca_params(trust_domain, "root", not_before, not_after, false)?;
        let signer = SignerKey(Arc::new(key));
        let cert = params
            .self_signed(&signer)
            .map_err(|e| CaError::Certificate("self-signed root", e))?;
        let key = Arc::try_unwrap(signer.0)
            .map_err(|_| CaError::InvalidCa("signing key still shared".to_owned()))?;
        Self::from_chain(trust_domain, vec![cert.der().clone()], key)
    }

    /// Makes a new intermediate CA signed by this one (mode [`UpstreamMode::Intermediate`]),
    /// valid from `now` (back-dated) for `ttl` but never past this CA's notAfter.
    ///
    /// # Errors
    ///
    /// Returns [`CaError::InvalidCa`] if this CA's pathLen forbids intermediates or it has
    /// expired, [`CaError::Certificate`] if the certificate cannot be built.
    pub fn new_intermediate(
        &self,
        key: KeyPair,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<Self, CaError> {
        if self.path_len == Some(0) {
            return Err(CaError::InvalidCa(
                "the upstream CA has pathLen 0, so it cannot sign an intermediate; use direct mode"
                    .to_owned(),
            ));
        }
        let not_before = whole_seconds((now - BACKDATE).max(self.not_before));
        let not_after = whole_seconds((now + ttl).min(self.not_after));
        if not_after <= now {
            return Err(CaError::IssuerExpired {
                not_after: x509::format_time(self.not_after),
            });
        }
        let params = ca_params(
            &self.trust_domain,
            "intermediate",
            not_before,
            not_after,
            true,
        )?;
        let signer = SignerKey(Arc::new(key));
        let cert = params
            .signed_by(&signer, &self.issuer)
            .map_err(|e| CaError::Certificate("intermediate CA", e))?;
        let key = Arc::try_unwrap(signer.0)
            .map_err(|_| CaError::InvalidCa("signing key still shared".to_owned()))?;
        let mut full_chain = vec![cert.der().clone()];
        full_chain.extend(self.full_chain.iter().cloned());
        let mut issuer = Self::from_chain(&self.trust_domain, full_chain, key)?;
        issuer.max_svid_ttl = self.max_svid_ttl;
        Ok(issuer)
    }

    /// Builds an issuer from its certificate chain (signing certificate first, root last) and
    /// the signing certificate's key, checking everything a CA of `trust_domain` needs.
    ///
    /// Checked: each certificate sent along with leaves (all but the root) is a CA with
    /// keyCertSign per the SVID profile, and the root does not say otherwise; a SPIFFE ID on
    /// the signing certificate is `trust_domain`'s own ID; each certificate is signed by the next; the
    /// last one is a self-signed root; the key belongs to the signing certificate; and the
    /// signing certificate's subject name can be written byte for byte into the issuer field
    /// of new certificates.
    ///
    /// # Limitations
    ///
    /// A CA whose subject repeats an attribute type (e.g. two `OU` or two `DC`) or has a
    /// multi-valued RDN is refused with [`CaError::InvalidCa`], because the certificate
    /// library would write a different issuer name and the chain would break.
    ///
    /// # Errors
    ///
    /// Returns [`CaError::InvalidCa`] naming the broken rule.
    pub fn from_chain(
        trust_domain: &TrustDomain,
        full_chain: Vec<CertificateDer<'static>>,
        key: KeyPair,
    ) -> Result<Self, CaError> {
        let invalid = |m: String| CaError::InvalidCa(m);
        if full_chain.is_empty() {
            return Err(invalid("CA chain is empty".to_owned()));
        }
        if full_chain.len() > MAX_CHAIN_LEN {
            return Err(invalid(format!(
                "CA chain has {} certificates",
                full_chain.len()
            )));
        }
        let parsed = full_chain
            .iter()
            .enumerate()
            .map(|(i, der)| x509::parse_cert(der, i).map_err(|e| invalid(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;

        // Certificates sent along with leaves follow the SVID profile for signing certificates.
        // The root is never sent, and old team roots often lack keyUsage, so it only must not
        // contradict being a CA.
        let last = parsed.len() - 1;
        for (position, cert) in parsed.iter().enumerate().take(last) {
            x509::check_signing_cert(cert, position).map_err(|e| invalid(e.to_string()))?;
        }
        if parsed[last]
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| !bc.value.ca)
            || parsed[last]
                .key_usage()
                .ok()
                .flatten()
                .is_some_and(|ku| !ku.value.key_cert_sign())
        {
            return Err(invalid(
                "the root of the CA chain is not a CA with keyCertSign".to_owned(),
            ));
        }
        for uri in x509::uri_sans(&parsed[0], 0).map_err(|e| invalid(e.to_string()))? {
            if uri.starts_with("spiffe:") && uri != trust_domain.id_string() {
                return Err(invalid(format!(
                    "CA certificate carries SPIFFE ID `{uri}`, not `{}`",
                    trust_domain.id_string()
                )));
            }
        }
        for (position, pair) in parsed.windows(2).enumerate() {
            pair[0]
                .verify_signature(Some(pair[1].public_key()))
                .map_err(|_| {
                    invalid(format!(
                        "certificate {position} of the CA chain is not signed by certificate {}",
                        position + 1
                    ))
                })?;
        }
        let root = &parsed[parsed.len() - 1];
        if root.subject().as_raw() != root.issuer().as_raw() || root.verify_signature(None).is_err()
        {
            return Err(invalid(
                "the CA chain does not end with a self-signed root; give the chain up to the root"
                    .to_owned(),
            ));
        }

        let signing = &parsed[0];
        if signing.subject().iter().any(|rdn| rdn.iter().count() != 1) {
            return Err(invalid(format!(
                "CA subject `{}` has a multi-valued or empty RDN, which is not supported",
                signing.subject()
            )));
        }
        let key = Arc::new(key);
        let issuer = rcgen::Issuer::from_ca_cert_der(&full_chain[0], SignerKey(Arc::clone(&key)))
            .map_err(|e| invalid(format!("CA certificate not usable as issuer: {e}")))?;
        let path_len = signing
            .basic_constraints()
            .ok()
            .flatten()
            .and_then(|bc| bc.value.path_len_constraint);

        let this = Self {
            trust_domain: trust_domain.clone(),
            not_before: x509::asn1_time(signing.validity().not_before),
            not_after: x509::asn1_time(signing.validity().not_after),
            path_len,
            full_chain: Vec::new(),
            key,
            issuer,
            max_svid_ttl: None,
        };
        this.probe(signing)?;
        drop(parsed);
        Ok(Self { full_chain, ..this })
    }

    /// Caps every SVID this issuer makes at `ttl`, whatever the request says.
    #[must_use]
    pub fn with_max_svid_ttl(mut self, ttl: Duration) -> Self {
        self.max_svid_ttl = Some(ttl);
        self
    }

    /// The trust domain this CA issues for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The signing certificate.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.full_chain[0]
    }

    /// The root the chain ends at; this goes into the trust bundle.
    pub fn root(&self) -> &CertificateDer<'static> {
        &self.full_chain[self.full_chain.len() - 1]
    }

    /// Signing certificate first, root last.
    pub fn full_chain(&self) -> &[CertificateDer<'static>] {
        &self.full_chain
    }

    /// The certificates sent after each leaf: the full chain without the root.
    pub fn intermediates(&self) -> &[CertificateDer<'static>] {
        &self.full_chain[..self.full_chain.len() - 1]
    }

    /// The signing key.
    pub fn key(&self) -> &KeyPair {
        &self.key
    }

    /// Start of the signing certificate's validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of the signing certificate's validity; no SVID it issues lasts longer.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The cap on SVID lifetimes set with [`X509Issuer::with_max_svid_ttl`], if any.
    pub fn max_svid_ttl(&self) -> Option<Duration> {
        self.max_svid_ttl
    }

    /// The notAfter an SVID requested now for `ttl` gets: capped by the maximum SVID TTL and by
    /// this CA's own notAfter, in whole seconds.
    pub fn svid_not_after(&self, ttl: Duration, now: SystemTime) -> SystemTime {
        let ttl = self.max_svid_ttl.map_or(ttl, |max| ttl.min(max));
        whole_seconds((now + ttl).min(self.not_after))
    }

    /// Issues an X509-SVID for a public key (X.509 SubjectPublicKeyInfo DER).
    ///
    /// The leaf follows the X509-SVID standard: the SPIFFE ID as its only URI SAN plus the
    /// requested DNS SANs; basicConstraints present with `cA` false; keyUsage critical with
    /// digitalSignature (and keyEncipherment for an RSA key); extended key usage serverAuth
    /// and clientAuth; a random positive 126-bit serial; notBefore back-dated by [`BACKDATE`];
    /// notAfter per [`X509Issuer::svid_not_after`]; subject and authority key identifiers.
    ///
    /// Returns the chain to send: the leaf, then [`X509Issuer::intermediates`].
    ///
    /// # Errors
    ///
    /// Returns [`CaError::UnsupportedPublicKey`] for a key that is not EC P-256, EC P-384 or
    /// RSA of at least 2048 bits, [`CaError::LeafIdWithoutPath`], [`CaError::WrongTrustDomain`],
    /// [`CaError::InvalidDnsName`], [`CaError::IssuerExpired`] or [`CaError::Certificate`].
    pub fn issue_for_public_key(
        &self,
        request: &SvidRequest,
        spki_der: &[u8],
        now: SystemTime,
    ) -> Result<Vec<CertificateDer<'static>>, CaError> {
        let public_key = LeafPublicKey::from_spki_der(spki_der)?;
        let (leaf, _, _) = self.sign_leaf(request, &public_key, now)?;
        let mut chain = Vec::with_capacity(self.full_chain.len());
        chain.push(leaf);
        chain.extend(self.intermediates().iter().cloned());
        Ok(chain)
    }

    /// Issues an X509-SVID for the public key of a PKCS#10 CSR (PEM or DER).
    ///
    /// The CSR's signature is checked; then only its public key is used. Its subject, SANs and
    /// requested extensions are ignored: `request` alone decides what the leaf says.
    ///
    /// # Errors
    ///
    /// Returns [`CaError::BadCsr`] or [`CaError::CsrSignature`], otherwise as
    /// [`X509Issuer::issue_for_public_key`].
    pub fn issue_for_csr(
        &self,
        request: &SvidRequest,
        csr: &[u8],
        now: SystemTime,
    ) -> Result<Vec<CertificateDer<'static>>, CaError> {
        let spki = csr_public_key(csr)?;
        self.issue_for_public_key(request, &spki, now)
    }

    /// Generates a key of `key_type` and issues an X509-SVID for it.
    ///
    /// # Errors
    ///
    /// Returns [`CaError::Key`] if key generation fails, otherwise as
    /// [`X509Issuer::issue_for_public_key`].
    pub fn issue_with_new_key(
        &self,
        request: &SvidRequest,
        key_type: KeyType,
        now: SystemTime,
    ) -> Result<X509Svid, CaError> {
        let key = KeyPair::generate(key_type)?;
        let public_key = LeafPublicKey::from_key_pair(&key);
        let (leaf, not_before, not_after) = self.sign_leaf(request, &public_key, now)?;
        let mut chain = Vec::with_capacity(self.full_chain.len());
        chain.push(leaf);
        chain.extend(self.intermediates().iter().cloned());
        Ok(X509Svid::from_issued(
            request.spiffe_id.clone(),
            chain,
            key.pkcs8_der().to_vec(),
            not_before,
            not_after,
        ))
    }

    fn sign_leaf(
        &self,
        request: &SvidRequest,
        public_key: &LeafPublicKey,
        now: SystemTime,
    ) -> Result<(CertificateDer<'static>, SystemTime, SystemTime), CaError> {
        let id = &request.spiffe_id;
        if !id.is_workload() {
            return Err(CaError::LeafIdWithoutPath(id.to_string()));
        }
        if id.trust_domain() != &self.trust_domain {
            return Err(CaError::WrongTrustDomain {
                id: id.to_string(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        let not_after = self.svid_not_after(request.ttl, now);
        if not_after <= now {
            return Err(CaError::IssuerExpired {
                not_after: x509::format_time(self.not_after),
            });
        }
        let not_before = whole_seconds((now - BACKDATE).max(self.not_before));

        let mut sans = Vec::with_capacity(1 + request.dns_names.len());
        sans.push(SanType::URI(ia5(id.as_str())?));
        for name in &request.dns_names {
            check_dns_name(name)?;
            sans.push(SanType::DnsName(ia5(name)?));
        }

        let mut params = CertificateParams::default();
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.serial_number = Some(random_serial());
        params.distinguished_name = leaf_subject(id);
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = if public_key.rsa {
            vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ]
        } else {
            vec![KeyUsagePurpose::DigitalSignature]
        };
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;

        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(|e| CaError::Certificate("leaf", e))?;
        Ok((cert.into(), not_before, not_after))
    }

    /// Signs a throw-away certificate to prove that the key belongs to the signing certificate
    /// and that the issuer name written into new certificates equals its subject exactly.
    fn probe(&self, signing: &X509Certificate<'_>) -> Result<(), CaError> {
        let mut params = CertificateParams::default();
        params.not_before = self.not_before.into();
        params.not_after = self.not_after.into();
        params.serial_number = Some(random_serial());
        let probe = params
            .signed_by(self.issuer.key(), &self.issuer)
            .map_err(|e| CaError::Certificate("probe", e))?;
        let parsed =
            x509::parse_cert(probe.der(), 0).map_err(|e| CaError::InvalidCa(e.to_string()))?;
        if parsed.verify_signature(Some(signing.public_key())).is_err() {
            return Err(CaError::InvalidCa(
                "the CA private key does not belong to the CA certificate".to_owned(),
            ));
        }
        if parsed.issuer().as_raw() != signing.subject().as_raw() {
            return Err(CaError::InvalidCa(format!(
                "CA subject `{}` cannot be reproduced exactly in issued certificates (repeated attribute types are not supported)",
                signing.subject()
            )));
        }
        Ok(())
    }
}

impl fmt::Debug for X509Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X509Issuer")
            .field("trust_domain", &self.trust_domain)
            .field("chain_len", &self.full_chain.len())
            .field("not_before", &x509::format_time(self.not_before))
            .field("not_after", &x509::format_time(self.not_after))
            .field("key", &self.key)
            .finish()
    }
}

/// Checks a CSR (PEM or DER) and returns its public key as SubjectPublicKeyInfo DER.
///
/// Only the public key is taken; the CSR's signature must verify with it (proof that the
/// requester holds the private key).
///
/// # Errors
///
/// Returns [`CaError::BadCsr`] if the input is not a CSR, [`CaError::UnsupportedPublicKey`]
/// for a key an SVID cannot have, [`CaError::CsrSignature`] if its signature does not verify.
pub fn csr_public_key(csr: &[u8]) -> Result<Vec<u8>, CaError> {
    if csr.len() > MAX_CSR_LEN {
        return Err(CaError::BadCsr(format!(
            "{} bytes is too long for a CSR",
            csr.len()
        )));
    }
    let der_owned;
    let der = if csr.trim_ascii_start().starts_with(b"-----BEGIN") {
        let block = pem::parse(csr).map_err(|e| CaError::BadCsr(e.to_string()))?;
        if !block.tag().ends_with("CERTIFICATE REQUEST") {
            return Err(CaError::BadCsr(format!(
                "PEM block is `{}`, not a CERTIFICATE REQUEST",
                block.tag()
            )));
        }
        der_owned = block.into_contents();
        der_owned.as_slice()
    } else {
        csr
    };
    let (rest, request) =
        X509CertificationRequest::from_der(der).map_err(|e| CaError::BadCsr(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CaError::BadCsr("trailing bytes after the CSR".to_owned()));
    }
    // Refuse an unsupported key by name before its signature, which aws-lc may not check.
    let spki = request.certification_request_info.subject_pki.raw;
    LeafPublicKey::from_spki_der(spki)?;
    request
        .verify_signature()
        .map_err(|_| CaError::CsrSignature)?;
    Ok(spki.to_vec())
}

/// A leaf's public key, with what rcgen needs to write it.
struct LeafPublicKey {
    raw: Vec<u8>,
    alg: &'static SignatureAlgorithm,
    rsa: bool,
}

impl LeafPublicKey {
    fn from_spki_der(spki: &[u8]) -> Result<Self, CaError> {
        let unsupported = |m: &str| CaError::UnsupportedPublicKey(m.to_owned());
        let (rest, info) = SubjectPublicKeyInfo::from_der(spki)
            .map_err(|_| unsupported("not a DER SubjectPublicKeyInfo"))?;
        if !rest.is_empty() {
            return Err(unsupported("trailing bytes after the SubjectPublicKeyInfo"));
        }
        let raw = info.subject_public_key.data.to_vec();
        let algorithm = &info.algorithm.algorithm;
        if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve = info
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .ok_or_else(|| unsupported("EC key without a named curve"))?;
            let alg = if curve == OID_EC_P256 {
                &rcgen::PKCS_ECDSA_P256_SHA256
            } else if curve == OID_NIST_EC_P384 {
                &rcgen::PKCS_ECDSA_P384_SHA384
            } else {
                return Err(CaError::UnsupportedPublicKey(format!(
                    "EC curve {curve}; only P-256 and P-384 are supported"
                )));
            };
            return Ok(Self {
                raw,
                alg,
                rsa: false,
            });
        }
        if *algorithm == OID_PKCS1_RSAENCRYPTION {
            let bits = match info.parsed() {
                Ok(PublicKey::RSA(rsa)) => rsa.key_size(),
                _ => return Err(unsupported("malformed RSA public key")),
            };
            if bits < MIN_RSA_BITS {
                return Err(CaError::UnsupportedPublicKey(format!(
                    "RSA key of {bits} bits; at least 2048 are required"
                )));
            }
            return Ok(Self {
                raw,
                alg: &rcgen::PKCS_RSA_SHA256,
                rsa: true,
            });
        }
        Err(CaError::UnsupportedPublicKey(format!(
            "key algorithm {algorithm}; only EC P-256, EC P-384 and RSA are supported"
        )))
    }

    fn from_key_pair(key: &KeyPair) -> Self {
        Self {
            raw: key.rcgen().der_bytes().to_vec(),
            alg: key.key_type().signature_algorithm(),
            rsa: key.key_type().is_rsa(),
        }
    }
}

impl PublicKeyData for LeafPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

/// The crate's key pair as an rcgen signer, shared with the [`X509Issuer`] that owns it.
struct SignerKey(Arc<KeyPair>);

impl PublicKeyData for SignerKey {
    fn der_bytes(&self) -> &[u8] {
        self.0.rcgen().der_bytes()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.0.rcgen().algorithm()
    }
}

impl SigningKey for SignerKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.0.rcgen().sign(msg)
    }
}

fn ca_params(
    trust_domain: &TrustDomain,
    kind: &str,
    not_before: SystemTime,
    not_after: SystemTime,
    with_authority_key_id: bool,
) -> Result<CertificateParams, CaError> {
    let serial = random_serial();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "mesh");
    // The serial in the name keeps successive CAs apart for tools that match by name only.
    let short = hex::encode(&serial.to_bytes()[..4]);
    dn.push(
        DnType::CommonName,
        format!("{} {kind} CA {short}", trust_domain.name()),
    );

    let mut params = CertificateParams::default();
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    params.serial_number = Some(serial);
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(ia5(&trust_domain.id_string())?)];
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.use_authority_key_identifier_extension = with_authority_key_id;
    Ok(params)
}

/// Subject of a leaf: `O=mesh`, plus the SPIFFE ID as common name when it fits the 64
/// characters X.520 allows, so tools that print only the subject show whose it is.
fn leaf_subject(id: &SpiffeId) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "mesh");
    if id.as_str().len() <= 64 {
        dn.push(DnType::CommonName, id.as_str());
    }
    dn
}

/// A random positive serial of 16 bytes with the top bits set to `01`, so its DER encoding is
/// always 16 bytes and it carries 126 random bits.
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    bytes[0] = (bytes[0] & 0x3f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn ia5(s: &str) -> Result<Ia5String, CaError> {
    Ia5String::try_from(s).map_err(|_| CaError::InvalidDnsName(s.to_owned()))
}

/// A DNS SAN: labels of letters, digits and `-`, at most 63 bytes each and 253 in all; the
/// first label may be `*`.
fn check_dns_name(name: &str) -> Result<(), CaError> {
    let bad = || CaError::InvalidDnsName(name.to_owned());
    if name.is_empty() || name.len() > 253 {
        return Err(bad());
    }
    for (i, label) in name.split('.').enumerate() {
        let ok = (i == 0 && label == "*")
            || (!label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        if !ok {
            return Err(bad());
        }
    }
    Ok(())
}

/// `t` rounded down to a whole second, as certificates store it.
pub(crate) fn whole_seconds(t: SystemTime) -> SystemTime {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    UNIX_EPOCH + Duration::from_secs(secs)
}
