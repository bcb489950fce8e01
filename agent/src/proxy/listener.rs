//! Accept loops and the life of one proxied connection, inbound and outbound.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use mesh_core::tls::{peer_spiffe_id, AuthorizeError};
use rustls::CertificateError;
use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::Instrument;

use super::config::InboundMode;
use super::metrics::{ListenerMetrics, Refusal};
use super::relay::{relay, RelayEnd, RelayReport};
use super::stopped;

/// First byte of a TLS record carrying a handshake message (a ClientHello, here).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Timeouts shared by every listener.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timeouts {
    pub handshake: Duration,
    pub idle: Duration,
    pub connect: Duration,
    pub shutdown_grace: Duration,
}

/// What a listener does with each accepted connection.
pub(super) enum Handler {
    /// mTLS (and in permissive mode plaintext) in, plaintext to `forward`.
    Inbound {
        acceptor: TlsAcceptor,
        forward: String,
        mode: InboundMode,
        detect_timeout: Duration,
    },
    /// Plaintext in, mTLS to `connect`.
    Outbound {
        connector: TlsConnector,
        connect: String,
        server_name: ServerName<'static>,
    },
}

/// One bound listener and what it needs to serve.
pub(super) struct Listener {
    pub name: String,
    pub socket: TcpListener,
    pub handler: Handler,
    pub max_connections: usize,
    pub metrics: Arc<ListenerMetrics>,
}

/// Accepts until `shutdown` turns true, then gives open connections `shutdown_grace` to end
/// and drops the rest.
pub(super) async fn accept_loop(
    listener: Listener,
    timeouts: Timeouts,
    mut shutdown: watch::Receiver<bool>,
) {
    let Listener {
        name,
        socket,
        handler,
        max_connections,
        metrics,
    } = listener;
    let handler = Arc::new(handler);
    let limit = Arc::new(Semaphore::new(max_connections));
    let mut tasks = JoinSet::new();
    let local = socket.local_addr().ok();
    tracing::info!(listener = %name, addr = ?local, "proxy listener accepting");

    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = stopped(&mut shutdown) => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            accepted = socket.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    // Usually out of file descriptors; back off instead of spinning.
                    tracing::warn!(listener = %name, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            metrics.refused(Refusal::Limit);
            tracing::warn!(listener = %name, client.addr = %peer, max_connections, "connection limit reached; closing");
            drop(stream);
            continue;
        };
        let guard = metrics.accepted();
        let handler = Arc::clone(&handler);
        let metrics = Arc::clone(&metrics);
        let span = tracing::debug_span!("proxy_connection", listener = %name, client.addr = %peer);
        tasks.spawn(
            async move {
                serve_connection(stream, &handler, &metrics, timeouts).await;
                drop(guard);
                drop(permit);
            }
            .instrument(span),
        );
    }

    drop(socket);
    let open = tasks.len();
    if open > 0 {
        tracing::info!(listener = %name, open, grace = ?timeouts.shutdown_grace, "waiting for open connections");
        let drained = tokio::time::timeout(timeouts.shutdown_grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(listener = %name, dropped = tasks.len(), "closing connections still open after the grace period");
            tasks.abort_all();
        }
    }
    tracing::info!(listener = %name, "proxy listener stopped");
}

async fn serve_connection(
    stream: TcpStream,
    handler: &Handler,
    metrics: &ListenerMetrics,
    timeouts: Timeouts,
) {
    // Small requests must not wait for Nagle's algorithm on either hop.
    let _ = stream.set_nodelay(true);
    match handler {
        Handler::Inbound {
            acceptor,
            forward,
            mode,
            detect_timeout,
        } => {
            if *mode == InboundMode::Permissive {
                match detect(&stream, *detect_timeout).await {
                    Detected::Tls => {}
                    Detected::Plaintext => {
                        metrics.plaintext();
                        tracing::debug!("plaintext connection on a permissive listener");
                        let mut client = stream;
                        if let Some(mut app) = dial(forward, metrics, timeouts).await {
                            finish(relay(&mut client, &mut app, timeouts.idle).await, metrics);
                        }
                        return;
                    }
                    Detected::Closed => return,
                }
            }
            let handshake = tokio::time::timeout(timeouts.handshake, acceptor.accept(stream));
            let Some(mut tls) = handshake_outcome(handshake.await, metrics) else {
                return;
            };
            let peer = peer_spiffe_id(tls.get_ref().1.peer_certificates().unwrap_or_default());
            tracing::debug!(peer.spiffe_id = ?peer.as_ref().map(|p| p.as_str()), "inbound peer authorized");
            if let Some(mut app) = dial(forward, metrics, timeouts).await {
                finish(relay(&mut tls, &mut app, timeouts.idle).await, metrics);
            }
        }
        Handler::Outbound {
            connector,
            connect,
            server_name,
        } => {
            let mut app = stream;
            let Some(remote) = dial(connect, metrics, timeouts).await else {
                return;
            };
            let handshake = tokio::time::timeout(
                timeouts.handshake,
                connector.connect(server_name.clone(), remote),
            );
            let Some(mut tls) = handshake_outcome(handshake.await, metrics) else {
                return;
            };
            let peer = peer_spiffe_id(tls.get_ref().1.peer_certificates().unwrap_or_default());
            tracing::debug!(peer.spiffe_id = ?peer.as_ref().map(|p| p.as_str()), "outbound peer authorized");
            finish(relay(&mut app, &mut tls, timeouts.idle).await, metrics);
        }
    }
}

enum Detected {
    Tls,
    Plaintext,
    Closed,
}

/// Tells TLS from plaintext by the client's first byte without consuming it. A client that
/// sends nothing within `wait` is taken for plaintext of a protocol where the server speaks
/// first (MySQL, SMTP): a TLS client always opens with its ClientHello.
async fn detect(stream: &TcpStream, wait: Duration) -> Detected {
    let mut first = [0u8; 1];
    match tokio::time::timeout(wait, stream.peek(&mut first)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Detected::Closed,
        Ok(Ok(_)) if first[0] == TLS_HANDSHAKE_RECORD => Detected::Tls,
        Ok(Ok(_)) | Err(_) => Detected::Plaintext,
    }
}

/// Opens the TCP connection to a `forward` or `connect` address.
async fn dial(addr: &str, metrics: &ListenerMetrics, timeouts: Timeouts) -> Option<TcpStream> {
    let result = tokio::time::timeout(timeouts.connect, TcpStream::connect(addr)).await;
    let error = match result {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            return Some(stream);
        }
        Ok(Err(e)) => e,
        Err(_) => io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
    };
    metrics.refused(Refusal::Upstream);
    tracing::warn!(upstream = addr, %error, "cannot reach upstream; closing the connection");
    None
}

/// Unwraps a finished handshake, or counts and logs why it failed.
fn handshake_outcome<S>(
    result: Result<io::Result<S>, tokio::time::error::Elapsed>,
    metrics: &ListenerMetrics,
) -> Option<S> {
    let error = match result {
        Ok(Ok(stream)) => return Some(stream),
        Ok(Err(e)) => e,
        Err(_) => {
            metrics.refused(Refusal::Handshake);
            tracing::warn!("tls handshake timed out");
            return None;
        }
    };
    if is_authorization_refusal(&error) {
        // The verifier already logged the peer's SPIFFE ID and the rule.
        metrics.refused(Refusal::Unauthorized);
    } else {
        metrics.refused(Refusal::Handshake);
        tracing::warn!(%error, "tls handshake failed");
    }
    None
}

fn is_authorization_refusal(error: &io::Error) -> bool {
    let Some(rustls::Error::InvalidCertificate(CertificateError::Other(other))) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return false;
    };
    other.0.downcast_ref::<AuthorizeError>().is_some()
}

fn finish(report: RelayReport, metrics: &ListenerMetrics) {
    metrics.bytes(report.a_to_b, report.b_to_a);
    match report.end {
        RelayEnd::Closed => {
            tracing::debug!(
                received = report.a_to_b,
                sent = report.b_to_a,
                "connection closed"
            );
        }
        RelayEnd::Idle => {
            metrics.idle_closed();
            tracing::debug!(
                received = report.a_to_b,
                sent = report.b_to_a,
                "idle connection closed"
            );
        }
        RelayEnd::Failed(error) => {
            tracing::debug!(%error, received = report.a_to_b, sent = report.b_to_a, "connection failed");
        }
    }
}
