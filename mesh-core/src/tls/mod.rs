//! Mutual TLS between SPIFFE workloads with rustls.
//!
//! [`SpiffeTls`] builds a rustls [`ServerConfig`] or [`ClientConfig`] over a live
//! [`SvidSource`]. Every handshake presents the source's current X509-SVID and verifies the
//! peer's chain against the bundle of the peer's own trust domain (the X509-SVID standard,
//! section 5, through [`verify_x509_svid`](crate::x509::verify_x509_svid)); then an
//! [`Authorizer`] decides whether the peer's SPIFFE ID may connect. No DNS name is checked.
//!
//! Updating the source (a renewed SVID, a bundle with a rotated CA) changes the next handshake
//! without rebuilding the configs; established connections are not interrupted.
//!
//! The configs use rustls's aws-lc-rs provider explicitly, so no process-wide default provider
//! needs installing.
//!
//! # Session resumption
//!
//! Resumption is turned off on both ends: a resumed session would skip verifying the peer
//! against the bundles and authorizer in force now. Every connection pays a full handshake.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use mesh_core::tls::{Authorizer, MemorySource, SpiffeTls};
//! use mesh_core::SpiffeId;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let source = Arc::new(MemorySource::new()); // fill it from the Workload API or a Ca
//! let tls = SpiffeTls::new(source.clone());
//! let server = tls.server_config(Authorizer::exact(SpiffeId::new("spiffe://example.org/web")?))?;
//! let client = tls.client_config(Authorizer::exact(SpiffeId::new("spiffe://example.org/db")?))?;
//! # let _ = (server, client);
//! # Ok(())
//! # }
//! ```

mod authorize;
mod resolve;
mod source;
mod verify;

use std::sync::Arc;

use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::server::NoServerSessionStorage;
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::CertificateDer;

use crate::clock::{SharedClock, SystemClock};
use crate::id::SpiffeId;
use crate::x509::{check_leaf, parse_cert};

pub use authorize::{AuthorizeError, Authorizer};
pub use source::{MemorySource, SvidSource};

use resolve::SvidResolver;
use verify::{SpiffeClientVerifier, SpiffeServerVerifier};

/// Why a TLS config could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// rustls refused the protocol versions or the provider.
    #[error("rustls refused the configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Builds rustls configs for mutual TLS over a live [`SvidSource`].
#[derive(Debug, Clone)]
pub struct SpiffeTls {
    source: Arc<dyn SvidSource>,
    clock: SharedClock,
    provider: Arc<CryptoProvider>,
}

impl SpiffeTls {
    /// Configs over `source`, checking validity at the system clock's time, with rustls's
    /// aws-lc-rs provider.
    pub fn new(source: Arc<dyn SvidSource>) -> Self {
        Self {
            source,
            clock: Arc::new(SystemClock),
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        }
    }

    /// Checks the validity of peer certificates at `clock`'s time instead (for tests that move
    /// time by hand).
    #[must_use]
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// The source the configs read.
    pub fn source(&self) -> &Arc<dyn SvidSource> {
        &self.source
    }

    /// A server config that presents the current SVID, requires a client SVID, and lets in
    /// the clients `authorizer` allows. TLS 1.2 and 1.3; set `alpn_protocols` on the result if
    /// the application needs them.
    ///
    /// # Errors
    ///
    /// [`TlsError::Rustls`] if rustls refuses the provider (not with the built-in one).
    pub fn server_config(&self, authorizer: Authorizer) -> Result<ServerConfig, TlsError> {
        let verifier = SpiffeClientVerifier::new(
            Arc::clone(&self.source),
            authorizer,
            Arc::clone(&self.clock),
            &self.provider,
        );
        let resolver = SvidResolver::new(Arc::clone(&self.source), Arc::clone(&self.provider));
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(Arc::new(resolver));
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(config)
    }

    /// A client config that presents the current SVID and accepts the servers `authorizer`
    /// allows. The server name given to rustls is only used for SNI; it is not checked
    /// against the server's certificate.
    ///
    /// # Errors
    ///
    /// [`TlsError::Rustls`] if rustls refuses the provider (not with the built-in one).
    pub fn client_config(&self, authorizer: Authorizer) -> Result<ClientConfig, TlsError> {
        let verifier = SpiffeServerVerifier::new(
            Arc::clone(&self.source),
            authorizer,
            Arc::clone(&self.clock),
            &self.provider,
        );
        let resolver = SvidResolver::new(Arc::clone(&self.source), Arc::clone(&self.provider));
        let mut config = ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::new(resolver));
        config.resumption = Resumption::disabled();
        Ok(config)
    }
}

/// The SPIFFE ID in the URI SAN of the first certificate of `chain` (a peer's certificates
/// after a handshake, e.g. rustls's `peer_certificates()`), if it follows the X509-SVID leaf
/// profile. This does not verify anything: call it on chains the handshake verified.
pub fn peer_spiffe_id(chain: &[CertificateDer<'_>]) -> Option<SpiffeId> {
    let leaf = parse_cert(chain.first()?, 0).ok()?;
    check_leaf(&leaf).ok()
}
