//! rustls certificate resolvers that present the source's current SVID.
//!
//! The rustls signing key made from an SVID is kept until the source hands out a different
//! SVID, so a handshake costs a pointer comparison, not a key parse.

use std::sync::{Arc, Mutex, PoisonError};

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::source::SvidSource;
use crate::x509::X509Svid;

/// Turns the source's current SVID into a rustls [`CertifiedKey`], caching the last one.
#[derive(Debug)]
pub(super) struct SvidResolver {
    source: Arc<dyn SvidSource>,
    provider: Arc<CryptoProvider>,
    cached: Mutex<Option<(Arc<X509Svid>, Arc<CertifiedKey>)>>,
}

impl SvidResolver {
    pub(super) fn new(source: Arc<dyn SvidSource>, provider: Arc<CryptoProvider>) -> Self {
        Self {
            source,
            provider,
            cached: Mutex::new(None),
        }
    }

    fn current(&self) -> Option<Arc<CertifiedKey>> {
        let Some(svid) = self.source.svid() else {
            tracing::warn!("no local SVID yet; the handshake cannot present an identity");
            return None;
        };

        // The cache only ever holds a complete pair, so a poisoned lock still holds good data.
        let mut cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((held, key)) = cached.as_ref() {
            if Arc::ptr_eq(held, &svid) {
                return Some(Arc::clone(key));
            }
        }

        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            svid.private_key_pkcs8_der().to_vec(),
        ));
        match CertifiedKey::from_der(svid.chain().to_vec(), key_der, &self.provider) {
            Ok(key) => {
                let key = Arc::new(key);
                tracing::debug!(spiffe_id = %svid.spiffe_id(), "presenting a new local SVID");
                *cached = Some((svid, Arc::clone(&key)));
                Some(key)
            }
            Err(error) => {
                tracing::warn!(spiffe_id = %svid.spiffe_id(), %error, "local SVID key is not usable for TLS");
                None
            }
        }
    }
}

impl ResolvesServerCert for SvidResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for SvidResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        self.source.svid().is_some()
    }
}
