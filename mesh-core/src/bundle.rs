//! Trust bundles: the X.509 and JWT authorities of one trust domain, and sets of them.
//!
//! A bundle reads and writes the SPIFFE bundle document ([`Bundle::from_document`],
//! [`Bundle::to_document`]) and the plain JWK Set the Workload API serves for JWT bundles
//! ([`Bundle::to_jwt_jwks`]).
//!
//! See the SPIFFE Trust Domain and Bundle standard (`standards/SPIFFE_Trust_Domain_and_Bundle.md`).

use std::collections::BTreeMap;
use std::time::Duration;

use rustls_pki_types::CertificateDer;

use crate::id::TrustDomain;

mod document;
mod jwk;

pub use document::{BundleDocumentError, KeyRef, Strictness};

/// A public key that validates JWT-SVIDs, named by its key ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtAuthority {
    /// The key ID (`kid`) that JWT-SVIDs signed by this key carry in their header.
    pub key_id: String,
    /// The public key as an X.509 SubjectPublicKeyInfo in DER.
    pub public_key: Vec<u8>,
}

/// The authorities of one trust domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    trust_domain: TrustDomain,
    x509_authorities: Vec<CertificateDer<'static>>,
    jwt_authorities: Vec<JwtAuthority>,
    sequence: u64,
    refresh_hint: Option<Duration>,
}

impl Bundle {
    /// An empty bundle for `trust_domain` at sequence 0.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            x509_authorities: Vec::new(),
            jwt_authorities: Vec::new(),
            sequence: 0,
            refresh_hint: None,
        }
    }

    /// The trust domain whose authorities these are.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The CA certificates (DER) that X509-SVIDs of this trust domain chain to.
    pub fn x509_authorities(&self) -> &[CertificateDer<'static>] {
        &self.x509_authorities
    }

    /// The keys that validate JWT-SVIDs of this trust domain.
    pub fn jwt_authorities(&self) -> &[JwtAuthority] {
        &self.jwt_authorities
    }

    /// The JWT authority with the given key ID, if any.
    pub fn jwt_authority(&self, key_id: &str) -> Option<&JwtAuthority> {
        self.jwt_authorities.iter().find(|a| a.key_id == key_id)
    }

    /// The sequence number; it grows every time the authorities change.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// How often a holder of this bundle should look for a new one.
    pub fn refresh_hint(&self) -> Option<Duration> {
        self.refresh_hint
    }

    /// Adds an X.509 authority unless it is already present.
    pub fn add_x509_authority(&mut self, cert: CertificateDer<'static>) {
        if !self.x509_authorities.contains(&cert) {
            self.x509_authorities.push(cert);
        }
    }

    /// Adds a JWT authority, replacing one with the same key ID.
    pub fn add_jwt_authority(&mut self, authority: JwtAuthority) {
        self.jwt_authorities
            .retain(|a| a.key_id != authority.key_id);
        self.jwt_authorities.push(authority);
    }

    /// Replaces all X.509 authorities.
    pub fn set_x509_authorities(&mut self, certs: Vec<CertificateDer<'static>>) {
        self.x509_authorities = certs;
    }

    /// Replaces all JWT authorities.
    pub fn set_jwt_authorities(&mut self, authorities: Vec<JwtAuthority>) {
        self.jwt_authorities = authorities;
    }

    /// Sets the sequence number.
    pub fn set_sequence(&mut self, sequence: u64) {
        self.sequence = sequence;
    }

    /// Sets the refresh hint.
    pub fn set_refresh_hint(&mut self, hint: Option<Duration>) {
        self.refresh_hint = hint;
    }

    /// All X.509 authorities concatenated as DER, the form the Workload API sends.
    pub fn x509_authorities_concatenated(&self) -> Vec<u8> {
        self.x509_authorities
            .iter()
            .flat_map(|c| c.as_ref().iter().copied())
            .collect()
    }
}

/// Bundles of several trust domains, keyed by trust domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BundleSet {
    bundles: BTreeMap<TrustDomain, Bundle>,
}

impl BundleSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the bundle of its trust domain.
    pub fn insert(&mut self, bundle: Bundle) {
        self.bundles.insert(bundle.trust_domain().clone(), bundle);
    }

    /// The bundle of `trust_domain`, if the set has one.
    pub fn get(&self, trust_domain: &TrustDomain) -> Option<&Bundle> {
        self.bundles.get(trust_domain)
    }

    /// Every bundle, ordered by trust domain.
    pub fn iter(&self) -> impl Iterator<Item = &Bundle> {
        self.bundles.values()
    }

    /// How many trust domains the set covers.
    pub fn len(&self) -> usize {
        self.bundles.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.bundles.is_empty()
    }
}

impl FromIterator<Bundle> for BundleSet {
    fn from_iter<I: IntoIterator<Item = Bundle>>(iter: I) -> Self {
        let mut set = Self::new();
        for b in iter {
            set.insert(b);
        }
        set
    }
}
