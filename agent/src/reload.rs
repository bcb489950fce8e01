//! Reloads registration entries while the agent runs.
//!
//! The config file is polled (its content hashed every `poll_interval`) and reloaded on SIGHUP.
//! Polling works the same on every filesystem, including network mounts and the symlink swaps
//! Kubernetes uses for mounted ConfigMaps, where change notifications are unreliable; hashing a
//! file of a few kilobytes once a second costs nothing measurable.
//!
//! A new file that fails validation is logged with its line and problem and changes nothing:
//! the previous entries stay in force. Only entries are reloaded; other settings (socket,
//! trust domain, TTLs...) need a restart, and a warning says so when they change.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, ConfigError, ConfigLoader};
use crate::registration::Registry;

/// How reloading is triggered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReloadOptions {
    /// How often the file is checked for changes.
    pub poll_interval: Duration,
    /// Whether SIGHUP triggers a reload.
    pub sighup: bool,
}

impl Default for ReloadOptions {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
            sighup: true,
        }
    }
}

/// Why reloading could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The SIGHUP handler could not be installed.
    #[error("cannot install the SIGHUP handler: {0}")]
    Signal(#[source] std::io::Error),
}

/// A running reloader: the registry in force, and the task that keeps it current.
#[derive(Debug)]
pub struct Reloader {
    /// Always holds the registry in force; `changed()` fires on each successful reload that
    /// changed the entries.
    pub registry: watch::Receiver<Arc<Registry>>,
    /// The background task; it ends when every receiver of `registry` is dropped.
    pub task: JoinHandle<()>,
}

/// Starts watching the file of `loader` (if it has one) and SIGHUP, beginning with the registry
/// of `initial`, which `loader` produced.
///
/// Must be called from within a Tokio runtime.
///
/// # Errors
///
/// [`ReloadError::Signal`] if SIGHUP handling was asked for and cannot be installed.
pub fn spawn(
    loader: ConfigLoader,
    initial: &Config,
    options: ReloadOptions,
) -> Result<Reloader, ReloadError> {
    // Installed before returning, so a SIGHUP sent right after this call is never lost (nor
    // fatal, as the default action would be).
    let hangup = if options.sighup {
        Some(signal(SignalKind::hangup()).map_err(ReloadError::Signal)?)
    } else {
        None
    };
    let (tx, rx) = watch::channel(Arc::new(initial.registry()));
    // Kept to tell which settings a reload changes; the entries live in the registry.
    let mut settings = initial.clone();
    settings.entries = None;
    settings.entry_lines = Vec::new();
    let state = State {
        loader: Arc::new(loader),
        initial: settings,
        fingerprint: None,
        tx,
    };
    let task = tokio::spawn(run(state, hangup, options.poll_interval));
    Ok(Reloader { registry: rx, task })
}

struct State {
    loader: Arc<ConfigLoader>,
    initial: Config,
    fingerprint: Option<[u8; 32]>,
    tx: watch::Sender<Arc<Registry>>,
}

async fn run(
    mut state: State,
    mut hangup: Option<tokio::signal::unix::Signal>,
    poll_interval: Duration,
) {
    // The fingerprint starts unknown, so the first poll reloads once: that catches a change made
    // between the initial load and now, and publishes nothing if the entries are the same.
    let mut ticker = tokio::time::interval(poll_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    ticker.tick().await;
    loop {
        let hup = async {
            match hangup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = state.tx.closed() => return,
            _ = ticker.tick(), if state.loader.path.is_some() => {
                let now = fingerprint(&state.loader).await;
                if now.is_some() && now != state.fingerprint {
                    state.fingerprint = now;
                    reload(&state, "file changed").await;
                }
            }
            received = hup => {
                if received.is_none() {
                    hangup = None;
                    continue;
                }
                state.fingerprint = fingerprint(&state.loader).await;
                reload(&state, "SIGHUP").await;
            }
        }
    }
}

async fn reload(state: &State, reason: &'static str) {
    let loader = Arc::clone(&state.loader);
    let loaded = tokio::task::spawn_blocking(move || loader.load()).await;
    let config = match loaded {
        Ok(Ok(config)) => config,
        Ok(Err(ConfigError::Invalid(problems))) => {
            for problem in &problems {
                tracing::error!(%problem, reason, "config reload rejected; previous entries stay in force");
            }
            return;
        }
        Ok(Err(error)) => {
            tracing::error!(%error, reason, "config reload failed; previous entries stay in force");
            return;
        }
        Err(error) => {
            tracing::error!(%error, "config reload task failed; previous entries stay in force");
            return;
        }
    };

    if config.trust_domain != state.initial.trust_domain {
        tracing::error!(
            running = %state.initial.trust_domain,
            configured = %config.trust_domain,
            "config reload rejected: changing the trust domain needs a restart"
        );
        return;
    }
    let ignored = restart_needed(&state.initial, &config);
    if !ignored.is_empty() {
        tracing::warn!(settings = ?ignored, "changed settings take effect only after a restart");
    }

    let registry = config.registry();
    let changed = state.tx.send_if_modified(|current| {
        if **current == registry {
            false
        } else {
            *current = Arc::new(registry);
            true
        }
    });
    if changed {
        let entries = state.tx.borrow().entries().len();
        tracing::info!(reason, entries, "registration entries reloaded");
    } else {
        tracing::debug!(reason, "config reloaded; entries unchanged");
    }
}

/// The settings other than entries that differ between `old` and `new`.
fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut check = |name, differs: bool| {
        if differs {
            out.push(name);
        }
    };
    check("socket_path", old.socket_path != new.socket_path);
    check("data_dir", old.data_dir != new.data_dir);
    check("admin_addr", old.admin_addr != new.admin_addr);
    check("log_format", old.log_format != new.log_format);
    check("log_level", old.log_level != new.log_level);
    check("svid_ttl", old.svid_ttl != new.svid_ttl);
    check("jwt_ttl", old.jwt_ttl != new.jwt_ttl);
    check("ca_ttl", old.ca_ttl != new.ca_ttl);
    check("key_type", old.key_type != new.key_type);
    check("upstream_ca", old.upstream_ca != new.upstream_ca);
    check(
        "max_exe_hash_bytes",
        old.max_exe_hash_bytes != new.max_exe_hash_bytes,
    );
    // Whether the pod template applies follows reloads; how the kubelet is reached does not.
    let kubelet = |config: &Config| {
        config.kubernetes.as_ref().map(|k| {
            (
                k.kubelet_url.clone(),
                k.token_path.clone(),
                k.ca_path.clone(),
                k.skip_kubelet_verification,
            )
        })
    };
    check("kubernetes", kubelet(old) != kubelet(new));
    out
}

/// SHA-256 of the config file's content, or `None` if there is no file or it cannot be read.
async fn fingerprint(loader: &ConfigLoader) -> Option<[u8; 32]> {
    let path = loader.path.as_ref()?;
    match tokio::fs::read(path).await {
        Ok(bytes) => Some(Sha256::digest(&bytes).into()),
        Err(error) => {
            tracing::debug!(%error, path = %path.display(), "cannot read config file to check for changes");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Overrides;

    fn loader(path: &Path) -> ConfigLoader {
        ConfigLoader {
            path: Some(path.to_owned()),
            env: Overrides::from_lookup(|_| None),
            flags: Overrides::flags(),
            xdg_state_home: None,
        }
    }

    fn file_with(ids: &[&str]) -> String {
        let mut s = String::from("trust_domain = \"example.org\"\n");
        for (i, id) in ids.iter().enumerate() {
            s.push_str(&format!(
                "[[entries]]\nspiffe_id = \"spiffe://example.org/{id}\"\nselectors = [\"unix:uid:{i}\"]\n"
            ));
        }
        s
    }

    fn ids(reg: &Registry) -> Vec<String> {
        reg.entries()
            .iter()
            .map(|e| e.spiffe_id.path().to_owned())
            .collect()
    }

    async fn next_change(rx: &mut watch::Receiver<Arc<Registry>>) -> Arc<Registry> {
        tokio::time::timeout(Duration::from_secs(10), rx.changed())
            .await
            .expect("no reload within 10s")
            .unwrap();
        rx.borrow_and_update().clone()
    }

    /// Collects log output of the current thread (the test's current-thread runtime).
    #[derive(Clone, Default)]
    struct LogBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for LogBuffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl LogBuffer {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    #[test]
    fn kubelet_settings_need_a_restart_but_the_pod_template_does_not() {
        let path = Path::new("agent.toml");
        let load = |text: &str| loader(path).load_str(text, path).unwrap();
        let plain = load("trust_domain = \"example.org\"\n");
        let kubelet = load("[kubernetes]\nkubelet_url = \"https://10.0.0.1:10250\"\n");
        let other = load("[kubernetes]\nkubelet_url = \"https://10.0.0.2:10250\"\n");
        let no_template =
            load("[kubernetes]\nkubelet_url = \"https://10.0.0.1:10250\"\npod_template = false\n");

        assert_eq!(restart_needed(&plain, &kubelet), ["kubernetes"]);
        assert_eq!(restart_needed(&kubelet, &other), ["kubernetes"]);
        assert!(restart_needed(&kubelet, &no_template).is_empty());
    }

    #[tokio::test]
    async fn changed_file_is_reloaded_and_invalid_file_is_ignored() {
        let logs = LogBuffer::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, file_with(&["a"])).unwrap();
        let loader = loader(&path);
        let initial = loader.load().unwrap();
        let options = ReloadOptions {
            poll_interval: Duration::from_millis(50),
            sighup: false,
        };
        let mut r = spawn(loader, &initial, options).unwrap();
        assert_eq!(ids(&r.registry.borrow_and_update()), ["/a"]);

        std::fs::write(&path, file_with(&["a", "b"])).unwrap();
        assert_eq!(ids(&*next_change(&mut r.registry).await), ["/a", "/b"]);

        // Invalid: a selector of an unknown kind. Nothing changes.
        std::fs::write(
            &path,
            "[[entries]]\nspiffe_id = \"spiffe://example.org/c\"\nselectors = [\"unix:pid:1\"]\n",
        )
        .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!r.registry.has_changed().unwrap());
        assert_eq!(ids(&r.registry.borrow()), ["/a", "/b"]);
        let logged = logs.text();
        assert!(logged.contains("ERROR"), "{logged}");
        assert!(logged.contains("agent.toml:3:"), "{logged}");
        assert!(logged.contains("unix:pid:1"), "{logged}");

        // A trust domain change needs a restart, so it is refused too.
        std::fs::write(&path, "trust_domain = \"other.org\"\nentries = []\n").unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!r.registry.has_changed().unwrap());
        assert!(logs.text().contains("needs a restart"));

        // A removed file keeps the entries as they are; a valid file later is picked up.
        std::fs::remove_file(&path).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!r.registry.has_changed().unwrap());
        std::fs::write(&path, file_with(&["c"])).unwrap();
        assert_eq!(ids(&*next_change(&mut r.registry).await), ["/c"]);

        drop(r.registry);
        tokio::time::timeout(Duration::from_secs(5), r.task)
            .await
            .expect("task ends when the receivers are gone")
            .unwrap();
    }

    #[tokio::test]
    async fn sighup_reloads_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, file_with(&["a"])).unwrap();
        let loader = loader(&path);
        let initial = loader.load().unwrap();
        let options = ReloadOptions {
            poll_interval: Duration::from_secs(3600),
            sighup: true,
        };
        let mut r = spawn(loader, &initial, options).unwrap();
        // Let the task take its first fingerprint before the file changes.
        tokio::time::sleep(Duration::from_millis(100)).await;

        std::fs::write(&path, file_with(&["x", "y"])).unwrap();
        let status = std::process::Command::new("kill")
            .args(["-HUP", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(ids(&*next_change(&mut r.registry).await), ["/x", "/y"]);
    }

    #[tokio::test]
    async fn without_entries_the_uid_template_is_published() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "log_level = \"debug\"\n").unwrap();
        let loader = loader(&path);
        let initial = loader.load().unwrap();
        let options = ReloadOptions {
            poll_interval: Duration::from_millis(50),
            sighup: false,
        };
        let mut r = spawn(loader, &initial, options).unwrap();
        assert!(r.registry.borrow().uid_template_domain().is_some());

        // Adding entries switches the template off.
        std::fs::write(&path, file_with(&["only"])).unwrap();
        let reg = next_change(&mut r.registry).await;
        assert_eq!(reg.uid_template_domain(), None);
        assert_eq!(ids(&reg), ["/only"]);
    }
}
