//! Kubernetes attestation through the real agent binary: a fake kubelet serves `GET /pods`
//! over HTTPS with a CA made at test time, and the calling process runs inside a real cgroup
//! laid out as the kubelet's cgroupfs driver lays out a pod container
//! (`/kubepods/besteffort/pod<uid>/<container id>` in the cgroup v1 `pids` hierarchy).
//!
//! These tests need root and a writable cgroup v1 `pids` hierarchy at `/sys/fs/cgroup/pids`;
//! without one they fail and say so.

use std::ffi::{CStr, CString};
use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use mesh_e2e::{current_uid, mesh_agent, output_within, Agent, EVENT_TIMEOUT, TRUST_DOMAIN};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};
use tempfile::TempDir;

/// The cgroup v1 hierarchy the test containers are made in.
const CGROUP_ROOT: &str = "/sys/fs/cgroup/pids";
/// The namespace, service account and `app` label of the test pod.
const NAMESPACE: &str = "shop";
const SERVICE_ACCOUNT: &str = "orders";
const APP: &str = "orders";
/// The entry that selects the pod by namespace and service account.
const ORDERS_ID: &str = "spiffe://example.org/shop/orders";

// === the tests ===

#[test]
fn pod_container_gets_the_entry_that_selects_its_namespace_and_service_account() {
    let pod = TestPod::new();
    let cgroup = PodCgroup::create(&pod);
    let kubelet = FakeKubelet::start("kubelet-token-of-the-agent", &pod);
    let files = KubeletFiles::new(&kubelet, "kubelet-token-of-the-agent\n");
    let agent = Agent::start(&format!("{}{}", files.table(&kubelet), orders_entries()));

    // The harness itself is checked first: a process started this way really is in the pod.
    let mut cat = Command::new("cat");
    cat.arg("/proc/self/cgroup");
    cgroup.run_inside(&mut cat);
    let seen = output_within(cat, EVENT_TIMEOUT);
    let expected_line = format!(
        ":pids:/kubepods/besteffort/pod{}/{}",
        pod.uid, pod.container_id
    );
    assert!(
        text(&seen.stdout).contains(&expected_line),
        "a process moved into the cgroup should show `{expected_line}`:\n{}",
        text(&seen.stdout)
    );

    let out = fetch_x509(&agent, Some(&cgroup));
    assert!(
        out.status.success(),
        "the pod container should get an identity:\n{}",
        text(&out.stderr)
    );
    assert_eq!(printed_ids(&out), [ORDERS_ID]);
    let requests = kubelet.requests();
    assert!(
        !requests.is_empty()
            && requests.iter().all(|r| {
                r.line == "GET /pods HTTP/1.1"
                    && r.authorization.as_deref() == Some("Bearer kubelet-token-of-the-agent")
            }),
        "the agent should ask GET /pods with the token from its file (trimmed): {requests:?}"
    );
}

#[test]
fn pod_template_names_a_pod_container_by_namespace_and_service_account() {
    let pod = TestPod::new();
    let cgroup = PodCgroup::create(&pod);
    let kubelet = FakeKubelet::start("template-token", &pod);
    let files = KubeletFiles::new(&kubelet, "template-token");
    // No entries: the pod template is in force by default.
    let agent = Agent::start(&files.table(&kubelet));

    let out = fetch_x509(&agent, Some(&cgroup));

    assert!(
        out.status.success(),
        "the pod template should give the pod container an identity:\n{}",
        text(&out.stderr)
    );
    assert_eq!(
        printed_ids(&out),
        [format!(
            "spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{SERVICE_ACCOUNT}"
        )]
    );
}

#[test]
fn process_outside_the_pod_cgroup_gets_no_identity() {
    let pod = TestPod::new();
    // The pod's cgroup exists and the kubelet lists the pod, but the caller is not in it.
    let _cgroup = PodCgroup::create(&pod);
    let kubelet = FakeKubelet::start("outside-token", &pod);
    let files = KubeletFiles::new(&kubelet, "outside-token");
    let agent = Agent::start(&format!("{}{}", files.table(&kubelet), orders_entries()));

    let out = fetch_x509(&agent, None);

    assert!(
        !out.status.success(),
        "a process outside the pod must not get the pod's identity:\n{}",
        text(&out.stdout)
    );
    assert!(printed_ids(&out).is_empty(), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("no identity issued"),
        "the caller should be told it has no identity:\n{}",
        text(&out.stderr)
    );
    assert!(
        kubelet.requests().is_empty(),
        "a process in no pod container needs no kubelet lookup: {:?}",
        kubelet.requests()
    );
}

#[test]
fn kubelet_refusing_the_token_leaves_the_pod_without_identity_and_the_token_out_of_the_log() {
    let accepted = "the-token-the-kubelet-accepts";
    let wrong = "a-stale-token-from-the-file";
    let pod = TestPod::new();
    let cgroup = PodCgroup::create(&pod);
    let kubelet = FakeKubelet::start(accepted, &pod);
    let files = KubeletFiles::new(&kubelet, wrong);
    let mut agent = Agent::start(&files.table(&kubelet));
    let since = agent.log_len();

    let out = fetch_x509(&agent, Some(&cgroup));

    assert!(
        !out.status.success(),
        "a caller the kubelet cannot describe must not get an identity:\n{}",
        text(&out.stdout)
    );
    assert!(printed_ids(&out).is_empty(), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("401"),
        "the caller should learn that the kubelet refused the agent:\n{}",
        text(&out.stderr)
    );
    let requests = kubelet.requests();
    let expected_header = format!("Bearer {wrong}");
    assert!(
        !requests.is_empty()
            && requests
                .iter()
                .all(|r| r.authorization.as_deref() == Some(expected_header.as_str())),
        "the agent should have sent the token from its file: {requests:?}"
    );
    let warning = agent.wait_for_log(since, "the kubelet error in the log", |line| {
        line["message"] == "cannot fetch the kubelet's pod list"
    });
    let error = warning["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("401") && error.contains(&kubelet.addr.to_string()),
        "the log should name the kubelet and its answer: {warning}"
    );
    let log = agent.log();
    for token in [wrong, accepted] {
        assert!(
            !log.contains(token),
            "the agent's log must never contain a token, found `{token}`"
        );
    }
}

// === helpers ===

/// The entry selecting the test pod by namespace and service account, and one selecting
/// another service account of the same namespace.
fn orders_entries() -> String {
    format!(
        "[[entries]]\nspiffe_id = \"spiffe://example.org/shop/billing\"\n\
         selectors = [\"k8s:ns:{NAMESPACE}\", \"k8s:sa:billing\"]\n\
         [[entries]]\nspiffe_id = \"{ORDERS_ID}\"\n\
         selectors = [\"k8s:ns:{NAMESPACE}\", \"k8s:sa:{SERVICE_ACCOUNT}\"]\n"
    )
}

/// Runs `mesh-agent api fetch x509` against `agent`, inside `cgroup` if one is given.
fn fetch_x509(agent: &Agent, cgroup: Option<&PodCgroup>) -> Output {
    assert_eq!(
        current_uid(),
        0,
        "the kubernetes end-to-end tests make cgroups and must run as root"
    );
    let mut cmd = mesh_agent();
    cmd.args(["api", "fetch", "x509", "--socket-path"])
        .arg(agent.socket())
        .current_dir("/");
    if let Some(cgroup) = cgroup {
        cgroup.run_inside(&mut cmd);
    }
    output_within(cmd, EVENT_TIMEOUT)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The `spiffe_id:` values a `mesh-agent api fetch` printed.
fn printed_ids(out: &Output) -> Vec<String> {
    text(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("spiffe_id: "))
        .map(str::to_owned)
        .collect()
}

/// `n` random bytes as lowercase hex.
fn random_hex(n: usize) -> String {
    let mut bytes = vec![0; n];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("cannot read /dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A pod with one container, with a fresh UID and container ID so tests never share a cgroup.
struct TestPod {
    uid: String,
    container_id: String,
}

impl TestPod {
    fn new() -> Self {
        let h = random_hex(16);
        Self {
            uid: format!(
                "{}-{}-{}-{}-{}",
                &h[..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..]
            ),
            container_id: random_hex(32),
        }
    }

    /// The kubelet's pod list: this pod among another pod of another namespace.
    fn pod_list(&self) -> Value {
        json!({
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {},
            "items": [
                {
                    "metadata": {
                        "name": "billing-5f7c9d-abcde",
                        "namespace": "billing",
                        "uid": "0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e",
                        "labels": {"app": "billing"}
                    },
                    "spec": {
                        "serviceAccountName": "billing",
                        "containers": [{"name": "billing", "image": "registry.local/billing:1"}]
                    },
                    "status": {
                        "phase": "Running",
                        "containerStatuses": [{
                            "name": "billing",
                            "ready": true,
                            "containerID": format!("containerd://{}", random_hex(32))
                        }]
                    }
                },
                {
                    "metadata": {
                        "name": "orders-7d9f8b6c5-x2k4p",
                        "namespace": NAMESPACE,
                        "uid": self.uid,
                        "labels": {"app": APP, "pod-template-hash": "7d9f8b6c5"}
                    },
                    "spec": {
                        "serviceAccountName": SERVICE_ACCOUNT,
                        "containers": [{"name": "orders", "image": "registry.local/shop/orders:2"}]
                    },
                    "status": {
                        "phase": "Running",
                        "containerStatuses": [{
                            "name": "orders",
                            "ready": true,
                            "restartCount": 0,
                            "containerID": format!("containerd://{}", self.container_id)
                        }]
                    }
                }
            ]
        })
    }
}

/// A kubelet stand-in: answers `GET /pods` over HTTPS with a certificate for 127.0.0.1 signed
/// by a CA made at test time, and 401 to any request without the expected bearer token.
struct FakeKubelet {
    addr: SocketAddr,
    ca_pem: String,
    requests: Arc<Mutex<Vec<SeenRequest>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// One request the fake kubelet received.
#[derive(Debug, Clone)]
struct SeenRequest {
    /// The request line, e.g. `GET /pods HTTP/1.1`.
    line: String,
    /// The `Authorization` header, if any.
    authorization: Option<String>,
}

impl FakeKubelet {
    fn start(token: &str, pod: &TestPod) -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "e2e kubelet ca");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key"))
            .expect("self-signed ca");
        let key = KeyPair::generate().expect("kubelet key");
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("kubelet params");
        params.distinguished_name.push(DnType::CommonName, "node-1");
        let cert = params.signed_by(&key, &ca).expect("kubelet certificate");
        let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone(), ca.der().clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("tls versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("kubelet tls config");
        let config = Arc::new(config);

        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake kubelet");
        let addr = listener.local_addr().expect("the fake kubelet's address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let answer = Answer {
            token: token.to_owned(),
            body: pod.pod_list().to_string(),
            requests: Arc::clone(&requests),
        };
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            for tcp in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                // A client that refuses the certificate or hangs up only ends its connection.
                if let Ok(tcp) = tcp {
                    let _ = answer.serve(tcp, Arc::clone(&config));
                }
            }
        });
        Self {
            addr,
            ca_pem: ca.pem(),
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn requests(&self) -> Vec<SeenRequest> {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the fake kubelet answers, and where it records what it saw.
struct Answer {
    token: String,
    body: String,
    requests: Arc<Mutex<Vec<SeenRequest>>>,
}

impl Answer {
    /// Serves one HTTP/1.1 request over TLS on `tcp`, then closes the connection.
    fn serve(&self, tcp: TcpStream, config: Arc<rustls::ServerConfig>) -> io::Result<()> {
        tcp.set_read_timeout(Some(EVENT_TIMEOUT))?;
        tcp.set_write_timeout(Some(EVENT_TIMEOUT))?;
        let connection = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
        let mut tls = rustls::StreamOwned::new(connection, tcp);

        let mut head = Vec::new();
        let mut buf = [0; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tls.read(&mut buf)?;
            if n == 0 || head.len() > 64 * 1024 {
                return Err(io::ErrorKind::InvalidData.into());
            }
            head.extend_from_slice(&buf[..n]);
        }
        let head = String::from_utf8_lossy(&head);
        let mut lines = head.split("\r\n");
        let line = lines.next().unwrap_or_default().to_owned();
        let authorization = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("authorization"))
            .map(|(_, value)| value.trim().to_owned());
        let authorized =
            authorization.as_deref() == Some(format!("Bearer {}", self.token).as_str());
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(SeenRequest {
                line: line.clone(),
                authorization,
            });

        let (status, content_type, body) = if line != "GET /pods HTTP/1.1" {
            ("404 Not Found", "text/plain", "404 page not found")
        } else if !authorized {
            ("401 Unauthorized", "text/plain", "Unauthorized")
        } else {
            ("200 OK", "application/json", self.body.as_str())
        };
        write!(
            tls,
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )?;
        tls.conn.send_close_notify();
        tls.flush()
    }
}

/// The token and CA files the agent reads, in a directory of their own.
struct KubeletFiles {
    dir: TempDir,
}

impl KubeletFiles {
    /// Writes `token` (as is) and the kubelet's CA certificate.
    fn new(kubelet: &FakeKubelet, token: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("mesh-e2e-kubelet-")
            .tempdir()
            .expect("cannot create a temporary directory");
        fs::write(dir.path().join("token"), token).expect("cannot write the token file");
        fs::write(dir.path().join("ca.crt"), &kubelet.ca_pem).expect("cannot write the CA file");
        Self { dir }
    }

    /// The agent's `[kubernetes]` table for `kubelet`.
    fn table(&self, kubelet: &FakeKubelet) -> String {
        format!(
            "[kubernetes]\nkubelet_url = \"{}\"\nca_path = \"{}\"\ntoken_path = \"{}\"\n",
            kubelet.url(),
            self.dir.path().join("ca.crt").display(),
            self.dir.path().join("token").display(),
        )
    }
}

/// The `kubepods` and `kubepods/besteffort` cgroups are shared by the tests running at once:
/// they are made by the first test that needs them and removed (if this process made them)
/// when the last test is done with them.
struct SharedParents {
    users: usize,
    created: Vec<PathBuf>,
}

static SHARED_PARENTS: Mutex<SharedParents> = Mutex::new(SharedParents {
    users: 0,
    created: Vec::new(),
});

/// A pod container's cgroup, `<pids hierarchy>/kubepods/besteffort/pod<uid>/<container id>`;
/// removed (children first) when dropped, also when the test fails.
struct PodCgroup {
    /// The cgroups this guard made, parents first.
    made: Vec<PathBuf>,
    /// Whether this guard counts as a user of the shared parents.
    uses_parents: bool,
    /// The container cgroup's `cgroup.procs`, ready for use between fork and exec.
    procs: CString,
}

impl PodCgroup {
    /// # Panics
    ///
    /// If the cgroup v1 `pids` hierarchy is missing or not writable, saying so.
    fn create(pod: &TestPod) -> Self {
        let root = Path::new(CGROUP_ROOT);
        assert!(
            root.join("cgroup.procs").is_file(),
            "no cgroup v1 `pids` hierarchy is mounted at {CGROUP_ROOT}; the kubernetes \
             end-to-end tests need one, writable, to place processes in pod cgroups (see `mount`)"
        );
        let qos = root.join("kubepods").join("besteffort");
        let mut guard = Self {
            made: Vec::new(),
            uses_parents: false,
            procs: CString::default(),
        };

        {
            let mut shared = SHARED_PARENTS
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for dir in [root.join("kubepods"), qos.clone()] {
                if !dir.is_dir() {
                    make_cgroup(&dir);
                    shared.created.push(dir);
                }
            }
            shared.users += 1;
            guard.uses_parents = true;
        }

        let pod_dir = qos.join(format!("pod{}", pod.uid));
        make_cgroup(&pod_dir);
        guard.made.push(pod_dir.clone());
        let container_dir = pod_dir.join(&pod.container_id);
        make_cgroup(&container_dir);
        guard.made.push(container_dir.clone());
        guard.procs = CString::new(container_dir.join("cgroup.procs").as_os_str().as_bytes())
            .expect("cgroup paths have no NUL byte");
        guard
    }

    /// Makes `cmd`'s process move itself into the container cgroup before it execs.
    fn run_inside(&self, cmd: &mut Command) {
        let procs = self.procs.clone();
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe calls are allowed: `join_cgroup` makes only open(2), write(2) and
        // close(2) calls on a path allocated before the fork, and allocates nothing.
        unsafe {
            cmd.pre_exec(move || join_cgroup(&procs));
        }
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        for dir in self.made.iter().rev() {
            remove_cgroup(dir);
        }
        if self.uses_parents {
            let mut shared = SHARED_PARENTS
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            shared.users -= 1;
            if shared.users == 0 {
                for dir in std::mem::take(&mut shared.created).iter().rev() {
                    remove_cgroup(dir);
                }
            }
        }
    }
}

/// # Panics
///
/// If the cgroup cannot be made, saying that the hierarchy must be writable.
fn make_cgroup(dir: &Path) {
    if let Err(e) = fs::create_dir(dir) {
        panic!(
            "cannot create the cgroup {}: {e}; the kubernetes end-to-end tests need root and a \
             writable cgroup v1 `pids` hierarchy at {CGROUP_ROOT} (see `mount`)",
            dir.display()
        );
    }
}

/// Removes an empty cgroup; a process that just exited may keep it busy for a moment.
fn remove_cgroup(dir: &Path) {
    let mut last = None;
    for _ in 0..50 {
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(e) = last {
        eprintln!("cannot remove the test cgroup {}: {e}", dir.display());
    }
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is `procs` (writing `0`
/// means "the writer").
fn join_cgroup(procs: &CStr) -> io::Result<()> {
    // SAFETY: `procs` is a valid NUL-terminated string that outlives the call.
    let fd = unsafe { libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is open, and the buffer is one valid byte.
    let written = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    let result = if written == 1 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    };
    // SAFETY: `fd` was opened above and is closed once.
    unsafe {
        libc::close(fd);
    }
    result
}
