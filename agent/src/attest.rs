//! Unix workload attestation: turns a calling process into selectors.
//!
//! Given a pid and the uid/gid the kernel reported for the caller's socket, the [`Attestor`]
//! reads `/proc/<pid>` and produces:
//!
//! - `unix:uid:N` and `unix:user:NAME` for the effective user,
//! - `unix:gid:N` and `unix:group:NAME` for the primary group and every supplementary group,
//! - `unix:path:/abs/exe` for the executable, when the path still names the file the process
//!   runs,
//! - `unix:sha256:HEX` of the executable, when it is no larger than the configured limit.
//!
//! The executable is read through `/proc/<pid>/exe`, which opens the file the process actually
//! runs even if its path has since been replaced or deleted. Digests are cached by device,
//! inode, size, modification and change time, so each binary is hashed once.
//!
//! The process start time (field 22 of `/proc/<pid>/stat`) is read before and after
//! attestation; if it changed, the pid was reused mid-way and attestation fails. Callers can
//! compare [`Attestation::start_time`] with [`process_start_time`] later to detect reuse.
//!
//! Only the selector kinds some registration entry uses are worth their cost: names need NSS
//! lookups (files, possibly LDAP), paths a few more `/proc` reads, digests reading the whole
//! executable once. [`Needs`] says which of these parts to carry out; uid and gid selectors
//! come from `/proc/<pid>/status` and are always produced. [`Needs::kubernetes`] asks for the
//! `k8s:` selectors, which the [`KubernetesAttestor`](crate::k8s::KubernetesAttestor) produces
//! (asynchronously, from the kubelet); this attestor ignores it.
//!
//! All functions here block on file I/O (and, for names, possibly on NSS lookups); call them
//! from `tokio::task::spawn_blocking` in async code unless [`Needs::may_block`] is false.

use std::collections::HashMap;
use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use sha2::{Digest, Sha256};

use crate::selector::{Selector, SelectorKind, SelectorSet};

/// Cached digests kept at most; the cache is emptied when it is full.
const MAX_CACHED_DIGESTS: usize = 4096;

/// Why a process could not be attested.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// The process does not exist (any more), or its pid was reused during attestation.
    #[error("process {pid} is gone")]
    ProcessGone {
        /// The pid.
        pid: u32,
    },
    /// The agent may not read the process's information.
    #[error("permission denied reading `{}` of process {pid}", path.display())]
    PermissionDenied {
        /// The pid.
        pid: u32,
        /// The file that could not be read.
        path: PathBuf,
    },
    /// Another I/O error while reading the process's information.
    #[error("cannot read `{}` of process {pid}: {source}", path.display())]
    Io {
        /// The pid.
        pid: u32,
        /// The file that could not be read.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A `/proc` file did not have the expected format.
    #[error("`{}` of process {pid} is malformed: {reason}", path.display())]
    Malformed {
        /// The pid.
        pid: u32,
        /// The file.
        path: PathBuf,
        /// What was expected.
        reason: &'static str,
    },
    /// The process's effective uid or gid is no longer the one its socket was opened with.
    #[error(
        "process {pid} now runs as uid {now_uid} gid {now_gid}, \
         not uid {socket_uid} gid {socket_gid} as when it connected"
    )]
    CredentialsChanged {
        /// The pid.
        pid: u32,
        /// The uid from the socket.
        socket_uid: u32,
        /// The gid from the socket.
        socket_gid: u32,
        /// The effective uid now.
        now_uid: u32,
        /// The effective gid now.
        now_gid: u32,
    },
}

/// Which optional parts of an attestation to carry out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Needs {
    /// `unix:user` and `unix:group`: NSS lookups of the user and every group.
    pub names: bool,
    /// `unix:path`: the executable's path, checked to still name the running file.
    pub path: bool,
    /// `unix:sha256`: the executable's digest (cached per file version).
    pub digest: bool,
    /// `k8s:*`: the pod and container, from the cgroup file and the kubelet.
    pub kubernetes: bool,
}

impl Needs {
    /// Every part: what `mesh-agent explain` shows.
    pub const ALL: Needs = Needs {
        names: true,
        path: true,
        digest: true,
        kubernetes: true,
    };

    /// What it takes to produce selectors of the kinds for which `uses` is true.
    pub fn for_kinds(uses: impl Fn(SelectorKind) -> bool) -> Self {
        Self {
            names: uses(SelectorKind::UnixUser) || uses(SelectorKind::UnixGroup),
            path: uses(SelectorKind::UnixPath),
            digest: uses(SelectorKind::UnixSha256),
            kubernetes: SelectorKind::ALL
                .into_iter()
                .any(|k| k.attestor() == "k8s" && uses(k)),
        }
    }

    /// Whether an attestation made with `self` has every selector one with `other` has.
    pub fn covers(self, other: Needs) -> bool {
        (self.names || !other.names)
            && (self.path || !other.path)
            && (self.digest || !other.digest)
            && (self.kubernetes || !other.kubernetes)
    }

    /// Whether attesting may wait on more than `/proc`: NSS lookups or hashing an executable.
    /// The kubelet is asked asynchronously, so [`Needs::kubernetes`] does not count.
    pub fn may_block(self) -> bool {
        self.names || self.digest
    }
}

/// What was learned about a process.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Attestation {
    /// The pid.
    pub pid: u32,
    /// The effective uid.
    pub uid: u32,
    /// The effective (primary) gid.
    pub gid: u32,
    /// Supplementary group IDs, as listed in `/proc/<pid>/status`.
    pub supplementary_gids: Vec<u32>,
    /// Start time of the process in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
    /// Path of the executable, if it still names the file the process runs.
    pub exe_path: Option<PathBuf>,
    /// Lowercase hex SHA-256 of the executable, if it was hashed.
    pub exe_sha256: Option<String>,
    /// Why the executable selectors are missing, if they are.
    pub exe_note: Option<String>,
    /// Every selector of the process.
    pub selectors: SelectorSet,
}

/// Attests local processes; holds the digest cache, so keep one per agent.
#[derive(Debug)]
pub struct Attestor {
    max_hash_bytes: u64,
    digests: Mutex<HashMap<FileKey, String>>,
}

/// Identifies one version of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileKey {
    fn of(m: &std::fs::Metadata) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

impl Attestor {
    /// An attestor that hashes executables of at most `max_hash_bytes` bytes.
    pub fn new(max_hash_bytes: u64) -> Self {
        Self {
            max_hash_bytes,
            digests: Mutex::new(HashMap::new()),
        }
    }

    /// Attests the process `pid` whose socket carried `uid` and `gid`, producing the optional
    /// selectors that `needs` asks for.
    ///
    /// # Errors
    ///
    /// [`AttestError::ProcessGone`] if the process exited or its pid was reused,
    /// [`AttestError::CredentialsChanged`] if it no longer runs as `uid`/`gid`, and the
    /// read errors otherwise. An executable that cannot be read is not an error: the process
    /// then simply has no `unix:path`/`unix:sha256` selectors, and
    /// [`Attestation::exe_note`] says why.
    pub fn attest(
        &self,
        pid: u32,
        uid: u32,
        gid: u32,
        needs: Needs,
    ) -> Result<Attestation, AttestError> {
        let start_time = process_start_time(pid)?;
        let status = read_status(pid)?;
        if status.euid != uid || status.egid != gid {
            return Err(AttestError::CredentialsChanged {
                pid,
                socket_uid: uid,
                socket_gid: gid,
                now_uid: status.euid,
                now_gid: status.egid,
            });
        }
        self.finish(pid, status, start_time, needs)
    }

    /// Attests the process `pid` with the effective uid and gid it has now, producing every
    /// selector; for tools such as `mesh-agent explain`, where there is no socket.
    ///
    /// # Errors
    ///
    /// As [`Attestor::attest`], except that credentials cannot have changed.
    pub fn attest_pid(&self, pid: u32) -> Result<Attestation, AttestError> {
        let start_time = process_start_time(pid)?;
        let status = read_status(pid)?;
        self.finish(pid, status, start_time, Needs::ALL)
    }

    fn finish(
        &self,
        pid: u32,
        status: Status,
        start_time: u64,
        needs: Needs,
    ) -> Result<Attestation, AttestError> {
        let mut selectors = SelectorSet::new();
        selectors.insert(Selector::uid(status.euid));
        if needs.names {
            if let Some(name) = user_name(status.euid) {
                push_named(&mut selectors, SelectorKind::UnixUser, &name);
            }
        }
        let mut gids = vec![status.egid];
        gids.extend(status.groups.iter().copied());
        gids.sort_unstable();
        gids.dedup();
        for gid in gids {
            selectors.insert(Selector::gid(gid));
            if !needs.names {
                continue;
            }
            if let Some(name) = group_name(gid) {
                push_named(&mut selectors, SelectorKind::UnixGroup, &name);
            }
        }

        let (exe_path, exe_sha256, exe_note) = if needs.path || needs.digest {
            match self.executable(pid, needs) {
                Ok(exe) => (exe.path, exe.sha256, exe.note),
                Err(e @ AttestError::ProcessGone { .. }) => return Err(e),
                Err(e) => (None, None, Some(e.to_string())),
            }
        } else {
            (None, None, None)
        };
        if let Some(path) = exe_path.as_ref().and_then(|p| p.to_str()) {
            push_named(&mut selectors, SelectorKind::UnixPath, path);
        }
        if let Some(hex) = &exe_sha256 {
            push_named(&mut selectors, SelectorKind::UnixSha256, hex);
        }

        // A different start time means the pid now belongs to another process, so what was
        // read above may mix two processes.
        if process_start_time(pid)? != start_time {
            return Err(AttestError::ProcessGone { pid });
        }
        Ok(Attestation {
            pid,
            uid: status.euid,
            gid: status.egid,
            supplementary_gids: status.groups,
            start_time,
            exe_path,
            exe_sha256,
            exe_note,
            selectors,
        })
    }

    fn executable(&self, pid: u32, needs: Needs) -> Result<Exe, AttestError> {
        let link = proc_path(pid, "exe");
        let file = File::open(&link).map_err(|e| io_error(pid, &link, e))?;
        let meta = file.metadata().map_err(|e| io_error(pid, &link, e))?;
        let key = FileKey::of(&meta);
        let mut note = None;

        // The link text names the file only if that path still leads to the same inode; after
        // an upgrade replaced the binary, or across mount namespaces, it does not.
        let path = if needs.path {
            let target = std::fs::read_link(&link).map_err(|e| io_error(pid, &link, e))?;
            match std::fs::metadata(&target) {
                Ok(m) if m.dev() == key.dev && m.ino() == key.ino => Some(target),
                _ => {
                    note = Some(format!(
                        "`{}` no longer names the executable the process runs; no unix:path selector",
                        target.display()
                    ));
                    None
                }
            }
        } else {
            None
        };

        let sha256 = if !needs.digest {
            None
        } else if key.size > self.max_hash_bytes {
            tracing::debug!(
                pid,
                size = key.size,
                limit = self.max_hash_bytes,
                "executable too large to hash; no unix:sha256 selector"
            );
            note = Some(format!(
                "executable is {} bytes, above the hashing limit of {}; no unix:sha256 selector",
                key.size, self.max_hash_bytes
            ));
            None
        } else {
            Some(self.digest(pid, &link, file, key)?)
        };
        Ok(Exe { path, sha256, note })
    }

    fn digest(
        &self,
        pid: u32,
        link: &Path,
        file: File,
        key: FileKey,
    ) -> Result<String, AttestError> {
        if let Some(hex) = self.cache().get(&key) {
            return Ok(hex.clone());
        }
        let mut hasher = Sha256::new();
        let mut reader = file.take(key.size.saturating_add(1));
        let mut buf = vec![0u8; 64 * 1024];
        let mut read = 0u64;
        loop {
            let n = reader.read(&mut buf).map_err(|e| io_error(pid, link, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            read += n as u64;
        }
        let hex = hex::encode(hasher.finalize());
        // Cache only a digest of exactly the file described by the key; a file that changed
        // while being read is hashed again next time.
        if read == key.size {
            let mut cache = self.cache();
            if cache.len() >= MAX_CACHED_DIGESTS {
                cache.clear();
            }
            cache.insert(key, hex.clone());
        }
        Ok(hex)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<FileKey, String>> {
        // The map stays consistent even if a holder panicked: every insert is a single call.
        self.digests.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Digests currently cached; for tests and metrics.
    pub fn cached_digests(&self) -> usize {
        self.cache().len()
    }
}

struct Exe {
    path: Option<PathBuf>,
    sha256: Option<String>,
    note: Option<String>,
}

/// The start time of process `pid`, in clock ticks since boot (`/proc/<pid>/stat` field 22).
///
/// # Errors
///
/// [`AttestError::ProcessGone`] if there is no such process; read or format errors otherwise.
pub fn process_start_time(pid: u32) -> Result<u64, AttestError> {
    let path = proc_path(pid, "stat");
    let text = std::fs::read_to_string(&path).map_err(|e| io_error(pid, &path, e))?;
    parse_start_time(&text).ok_or(AttestError::Malformed {
        pid,
        path,
        reason: "expected at least 22 fields after the command name",
    })
}

/// Field 22 of a `/proc/<pid>/stat` line. The command name (field 2) is in parentheses and may
/// itself contain spaces and parentheses, so fields are counted from the last `)`.
fn parse_start_time(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // `after` starts at field 3, so field 22 is the 20th.
    after.split_whitespace().nth(19)?.parse().ok()
}

/// The parts of `/proc/<pid>/status` attestation needs.
#[derive(Debug, PartialEq, Eq)]
struct Status {
    euid: u32,
    egid: u32,
    groups: Vec<u32>,
}

fn read_status(pid: u32) -> Result<Status, AttestError> {
    let path = proc_path(pid, "status");
    let text = std::fs::read_to_string(&path).map_err(|e| io_error(pid, &path, e))?;
    parse_status(&text).map_err(|reason| AttestError::Malformed { pid, path, reason })
}

fn parse_status(text: &str) -> Result<Status, &'static str> {
    let mut euid = None;
    let mut egid = None;
    let mut groups = Vec::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key {
            // "Uid:  real  effective  saved  filesystem"
            "Uid" => euid = value.split_whitespace().nth(1).and_then(|v| v.parse().ok()),
            "Gid" => egid = value.split_whitespace().nth(1).and_then(|v| v.parse().ok()),
            "Groups" => {
                groups = value
                    .split_whitespace()
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .map_err(|_| "the Groups line has a value that is not a number")?;
            }
            _ => {}
        }
    }
    Ok(Status {
        euid: euid.ok_or("no effective uid on the Uid line")?,
        egid: egid.ok_or("no effective gid on the Gid line")?,
        groups,
    })
}

fn proc_path(pid: u32, file: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{file}"))
}

fn io_error(pid: u32, path: &Path, e: io::Error) -> AttestError {
    match e.kind() {
        // ESRCH shows up when the process exits while its /proc entry is being read.
        io::ErrorKind::NotFound => AttestError::ProcessGone { pid },
        _ if e.raw_os_error() == Some(libc::ESRCH) => AttestError::ProcessGone { pid },
        io::ErrorKind::PermissionDenied => AttestError::PermissionDenied {
            pid,
            path: path.to_owned(),
        },
        _ => AttestError::Io {
            pid,
            path: path.to_owned(),
            source: e,
        },
    }
}

fn push_named(selectors: &mut SelectorSet, kind: SelectorKind, value: &str) {
    match Selector::new(kind, value) {
        Ok(s) => {
            selectors.insert(s);
        }
        // Names with whitespace cannot be written as selectors; leaving them out only means
        // fewer entries can match.
        Err(error) => tracing::debug!(%error, "skipping a selector that cannot be written"),
    }
}

/// Largest buffer offered to the NSS lookups before giving up.
const MAX_NSS_BUFFER: usize = 1 << 20;

/// The name of user `uid`, through the system's user database (files, LDAP, ...).
pub fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 1024];
    loop {
        // SAFETY: `passwd` is a plain C struct of pointers and integers, for which all-zero
        // bytes are a valid value; getpwuid_r only writes into it.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the duration of the call: `pwd` and `result` are
        // live locals, and `buf` is a live allocation of exactly `buf.len()` elements. The
        // function is the reentrant variant and keeps no pointer after returning.
        let rc =
            unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
        if rc == libc::ERANGE && buf.len() < MAX_NSS_BUFFER {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        // SAFETY: on success `pw_name` points to a NUL-terminated string stored in `buf`,
        // which is still alive and unchanged here.
        let name = unsafe { CStr::from_ptr(pwd.pw_name) };
        return Some(name.to_string_lossy().into_owned());
    }
}

/// The name of group `gid`, through the system's group database.
pub fn group_name(gid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 1024];
    loop {
        // SAFETY: `group` is a plain C struct of pointers and integers, for which all-zero
        // bytes are a valid value; getgrgid_r only writes into it.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: as in `user_name`: all pointers are to live locals or to `buf`, whose
        // length is passed, and nothing is retained after the call.
        let rc =
            unsafe { libc::getgrgid_r(gid, &mut grp, buf.as_mut_ptr(), buf.len(), &mut result) };
        if rc == libc::ERANGE && buf.len() < MAX_NSS_BUFFER {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 || result.is_null() || grp.gr_name.is_null() {
            return None;
        }
        // SAFETY: on success `gr_name` points to a NUL-terminated string stored in `buf`,
        // which is still alive and unchanged here.
        let name = unsafe { CStr::from_ptr(grp.gr_name) };
        return Some(name.to_string_lossy().into_owned());
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command};

    use super::*;

    fn sel(s: &str) -> Selector {
        s.parse().unwrap()
    }

    fn sha256_file(path: &str) -> String {
        hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
    }

    /// Runs `program` with `arg` just after the test wrote it. Another test thread that forks
    /// while the copy's write descriptor is open holds that descriptor until its child execs, and
    /// the kernel refuses to execute a file open for writing ("Text file busy"); that passes
    /// within milliseconds.
    fn spawn_fresh_executable(program: &Path, arg: &str) -> Child {
        let mut tries = 0;
        loop {
            match Command::new(program).arg(arg).spawn() {
                Err(error)
                    if error.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 50 =>
                {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                result => return result.unwrap(),
            }
        }
    }

    /// Kills the child when the test ends, pass or fail.
    struct Reaped(Child);

    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn attests_the_test_process_itself() {
        let pid = std::process::id();
        let meta = std::fs::metadata(format!("/proc/{pid}")).unwrap();
        let (uid, gid) = (meta.uid(), meta.gid());
        let a = Attestor::new(u64::MAX)
            .attest(pid, uid, gid, Needs::ALL)
            .unwrap();

        assert_eq!((a.pid, a.uid, a.gid), (pid, uid, gid));
        assert!(a.selectors.contains(&Selector::uid(uid)));
        assert!(a.selectors.contains(&Selector::gid(gid)));
        let exe = std::env::current_exe().unwrap().canonicalize().unwrap();
        assert_eq!(a.exe_path.as_deref(), Some(exe.as_path()));
        let path_sel = Selector::new(SelectorKind::UnixPath, exe.to_str().unwrap()).unwrap();
        assert!(a.selectors.contains(&path_sel));
        let digest = sha256_file(exe.to_str().unwrap());
        assert_eq!(a.exe_sha256.as_deref(), Some(digest.as_str()));
        assert!(a.selectors.contains(&sel(&format!("unix:sha256:{digest}"))));
        assert_eq!(a.start_time, process_start_time(pid).unwrap());
        if let Some(name) = user_name(uid) {
            assert!(a.selectors.contains(&sel(&format!("unix:user:{name}"))));
        }
    }

    #[test]
    fn attests_a_child_running_as_another_user() {
        let child = Command::new("sleep")
            .arg("30")
            .uid(65534)
            .gid(65534)
            .spawn()
            .unwrap();
        let child = Reaped(child);
        let pid = child.0.id();
        let attestor = Attestor::new(u64::MAX);

        // The child becomes `sleep` only after exec; wait for that.
        let sleep_path = which("sleep").unwrap();
        let mut a = attestor.attest(pid, 65534, 65534, Needs::ALL);
        for _ in 0..100 {
            if matches!(&a, Ok(a) if a.exe_path.as_deref() == Some(sleep_path.as_path())) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            a = attestor.attest(pid, 65534, 65534, Needs::ALL);
        }
        let a = a.unwrap();

        assert!(a.selectors.contains(&sel("unix:uid:65534")));
        assert!(a.selectors.contains(&sel("unix:gid:65534")));
        assert!(!a.selectors.contains(&sel("unix:uid:0")));
        let expected_user = user_name(65534).unwrap();
        assert!(a
            .selectors
            .contains(&sel(&format!("unix:user:{expected_user}"))));
        let expected_group = group_name(65534).unwrap();
        assert!(a
            .selectors
            .contains(&sel(&format!("unix:group:{expected_group}"))));
        let path = sleep_path.to_str().unwrap();
        assert!(a.selectors.contains(&sel(&format!("unix:path:{path}"))));
        assert!(a
            .selectors
            .contains(&sel(&format!("unix:sha256:{}", sha256_file(path)))));

        // The socket credentials must agree with the process's.
        let err = attestor.attest(pid, 0, 0, Needs::ALL).unwrap_err();
        assert!(
            matches!(err, AttestError::CredentialsChanged { now_uid: 65534, .. }),
            "{err}"
        );
    }

    #[test]
    fn supplementary_groups_become_gid_and_group_selectors() {
        let groups: [libc::gid_t; 2] = [4, 27];
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        // SAFETY: the closure runs in the forked child before exec and only makes the
        // setgroups, setgid and setuid system calls, which are async-signal-safe; `groups` is a
        // live array of the length passed. Groups are set first, while still root.
        unsafe {
            cmd.pre_exec(move || {
                let ok = libc::setgroups(groups.len(), groups.as_ptr()) == 0
                    && libc::setgid(65534) == 0
                    && libc::setuid(65534) == 0;
                if ok {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let child = Reaped(cmd.spawn().unwrap());
        let pid = child.0.id();
        let sleep_path = which("sleep").unwrap();
        let attestor = Attestor::new(0);
        let mut a = attestor.attest(pid, 65534, 65534, Needs::ALL);
        for _ in 0..100 {
            if matches!(&a, Ok(a) if a.exe_path.as_deref() == Some(sleep_path.as_path())) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            a = attestor.attest(pid, 65534, 65534, Needs::ALL);
        }
        let a = a.unwrap();

        assert_eq!(a.supplementary_gids, [4, 27]);
        for gid in [4, 27, 65534] {
            assert!(a.selectors.contains(&Selector::gid(gid)), "{gid}: {a:?}");
            if let Some(name) = group_name(gid) {
                assert!(
                    a.selectors.contains(&sel(&format!("unix:group:{name}"))),
                    "{name}"
                );
            }
        }
        assert!(!a.selectors.contains(&Selector::gid(0)));
    }

    #[test]
    fn large_executables_are_not_hashed_and_digests_are_cached() {
        let pid = std::process::id();
        let meta = std::fs::metadata(format!("/proc/{pid}")).unwrap();
        let small = Attestor::new(16);
        let a = small
            .attest(pid, meta.uid(), meta.gid(), Needs::ALL)
            .unwrap();
        assert_eq!(a.exe_sha256, None);
        assert!(a
            .selectors
            .iter()
            .all(|s| s.kind() != SelectorKind::UnixSha256));
        assert!(a.exe_note.unwrap().contains("hashing limit"));
        assert_eq!(small.cached_digests(), 0);

        let big = Attestor::new(u64::MAX);
        let first = big.attest(pid, meta.uid(), meta.gid(), Needs::ALL).unwrap();
        assert_eq!(big.cached_digests(), 1);
        let second = big.attest(pid, meta.uid(), meta.gid(), Needs::ALL).unwrap();
        assert_eq!(big.cached_digests(), 1);
        assert_eq!(first.exe_sha256, second.exe_sha256);
    }

    #[test]
    fn a_replaced_executable_loses_its_path_but_keeps_its_true_digest() {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("sleeper");
        let original = which("sleep").unwrap();
        std::fs::copy(&original, &copy).unwrap();
        let child = Reaped(spawn_fresh_executable(&copy, "30"));
        let pid = child.0.id();
        let attestor = Attestor::new(u64::MAX);
        let copy = copy.canonicalize().unwrap();
        let mut a = attestor.attest_pid(pid).unwrap();
        for _ in 0..100 {
            if a.exe_path.as_deref() == Some(copy.as_path()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            a = attestor.attest_pid(pid).unwrap();
        }
        assert_eq!(a.exe_path.as_deref(), Some(copy.as_path()));

        // Replace the file at that path with different content, as an upgrade would.
        std::fs::remove_file(&copy).unwrap();
        std::fs::write(&copy, b"#!/bin/sh\nexit 0\n").unwrap();
        let after = attestor.attest_pid(pid).unwrap();
        assert_eq!(after.exe_path, None);
        assert!(after.exe_note.unwrap().contains("no unix:path"));
        let digest = sha256_file(original.to_str().unwrap());
        assert_eq!(after.exe_sha256.as_deref(), Some(digest.as_str()));
    }

    #[test]
    fn a_missing_process_is_reported_as_gone() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let err = Attestor::new(0).attest_pid(pid).unwrap_err();
        assert!(
            matches!(err, AttestError::ProcessGone { pid: p } if p == pid),
            "{err}"
        );
        assert!(matches!(
            process_start_time(pid),
            Err(AttestError::ProcessGone { .. })
        ));
    }

    #[test]
    fn stat_start_time_survives_odd_command_names() {
        let stat = "42 (a) b) (c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 \
                    1000 100 18446744073709551615";
        assert_eq!(parse_start_time(stat), Some(987_654));
        assert_eq!(parse_start_time("42 (x) S 1"), None);
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn status_gives_effective_ids_and_groups() {
        let text = "Name:\tx\nUid:\t1\t1000\t1\t1\nGid:\t2\t2000\t2\t2\nGroups:\t4 27 1000 \n";
        assert_eq!(
            parse_status(text),
            Ok(Status {
                euid: 1000,
                egid: 2000,
                groups: vec![4, 27, 1000]
            })
        );
        assert!(parse_status("Name:\tx\n").is_err());
        assert!(parse_status("Uid:\t1\t1\t1\t1\nGid:\t1\t1\t1\t1\nGroups:\tx\n").is_err());
    }

    #[test]
    fn names_resolve_through_the_system_database() {
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(group_name(0).as_deref(), Some("root"));
        assert_eq!(user_name(4_000_000_000), None);
    }

    fn which(cmd: &str) -> Option<PathBuf> {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|d| d.join(cmd))
            .find(|p| p.is_file())
            .and_then(|p| p.canonicalize().ok())
    }

    #[test]
    fn only_the_needed_parts_are_attested() {
        let pid = std::process::id();
        let meta = std::fs::metadata(format!("/proc/{pid}")).unwrap();
        let attestor = Attestor::new(u64::MAX);

        let bare = attestor
            .attest(pid, meta.uid(), meta.gid(), Needs::default())
            .unwrap();
        assert!(bare.selectors.contains(&Selector::uid(meta.uid())));
        assert!(bare
            .selectors
            .iter()
            .all(|s| matches!(s.kind(), SelectorKind::UnixUid | SelectorKind::UnixGid)));
        assert_eq!((bare.exe_path, bare.exe_sha256), (None, None));
        assert_eq!(attestor.cached_digests(), 0, "nothing may be hashed");

        let path_only = Needs {
            path: true,
            ..Needs::default()
        };
        let a = attestor
            .attest(pid, meta.uid(), meta.gid(), path_only)
            .unwrap();
        assert_eq!(a.exe_path, Some(std::env::current_exe().unwrap()));
        assert_eq!(a.exe_sha256, None);
        assert_eq!(attestor.cached_digests(), 0);

        let digest_only = Needs {
            digest: true,
            ..Needs::default()
        };
        let a = attestor
            .attest(pid, meta.uid(), meta.gid(), digest_only)
            .unwrap();
        assert_eq!(a.exe_path, None);
        let exe = std::env::current_exe().unwrap();
        assert_eq!(
            a.exe_sha256.as_deref(),
            Some(sha256_file(exe.to_str().unwrap()).as_str())
        );
    }

    #[test]
    fn needs_follow_the_selector_kinds_in_use() {
        let none = Needs::for_kinds(|k| k == SelectorKind::UnixUid);
        assert_eq!(none, Needs::default());
        assert!(!none.may_block());
        let names = Needs::for_kinds(|k| k == SelectorKind::UnixGroup);
        assert!(names.names && names.may_block());
        let digest = Needs::for_kinds(|k| k == SelectorKind::UnixSha256);
        assert!(digest.digest && !digest.path);
        assert!(Needs::ALL.covers(digest) && !digest.covers(names));
        assert!(digest.covers(Needs::default()));
        let k8s = Needs::for_kinds(|k| k == SelectorKind::K8sContainerName);
        assert!(k8s.kubernetes && !k8s.may_block());
        assert!(!digest.covers(k8s) && Needs::ALL.covers(k8s));
    }
}
