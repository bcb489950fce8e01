//! The proxy end to end over loopback: identities from an in-process CA, a real HTTP app,
//! outbound and inbound proxies in front of it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use mesh_core::ca::{Ca, CaConfig, SvidRequest};
use mesh_core::clock::ManualClock;
use mesh_core::tls::MemorySource;
use mesh_core::{BundleSet, KeyType, SpiffeId, TrustDomain};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use super::metrics::Refusal;
use super::*;

const TIMEOUT: Duration = Duration::from_secs(10);

/// A CA and workloads with SVIDs from it.
struct Mesh {
    _dir: TempDir,
    ca: Ca,
}

impl Mesh {
    fn new() -> Self {
        let dir = TempDir::new().unwrap();
        let config = CaConfig::new(TrustDomain::new("example.org").unwrap(), dir.path());
        let ca = Ca::open(config, Arc::new(ManualClock::new(SystemTime::now()))).unwrap();
        Self { _dir: dir, ca }
    }

    fn identity(&self, path: &str) -> Arc<MemorySource> {
        let source = Arc::new(MemorySource::new());
        self.renew(&source, path);
        source
    }

    fn renew(&self, source: &MemorySource, path: &str) {
        let request = SvidRequest::new(
            id(&format!("spiffe://example.org/{path}")),
            Duration::from_secs(3600),
        );
        source
            .renew_from_ca(&self.ca, &request, KeyType::EcP256)
            .unwrap();
    }
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::new(s).unwrap()
}

fn base_config() -> ProxyConfig {
    ProxyConfig {
        workload_api: Endpoint::Unix("/nonexistent/api.sock".into()),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        handshake_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(60),
        connect_timeout: Duration::from_secs(5),
        shutdown_grace: Duration::from_secs(1),
        inbound: Vec::new(),
        outbound: Vec::new(),
    }
}

fn inbound(forward: SocketAddr, allow: &[&str], mode: InboundMode) -> InboundConfig {
    InboundConfig {
        name: "app".to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        forward: forward.to_string(),
        allow: allow.iter().map(|s| id(s)).collect(),
        allow_trust_domain: None,
        mode,
        max_connections: 64,
        plaintext_detect_timeout: Duration::from_millis(300),
    }
}

fn outbound(connect: SocketAddr, expect: &str) -> OutboundConfig {
    OutboundConfig {
        name: "to-api".to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        connect: connect.to_string(),
        expect: Some(id(expect)),
        expect_trust_domain: None,
        server_name: None,
        max_connections: 64,
    }
}

/// A started proxy and the switch that stops it.
struct Proxy {
    running: RunningProxy,
    stop: Option<oneshot::Sender<()>>,
}

impl Proxy {
    async fn start(config: ProxyConfig, source: Arc<MemorySource>) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let running = start(config, Identity::Source(source), async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
        let proxy = Self {
            running,
            stop: Some(stop),
        };
        proxy.wait_ready().await;
        proxy
    }

    async fn wait_ready(&self) {
        tokio::time::timeout(TIMEOUT, async {
            while !self.running.readiness.is_ready() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("proxy never became ready");
    }

    fn inbound(&self) -> SocketAddr {
        self.running.inbound[0]
    }

    fn outbound(&self) -> SocketAddr {
        self.running.outbound[0]
    }

    fn listener_metric(&self, name: &str) -> u64 {
        let text = self.running.metrics.render();
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    async fn admin(&self, path: &'static str) -> (u16, String) {
        let addr = self.running.admin;
        tokio::task::spawn_blocking(move || crate::admin::probe(addr, path, TIMEOUT))
            .await
            .unwrap()
            .unwrap()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(TIMEOUT, self.running.wait())
            .await
            .expect("proxy did not stop")
            .unwrap();
    }
}

/// A tiny HTTP/1 app answering `<method> <path> from <x-caller>`.
async fn http_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = service_fn(|req: http::Request<Incoming>| async move {
                    let caller = req
                        .headers()
                        .get("x-caller")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("nobody")
                        .to_owned();
                    let body = format!("{} {} from {caller}", req.method(), req.uri().path());
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// Sends one HTTP/1.1 request with `Connection: close` and returns the status and body.
async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: app\r\nX-Caller: web\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut raw))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no response"))??;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed without a response",
        )
    })?;
    let status = head[9..12].parse().unwrap();
    Ok((status, body.to_owned()))
}

/// An app that reads until the client half-closes, then answers with `reply_len` bytes.
async fn answer_after_eof_app(reply_len: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut request = Vec::new();
                stream.read_to_end(&mut request).await.unwrap();
                let mut reply = format!("got {} bytes;", request.len()).into_bytes();
                reply.resize(reply_len, b'z');
                stream.write_all(&reply).await.unwrap();
                stream.shutdown().await.unwrap();
            });
        }
    });
    addr
}

/// An app that echoes each chunk back as it arrives.
async fn echo_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn echo_round(stream: &mut TcpStream, message: &[u8]) {
    stream.write_all(message).await.unwrap();
    let mut back = vec![0; message.len()];
    tokio::time::timeout(TIMEOUT, stream.read_exact(&mut back))
        .await
        .expect("echo did not come back")
        .unwrap();
    assert_eq!(back, message);
}

/// Reads until EOF; true if the connection was closed without any byte.
async fn closed_without_data(stream: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    match tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut buf)).await {
        Ok(Ok(_)) => buf.is_empty(),
        Ok(Err(_)) => true,
        Err(_) => panic!("connection was not closed"),
    }
}

/// An inbound proxy for `api` in front of `app` and an outbound proxy for `web` towards it.
async fn pair(
    mesh: &Mesh,
    app: SocketAddr,
    allow: &[&str],
    expect: &str,
    client_path: &str,
) -> (Proxy, Proxy) {
    let mut server_config = base_config();
    server_config
        .inbound
        .push(inbound(app, allow, InboundMode::Strict));
    let server = Proxy::start(server_config, mesh.identity("api")).await;
    let mut client_config = base_config();
    client_config
        .outbound
        .push(outbound(server.inbound(), expect));
    let client = Proxy::start(client_config, mesh.identity(client_path)).await;
    (client, server)
}

#[tokio::test]
async fn outbound_and_inbound_pair_carries_http_between_two_identities() {
    let mesh = Mesh::new();
    let app = http_app().await;
    let (client, server) = pair(
        &mesh,
        app,
        &["spiffe://example.org/web"],
        "spiffe://example.org/api",
        "web",
    )
    .await;

    for i in 0..3 {
        let (status, body) = http_get(client.outbound(), &format!("/hello/{i}"))
            .await
            .unwrap();
        assert_eq!(
            (status, body.as_str()),
            (200, format!("GET /hello/{i} from web").as_str())
        );
    }

    assert_eq!(client.admin("/ready").await.0, 200);
    assert_eq!(server.admin("/live").await.0, 200);
    let (status, metrics) = server.admin("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("proxy_connections_total{listener=\"app\",direction=\"inbound\"} 3"),
        "{metrics}"
    );
    assert!(server.listener_metric("proxy_received_bytes_total") > 0);
    client.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn inbound_refuses_a_peer_missing_from_its_allow_list() {
    let mesh = Mesh::new();
    let app = http_app().await;
    let (client, server) = pair(
        &mesh,
        app,
        &["spiffe://example.org/web"],
        "spiffe://example.org/api",
        "batch/job",
    )
    .await;

    let result = http_get(client.outbound(), "/secret").await;
    assert!(
        result.is_err(),
        "an unlisted peer got a response: {result:?}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        server.running.metrics_refused(Refusal::Unauthorized),
        1,
        "{}",
        server.running.metrics.render()
    );
    // With TLS 1.3 the client's handshake is complete before the server checks the client's
    // certificate, so the outbound side sees the refusal as a failed relay, not a handshake.
}

#[tokio::test]
async fn outbound_refuses_a_server_with_an_unexpected_id() {
    let mesh = Mesh::new();
    let app = http_app().await;
    let (client, server) = pair(
        &mesh,
        app,
        &["spiffe://example.org/web"],
        "spiffe://example.org/billing",
        "web",
    )
    .await;

    assert!(http_get(client.outbound(), "/").await.is_err());
    assert_eq!(client.running.metrics_refused(Refusal::Unauthorized), 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.running.metrics_refused(Refusal::Handshake), 1);
}

#[tokio::test]
async fn permissive_inbound_takes_and_counts_plaintext_and_still_takes_mtls() {
    let mesh = Mesh::new();
    let app = http_app().await;
    let mut config = base_config();
    config.inbound.push(inbound(
        app,
        &["spiffe://example.org/web"],
        InboundMode::Permissive,
    ));
    let server = Proxy::start(config, mesh.identity("api")).await;
    let mut client_config = base_config();
    client_config
        .outbound
        .push(outbound(server.inbound(), "spiffe://example.org/api"));
    let client = Proxy::start(client_config, mesh.identity("web")).await;

    let (status, body) = http_get(server.inbound(), "/plain").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "GET /plain from web"));
    let (status, _) = http_get(client.outbound(), "/tls").await.unwrap();
    assert_eq!(status, 200);

    let text = server.running.metrics.render();
    assert!(
        text.contains(
            "proxy_plaintext_connections_total{listener=\"app\",direction=\"inbound\"} 1"
        ),
        "{text}"
    );
    assert!(text.contains("proxy_connections_total{listener=\"app\",direction=\"inbound\"} 2"));
}

#[tokio::test]
async fn permissive_inbound_passes_plaintext_where_the_server_speaks_first() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"220 greeting\r\n").await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(&buf).await.unwrap();
    });
    let mesh = Mesh::new();
    let mut config = base_config();
    config.inbound.push(inbound(
        app,
        &["spiffe://example.org/web"],
        InboundMode::Permissive,
    ));
    let server = Proxy::start(config, mesh.identity("api")).await;

    let mut conn = TcpStream::connect(server.inbound()).await.unwrap();
    let mut greeting = [0u8; 14];
    tokio::time::timeout(TIMEOUT, conn.read_exact(&mut greeting))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&greeting, b"220 greeting\r\n");
    echo_round(&mut conn, b"QUIT").await;
    assert_eq!(server.running.metrics_plaintext(), 1);
}

#[tokio::test]
async fn strict_inbound_closes_plaintext_clients() {
    let mesh = Mesh::new();
    let app = http_app().await;
    let mut config = base_config();
    config.inbound.push(inbound(
        app,
        &["spiffe://example.org/web"],
        InboundMode::Strict,
    ));
    let server = Proxy::start(config, mesh.identity("api")).await;

    assert!(http_get(server.inbound(), "/plain").await.is_err());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.running.metrics_refused(Refusal::Handshake), 1);
    assert_eq!(server.running.metrics_plaintext(), 0);
}

#[tokio::test]
async fn half_close_keeps_the_other_direction_flowing() {
    let mesh = Mesh::new();
    let app = answer_after_eof_app(2_000_000).await;
    let (client, _server) = pair(
        &mesh,
        app,
        &["spiffe://example.org/web"],
        "spiffe://example.org/api",
        "web",
    )
    .await;

    let mut conn = TcpStream::connect(client.outbound()).await.unwrap();
    conn.write_all(&vec![1u8; 300_000]).await.unwrap();
    conn.shutdown().await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(TIMEOUT, conn.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.len(), 2_000_000);
    assert!(reply.starts_with(b"got 300000 bytes;"));
}

#[tokio::test]
async fn rotation_keeps_open_connections_and_new_handshakes_use_the_new_svids() {
    let mesh = Mesh::new();
    let app = echo_app().await;
    let mut server_config = base_config();
    server_config.inbound.push(inbound(
        app,
        &["spiffe://example.org/web"],
        InboundMode::Strict,
    ));
    let api = mesh.identity("api");
    let server = Proxy::start(server_config, api.clone()).await;
    let mut client_config = base_config();
    client_config
        .outbound
        .push(outbound(server.inbound(), "spiffe://example.org/api"));
    let web = mesh.identity("web");
    let client = Proxy::start(client_config, web.clone()).await;

    let mut open = TcpStream::connect(client.outbound()).await.unwrap();
    echo_round(&mut open, b"before rotation").await;

    // A new CA of the same trust domain takes over, and the old one leaves the bundles: a new
    // handshake can only succeed if both proxies present SVIDs of the new CA.
    let next = Mesh::new();
    next.renew(&api, "api");
    next.renew(&web, "web");
    let only_new: BundleSet = [next.ca.current_bundle()].into_iter().collect();
    api.set_bundles(only_new.clone());
    web.set_bundles(only_new);

    echo_round(&mut open, b"after rotation, same connection").await;
    let mut fresh = TcpStream::connect(client.outbound()).await.unwrap();
    echo_round(&mut fresh, b"new connection").await;
    echo_round(&mut open, b"still going").await;
    assert_eq!(server.running.metrics_refused(Refusal::Handshake), 0);
    assert_eq!(server.running.metrics_refused(Refusal::Unauthorized), 0);
}

#[tokio::test]
async fn connection_limit_closes_extra_connections() {
    let mesh = Mesh::new();
    let app = echo_app().await;
    let mut config = base_config();
    let mut listener = inbound(app, &["spiffe://example.org/web"], InboundMode::Permissive);
    listener.max_connections = 1;
    config.inbound.push(listener);
    let server = Proxy::start(config, mesh.identity("api")).await;

    let mut first = TcpStream::connect(server.inbound()).await.unwrap();
    echo_round(&mut first, b"one").await;
    let mut second = TcpStream::connect(server.inbound()).await.unwrap();
    assert!(closed_without_data(&mut second).await);
    assert_eq!(server.running.metrics_refused(Refusal::Limit), 1);
    echo_round(&mut first, b"first still works").await;

    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(server.inbound()).await.unwrap();
    echo_round(&mut third, b"room again").await;
}

#[tokio::test]
async fn idle_connections_are_closed_and_counted() {
    let mesh = Mesh::new();
    let app = echo_app().await;
    let mut config = base_config();
    config.idle_timeout = Duration::from_millis(300);
    config.inbound.push(inbound(
        app,
        &["spiffe://example.org/web"],
        InboundMode::Permissive,
    ));
    let server = Proxy::start(config, mesh.identity("api")).await;

    let mut conn = TcpStream::connect(server.inbound()).await.unwrap();
    echo_round(&mut conn, b"hi").await;
    let started = std::time::Instant::now();
    assert!(closed_without_data(&mut conn).await);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.listener_metric("proxy_idle_timeouts_total"), 1);
}

#[tokio::test]
async fn silent_clients_are_dropped_at_the_handshake_timeout() {
    let mesh = Mesh::new();
    let app = echo_app().await;
    let mut config = base_config();
    config.handshake_timeout = Duration::from_millis(200);
    config.inbound.push(inbound(
        app,
        &["spiffe://example.org/web"],
        InboundMode::Strict,
    ));
    let server = Proxy::start(config, mesh.identity("api")).await;

    let mut conn = TcpStream::connect(server.inbound()).await.unwrap();
    assert!(closed_without_data(&mut conn).await);
    assert_eq!(server.running.metrics_refused(Refusal::Handshake), 1);
}

#[tokio::test]
async fn ready_only_once_the_first_svid_arrives() {
    let mesh = Mesh::new();
    let app = echo_app().await;
    let mut config = base_config();
    config.inbound.push(inbound(
        app,
        &["spiffe://example.org/web"],
        InboundMode::Permissive,
    ));
    let source = Arc::new(MemorySource::new());
    let (_stop, stopped) = oneshot::channel::<()>();
    let running = start(config, Identity::Source(source.clone()), async {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    let proxy = Proxy {
        running,
        stop: None,
    };

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(proxy.admin("/ready").await.0, 503);
    assert_eq!(proxy.admin("/live").await.0, 200);

    mesh.renew(&source, "api");
    proxy.wait_ready().await;
    assert_eq!(proxy.admin("/ready").await.0, 200);
}

#[tokio::test]
async fn a_taken_port_fails_start_naming_the_listener() {
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = base_config();
    let mut l = inbound(
        taken.local_addr().unwrap(),
        &["spiffe://example.org/web"],
        InboundMode::Strict,
    );
    l.listen = taken.local_addr().unwrap();
    config.inbound.push(l);
    let err = start(
        config,
        Identity::Source(Arc::new(MemorySource::new())),
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("listener `app`"), "{err}");
    assert!(
        err.to_string()
            .contains(&taken.local_addr().unwrap().to_string()),
        "{err}"
    );
}

impl RunningProxy {
    fn metrics_refused(&self, reason: Refusal) -> u64 {
        self.metrics.refused_total(reason)
    }

    fn metrics_plaintext(&self) -> u64 {
        self.metrics.plaintext_total()
    }
}
