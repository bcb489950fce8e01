//! The HTTPS server: mutual TLS with the SVID in force, an allow-list of client IDs, and a
//! `GET /` that reports both sides' SPIFFE IDs and certificate serials.

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use mesh_core::tls::{peer_spiffe_id, SpiffeTls, SvidSource, TlsError};
use mesh_core::SpiffeId;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::{authorizer_for, serial_hex};

/// The name the server reports in its answers.
pub const NAME: &str = "rust";

/// How long a client may take to complete the TLS handshake, and then to send a request's
/// headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What `GET /` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Whoami {
    /// [`NAME`].
    pub server: String,
    /// The SPIFFE ID of the certificate this server presented on the connection.
    pub server_id: String,
    /// Its serial number, hexadecimal.
    pub server_serial: String,
    /// The client's SPIFFE ID, from its verified certificate.
    pub client_id: String,
    /// The client certificate's serial number, hexadecimal.
    pub client_serial: String,
}

/// An mTLS server over a live SVID source that lets in the clients of an allow-list.
#[derive(Debug, Clone)]
pub struct Server {
    config: Arc<ServerConfig>,
}

impl Server {
    /// A server presenting `source`'s SVID in force at each handshake, and accepting only
    /// clients whose verified SPIFFE ID is in `allowed`.
    ///
    /// # Errors
    ///
    /// [`TlsError`] if rustls refuses the configuration.
    pub fn new(source: Arc<dyn SvidSource>, allowed: &[SpiffeId]) -> Result<Self, TlsError> {
        let mut config = SpiffeTls::new(source).server_config(authorizer_for(allowed))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
        })
    }

    /// Accepts connections on `listener` until `shutdown` completes; each connection is
    /// served on its own task.
    pub async fn serve(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: pause instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = &mut shutdown => return,
            };
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(error) = this.connection(stream).await {
                    tracing::info!(client.addr = %peer, %error, "connection refused or failed");
                }
            });
        }
    }

    /// Handshakes and serves HTTP/1.1 on one connection.
    async fn connection(&self, stream: TcpStream) -> Result<(), ConnectionError> {
        // A config per connection, sharing everything with the base one but recording which
        // certificate its handshake presented, so the answer names exactly that certificate.
        let presented = Arc::new(RecordingResolver {
            inner: Arc::clone(&self.config.cert_resolver),
            chosen: Mutex::new(None),
        });
        let mut config = ServerConfig::clone(&self.config);
        config.cert_resolver = presented.clone();
        let acceptor = TlsAcceptor::from(Arc::new(config));

        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
            .await
            .map_err(|_| ConnectionError::HandshakeTimeout)?
            .map_err(ConnectionError::Handshake)?;

        let (_, session) = tls.get_ref();
        let client_chain = session.peer_certificates().unwrap_or_default();
        // The verifier only lets in a client whose leaf carries a SPIFFE ID, so these are set
        // after a successful handshake; an empty string would only show a broken invariant.
        let client_id = peer_spiffe_id(client_chain).map_or_else(String::new, |id| id.to_string());
        let client_serial = client_chain
            .first()
            .and_then(serial_hex)
            .unwrap_or_default();
        let own = presented
            .chosen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let (server_id, server_serial) = own
            .map(|key| {
                let id = peer_spiffe_id(&key.cert).map_or_else(String::new, |id| id.to_string());
                (id, key.end_entity_cert().ok().and_then(serial_hex))
            })
            .unwrap_or_default();
        tracing::debug!(client.spiffe_id = %client_id, client.serial = %client_serial, "client verified");

        let whoami = Arc::new(Whoami {
            server: NAME.to_owned(),
            server_id,
            server_serial: server_serial.unwrap_or_default(),
            client_id,
            client_serial,
        });
        let service = hyper::service::service_fn(move |request| {
            let whoami = Arc::clone(&whoami);
            async move { Ok::<_, Infallible>(respond(&request, &whoami)) }
        });
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HANDSHAKE_TIMEOUT)
            .serve_connection(TokioIo::new(tls), service)
            .await
            .map_err(ConnectionError::Http)
    }
}

/// Why one connection ended badly.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("tls handshake did not finish within {HANDSHAKE_TIMEOUT:?}")]
    HandshakeTimeout,
    #[error("tls handshake failed: {0}")]
    Handshake(std::io::Error),
    #[error("http: {0}")]
    Http(hyper::Error),
}

fn respond(request: &Request<Incoming>, whoami: &Whoami) -> Response<Full<Bytes>> {
    let (status, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/") => match serde_json::to_vec(whoami) {
            Ok(mut json) => {
                json.push(b'\n');
                (StatusCode::OK, json)
            }
            Err(error) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{{\"error\":\"{error}\"}}\n").into_bytes(),
            ),
        },
        (&Method::GET, _) => (
            StatusCode::NOT_FOUND,
            b"{\"error\":\"not found\"}\n".to_vec(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            b"{\"error\":\"method not allowed\"}\n".to_vec(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// Delegates to the SVID resolver and keeps what it chose for this one connection.
#[derive(Debug)]
struct RecordingResolver {
    inner: Arc<dyn ResolvesServerCert>,
    chosen: Mutex<Option<Arc<CertifiedKey>>>,
}

impl ResolvesServerCert for RecordingResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let key = self.inner.resolve(client_hello);
        *self.chosen.lock().unwrap_or_else(PoisonError::into_inner) = key.clone();
        key
    }
}
