//! The HTTPS client: one new mutual-TLS connection per call, with the SVID in force, to
//! servers of an allow-list; one [`CallResult`] per call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use mesh_core::tls::{peer_spiffe_id, SpiffeTls, SvidSource, TlsError};
use mesh_core::SpiffeId;
use rustls_pki_types::ServerName;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::{authorizer_for, serial_hex};

/// The name the client reports in its result lines.
pub const NAME: &str = "rust";

/// How long one call (connect, handshake, request, response) may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The most of a response body read.
const MAX_BODY: usize = 64 * 1024;

/// The outcome of one call, printed as one JSON line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CallResult {
    /// [`NAME`].
    pub client: String,
    /// The URL called.
    pub url: String,
    /// Whether the call got a 200 over a verified, authorized connection.
    pub ok: bool,
    /// The HTTP status, once a response arrived.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The server's SPIFFE ID, from its certificate in this TLS session (set only once the
    /// client has verified and authorized the server).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
    /// The server certificate's serial number, hexadecimal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_serial: Option<String>,
    /// The client's SPIFFE ID as the server reported it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The client certificate's serial number as the server reported it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_serial: Option<String>,
    /// The server's JSON answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<serde_json::Value>,
    /// What went wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long the call took, in milliseconds.
    pub ms: u64,
}

/// An mTLS client over a live SVID source that talks only to servers of an allow-list.
#[derive(Clone)]
pub struct Client {
    connector: TlsConnector,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    /// A client presenting `source`'s SVID in force at each handshake and accepting only
    /// servers whose verified SPIFFE ID is in `allowed`.
    ///
    /// # Errors
    ///
    /// [`TlsError`] if rustls refuses the configuration.
    pub fn new(source: Arc<dyn SvidSource>, allowed: &[SpiffeId]) -> Result<Self, TlsError> {
        let mut config = SpiffeTls::new(source).client_config(authorizer_for(allowed))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    /// Calls `GET url` over a new connection. Never fails: failures are in the result.
    pub async fn call(&self, url: &str) -> CallResult {
        let started = Instant::now();
        let mut result = CallResult {
            client: NAME.to_owned(),
            url: url.to_owned(),
            ..CallResult::default()
        };
        let outcome = tokio::time::timeout(CALL_TIMEOUT, self.exchange(url, &mut result)).await;
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(error)) => result.error = Some(error),
            Err(_) => result.error = Some(format!("no answer within {CALL_TIMEOUT:?}")),
        }
        result.ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        result
    }

    /// Connects, handshakes, sends the request and fills `result` as it goes.
    async fn exchange(&self, url: &str, result: &mut CallResult) -> Result<(), String> {
        let uri: Uri = url.parse().map_err(|e| format!("bad url `{url}`: {e}"))?;
        if uri.scheme_str() != Some("https") {
            return Err(format!("url `{url}` is not https"));
        }
        let host = uri
            .host()
            .ok_or_else(|| format!("url `{url}` has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();

        // A new TCP connection per call, so each call shows the certificates in force now.
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("connect to {host}:{port}: {e}"))?;
        // Only sent as SNI (and not at all for an IP): the server is identified by its
        // SPIFFE ID, which the verifier checks against the allow-list.
        let name = ServerName::try_from(host.clone()).map_err(|e| format!("server name: {e}"))?;
        let tls = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls handshake: {}", describe_io_error(&e)))?;

        let (_, session) = tls.get_ref();
        let chain = session.peer_certificates().unwrap_or_default();
        result.server_id = peer_spiffe_id(chain).map(|id| id.to_string());
        result.server_serial = chain.first().and_then(serial_hex);

        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("http handshake: {e}"))?;
        let driver = tokio::spawn(connection);
        let request = Request::get(path)
            .header(hyper::header::HOST, format!("{host}:{port}"))
            .header(hyper::header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        // With TLS 1.3 a server that refuses our certificate says so only now, after the
        // client side of the handshake has completed.
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = response.status();
        result.status = Some(status.as_u16());
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        driver.abort();

        match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(reply) => {
                let field =
                    |name: &str| reply.get(name).and_then(|v| v.as_str()).map(str::to_owned);
                result.client_id = field("client_id");
                result.client_serial = field("client_serial");
                result.response = Some(reply);
            }
            Err(_) if status == hyper::StatusCode::OK => {
                return Err(format!(
                    "answer is not json: {}",
                    String::from_utf8_lossy(&body)
                ));
            }
            Err(_) => {}
        }
        if status != hyper::StatusCode::OK {
            return Err(format!(
                "status {status}: {}",
                String::from_utf8_lossy(&body).trim()
            ));
        }
        result.ok = true;
        Ok(())
    }
}

/// An I/O error, with the reason of a certificate refusal spelled out instead of rustls's
/// `Debug` of it.
fn describe_io_error(error: &std::io::Error) -> String {
    use rustls::{CertificateError, OtherError};

    match error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(reason)))) => {
            format!("server certificate refused: {reason}")
        }
        _ => error.to_string(),
    }
}
