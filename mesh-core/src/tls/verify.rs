//! rustls certificate verifiers for SPIFFE peers.
//!
//! The peer's chain is checked with [`verify_x509_svid`] against the bundle of the peer's own
//! trust domain, taken from the [`SvidSource`] at handshake time and at the [`Clock`]'s time;
//! then the [`Authorizer`] decides whether that SPIFFE ID may connect. No DNS name is checked:
//! the SPIFFE ID is the identity. Handshake signatures are verified with the crypto
//! provider's algorithms.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError};
use rustls::{Error, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::authorize::Authorizer;
use super::source::SvidSource;
use crate::clock::SharedClock;
use crate::id::SpiffeId;
use crate::x509::{verify_x509_svid, VerifyError};

/// Which end of the connection the verified peer is.
#[derive(Debug, Clone, Copy)]
enum PeerRole {
    Client,
    Server,
}

impl PeerRole {
    fn name(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Server => "server",
        }
    }
}

/// Verifies and authorizes the peer of one end; shared by both verifier types.
#[derive(Debug)]
struct PeerCheck {
    source: Arc<dyn SvidSource>,
    authorizer: Authorizer,
    clock: SharedClock,
    algorithms: WebPkiSupportedAlgorithms,
    role: PeerRole,
}

impl PeerCheck {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<SpiffeId, Error> {
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(CertificateDer::from(end_entity.as_ref()));
        chain.extend(
            intermediates
                .iter()
                .map(|c| CertificateDer::from(c.as_ref())),
        );

        let bundles = self.source.bundles();
        let id = match verify_x509_svid(&chain, &bundles, self.clock.now()) {
            Ok(id) => id,
            Err(error) => {
                let claimed = super::peer_spiffe_id(&chain);
                tracing::warn!(
                    peer.role = self.role.name(),
                    peer.spiffe_id = claimed.as_ref().map(|i| i.as_str()).unwrap_or("<none>"),
                    %error,
                    "refused peer certificate"
                );
                return Err(to_rustls_error(error));
            }
        };

        if let Err(error) = self.authorizer.authorize(&id) {
            tracing::warn!(
                peer.role = self.role.name(),
                peer.spiffe_id = %id,
                rule = %self.authorizer,
                "refused peer: SPIFFE ID not authorized"
            );
            return Err(Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(error)),
            )));
        }
        tracing::debug!(peer.role = self.role.name(), peer.spiffe_id = %id, "peer verified");
        Ok(id)
    }
}

/// Maps a chain verification failure to the rustls error whose TLS alert fits it best.
fn to_rustls_error(error: VerifyError) -> Error {
    let kind = match error {
        VerifyError::Expired { .. } => CertificateError::Expired,
        VerifyError::NotYetValid { .. } => CertificateError::NotValidYet,
        VerifyError::NoBundle(_) | VerifyError::EmptyBundle(_) => CertificateError::UnknownIssuer,
        VerifyError::UntrustedChain { .. } => CertificateError::UnknownIssuer,
        VerifyError::MalformedCertificate { .. } => CertificateError::BadEncoding,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    Error::InvalidCertificate(kind)
}

/// Verifies the server's SVID on the client side.
#[derive(Debug)]
pub(super) struct SpiffeServerVerifier(PeerCheck);

impl SpiffeServerVerifier {
    pub(super) fn new(
        source: Arc<dyn SvidSource>,
        authorizer: Authorizer,
        clock: SharedClock,
        provider: &CryptoProvider,
    ) -> Self {
        Self(PeerCheck {
            source,
            authorizer,
            clock,
            algorithms: provider.signature_verification_algorithms,
            role: PeerRole::Server,
        })
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.0.check(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.algorithms.supported_schemes()
    }
}

/// Requires and verifies the client's SVID on the server side.
#[derive(Debug)]
pub(super) struct SpiffeClientVerifier(PeerCheck);

impl SpiffeClientVerifier {
    pub(super) fn new(
        source: Arc<dyn SvidSource>,
        authorizer: Authorizer,
        clock: SharedClock,
        provider: &CryptoProvider,
    ) -> Self {
        Self(PeerCheck {
            source,
            authorizer,
            clock,
            algorithms: provider.signature_verification_algorithms,
            role: PeerRole::Client,
        })
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: a workload has one SVID and sends it whatever the server trusts.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.0.check(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.algorithms.supported_schemes()
    }
}
