//! The kubelet client and the attestor against a real local HTTPS server, with certificates
//! made at test time.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::*;
use crate::selector::{Selector, SelectorSet};

const ORDERS_UID: &str = "5c2d1f8e-7a3b-4e6d-9c1a-2b3f4e5d6c7a";
const ORDERS_PROXY: &str = "4f5e6d7c8b9a0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796";
const NEW_UID: &str = "0a9b8c7d-6e5f-4a3b-9c2d-1e0f9a8b7c6d";
const NEW_ID: &str = "5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c";

fn fixture() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/k8s/pods.json");
    std::fs::read_to_string(path).unwrap()
}

/// The fixture with one more pod, `late`, whose container has `NEW_ID`: what the kubelet
/// reports once a just-started container shows up.
fn fixture_with_new_pod() -> String {
    let mut list: serde_json::Value = serde_json::from_str(&fixture()).unwrap();
    let pod = serde_json::json!({
        "metadata": {"name": "late", "namespace": "batch", "uid": NEW_UID,
                     "labels": {"app": "late"}},
        "spec": {"containers": [{"name": "work", "image": "registry.local/work:1"}],
                 "serviceAccountName": "worker"},
        "status": {"phase": "Running", "containerStatuses": [{
            "name": "work", "ready": true, "restartCount": 0,
            "image": "registry.local/work:1", "imageID": "",
            "containerID": format!("containerd://{NEW_ID}")}]}
    });
    list["items"].as_array_mut().unwrap().push(pod);
    list.to_string()
}

/// A CA and a kubelet serving certificate for 127.0.0.1 that it signed.
struct Pki {
    ca_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "test kubelet ca");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "node-1");
    let cert = params.signed_by(&key, &ca).unwrap();
    Pki {
        ca_pem: ca.pem(),
        chain: vec![cert.der().clone(), ca.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    }
}

/// What the test kubelet saw and what it answers.
#[derive(Default)]
struct Script {
    /// The `Authorization` header of each request, in order.
    seen: Vec<Option<String>>,
    /// The bearer token accepted; anything else gets 401.
    token: Option<String>,
    /// Bodies to serve, one per request; the last is served again once the others are used.
    bodies: VecDeque<String>,
    /// Answer with `Connection: close` and close the connection after each answer.
    close_after_answer: bool,
}

/// A kubelet stand-in serving `GET /pods` over HTTPS (or HTTP).
struct TestKubelet {
    addr: SocketAddr,
    pki: Pki,
    script: Arc<Mutex<Script>>,
    task: JoinHandle<()>,
}

impl Drop for TestKubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestKubelet {
    async fn start(tls: bool, token: Option<&str>, bodies: Vec<String>) -> Self {
        let pki = pki();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let script = Arc::new(Mutex::new(Script {
            seen: Vec::new(),
            token: token.map(str::to_owned),
            bodies: bodies.into(),
            close_after_answer: false,
        }));
        let acceptor = tls.then(|| {
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(pki.chain.clone(), pki.key.clone_key())
                .unwrap();
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let served = Arc::clone(&script);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let script = Arc::clone(&served);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(Arc::clone(&script), req));
                    let http = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        // A client that refuses the certificate ends the handshake; no request.
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(tcp).await {
                                let _ = http.serve_connection(TokioIo::new(tls), service).await;
                            }
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(tcp), service).await;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            pki,
            script,
            task,
        }
    }

    fn url(&self, scheme: &str) -> KubeletUrl {
        format!("{scheme}://{}", self.addr).parse().unwrap()
    }

    fn seen(&self) -> Vec<Option<String>> {
        self.script.lock().unwrap().seen.clone()
    }

    fn accept_token(&self, token: &str) {
        self.script.lock().unwrap().token = Some(token.to_owned());
    }

    fn close_after_answer(&self) {
        self.script.lock().unwrap().close_after_answer = true;
    }
}

async fn answer(
    script: Arc<Mutex<Script>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap().to_owned());
    let mut script = script.lock().unwrap();
    script.seen.push(auth.clone());
    let close = script.close_after_answer;
    let respond = |status, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if close {
            r.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        Ok(r)
    };
    if req.uri().path() != "/pods" {
        return respond(StatusCode::NOT_FOUND, "404 page not found".into());
    }
    if let Some(token) = &script.token {
        if auth.as_deref() != Some(format!("Bearer {token}").as_str()) {
            return respond(StatusCode::UNAUTHORIZED, "Unauthorized".into());
        }
    }
    let body = if script.bodies.len() > 1 {
        script.bodies.pop_front().unwrap()
    } else {
        script.bodies.front().cloned().unwrap_or_default()
    };
    respond(StatusCode::OK, body)
}

/// A directory holding a token file and a CA file.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new(token: &str, ca_pem: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), format!("{token}\n")).unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca_pem).unwrap();
        Self { dir }
    }

    fn token(&self) -> PathBuf {
        self.dir.path().join("token")
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    fn options(&self, url: KubeletUrl) -> KubeletOptions {
        let mut o = KubeletOptions::new(url);
        o.token_path = self.token();
        o.ca_path = self.ca();
        o.cache_for = Duration::from_secs(60);
        o.retry_interval = Duration::from_millis(10);
        o.max_attempts = 3;
        o
    }
}

#[tokio::test]
async fn the_bearer_token_is_sent_and_the_container_is_found() {
    let kubelet = TestKubelet::start(true, Some("tok-1"), vec![fixture()]).await;
    let files = Files::new("tok-1", &kubelet.pki.ca_pem);
    let client = KubeletClient::new(files.options(kubelet.url("https"))).unwrap();

    let found = client.find(ORDERS_UID, ORDERS_PROXY).await.unwrap();

    assert_eq!(found.container_name, "mesh-proxy");
    assert_eq!(found.namespace, "shop");
    assert_eq!(kubelet.seen(), [Some("Bearer tok-1".to_owned())]);
}

#[tokio::test]
async fn a_kubelet_certificate_from_another_ca_is_refused() {
    let kubelet = TestKubelet::start(true, None, vec![fixture()]).await;
    let other = pki();
    let files = Files::new("tok", &other.ca_pem);
    let client = KubeletClient::new(files.options(kubelet.url("https"))).unwrap();

    let err = client.pods().await.unwrap_err();

    assert!(matches!(err, KubeletError::Tls { .. }), "{err}");
    assert!(err.to_string().contains("tls handshake"), "{err}");
    assert!(
        kubelet.seen().is_empty(),
        "no request may reach a kubelet not trusted"
    );
}

#[tokio::test]
async fn a_replaced_ca_file_is_read_again() {
    let kubelet = TestKubelet::start(true, None, vec![fixture()]).await;
    let files = Files::new("tok", &pki().ca_pem);
    let mut options = files.options(kubelet.url("https"));
    options.cache_for = Duration::ZERO;
    let client = KubeletClient::new(options).unwrap();
    assert!(client.pods().await.is_err());

    std::fs::write(files.ca(), &kubelet.pki.ca_pem).unwrap();

    assert_eq!(client.pods().await.unwrap().items.len(), 4);
}

#[tokio::test]
async fn skipping_verification_accepts_any_certificate_and_still_sends_the_token() {
    let kubelet = TestKubelet::start(true, Some("tok"), vec![fixture()]).await;
    let files = Files::new("tok", "");
    let mut options = files.options(kubelet.url("https"));
    options.skip_verification = true;
    options.ca_path = PathBuf::from("/nonexistent/ca.crt");
    let client = KubeletClient::new(options).unwrap();

    assert_eq!(client.pods().await.unwrap().items.len(), 4);
    assert_eq!(kubelet.seen(), [Some("Bearer tok".to_owned())]);
}

#[tokio::test]
async fn a_rotated_token_file_is_used_at_the_next_fetch() {
    let kubelet = TestKubelet::start(true, Some("first"), vec![fixture()]).await;
    let files = Files::new("first", &kubelet.pki.ca_pem);
    let mut options = files.options(kubelet.url("https"));
    options.cache_for = Duration::ZERO;
    let client = KubeletClient::new(options).unwrap();
    client.pods().await.unwrap();

    // The kubelet now takes only the new token, as after a projected token's rotation.
    kubelet.accept_token("second");
    std::fs::write(files.token(), "second\n").unwrap();
    client.pods().await.unwrap();

    assert_eq!(
        kubelet.seen(),
        [
            Some("Bearer first".to_owned()),
            Some("Bearer second".to_owned())
        ]
    );
}

#[tokio::test]
async fn a_kubelet_that_closes_the_connection_after_answering_is_understood() {
    let kubelet = TestKubelet::start(true, Some("tok"), vec![fixture()]).await;
    kubelet.close_after_answer();
    let files = Files::new("tok", &kubelet.pki.ca_pem);
    let mut options = files.options(kubelet.url("https"));
    options.cache_for = Duration::ZERO;
    let client = KubeletClient::new(options).unwrap();

    // The connection can end before or after the response is taken; every order must work.
    for _ in 0..20 {
        assert_eq!(client.pods().await.unwrap().items.len(), 4);
    }
    assert_eq!(kubelet.seen().len(), 20);
}

#[tokio::test]
async fn a_rejected_token_is_reported_with_the_status() {
    let kubelet = TestKubelet::start(true, Some("right"), vec![fixture()]).await;
    let files = Files::new("wrong", &kubelet.pki.ca_pem);
    let client = KubeletClient::new(files.options(kubelet.url("https"))).unwrap();

    let err = client.pods().await.unwrap_err();

    assert!(
        matches!(&err, KubeletError::Status { status, .. } if *status == StatusCode::UNAUTHORIZED),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("401") && text.contains("Unauthorized"),
        "{text}"
    );
    assert!(
        !text.contains("wrong"),
        "the token must not be in the error: {text}"
    );
}

#[tokio::test]
async fn a_container_that_never_appears_is_reported_by_its_id() {
    let kubelet = TestKubelet::start(true, None, vec![fixture()]).await;
    let files = Files::new("tok", &kubelet.pki.ca_pem);
    let client = KubeletClient::new(files.options(kubelet.url("https"))).unwrap();

    let err = client.find(NEW_UID, NEW_ID).await.unwrap_err();

    assert!(
        matches!(&err, KubeletError::ContainerNotFound { attempts: 3, .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(text.contains(NEW_ID) && text.contains(NEW_UID), "{text}");
    // A cached list does not count: each attempt fetched a new one.
    assert_eq!(kubelet.seen().len(), 3);
}

#[tokio::test]
async fn a_container_that_appears_later_is_found_by_fetching_again() {
    let bodies = vec![fixture(), fixture(), fixture_with_new_pod()];
    let kubelet = TestKubelet::start(true, None, bodies).await;
    let files = Files::new("tok", &kubelet.pki.ca_pem);
    let client = KubeletClient::new(files.options(kubelet.url("https"))).unwrap();

    let found = client.find(NEW_UID, NEW_ID).await.unwrap();

    assert_eq!(found.container_name, "work");
    assert_eq!(found.service_account.as_deref(), Some("worker"));
    assert_eq!(kubelet.seen().len(), 3);
}

#[tokio::test]
async fn pod_lists_are_cached_between_lookups() {
    let kubelet = TestKubelet::start(true, None, vec![fixture()]).await;
    let files = Files::new("tok", &kubelet.pki.ca_pem);
    let mut options = files.options(kubelet.url("https"));
    options.cache_for = Duration::from_millis(300);
    let client = KubeletClient::new(options).unwrap();

    for _ in 0..5 {
        client.find(ORDERS_UID, ORDERS_PROXY).await.unwrap();
    }
    assert_eq!(client.fetches(), 1);

    tokio::time::sleep(Duration::from_millis(350)).await;
    client.find(ORDERS_UID, ORDERS_PROXY).await.unwrap();
    assert_eq!(client.fetches(), 2);
    assert_eq!(kubelet.seen().len(), 2);
}

#[tokio::test]
async fn concurrent_lookups_share_one_fetch() {
    let kubelet = TestKubelet::start(true, None, vec![fixture()]).await;
    let files = Files::new("tok", &kubelet.pki.ca_pem);
    let client = Arc::new(KubeletClient::new(files.options(kubelet.url("https"))).unwrap());

    let lookups: Vec<_> = (0..8)
        .map(|_| {
            let client = Arc::clone(&client);
            tokio::spawn(async move { client.find(ORDERS_UID, ORDERS_PROXY).await })
        })
        .collect();
    for lookup in lookups {
        lookup.await.unwrap().unwrap();
    }

    assert_eq!(kubelet.seen().len(), 1);
}

#[tokio::test]
async fn the_read_only_port_gets_no_token() {
    let kubelet = TestKubelet::start(false, None, vec![fixture()]).await;
    let files = Files::new("secret", "");
    let client = KubeletClient::new(files.options(kubelet.url("http"))).unwrap();

    assert_eq!(client.pods().await.unwrap().items.len(), 4);
    assert_eq!(kubelet.seen(), [None]);
}

#[tokio::test]
async fn a_missing_token_file_is_reported_before_connecting() {
    let kubelet = TestKubelet::start(true, None, vec![fixture()]).await;
    let files = Files::new("tok", &kubelet.pki.ca_pem);
    std::fs::remove_file(files.token()).unwrap();
    let client = KubeletClient::new(files.options(kubelet.url("https"))).unwrap();

    let err = client.pods().await.unwrap_err();

    assert!(matches!(err, KubeletError::Token { .. }), "{err}");
    assert!(err.to_string().contains("token"), "{err}");
    assert!(kubelet.seen().is_empty());
}

#[test]
fn a_missing_or_empty_ca_file_is_reported_at_construction() {
    let files = Files::new("tok", "");
    let url = KubeletUrl::localhost();
    let err = KubeletClient::new(files.options(url.clone())).unwrap_err();
    assert!(matches!(err, KubeletError::Ca { .. }), "{err}");
    std::fs::remove_file(files.ca()).unwrap();
    let err = KubeletClient::new(files.options(url)).unwrap_err();
    assert!(err.to_string().contains("ca.crt"), "{err}");
}

#[tokio::test]
async fn an_unreachable_kubelet_is_reported_with_its_url() {
    // Bind and drop a listener to get a port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let files = Files::new("tok", "");
    let url: KubeletUrl = format!("http://127.0.0.1:{port}").parse().unwrap();
    let client = KubeletClient::new(files.options(url)).unwrap();

    let err = client.pods().await.unwrap_err();

    assert!(matches!(err, KubeletError::Connect { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

#[tokio::test]
async fn callers_waiting_on_a_failed_fetch_share_its_failure() {
    let kubelet = TestKubelet::start(true, Some("right"), vec![fixture()]).await;
    let files = Files::new("wrong", &kubelet.pki.ca_pem);
    let mut options = files.options(kubelet.url("https"));
    options.cache_for = Duration::from_millis(300);
    let client = KubeletClient::new(options).unwrap();

    assert!(matches!(
        client.pods().await.unwrap_err(),
        KubeletError::Status { .. }
    ));
    let again = client.pods().await.unwrap_err();
    assert!(
        matches!(again, KubeletError::RecentFailure { .. }),
        "{again}"
    );
    assert!(again.to_string().contains("401"), "{again}");
    assert_eq!(kubelet.seen().len(), 1);

    // Once the failure is older than the cache period, the kubelet is asked again.
    std::fs::write(files.token(), "right").unwrap();
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(client.pods().await.unwrap().items.len(), 4);
}

#[test]
fn kubelet_urls_parse_with_default_ports() {
    let cases = [
        ("https://10.0.0.5", "https://10.0.0.5:10250"),
        ("https://10.0.0.5:10250/", "https://10.0.0.5:10250"),
        ("http://127.0.0.1", "http://127.0.0.1:10255"),
        (
            "https://node-1.cluster.local:8443",
            "https://node-1.cluster.local:8443",
        ),
        ("https://[fd00::5]", "https://[fd00::5]:10250"),
    ];
    for (input, shown) in cases {
        let url: KubeletUrl = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(url.to_string(), shown);
    }
    let v6: KubeletUrl = "https://[fd00::5]".parse().unwrap();
    assert_eq!(v6.host(), "fd00::5");
    for bad in [
        "10.0.0.5:10250",
        "ftp://10.0.0.5",
        "https://10.0.0.5/pods",
        "https://user@10.0.0.5",
        "https://10.0.0.5?x=1",
        "",
    ] {
        let err = bad.parse::<KubeletUrl>().unwrap_err();
        assert!(err.contains(bad), "{err}");
    }
}

#[test]
fn the_default_kubelet_comes_from_the_environment() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    };
    assert_eq!(
        KubeletUrl::from_env(env(&[])).unwrap(),
        KubeletUrl::localhost()
    );
    let both = env(&[("KUBELET_HOST", "10.20.0.11"), ("NODE_NAME", "node-1")]);
    assert_eq!(
        KubeletUrl::from_env(both).unwrap().to_string(),
        "https://10.20.0.11:10250"
    );
    let name = env(&[("KUBELET_HOST", ""), ("NODE_NAME", "node-1")]);
    assert_eq!(
        KubeletUrl::from_env(name).unwrap().to_string(),
        "https://node-1:10250"
    );
    let v6 = env(&[("KUBELET_HOST", "fd00::11")]);
    assert_eq!(
        KubeletUrl::from_env(v6).unwrap().to_string(),
        "https://[fd00::11]:10250"
    );
    let err = KubeletUrl::from_env(env(&[("KUBELET_HOST", "bad host")])).unwrap_err();
    assert!(
        err.contains("KUBELET_HOST") && err.contains("bad host"),
        "{err}"
    );
}

/// A fake `/proc` with one process per cgroup text.
fn fake_proc(processes: &[(u32, String)]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for (pid, text) in processes {
        let dir = root.path().join(pid.to_string());
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("cgroup"), text).unwrap();
    }
    root
}

#[tokio::test]
async fn a_process_in_a_pod_container_gets_its_pod_selectors() {
    let kubelet = TestKubelet::start(true, Some("tok"), vec![fixture()]).await;
    let files = Files::new("tok", &kubelet.pki.ca_pem);
    let uid_ = ORDERS_UID.replace('-', "_");
    let proc = fake_proc(&[
        (
            4242,
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ORDERS_PROXY}.scope\n"
            ),
        ),
        (1, "0::/init.scope\n".to_owned()),
    ]);
    let config = KubernetesConfig {
        kubelet_url: Some(kubelet.url("https")),
        token_path: files.token(),
        ca_path: files.ca(),
        skip_kubelet_verification: false,
        pod_template: true,
    };
    let attestor = KubernetesAttestor::from_config_with_env(&config, |_| None)
        .unwrap()
        .with_proc_root(proc.path());

    let pod = attestor.attest(4242).await.unwrap().unwrap();

    let expected: SelectorSet = [
        "k8s:ns:shop",
        "k8s:sa:orders",
        "k8s:pod-label:app.kubernetes.io/name:orders",
        "k8s:pod-label:app.kubernetes.io/part-of:shop",
        "k8s:pod-label:pod-template-hash:7d9f8b6c5",
        "k8s:container-name:mesh-proxy",
    ]
    .iter()
    .map(|s| s.parse::<Selector>().unwrap())
    .collect();
    assert_eq!(pod.selectors(), expected);

    // A host process is in no pod: no selectors, and the kubelet is not asked.
    assert_eq!(attestor.attest(1).await.unwrap(), None);
    assert_eq!(attestor.kubelet().fetches(), 1);
    let gone = attestor.attest(7).await.unwrap_err();
    assert!(
        matches!(gone, KubernetesError::ProcessGone { pid: 7 }),
        "{gone}"
    );
}

#[test]
fn the_configured_url_wins_over_the_environment() {
    let files = Files::new("tok", "");
    let config = KubernetesConfig {
        kubelet_url: Some("http://10.1.2.3".parse().unwrap()),
        token_path: files.token(),
        ca_path: files.ca(),
        skip_kubelet_verification: false,
        pod_template: false,
    };
    let attestor =
        KubernetesAttestor::from_config_with_env(&config, |_| Some("10.9.9.9".into())).unwrap();
    assert_eq!(
        attestor.kubelet().options().url.to_string(),
        "http://10.1.2.3:10255"
    );
    let config = KubernetesConfig {
        kubelet_url: None,
        skip_kubelet_verification: true,
        ..config
    };
    let attestor =
        KubernetesAttestor::from_config_with_env(&config, |_| Some("10.9.9.9".into())).unwrap();
    assert_eq!(
        attestor.kubelet().options().url.to_string(),
        "https://10.9.9.9:10250"
    );
}

#[test]
fn the_test_process_cgroup_file_reads() {
    let attestor = KubernetesAttestor::new(
        KubeletClient::new(KubeletOptions::new("http://127.0.0.1:1".parse().unwrap())).unwrap(),
    );
    // Whether the tests run in a pod or not, the real file parses without error.
    attestor.container_of(std::process::id()).unwrap();
}
