//! The admin HTTP server: liveness, readiness and Prometheus metrics.
//!
//! - `GET /live`: 200 while the process serves requests at all.
//! - `GET /ready`: 200 once [`Readiness::set_ready`] was called with `true`, 503 before.
//! - `GET /metrics`: the [`Metrics`] in the Prometheus text format.
//!
//! Served with hyper's HTTP/1 server directly: three fixed routes need no router framework.

use std::convert::Infallible;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::metrics::{self, Metrics};

/// Whether the agent is ready to serve workloads; clones share the flag.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// A flag that starts not ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the agent ready (or not ready again, e.g. while shutting down).
    pub fn set_ready(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    /// Whether the agent is ready.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// What the admin server reports on.
#[derive(Debug, Clone, Default)]
pub struct AdminState {
    /// The agent's metrics.
    pub metrics: Metrics,
    /// The agent's readiness.
    pub readiness: Readiness,
}

/// Why the admin server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The address could not be bound.
    #[error("cannot listen on admin address {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// A running admin server.
#[derive(Debug)]
pub struct AdminServer {
    /// The address it listens on (useful when bound to port 0).
    pub local_addr: SocketAddr,
    /// The accept loop; it ends when the shutdown future completes.
    pub task: JoinHandle<()>,
}

/// Binds `addr` and serves the admin endpoints until `shutdown` completes.
///
/// Must be called from within a Tokio runtime.
///
/// # Errors
///
/// [`AdminError::Bind`] if the address cannot be bound.
pub async fn start(
    addr: SocketAddr,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<AdminServer, AdminError> {
    let bind_error = |source| AdminError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let local_addr = listener.local_addr().map_err(bind_error)?;
    tracing::info!(addr = %local_addr, "admin server listening");
    let task = tokio::spawn(serve(listener, state, shutdown));
    Ok(AdminServer { local_addr, task })
}

/// Serves the admin endpoints on `listener` until `shutdown` completes. Connections already
/// accepted finish on their own.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    serve_with(listener, state.metrics, state.readiness, shutdown).await;
}

/// What `/metrics` shows: the Prometheus text of a metrics registry.
pub trait RenderMetrics: Clone + Send + Sync + 'static {
    /// The metrics in the Prometheus text format.
    fn render(&self) -> String;
}

impl RenderMetrics for Metrics {
    fn render(&self) -> String {
        Metrics::render(self)
    }
}

/// Serves `/live`, `/ready` (from `readiness`) and `/metrics` (from `metrics`) on `listener`
/// until `shutdown` completes; the agent and the proxy each pass their own metrics.
pub async fn serve_with<M: RenderMetrics>(
    listener: TcpListener,
    metrics: M,
    readiness: Readiness,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    // Usually out of file descriptors; back off instead of spinning.
                    tracing::warn!(%error, "admin server accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (metrics, readiness) = (metrics.clone(), readiness.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let reply = route(&metrics, &readiness, &req);
                async move { Ok::<_, Infallible>(reply) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = conn.await {
                tracing::debug!(%error, client.addr = %peer, "admin connection ended with an error");
            }
        });
    }
}

fn route<M: RenderMetrics>(
    metrics: &M,
    readiness: &Readiness,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" if readiness.is_ready() => text(StatusCode::OK, "ready\n"),
        "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        "/metrics" => {
            let mut resp = Response::new(Full::new(Bytes::from(metrics.render())));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            resp
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Why a probe of the admin server failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// Connecting, writing or reading failed (or timed out).
    #[error("cannot reach the admin server at {addr}: {source}")]
    Io {
        /// The address probed.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The answer was not an HTTP/1 response.
    #[error("the admin server at {addr} sent a malformed response")]
    Malformed {
        /// The address probed.
        addr: SocketAddr,
    },
}

/// Sends `GET path` to the admin server at `addr` and returns the status code and body. An
/// unspecified address (`0.0.0.0`, `::`) is probed on loopback. Blocks for at most about
/// `timeout` per step; for the CLI and tests.
///
/// # Errors
///
/// A [`ProbeError`] if the server cannot be reached or answers nonsense.
pub fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), ProbeError> {
    let mut target = addr;
    if target.ip().is_unspecified() {
        target.set_ip(match target {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let io = |source| ProbeError::Io { addr, source };
    let mut stream = TcpStream::connect_timeout(&target, timeout).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    let mut raw = Vec::new();
    // A body larger than this is not something the admin server sends.
    stream.take(16 << 20).read_to_end(&mut raw).map_err(io)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or(ProbeError::Malformed { addr })?;
    let status = head
        .lines()
        .next()
        .and_then(|l| {
            l.strip_prefix("HTTP/1.1 ")
                .or_else(|| l.strip_prefix("HTTP/1.0 "))
        })
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or(ProbeError::Malformed { addr })?;
    Ok((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, path: &'static str) -> (u16, String) {
        tokio::task::spawn_blocking(move || probe(addr, path, Duration::from_secs(5)))
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn serves_live_ready_and_metrics() {
        let state = AdminState::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = start("127.0.0.1:0".parse().unwrap(), state.clone(), async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
        let addr = server.local_addr;

        assert_eq!(get(addr, "/live").await, (200, "live\n".to_owned()));
        assert_eq!(get(addr, "/ready").await.0, 503);
        state.readiness.set_ready(true);
        assert_eq!(get(addr, "/ready").await, (200, "ready\n".to_owned()));
        state.readiness.set_ready(false);
        assert_eq!(get(addr, "/ready").await.0, 503);

        state.metrics.svid_issued();
        state
            .metrics
            .record_call("FetchJWTSVID", "OK", Duration::from_millis(2));
        let (status, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(body.contains("\nsvids_issued_total 1\n"), "{body}");
        assert!(
            body.contains("workload_api_calls_total{method=\"FetchJWTSVID\",code=\"OK\"} 1"),
            "{body}"
        );
        assert_eq!(get(addr, "/nope").await.0, 404);

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server.task)
            .await
            .unwrap()
            .unwrap();
        let refused =
            tokio::task::spawn_blocking(move || probe(addr, "/live", Duration::from_secs(1)))
                .await
                .unwrap();
        assert!(matches!(refused, Err(ProbeError::Io { .. })), "{refused:?}");
    }

    #[tokio::test]
    async fn metrics_response_has_the_prometheus_content_type() {
        let server = start(
            "127.0.0.1:0".parse().unwrap(),
            AdminState::default(),
            std::future::pending(),
        )
        .await
        .unwrap();
        let addr = server.local_addr;
        let head = tokio::task::spawn_blocking(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
        .await
        .unwrap();
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        server.task.abort();
    }

    #[tokio::test]
    async fn binding_a_taken_port_fails_with_the_address() {
        let first = start(
            "127.0.0.1:0".parse().unwrap(),
            AdminState::default(),
            std::future::pending(),
        )
        .await
        .unwrap();
        let err = start(
            first.local_addr,
            AdminState::default(),
            std::future::pending(),
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string().contains(&first.local_addr.to_string()),
            "{err}"
        );
        first.task.abort();
    }
}
