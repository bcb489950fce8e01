//! `mesh-agent run`: the daemon. Opens (or creates) the CA, binds the Workload API socket, and
//! keeps SVIDs, bundles and registration entries current until told to stop.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh_core::ca::{Ca, CaConfig, CaError, Upstream, UpstreamCa, UpstreamMode};
use mesh_core::clock::{SharedClock, SystemClock};
use tokio::sync::{watch, Notify};
use workload_api::server::{bind_unix, WorkloadApiServer};

use crate::admin::{self, AdminState};
use crate::attest::Attestor;
use crate::cache::{CacheError, CacheOptions, SvidCache};
use crate::config::{Config, ConfigLoader};
use crate::reload::{self, ReloadOptions};
use crate::workload::AgentProvider;

/// Longest the background task sleeps between checks, whatever the schedule says.
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// Why the agent could not start or stopped with an error.
///
/// Every variant names what was wrong and where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// Another agent holds the socket.
    #[error("another mesh-agent is already serving {0}; stop it or choose another socket_path")]
    AlreadyRunning(PathBuf),
    /// The socket directory or lock file could not be prepared.
    #[error("cannot prepare the socket directory {path}: {source}")]
    SocketDir {
        /// The directory or file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Someone else could replace the socket: its directory is writable by other users or
    /// owned by another user.
    #[error("socket directory {path} is unsafe: {reason}; it must be owned by this user and writable by no one else")]
    UnsafeSocketDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The Kubernetes attestor could not be set up.
    #[error("cannot set up the kubernetes attestor: {0}")]
    Kubernetes(#[from] crate::k8s::KubernetesError),
    /// The CA could not be opened.
    #[error("cannot open the CA in {dir}: {source}")]
    Ca {
        /// The CA's data directory.
        dir: PathBuf,
        /// The error.
        source: CaError,
    },
    /// The SVID cache could not be set up.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// Reloading could not be set up.
    #[error(transparent)]
    Reload(#[from] reload::ReloadError),
    /// The admin server could not start.
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    /// The Workload API server failed.
    #[error(transparent)]
    Serve(#[from] workload_api::ServeError),
    /// A background task failed.
    #[error("internal task failed: {0}")]
    Task(String),
}

/// Runs the agent with `config` until `shutdown` completes. `loader` re-reads the
/// configuration when its file changes or on SIGHUP.
///
/// # Errors
///
/// See [`RunError`]; the agent stops at the first error it cannot recover from.
pub async fn run(
    mut config: Config,
    loader: ConfigLoader,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let socket = config.socket_path.clone();
    let _lock = lock_socket(&socket)?;

    let clock: SharedClock = Arc::new(SystemClock);
    let ca = open_ca(&config, Arc::clone(&clock)).await?;
    let ca_changed = Arc::new(Notify::new());
    {
        let notify = Arc::clone(&ca_changed);
        ca.subscribe(move |_| notify.notify_one());
    }

    let state = AdminState::default();
    let metrics = state.metrics.clone();
    metrics.set_ca_expiry(ca.x509_issuer().not_after());
    let options = CacheOptions {
        key_type: config.key_type,
        svid_ttl: config.svid_ttl,
        jwt_ttl: config.jwt_ttl,
    };
    let cache = Arc::new(SvidCache::new(
        Arc::clone(&ca),
        Arc::clone(&clock),
        options,
        metrics.clone(),
    )?);

    let reloader = reload::spawn(loader, &config, ReloadOptions::default())?;
    let registry = reloader.registry.clone();
    // From here on the registry holds the entries; a copy here would only take memory.
    config.entries = None;
    config.entry_lines = Vec::new();

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let admin = admin::start(config.admin_addr, state.clone(), stopped).await?;
    let upkeep = tokio::spawn(upkeep(
        Arc::clone(&cache),
        registry.clone(),
        ca_changed,
        metrics.clone(),
        stop_rx.clone(),
    ));

    let listener = bind_unix(&socket)?;
    // Any local process may connect; attestation decides what it gets.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).map_err(
        |source| RunError::SocketDir {
            path: socket.clone(),
            source,
        },
    )?;
    let kubernetes = config
        .kubernetes
        .as_ref()
        .map(crate::k8s::KubernetesAttestor::from_config)
        .transpose()?
        .map(Arc::new);
    let provider = Arc::new(AgentProvider::with_kubernetes(
        config.trust_domain.clone(),
        Arc::clone(&cache),
        registry,
        Arc::new(Attestor::new(config.max_exe_hash_bytes)),
        kubernetes,
        metrics,
    ));
    state.readiness.set_ready(true);
    tracing::info!(
        socket = %socket.display(),
        trust_domain = %config.trust_domain,
        admin = %admin.local_addr,
        svids = cache.len(),
        "mesh-agent ready"
    );

    let result = WorkloadApiServer::new(provider)
        .serve(listener, shutdown)
        .await;
    state.readiness.set_ready(false);
    let _ = stop_tx.send(true);
    if let Err(error) = std::fs::remove_file(&socket) {
        tracing::warn!(socket = %socket.display(), %error, "cannot remove the socket file");
    }
    let _ = upkeep.await;
    let _ = admin.task.await;
    tracing::info!("mesh-agent stopped");
    result.map_err(RunError::from)
}

/// Opens the CA on a blocking thread: a first start generates keys and writes files.
async fn open_ca(config: &Config, clock: SharedClock) -> Result<Arc<Ca>, RunError> {
    let dir = config.data_dir.join("ca");
    let mut ca_config = CaConfig::new(config.trust_domain.clone(), &dir);
    ca_config.ca_key_type = config.key_type;
    ca_config.ca_ttl = config.ca_ttl;
    ca_config.max_svid_ttl = max_svid_ttl(config);
    ca_config.max_jwt_svid_ttl = config.jwt_ttl;
    if let Some(upstream) = &config.upstream_ca {
        let loaded =
            UpstreamCa::from_files(&upstream.cert, &upstream.key, upstream.chain.as_deref())
                .map_err(|source| RunError::Ca {
                    dir: dir.clone(),
                    source,
                })?;
        ca_config.upstream = Some(Upstream {
            ca: Arc::new(loaded),
            mode: UpstreamMode::Intermediate,
        });
    }
    tokio::task::spawn_blocking(move || Ca::open(ca_config, clock))
        .await
        .map_err(|e| RunError::Task(e.to_string()))?
        .map(Arc::new)
        .map_err(|source| RunError::Ca { dir, source })
}

/// The CA's cap on SVID lifetimes: the longest of the default TTL, any entry's TTL at start,
/// and a sixth of the CA's lifetime.
///
/// The cap is fixed for the life of the process (retired CAs stay in the bundle for that long).
/// A sixth of the CA's lifetime is what an SVID signed just before a CA hand-over can get anyway
/// (see the rotation schedule in mesh-core), so entries added by a reload may ask up to that
/// without a restart.
fn max_svid_ttl(config: &Config) -> Duration {
    config
        .entries
        .iter()
        .flatten()
        .filter_map(|e| e.ttl)
        .fold(config.svid_ttl.max(config.ca_ttl / 6), Duration::max)
}

/// Keeps the CA, the cache and the registry in step: ticks the CA's rotation schedule, renews
/// SVIDs when due, and follows registry reloads.
async fn upkeep(
    cache: Arc<SvidCache>,
    mut registry: watch::Receiver<Arc<crate::registration::Registry>>,
    ca_changed: Arc<Notify>,
    metrics: crate::metrics::Metrics,
    mut stop: watch::Receiver<bool>,
) {
    let ca = Arc::clone(cache.ca());

    // Issue for every entry in the background: the socket is bound meanwhile, and a caller
    // that comes first has its own SVID issued on demand.
    let initial = Arc::clone(&registry.borrow_and_update());
    let first = Arc::clone(&cache);
    let _ = tokio::task::spawn_blocking(move || first.sync_registry(&initial)).await;
    crate::alloc::release_free_memory();

    // Set when the CA's authorities changed: the next renewal round reissues every SVID.
    let mut reissuing = false;
    loop {
        // Renewing generates keys and signs, up to one SVID per entry at a CA rotation: keep
        // it off the runtime's worker threads.
        let renewing = Arc::clone(&cache);
        let next_svid = tokio::task::spawn_blocking(move || renewing.refresh())
            .await
            .unwrap_or_else(|error| {
                tracing::error!(%error, "SVID renewal task failed");
                None
            });
        if std::mem::take(&mut reissuing) {
            crate::alloc::release_free_memory();
        }
        metrics.set_ca_expiry(ca.x509_issuer().not_after());
        let next = [next_svid, ca.next_change()].into_iter().flatten().min();
        let sleep = next
            .and_then(|t| t.duration_since(SystemTime::now()).ok())
            .unwrap_or_default()
            .clamp(Duration::from_millis(50), MAX_SLEEP);

        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(sleep) => {}
            () = ca_changed.notified() => {}
            changed = registry.changed() => {
                if changed.is_err() {
                    return;
                }
                let current = Arc::clone(&registry.borrow_and_update());
                let cache = Arc::clone(&cache);
                let _ = tokio::task::spawn_blocking(move || cache.sync_registry(&current)).await;
                crate::alloc::release_free_memory();
                continue;
            }
        }

        let ca = Arc::clone(&ca);
        match tokio::task::spawn_blocking(move || ca.tick()).await {
            Ok(Ok(true)) => {
                tracing::info!("CA authorities changed");
                reissuing = true;
            }
            Ok(Ok(false)) => {}
            Ok(Err(error)) => tracing::error!(%error, "CA rotation step failed; retrying"),
            Err(error) => tracing::error!(%error, "CA rotation task failed"),
        }
    }
}

/// Creates the socket's directory if needed and takes an exclusive lock next to the socket,
/// so that a second agent on the same path refuses to start instead of stealing the socket.
fn lock_socket(socket: &Path) -> Result<File, RunError> {
    let dir_error = |path: &Path| {
        let path = path.to_owned();
        move |source| RunError::SocketDir { path, source }
    };
    if let Some(dir) = socket.parent() {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(dir_error(dir))?;
        }
        check_socket_dir(dir)?;
    }
    let mut lock_path = socket.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(dir_error(&lock_path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(RunError::AlreadyRunning(socket.to_owned())),
        Err(std::fs::TryLockError::Error(source)) => Err(RunError::SocketDir {
            path: lock_path,
            source,
        }),
    }
}

/// Refuses a socket directory in which another user could swap the socket for their own.
fn check_socket_dir(dir: &Path) -> Result<(), RunError> {
    use std::os::unix::fs::MetadataExt;

    let meta = std::fs::metadata(dir).map_err(|source| RunError::SocketDir {
        path: dir.to_owned(),
        source,
    })?;
    let unsafe_dir = |reason: String| RunError::UnsafeSocketDir {
        path: dir.to_owned(),
        reason,
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(unsafe_dir(format!("owned by uid {}", meta.uid())));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_dir(format!("mode {:o}", meta.mode() & 0o7777)));
    }
    Ok(())
}
