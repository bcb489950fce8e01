//! The example server and client: in process over in-memory SVID sources, and as the real
//! binaries against Workload API servers on Unix sockets. Certificates are made at test time.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use mesh_core::bundle::{Bundle, BundleSet};
use mesh_core::ca::{SvidRequest, X509Issuer};
use mesh_core::tls::{MemorySource, SvidSource};
use mesh_core::x509::X509Svid;
use mesh_core::{KeyPair, KeyType, SpiffeId, TrustDomain};
use spiffe_example_mtls::client::{CallResult, Client};
use spiffe_example_mtls::serial_hex;
use spiffe_example_mtls::server::Server;
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio_stream::wrappers::WatchStream;
use workload_api::{
    server::bind_unix, Caller, JwtBundles, JwtSvid, Provider, ProviderError, ProviderStream,
    ValidatedJwt, WorkloadApiServer, X509Bundles, X509Context,
};

const TTL: Duration = Duration::from_secs(3600);
const SERVER_ID: &str = "spiffe://example.org/rust/server";
const CLIENT_ID: &str = "spiffe://example.org/rust/client";

// === certificates ===

struct Authority {
    issuer: X509Issuer,
}

impl Authority {
    fn new(td: &str) -> Self {
        let td = TrustDomain::new(td).unwrap();
        let key = KeyPair::generate(KeyType::EcP256).unwrap();
        Self {
            issuer: X509Issuer::self_signed(&td, key, SystemTime::now(), TTL).unwrap(),
        }
    }

    fn svid(&self, id: &str) -> X509Svid {
        let request = SvidRequest::new(SpiffeId::new(id).unwrap(), TTL);
        self.issuer
            .issue_with_new_key(&request, KeyType::EcP256, SystemTime::now())
            .unwrap()
    }

    fn bundle(&self) -> Bundle {
        let mut bundle = Bundle::new(self.issuer.trust_domain().clone());
        bundle.add_x509_authority(self.issuer.root().clone());
        bundle
    }

    /// A source holding a new SVID for `id` and the bundles of `trusted`.
    fn source(&self, id: &str, trusted: &[&Authority]) -> Arc<MemorySource> {
        let mut bundles = BundleSet::new();
        for authority in trusted {
            bundles.insert(authority.bundle());
        }
        Arc::new(MemorySource::with(self.svid(id), bundles))
    }

    fn context(&self, id: &str) -> X509Context {
        let svid = self.svid(id);
        X509Context {
            svids: vec![workload_api::X509Svid {
                spiffe_id: id.to_owned(),
                cert_chain: svid.chain_der().into(),
                private_key: svid.private_key_pkcs8_der().to_vec().into(),
                bundle: self.issuer.root().to_vec().into(),
                hint: String::new(),
            }],
            federated_bundles: BTreeMap::new(),
        }
    }
}

fn ids(list: &[&str]) -> Vec<SpiffeId> {
    list.iter().map(|s| SpiffeId::new(s).unwrap()).collect()
}

fn serial_of(source: &MemorySource) -> String {
    serial_hex(source.svid().unwrap().leaf()).unwrap()
}

// === in-process server ===

struct RunningServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl RunningServer {
    async fn start(source: Arc<MemorySource>, allowed: &[&str]) -> Self {
        let server = Server::new(source, &ids(allowed)).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            server
                .serve(listener, async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Self {
            addr,
            stop: Some(stop),
        }
    }

    fn url(&self) -> String {
        format!("https://{}/", self.addr)
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn call(source: Arc<MemorySource>, allowed: &[&str], url: &str) -> CallResult {
    Client::new(source, &ids(allowed)).unwrap().call(url).await
}

// === in-process tests ===

#[tokio::test]
async fn call_reports_both_ids_and_the_serials_of_the_certificates_in_force() {
    let ca = Authority::new("example.org");
    let server_source = ca.source(SERVER_ID, &[&ca]);
    let client_source = ca.source(CLIENT_ID, &[&ca]);
    let server = RunningServer::start(server_source.clone(), &[CLIENT_ID]).await;

    let result = call(client_source.clone(), &[SERVER_ID], &server.url()).await;

    assert!(result.ok, "{result:?}");
    assert_eq!(result.status, Some(200));
    assert_eq!(result.server_id.as_deref(), Some(SERVER_ID));
    assert_eq!(result.server_serial, Some(serial_of(&server_source)));
    assert_eq!(result.client_id.as_deref(), Some(CLIENT_ID));
    assert_eq!(result.client_serial, Some(serial_of(&client_source)));
    let reply = result.response.unwrap();
    assert_eq!(reply["server"], "rust");
    assert_eq!(reply["server_id"], SERVER_ID);
    assert_eq!(
        reply["server_serial"].as_str(),
        Some(serial_of(&server_source).as_str())
    );
}

#[tokio::test]
async fn rotated_svids_show_on_the_next_call_without_rebuilding_anything() {
    let ca = Authority::new("example.org");
    let server_source = ca.source(SERVER_ID, &[&ca]);
    let client_source = ca.source(CLIENT_ID, &[&ca]);
    let server = RunningServer::start(server_source.clone(), &[CLIENT_ID]).await;
    let client = Client::new(client_source.clone(), &ids(&[SERVER_ID])).unwrap();
    let first = client.call(&server.url()).await;
    assert!(first.ok, "{first:?}");

    server_source.set_svid(ca.svid(SERVER_ID));
    client_source.set_svid(ca.svid(CLIENT_ID));
    let second = client.call(&server.url()).await;

    assert!(second.ok, "{second:?}");
    assert_ne!(second.server_serial, first.server_serial);
    assert_ne!(second.client_serial, first.client_serial);
    assert_eq!(second.server_serial, Some(serial_of(&server_source)));
    assert_eq!(second.client_serial, Some(serial_of(&client_source)));
}

#[tokio::test]
async fn server_refuses_a_client_not_in_its_list_after_the_client_verified_it() {
    let ca = Authority::new("example.org");
    let server = RunningServer::start(ca.source(SERVER_ID, &[&ca]), &[CLIENT_ID]).await;
    let intruder = ca.source("spiffe://example.org/intruder", &[&ca]);

    let result = call(intruder, &[SERVER_ID], &server.url()).await;

    assert!(!result.ok);
    assert_eq!(result.status, None, "no HTTP answer: {result:?}");
    assert_eq!(
        result.server_id.as_deref(),
        Some(SERVER_ID),
        "the client had verified the server, so the refusal came from the server"
    );
}

#[tokio::test]
async fn server_refuses_a_client_of_another_trust_domain_even_with_an_allowed_path() {
    let ca = Authority::new("example.org");
    let other = Authority::new("other.org");
    let server = RunningServer::start(
        ca.source(SERVER_ID, &[&ca]),
        &[CLIENT_ID, "spiffe://other.org/rust/client"],
    )
    .await;
    // The foreign client trusts example.org, so it does verify the server.
    let foreign = other.source("spiffe://other.org/rust/client", &[&other, &ca]);

    let result = call(foreign, &[SERVER_ID], &server.url()).await;

    assert!(!result.ok);
    assert_eq!(result.status, None, "{result:?}");
    assert_eq!(result.server_id.as_deref(), Some(SERVER_ID));
}

#[tokio::test]
async fn client_refuses_a_server_not_in_its_list() {
    let ca = Authority::new("example.org");
    let server = RunningServer::start(ca.source(SERVER_ID, &[&ca]), &[CLIENT_ID]).await;

    let result = call(
        ca.source(CLIENT_ID, &[&ca]),
        &["spiffe://example.org/go/server"],
        &server.url(),
    )
    .await;

    assert!(!result.ok);
    assert_eq!(result.server_id, None);
    let error = result.error.unwrap();
    assert!(
        error.contains("tls handshake")
            && error.contains(&format!("peer `{SERVER_ID}` is not authorized")),
        "{error}"
    );
}

#[tokio::test]
async fn plaintext_and_unknown_paths_get_no_successful_answer() {
    let ca = Authority::new("example.org");
    let server = RunningServer::start(ca.source(SERVER_ID, &[&ca]), &[CLIENT_ID]).await;

    let addr = server.addr;
    let plain = tokio::task::spawn_blocking(move || {
        let mut stream = StdTcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        answer
    })
    .await
    .unwrap();
    assert!(
        !plain.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&plain)
    );
    assert!(!plain.windows(9).any(|w| w == b"server_id"));

    let missing = call(
        ca.source(CLIENT_ID, &[&ca]),
        &[SERVER_ID],
        &format!("{}nothing-here", server.url()),
    )
    .await;
    assert!(!missing.ok);
    assert_eq!(missing.status, Some(404));
}

// === the binaries against Workload API servers ===

struct FakeAgent {
    x509: watch::Sender<X509Context>,
}

#[tonic::async_trait]
impl Provider for FakeAgent {
    async fn watch_x509_context(
        &self,
        _caller: &Caller,
    ) -> Result<ProviderStream<X509Context>, ProviderError> {
        Ok(WatchStream::new(self.x509.subscribe()).map(Ok).boxed())
    }

    async fn watch_x509_bundles(
        &self,
        _caller: &Caller,
    ) -> Result<ProviderStream<X509Bundles>, ProviderError> {
        Err(ProviderError::Internal("not used".to_owned()))
    }

    async fn watch_jwt_bundles(
        &self,
        _caller: &Caller,
    ) -> Result<ProviderStream<JwtBundles>, ProviderError> {
        Err(ProviderError::Internal("not used".to_owned()))
    }

    async fn fetch_jwt_svids(
        &self,
        _caller: &Caller,
        _audience: Vec<String>,
        _spiffe_id: Option<String>,
    ) -> Result<Vec<JwtSvid>, ProviderError> {
        Err(ProviderError::Internal("not used".to_owned()))
    }

    async fn validate_jwt_svid(
        &self,
        _caller: &Caller,
        _audience: &str,
        _token: &str,
    ) -> Result<ValidatedJwt, ProviderError> {
        Err(ProviderError::Internal("not used".to_owned()))
    }
}

/// Serves one identity on a Unix socket; returns the sender that rotates it.
fn fake_agent(path: &Path, first: X509Context) -> watch::Sender<X509Context> {
    let x509 = watch::Sender::new(first);
    let provider = Arc::new(FakeAgent { x509: x509.clone() });
    let listener = bind_unix(path).unwrap();
    tokio::spawn(WorkloadApiServer::new(provider).serve(listener, futures::future::pending()));
    x509
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_listening(port: u16, server: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        assert!(server.try_wait().unwrap().is_none(), "server exited early");
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server not listening on {port}");
}

fn result_lines(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("every stdout line is json"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binaries_follow_the_matrix_contract_across_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new("example.org");
    let server_socket = dir.path().join("server.sock");
    let client_socket = dir.path().join("client.sock");
    let server_agent = fake_agent(&server_socket, ca.context(SERVER_ID));
    let _client_agent = fake_agent(&client_socket, ca.context(CLIENT_ID));
    let port = free_port();

    let server = Command::new(env!("CARGO_BIN_EXE_spiffe-example-server"))
        .env_clear()
        .env(
            "SPIFFE_ENDPOINT_SOCKET",
            format!("unix://{}", server_socket.display()),
        )
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env(
            "ALLOWED_CLIENT_IDS",
            format!("{CLIENT_ID},spiffe://example.org/other"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut server = KillOnDrop(server);
    wait_listening(port, &mut server.0).await;

    let url = format!("https://127.0.0.1:{port}/");
    let client = tokio::process::Command::new(env!("CARGO_BIN_EXE_spiffe-example-client"))
        .arg(&url)
        .env_clear()
        .env(
            "SPIFFE_ENDPOINT_SOCKET",
            format!("unix://{}", client_socket.display()),
        )
        .env("ALLOWED_SERVER_IDS", SERVER_ID)
        .env("REPEAT_FOR_SECONDS", "1.5")
        .env("INTERVAL_MS", "300")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Once the first call is in, rotate the server's SVID while the client keeps calling.
    let mut client = client;
    let mut stdout = tokio::io::BufReader::new(client.stdout.take().unwrap()).lines();
    let mut printed = vec![stdout
        .next_line()
        .await
        .unwrap()
        .expect("a first result line")];
    server_agent.send_replace(ca.context(SERVER_ID));
    while let Some(line) = stdout.next_line().await.unwrap() {
        printed.push(line);
    }
    let status = client.wait().await.unwrap();

    assert_eq!(status.code(), Some(0));
    let lines = result_lines(printed.join("\n").as_bytes());
    assert!(lines.len() >= 3, "{lines:?}");
    for line in &lines {
        assert_eq!(line["client"], "rust");
        assert_eq!(line["url"], url.as_str());
        assert_eq!(line["ok"], true, "{line}");
        assert_eq!(line["status"], 200);
        assert_eq!(line["server_id"], SERVER_ID);
        assert_eq!(line["client_id"], CLIENT_ID);
        assert_eq!(line["response"]["server_serial"], line["server_serial"]);
    }
    let serials: BTreeSet<_> = lines
        .iter()
        .map(|l| l["server_serial"].to_string())
        .collect();
    assert_eq!(
        serials.len(),
        2,
        "the rotation shows without a restart: {serials:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_binary_exits_1_when_a_call_fails_and_2_without_settings() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new("example.org");
    let socket = dir.path().join("client.sock");
    let _agent = fake_agent(&socket, ca.context(CLIENT_ID));
    let closed_port = free_port();

    let failed = tokio::process::Command::new(env!("CARGO_BIN_EXE_spiffe-example-client"))
        .arg(format!("https://127.0.0.1:{closed_port}/"))
        .env_clear()
        .env(
            "SPIFFE_ENDPOINT_SOCKET",
            format!("unix://{}", socket.display()),
        )
        .env("ALLOWED_SERVER_IDS", SERVER_ID)
        .stderr(Stdio::null())
        .output()
        .await
        .unwrap();
    assert_eq!(failed.status.code(), Some(1));
    let lines = result_lines(&failed.stdout);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["ok"], false);
    assert!(lines[0]["error"].as_str().unwrap().contains("connect"));

    let no_list = tokio::process::Command::new(env!("CARGO_BIN_EXE_spiffe-example-client"))
        .arg(format!("https://127.0.0.1:{closed_port}/"))
        .env_clear()
        .env(
            "SPIFFE_ENDPOINT_SOCKET",
            format!("unix://{}", socket.display()),
        )
        .stderr(Stdio::null())
        .output()
        .await
        .unwrap();
    assert_eq!(no_list.status.code(), Some(2));
    assert!(no_list.stdout.is_empty());
}
