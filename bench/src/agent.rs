//! Running the real `mesh-agent` binary as a child process, each in its own directory.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};

/// Trust domain of every benchmarked agent.
pub const TRUST_DOMAIN: &str = "bench.test";

/// First uid given to the registration entries that do not match the bench process.
const OTHER_UID_BASE: u32 = 200_000;

/// What an agent is configured with.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// Registration entries in all: one for the bench's own uid, the rest for other uids.
    pub entries: usize,
    /// `ca_ttl`, e.g. `24h`.
    pub ca_ttl: String,
    /// `svid_ttl`, e.g. `1h`.
    pub svid_ttl: String,
    /// `jwt_ttl`, e.g. `5m`.
    pub jwt_ttl: String,
}

impl Default for AgentSpec {
    fn default() -> Self {
        Self {
            entries: 1,
            ca_ttl: "24h".to_owned(),
            svid_ttl: "1h".to_owned(),
            jwt_ttl: "5m".to_owned(),
        }
    }
}

/// A temporary directory holding one agent's config, data dir, socket and log.
pub struct Workdir {
    /// Removed when dropped.
    _dir: tempfile::TempDir,
    /// The config file.
    pub config: PathBuf,
    /// The Workload API socket.
    pub socket: PathBuf,
    /// The agent's standard error (JSON log lines).
    pub log: PathBuf,
}

impl Workdir {
    /// Makes the directory and writes a config for `spec`.
    ///
    /// # Errors
    ///
    /// When the directory or file cannot be written.
    pub fn new(spec: &AgentSpec) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("agent-bench")
            .tempdir()
            .context("cannot make a temporary directory")?;
        let socket = dir.path().join("api.sock");
        let config = dir.path().join("agent.toml");
        let log = dir.path().join("agent.log");
        let text = config_text(spec, dir.path(), &socket, own_uid()?);
        std::fs::write(&config, text)
            .with_context(|| format!("cannot write {}", config.display()))?;
        Ok(Self {
            _dir: dir,
            config,
            socket,
            log,
        })
    }

    /// Starts `binary` on this directory's config; the log is appended to [`Workdir::log`].
    ///
    /// # Errors
    ///
    /// When the process cannot be started.
    pub fn start(&self, binary: &Path) -> anyhow::Result<Agent> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        let mut command = Command::new(binary);
        command
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env_remove("RUST_LOG")
            .env_remove("SPIFFE_ENDPOINT_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        let spawned_wall = SystemTime::now();
        let spawned = Instant::now();
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        Ok(Agent {
            pid: child.id(),
            child,
            socket: self.socket.clone(),
            log: self.log.clone(),
            spawned,
            spawned_wall,
        })
    }
}

/// A running agent; killed when dropped if [`Agent::stop`] was not called.
pub struct Agent {
    child: Child,
    /// The process id.
    pub pid: u32,
    /// Its Workload API socket.
    pub socket: PathBuf,
    /// Its log file.
    pub log: PathBuf,
    /// When it was spawned (just before the `fork`).
    pub spawned: Instant,
    /// The same instant on the wall clock, to compare with log timestamps.
    pub spawned_wall: SystemTime,
}

impl Agent {
    /// Whether the process has exited; `Some` with a description if so.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!("mesh-agent exited with {status}")),
            Ok(None) => None,
            Err(error) => Some(format!("cannot wait for mesh-agent: {error}")),
        }
    }

    /// Sends SIGTERM and waits up to five seconds for a clean exit, then kills.
    ///
    /// # Errors
    ///
    /// When the process cannot be signalled or waited for.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let pid = libc::pid_t::try_from(self.pid).context("pid out of range")?;
        // SAFETY: kill(2) takes two integers and touches no memory of ours; the pid is our
        // own child, which cannot have been reaped (and its pid reused) before the wait below.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        if rc != 0 {
            bail!(
                "cannot signal mesh-agent {pid}: {}",
                std::io::Error::last_os_error()
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.child.kill()?;
        self.child.wait()?;
        bail!("mesh-agent {pid} did not stop within 5 s of SIGTERM; killed it")
    }

    /// The memory figures of the process now.
    ///
    /// # Errors
    ///
    /// When `/proc/<pid>/status` cannot be read or lacks a field.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        let path = format!("/proc/{}/status", self.pid);
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        Memory::parse(&text).with_context(|| format!("{path} lacks VmRSS, VmHWM or Threads"))
    }

    /// CPU time (user + system) the process has used so far.
    ///
    /// # Errors
    ///
    /// When `/proc/<pid>/stat` cannot be read or parsed.
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        let path = format!("/proc/{}/stat", self.pid);
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        let ticks = parse_cpu_ticks(&text).with_context(|| format!("{path} is malformed"))?;
        Ok(Duration::from_secs_f64(
            ticks as f64 / clock_ticks_per_second(),
        ))
    }

    /// The last `lines` lines of the log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Memory figures of a process from `/proc/<pid>/status`, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// Resident set size now.
    pub rss_kib: u64,
    /// Peak resident set size.
    pub hwm_kib: u64,
    /// Number of threads.
    pub threads: u64,
}

impl Memory {
    fn parse(status: &str) -> Option<Self> {
        let field = |name: &str| {
            status.lines().find_map(|line| {
                let rest = line.strip_prefix(name)?.strip_prefix(':')?;
                rest.split_whitespace().next()?.parse::<u64>().ok()
            })
        };
        Some(Self {
            rss_kib: field("VmRSS")?,
            hwm_kib: field("VmHWM")?,
            threads: field("Threads")?,
        })
    }
}

/// utime + stime (fields 14 and 15) of `/proc/<pid>/stat`, in clock ticks.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses; fields after it follow the
    // last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3, so field N is at index N - 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf(3) reads a system constant and touches no memory of ours.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// The uid this process runs as.
///
/// # Errors
///
/// When `/proc/self` cannot be read.
pub fn own_uid() -> anyhow::Result<u32> {
    Ok(std::fs::metadata("/proc/self")
        .context("cannot read /proc/self")?
        .uid())
}

fn config_text(spec: &AgentSpec, dir: &Path, socket: &Path, uid: u32) -> String {
    let mut text = format!(
        "trust_domain = \"{TRUST_DOMAIN}\"\n\
         socket_path = \"{}\"\n\
         data_dir = \"{}\"\n\
         admin_addr = \"127.0.0.1:0\"\n\
         log_format = \"json\"\n\
         log_level = \"info\"\n\
         svid_ttl = \"{}\"\n\
         jwt_ttl = \"{}\"\n\
         ca_ttl = \"{}\"\n",
        socket.display(),
        dir.join("data").display(),
        spec.svid_ttl,
        spec.jwt_ttl,
        spec.ca_ttl,
    );
    let _ = write!(
        text,
        "\n[[entries]]\nspiffe_id = \"spiffe://{TRUST_DOMAIN}/bench\"\nselectors = [\"unix:uid:{uid}\"]\n"
    );
    for i in 1..spec.entries {
        let other = OTHER_UID_BASE + u32::try_from(i).unwrap_or(u32::MAX - OTHER_UID_BASE);
        let _ = write!(
            text,
            "\n[[entries]]\nspiffe_id = \"spiffe://{TRUST_DOMAIN}/other/{i}\"\nselectors = [\"unix:uid:{other}\"]\n"
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read_in_kib() {
        let status = "Name:\tmesh-agent\nVmHWM:\t   12345 kB\nVmRSS:\t    9876 kB\nThreads:\t7\n";
        assert_eq!(
            Memory::parse(status),
            Some(Memory {
                rss_kib: 9876,
                hwm_kib: 12345,
                threads: 7
            })
        );
        assert_eq!(Memory::parse("VmRSS:\t1 kB\n"), None);
    }

    #[test]
    fn cpu_ticks_skip_a_command_name_with_spaces_and_parentheses() {
        let stat = "42 (a) b (c) S 1 42 42 0 -1 4194304 100 0 0 0 17 5 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some(22));
        assert_eq!(parse_cpu_ticks("42 (a) S 1"), None);
    }

    #[test]
    fn config_lists_one_matching_entry_and_the_rest_for_other_uids() {
        let spec = AgentSpec {
            entries: 3,
            ..AgentSpec::default()
        };
        let text = config_text(&spec, Path::new("/d"), Path::new("/d/api.sock"), 1000);
        assert_eq!(text.matches("[[entries]]").count(), 3);
        assert!(text.contains("selectors = [\"unix:uid:1000\"]"), "{text}");
        assert!(text.contains("unix:uid:200001") && text.contains("unix:uid:200002"));
        assert!(text.contains("socket_path = \"/d/api.sock\""));
    }
}
