//! Harness for the end-to-end tests in `tests/tests/`: starts the real `mesh-agent` binary in a
//! private temporary directory, with its own socket, data directory and admin port, and stops
//! it when the test ends.
//!
//! Every wait is bounded by [`EVENT_TIMEOUT`], which is generous: the tests check that things
//! happen, never how fast.
//!
//! Running them: `cargo test -p mesh-e2e` as root (some tests switch uids), with `openssl` on
//! the path and `MESH_TEST_PYTHON` naming a Python that has py-spiffe; `scripts/setup.sh`
//! installs both and `scripts/test.sh` sets the variable. The harness runs
//! `cargo build -p mesh-agent` once per test binary so the agent under test is never stale;
//! set `MESH_E2E_NO_BUILD=1` to use the binary already in the target directory.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// Trust domain of every test agent.
pub const TRUST_DOMAIN: &str = "example.org";

/// Longest any test waits for an event (an agent start, a log line, a stream update).
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

/// How many of the agent's last log lines a failing test prints.
const LOG_LINES_ON_FAILURE: usize = 200;

/// Set to skip the `cargo build -p mesh-agent` the harness runs once per test binary, and use
/// whatever binary is in the target directory.
pub const NO_BUILD_ENV: &str = "MESH_E2E_NO_BUILD";

/// The `mesh-agent` binary of the profile these tests were built with, built (once per test
/// binary) if it is missing or out of date.
///
/// # Panics
///
/// If the binary cannot be built or found, with the reason.
pub fn agent_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        // The test executable lives in <target>/<profile>/deps/.
        let exe = std::env::current_exe().expect("the test executable has a path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test executable is in <target>/<profile>/deps");
        let binary = profile_dir.join("mesh-agent");
        if std::env::var_os(NO_BUILD_ENV).is_none() {
            build_agent(profile_dir);
        }
        assert!(
            binary.is_file(),
            "{} does not exist; build it with `cargo build -p mesh-agent`",
            binary.display()
        );
        binary
    })
}

/// Runs `cargo build -p mesh-agent` for the profile in `profile_dir`, so the tests never run
/// against a stale agent. A no-op when the binary is current.
fn build_agent(profile_dir: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "mesh-agent",
        "--bin",
        "mesh-agent",
    ])
    .arg("--manifest-path")
    .arg(manifest);
    if let (Some(profile), Some(target_dir)) = (
        profile_dir.file_name().and_then(|p| p.to_str()),
        profile_dir.parent(),
    ) {
        match profile {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        cmd.env("CARGO_TARGET_DIR", target_dir);
    }
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .expect("cannot run cargo to build mesh-agent");
    assert!(
        output.status.success(),
        "`cargo build -p mesh-agent` failed (set {NO_BUILD_ENV}=1 to use the existing binary):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A `mesh-agent` command with no arguments yet.
pub fn mesh_agent() -> Command {
    let mut cmd = Command::new(agent_binary());
    cmd.stdin(Stdio::null());
    // The tools read the socket from the environment when no flag is given; never let the
    // developer's own agent leak in.
    cmd.env_remove("SPIFFE_ENDPOINT_SOCKET");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("MESH_AGENT_") {
            cmd.env_remove(name);
        }
    }
    cmd.env_remove("RUST_LOG");
    cmd
}

/// Runs `cmd` to completion and returns its output; kills it and panics after `timeout`.
///
/// # Panics
///
/// If the command cannot start or does not finish in time.
pub fn output_within(mut cmd: Command, timeout: Duration) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(output) => output.unwrap_or_else(|e| panic!("waiting for {cmd:?}: {e}")),
        Err(_) => {
            signal_pid(pid, libc::SIGKILL);
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
    }
}

/// Sends `signal` to process `pid`.
pub fn signal_pid(pid: u32, signal: i32) {
    let pid = libc::pid_t::try_from(pid).expect("pids fit in pid_t");
    // SAFETY: kill(2) has no memory-safety preconditions; a stale pid only yields ESRCH.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// One running (or stopped) agent in its own temporary directory.
///
/// Dropping it kills the agent; if the test is failing, the end of the agent's log is printed
/// first.
pub struct Agent {
    dir: TempDir,
    config_path: PathBuf,
    socket: PathBuf,
    data_dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    /// Where in the log the current run started.
    run_start: u64,
    admin: Option<SocketAddr>,
}

impl Agent {
    /// Starts an agent whose config file holds the harness's settings (trust domain, socket,
    /// data directory, admin port 0, JSON logs) followed by `config`, and waits until it is
    /// ready. `config` may set more top-level keys (they must come first) and entries.
    ///
    /// # Panics
    ///
    /// If the agent does not become ready within [`EVENT_TIMEOUT`].
    pub fn start(config: &str) -> Self {
        let mut agent = Self::create(config);
        agent.spawn();
        agent
    }

    /// Like [`Agent::start`] but does not start the process.
    ///
    /// # Panics
    ///
    /// If the temporary directory cannot be made.
    pub fn create(config: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("mesh-e2e-")
            .tempdir()
            .expect("cannot create a temporary directory");
        // Tests that switch to other uids need to reach the socket below this directory.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
            .expect("cannot chmod the temporary directory");
        let agent = Self {
            config_path: dir.path().join("agent.toml"),
            socket: dir.path().join("public").join("api.sock"),
            data_dir: dir.path().join("data"),
            log_path: dir.path().join("agent.log"),
            dir,
            child: None,
            run_start: 0,
            admin: None,
        };
        agent.write_config(config);
        agent
    }

    /// Replaces the config file with the harness's settings followed by `config`, atomically
    /// (the agent never reads half a file).
    ///
    /// # Panics
    ///
    /// If the file cannot be written.
    pub fn write_config(&self, config: &str) {
        let text = format!(
            "trust_domain = \"{TRUST_DOMAIN}\"\nsocket_path = \"{}\"\ndata_dir = \"{}\"\n\
             admin_addr = \"127.0.0.1:0\"\nlog_format = \"json\"\nlog_level = \"info,mesh_agent::reload=debug\"\n{config}",
            self.socket.display(),
            self.data_dir.display(),
        );
        let tmp = self.dir.path().join(".agent.toml.tmp");
        fs::write(&tmp, text).expect("cannot write the config file");
        fs::rename(&tmp, &self.config_path).expect("cannot replace the config file");
    }

    /// Starts the agent process (again) and waits until it is ready.
    ///
    /// # Panics
    ///
    /// If it is already running, or does not become ready within [`EVENT_TIMEOUT`].
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "the agent is already running");
        self.run_start = self.log_len();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("cannot open the agent log");
        let child = self
            .run_command()
            .stdout(log.try_clone().expect("cannot share the log file"))
            .stderr(log)
            .spawn()
            .expect("cannot start mesh-agent");
        self.child = Some(child);

        let ready = self.wait_for_log(self.run_start, "the agent to become ready", |line| {
            line["message"] == "mesh-agent ready"
        });
        let admin = ready["admin"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("the ready line names no admin address: {ready}"));
        self.admin = Some(admin);
    }

    /// `mesh-agent run --config <this agent's file>`, not started.
    pub fn run_command(&self) -> Command {
        let mut cmd = mesh_agent();
        cmd.arg("run").arg("--config").arg(&self.config_path);
        cmd
    }

    /// Sends SIGTERM and waits for the agent to exit.
    ///
    /// # Panics
    ///
    /// If it is not running or does not exit within [`EVENT_TIMEOUT`].
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the agent is not running");
        signal_pid(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("cannot wait for the agent") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                // The guard's drop prints the log.
                panic!("the agent did not exit within {EVENT_TIMEOUT:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` to the running agent.
    ///
    /// # Panics
    ///
    /// If it is not running.
    pub fn signal(&self, signal: i32) {
        let child = self.child.as_ref().expect("the agent is not running");
        signal_pid(child.id(), signal);
    }

    /// The Workload API endpoint, `unix:///…/api.sock`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The Workload API socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The config file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The 1-based line of the config file that contains `needle`.
    ///
    /// # Panics
    ///
    /// If no line does.
    pub fn config_line_of(&self, needle: &str) -> usize {
        let text = fs::read_to_string(&self.config_path).expect("cannot read the config file");
        text.lines()
            .position(|line| line.contains(needle))
            .map(|i| i + 1)
            .unwrap_or_else(|| panic!("no line of the config file contains `{needle}`"))
    }

    /// The agent's private temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The admin server's address of the current run.
    ///
    /// # Panics
    ///
    /// If the agent never became ready.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.expect("the agent has not been started")
    }

    /// Everything the agent logged so far, over all its runs.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The current length of the log, to wait for lines written after now.
    pub fn log_len(&self) -> u64 {
        fs::metadata(&self.log_path).map_or(0, |m| m.len())
    }

    /// Log lines (JSON objects) written at or after byte `since`.
    pub fn log_lines_since(&self, since: u64) -> Vec<Value> {
        let mut text = String::new();
        if let Ok(mut file) = File::open(&self.log_path) {
            let _ = std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(since));
            let _ = file.read_to_string(&mut text);
        }
        text.lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Waits for a log line written at or after byte `since` that satisfies `matches`, and
    /// returns it.
    ///
    /// # Panics
    ///
    /// If the agent exits, or no such line appears within [`EVENT_TIMEOUT`]; the message
    /// names `what` and includes the log.
    pub fn wait_for_log(
        &mut self,
        since: u64,
        what: &str,
        matches: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            if let Some(line) = self.log_lines_since(since).into_iter().find(&matches) {
                return line;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    panic!("mesh-agent exited ({status}) while waiting for {what}");
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {EVENT_TIMEOUT:?} waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET path` on the admin server; returns the status and body.
    ///
    /// # Panics
    ///
    /// If the request fails.
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin_addr(), path)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let shown = &lines[lines.len().saturating_sub(LOG_LINES_ON_FAILURE)..];
            eprintln!(
                "---- mesh-agent log ({}, last {} of {} lines) ----\n{}",
                self.log_path.display(),
                shown.len(),
                lines.len(),
                shown.join("\n")
            );
        }
    }
}

/// The value of the metric line that starts with `series ` (name plus labels), if any.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits until the agent's `/metrics` shows `series` with a value that satisfies `ok`, and
/// returns the value.
///
/// # Panics
///
/// If it does not within [`EVENT_TIMEOUT`].
pub fn wait_for_metric(agent: &Agent, series: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let mut last = None;
    wait_until(&format!("metric {series}"), || {
        last = metric(&agent.admin_get("/metrics").1, series);
        last.is_some_and(&ok)
    });
    last.expect("wait_until returned, so the metric was present")
}

/// A minimal HTTP/1.1 `GET`; returns the status and body.
///
/// # Panics
///
/// If the connection or the response fails.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, EVENT_TIMEOUT)
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    stream
        .set_read_timeout(Some(EVENT_TIMEOUT))
        .expect("set a read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("cannot send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .unwrap_or_else(|e| panic!("cannot read the response from {addr}{path}: {e}"));
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("malformed response: {response}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("malformed status line: {head}"));
    (status, body.to_owned())
}

/// Waits until `condition` holds, checking every 20 ms, for at most [`EVENT_TIMEOUT`].
///
/// # Panics
///
/// If it does not hold in time; the message names `what`.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {EVENT_TIMEOUT:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The uid the tests run as.
pub fn current_uid() -> u32 {
    // SAFETY: getuid(2) cannot fail and touches no memory.
    unsafe { libc::getuid() }
}
