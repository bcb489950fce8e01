//! The sidecar proxy end to end, with real processes: one agent gives two identities by uid,
//! and `mesh-agent proxy` runs as each of those uids, an inbound proxy in front of an app and
//! an outbound proxy its client talks plaintext to.
//!
//! The MariaDB test needs a server: `eval "$(bash scripts/start-mariadb.sh)"` starts one and
//! sets `MESH_TEST_MARIADB`.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_e2e::{http_get, mesh_agent, metric, output_within, wait_until, Agent, EVENT_TIMEOUT};
use serde_json::Value;
use tempfile::TempDir;

/// The client side: the outbound proxy runs as this uid.
const FRONTEND_UID: u32 = 2101;
const FRONTEND_ID: &str = "spiffe://example.org/web/frontend";
/// The server side: the inbound proxy runs as this uid.
const ORDERS_UID: u32 = 2102;
const ORDERS_ID: &str = "spiffe://example.org/orders/api";
/// An identity no process has.
const STRANGER_ID: &str = "spiffe://example.org/someone/else";

/// Tells how to run the MariaDB test.
const MARIADB_ENV: &str = "MESH_TEST_MARIADB";

/// An agent whose entries give the frontend and orders uids their identities.
fn agent() -> Agent {
    Agent::start(&format!(
        "[[entries]]\nspiffe_id = \"{FRONTEND_ID}\"\nselectors = [\"unix:uid:{FRONTEND_UID}\"]\n\
         [[entries]]\nspiffe_id = \"{ORDERS_ID}\"\nselectors = [\"unix:uid:{ORDERS_UID}\"]\n"
    ))
}

/// One running `mesh-agent proxy`, killed on drop (its log printed if the test is failing).
struct Proxy {
    dir: TempDir,
    log_path: PathBuf,
    child: Option<Child>,
    admin: SocketAddr,
    inbound: Vec<SocketAddr>,
    outbound: Vec<SocketAddr>,
}

impl Proxy {
    /// Starts a proxy as `uid` (and gid `uid`) on `agent`'s Workload API, with listeners
    /// described by `listeners` (`[[inbound]]` / `[[outbound]]` tables; bind port 0), and
    /// waits until its `/ready` answers 200.
    fn start(agent: &Agent, uid: u32, listeners: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("mesh-e2e-proxy-")
            .tempdir()
            .expect("cannot create a temporary directory");
        let config_path = dir.path().join("proxy.toml");
        let log_path = dir.path().join("proxy.log");
        fs::write(
            &config_path,
            format!(
                "socket_path = \"{}\"\nadmin_addr = \"127.0.0.1:0\"\n{listeners}",
                agent.socket().display()
            ),
        )
        .expect("cannot write the proxy config");
        // Only the directory needs opening up: files are created 0644.
        fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("cannot chmod the proxy directory");
        let log = File::create(&log_path).expect("cannot create the proxy log");
        let mut cmd = mesh_agent();
        cmd.arg("proxy")
            .arg("--config")
            .arg(&config_path)
            .args(["--log-format", "json", "--log-level", "info"])
            .stdout(log.try_clone().expect("cannot share the log file"))
            .stderr(log)
            .uid(uid)
            .gid(uid);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let mut proxy = Self {
            dir,
            log_path,
            child: Some(child),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            inbound: Vec::new(),
            outbound: Vec::new(),
        };
        let bound = proxy.wait_for_log("the proxy's listeners to be bound", |line| {
            line["message"] == "proxy listeners bound"
        });
        proxy.admin = bound["admin"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("the bound line names no admin address: {bound}"));
        proxy.inbound = addresses(&bound["inbound"]);
        proxy.outbound = addresses(&bound["outbound"]);
        let admin = proxy.admin;
        wait_until("the proxy's /ready to answer 200", || {
            http_get(admin, "/ready").0 == 200
        });
        proxy
    }

    /// Waits for a JSON log line that satisfies `matches`, and returns it.
    fn wait_for_log(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let text = fs::read_to_string(&self.log_path).unwrap_or_default();
            if let Some(line) = text
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(&matches)
            {
                return line;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    panic!("mesh-agent proxy exited ({status}) while waiting for {what}");
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {EVENT_TIMEOUT:?} waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The value of one metric series on the admin server.
    fn metric(&self, series: &str) -> Option<f64> {
        metric(&http_get(self.admin, "/metrics").1, series)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- mesh-agent proxy log ({}) ----\n{}",
                self.dir.path().display(),
                fs::read_to_string(&self.log_path).unwrap_or_default()
            );
        }
    }
}

/// The addresses of a `[a, b]` Debug list logged as a string.
fn addresses(value: &Value) -> Vec<SocketAddr> {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a logged address list: {value}"));
    text.trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .unwrap_or_else(|e| panic!("bad address `{s}` in {text}: {e}"))
        })
        .collect()
}

/// The body the app answers every request with.
const APP_BODY: &str = "hello from the orders app";

/// A tiny HTTP/1.1 app on loopback, answering every request with [`APP_BODY`]; counts the
/// requests it served. Its thread lives until the test process ends.
struct App {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
}

impl App {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind the app");
        let addr = listener.local_addr().expect("the app has an address");
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&requests);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let counter = Arc::clone(&counter);
                std::thread::spawn(move || serve(stream, &counter));
            }
        });
        Self { addr, requests }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn serve(mut stream: TcpStream, counter: &AtomicUsize) {
    let _ = stream.set_read_timeout(Some(EVENT_TIMEOUT));
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    counter.fetch_add(1, Ordering::SeqCst);
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{APP_BODY}",
        APP_BODY.len()
    );
}

/// Sends a `GET /` and returns whatever comes back before the connection ends (empty when
/// the proxy closes it), or the error that ended it.
fn try_get(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, EVENT_TIMEOUT)?;
    stream.set_read_timeout(Some(EVENT_TIMEOUT))?;
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

fn inbound(forward: SocketAddr, allow: &str, mode: &str) -> String {
    format!(
        "[[inbound]]\nname = \"orders\"\nlisten = \"127.0.0.1:0\"\nforward = \"{forward}\"\n\
         allow = [\"{allow}\"]\nmode = \"{mode}\"\n"
    )
}

fn outbound(connect: SocketAddr, expect: &str) -> String {
    format!(
        "[[outbound]]\nname = \"to-orders\"\nlisten = \"127.0.0.1:0\"\nconnect = \"{connect}\"\n\
         expect = \"{expect}\"\n"
    )
}

const INBOUND_UNAUTHORIZED: &str =
    "proxy_connections_refused_total{listener=\"orders\",direction=\"inbound\",reason=\"unauthorized\"}";

#[test]
fn a_plaintext_request_to_the_outbound_proxy_reaches_the_app_behind_the_inbound_proxy() {
    let agent = agent();
    let app = App::start();
    let server = Proxy::start(
        &agent,
        ORDERS_UID,
        &inbound(app.addr, FRONTEND_ID, "strict"),
    );
    let client = Proxy::start(
        &agent,
        FRONTEND_UID,
        &outbound(server.inbound[0], ORDERS_ID),
    );

    let (status, body) = http_get(client.outbound[0], "/");
    assert_eq!((status, body.as_str()), (200, APP_BODY));
    // A second connection works as well: nothing was a one-off.
    assert_eq!(http_get(client.outbound[0], "/").1, APP_BODY);
    assert_eq!(app.requests(), 2);
    assert_eq!(
        server.metric("proxy_connections_total{listener=\"orders\",direction=\"inbound\"}"),
        Some(2.0)
    );
    assert_eq!(server.metric(INBOUND_UNAUTHORIZED), Some(0.0));
}

#[test]
fn an_outbound_proxy_expecting_another_id_never_lets_the_request_through() {
    let agent = agent();
    let app = App::start();
    let server = Proxy::start(
        &agent,
        ORDERS_UID,
        &inbound(app.addr, FRONTEND_ID, "strict"),
    );
    let client = Proxy::start(
        &agent,
        FRONTEND_UID,
        &outbound(server.inbound[0], STRANGER_ID),
    );

    let answer = try_get(client.outbound[0]);
    assert!(
        answer
            .as_ref()
            .map_or(true, |text| !text.contains(APP_BODY)),
        "the app answered through an outbound proxy expecting {STRANGER_ID}: {answer:?}"
    );
    assert_eq!(app.requests(), 0, "the app saw a request");
    let refused = "proxy_connections_refused_total{listener=\"to-orders\",direction=\"outbound\",reason=\"unauthorized\"}";
    wait_until("the outbound proxy to count the refusal", || {
        client.metric(refused).is_some_and(|v| v >= 1.0)
    });
}

#[test]
fn an_inbound_proxy_whose_allow_omits_the_caller_refuses_it() {
    let agent = agent();
    let app = App::start();
    let server = Proxy::start(
        &agent,
        ORDERS_UID,
        &inbound(app.addr, STRANGER_ID, "strict"),
    );
    let client = Proxy::start(
        &agent,
        FRONTEND_UID,
        &outbound(server.inbound[0], ORDERS_ID),
    );

    let answer = try_get(client.outbound[0]);
    assert!(
        answer
            .as_ref()
            .map_or(true, |text| !text.contains(APP_BODY)),
        "the app answered a caller not in `allow`: {answer:?}"
    );
    assert_eq!(app.requests(), 0, "the app saw a request");
    wait_until("the inbound proxy to count the refusal", || {
        server
            .metric(INBOUND_UNAUTHORIZED)
            .is_some_and(|v| v >= 1.0)
    });
}

/// The address of the MariaDB server from [`MARIADB_ENV`].
///
/// # Panics
///
/// If the variable is unset or not an address: this test never skips silently.
fn mariadb_addr() -> SocketAddr {
    let value = std::env::var(MARIADB_ENV).unwrap_or_else(|_| {
        panic!(
            "{MARIADB_ENV} is not set; start the test server with \
             `eval \"$(bash scripts/start-mariadb.sh)\"` (installs MariaDB if missing) and run \
             the tests again"
        )
    });
    value
        .parse()
        .unwrap_or_else(|e| panic!("{MARIADB_ENV}=`{value}` is not an ip:port address: {e}"))
}

/// The MariaDB command-line client, `mariadb` or else `mysql`.
fn mariadb_client(addr: SocketAddr) -> Command {
    let name = ["mariadb", "mysql"]
        .into_iter()
        .find(|name| {
            Command::new(name)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .unwrap_or_else(|| {
            panic!("neither `mariadb` nor `mysql` runs; install it with scripts/start-mariadb.sh")
        });
    let mut cmd = Command::new(name);
    cmd.stdin(Stdio::null())
        .arg("--no-defaults")
        .arg("--protocol=tcp")
        .arg(format!("--host={}", addr.ip()))
        .arg(format!("--port={}", addr.port()))
        .arg("--connect-timeout=20")
        .args([
            "--user=mesh",
            "--password=mesh",
            "--batch",
            "--skip-column-names",
        ])
        .arg("mesh");
    cmd
}

#[test]
fn mariadb_queries_pass_through_the_proxy_pair_and_strict_inbound_refuses_plaintext() {
    let db = mariadb_addr();
    let agent = agent();
    let server = Proxy::start(
        &agent,
        ORDERS_UID,
        &format!(
            "handshake_timeout = \"2s\"\n{}",
            inbound(db, FRONTEND_ID, "strict")
        ),
    );
    let client = Proxy::start(
        &agent,
        FRONTEND_UID,
        &outbound(server.inbound[0], ORDERS_ID),
    );

    let table = format!("proxied_{}", std::process::id());
    let mut cmd = mariadb_client(client.outbound[0]);
    cmd.arg("-e").arg(format!(
        "DROP TABLE IF EXISTS {table}; \
         CREATE TABLE {table} (id INT PRIMARY KEY, item VARCHAR(40)); \
         INSERT INTO {table} VALUES (1, 'through'), (2, 'the mesh'); \
         SELECT id, item FROM {table} ORDER BY id; \
         DROP TABLE {table};"
    ));
    let out = output_within(cmd, EVENT_TIMEOUT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the client failed through the proxies ({}): {}{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "1\tthrough\n2\tthe mesh\n");

    // The strict inbound takes only mTLS: the client, waiting for MySQL's greeting, gets a
    // closed connection instead.
    let mut direct = mariadb_client(server.inbound[0]);
    direct.arg("-e").arg("SELECT 'plaintext got in'");
    let out = output_within(direct, EVENT_TIMEOUT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && !stdout.contains("plaintext got in"),
        "a plaintext client got through the strict inbound: {stdout}{stderr}"
    );
    assert!(
        stderr.contains("ERROR"),
        "the client did not report an error: {stderr}"
    );
}
