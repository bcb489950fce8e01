//! The sidecar proxy: mTLS on SPIFFE identities for apps that cannot be changed.
//!
//! The proxy fetches its own X509-SVID from the agent's Workload API, like any workload, into a
//! live [`MemorySource`]; every handshake uses the SVID and bundles current at that moment, so
//! rotation never drops an open connection.
//!
//! - **inbound** listeners accept mTLS, let in the peers their `allow` rule names, and forward
//!   plaintext to the local app. In permissive mode they also take plaintext (told apart by
//!   the first byte: `0x16` opens a TLS handshake) and count it.
//! - **outbound** listeners accept plaintext on loopback from the local app, dial the remote
//!   over mTLS and require the `expect`ed SPIFFE ID.
//!
//! Each listener caps its connections; handshakes, connects and idle connections time out;
//! when one side ends its stream the other side's write half is shut down and the opposite
//! direction keeps flowing. `/live`, `/ready` (first SVID in and every listener bound) and
//! `/metrics` are served on the admin address. See [`config`] for the file format.

pub mod admin;
pub mod config;
pub mod identity;
pub mod listener;
pub mod metrics;
pub mod relay;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_core::tls::{MemorySource, SpiffeTls, SvidSource, TlsError};
use rustls_pki_types::ServerName;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use workload_api::source::X509Source;
use workload_api::Endpoint;

use crate::admin::Readiness;

pub use config::{
    ConfigProblem, InboundConfig, InboundMode, OutboundConfig, ProxyConfig, ProxyConfigError,
};
pub use metrics::ProxyMetrics;

use listener::{Handler, Listener, Timeouts};

/// Why the proxy could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// A listener's address could not be bound.
    #[error("cannot listen on `{addr}` for listener `{listener}`: {source}")]
    Bind {
        /// The listener's name.
        listener: String,
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The admin address could not be bound.
    #[error("cannot listen on admin address `{addr}`: {source}")]
    AdminBind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A TLS config could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A name for SNI could not be derived from a `connect` address.
    #[error(
        "listener `{listener}`: no server name can be taken from `{connect}`; set `server_name`"
    )]
    ServerName {
        /// The listener's name.
        listener: String,
        /// The `connect` address.
        connect: String,
    },
    /// The proxy's supervising task panicked.
    #[error("proxy task failed: {0}")]
    Task(String),
}

/// Where the proxy gets its SVID and bundles.
#[derive(Debug, Clone)]
pub enum Identity {
    /// From the agent's Workload API, watched for updates (the normal case).
    WorkloadApi(Endpoint),
    /// From a source the caller keeps up to date (embedding, tests).
    Source(Arc<MemorySource>),
}

/// A started proxy.
#[derive(Debug)]
pub struct RunningProxy {
    /// Bound address of each inbound listener, in config order.
    pub inbound: Vec<SocketAddr>,
    /// Bound address of each outbound listener, in config order.
    pub outbound: Vec<SocketAddr>,
    /// Bound admin address.
    pub admin: SocketAddr,
    /// The proxy's metrics.
    pub metrics: ProxyMetrics,
    /// Ready once the first SVID arrived and every listener is bound.
    pub readiness: Readiness,
    /// The live SVID source the proxy's handshakes read.
    pub source: Arc<MemorySource>,
    task: JoinHandle<()>,
}

impl RunningProxy {
    /// Waits until the proxy has stopped (after shutdown and the grace period).
    ///
    /// # Errors
    ///
    /// [`ProxyError::Task`] if the supervising task panicked.
    pub async fn wait(self) -> Result<(), ProxyError> {
        self.task.await.map_err(|e| ProxyError::Task(e.to_string()))
    }
}

/// Runs the proxy described by `config`, with its identity from the Workload API, until
/// `shutdown` completes and open connections have drained (at most `shutdown_grace`).
///
/// # Errors
///
/// A [`ProxyError`] if a listener or the admin address cannot be bound, or a TLS config
/// cannot be built.
pub async fn run(
    config: ProxyConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ProxyError> {
    let identity = Identity::WorkloadApi(config.workload_api.clone());
    start(config, identity, shutdown).await?.wait().await
}

/// Binds every listener and the admin server and starts serving in the background. Listeners
/// start accepting once the first SVID is in the source; connections made before wait in the
/// listen backlog.
///
/// # Errors
///
/// As [`run`].
pub async fn start(
    config: ProxyConfig,
    identity: Identity,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<RunningProxy, ProxyError> {
    let (source, workload_api) = match identity {
        Identity::Source(s) => (s, None),
        Identity::WorkloadApi(endpoint) => {
            let x509 = X509Source::new(endpoint);
            (Arc::clone(x509.memory()), Some(x509))
        }
    };
    let tls = SpiffeTls::new(source.clone());
    let metrics = ProxyMetrics::new();
    let readiness = Readiness::new();
    let timeouts = Timeouts {
        handshake: config.handshake_timeout,
        idle: config.idle_timeout,
        connect: config.connect_timeout,
        shutdown_grace: config.shutdown_grace,
    };

    let mut listeners = Vec::new();
    let mut inbound = Vec::new();
    for l in &config.inbound {
        let server = tls.server_config(l.authorizer())?;
        let handler = Handler::Inbound {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            forward: l.forward.clone(),
            mode: l.mode,
            detect_timeout: l.plaintext_detect_timeout,
        };
        let bound = bind(
            &l.name,
            l.listen,
            handler,
            l.max_connections,
            &metrics,
            "inbound",
        )
        .await?;
        inbound.push(bound.socket.local_addr().unwrap_or(l.listen));
        listeners.push(bound);
    }
    let mut outbound = Vec::new();
    for l in &config.outbound {
        let client = tls.client_config(l.authorizer())?;
        let server_name = server_name(l)?;
        let handler = Handler::Outbound {
            connector: TlsConnector::from(Arc::new(client)),
            connect: l.connect.clone(),
            server_name,
        };
        let bound = bind(
            &l.name,
            l.listen,
            handler,
            l.max_connections,
            &metrics,
            "outbound",
        )
        .await?;
        outbound.push(bound.socket.local_addr().unwrap_or(l.listen));
        listeners.push(bound);
    }
    let admin_socket = TcpListener::bind(config.admin_addr)
        .await
        .map_err(|source| ProxyError::AdminBind {
            addr: config.admin_addr,
            source,
        })?;
    let admin = admin_socket.local_addr().unwrap_or(config.admin_addr);
    tracing::info!(%admin, inbound = ?inbound, outbound = ?outbound, "proxy listeners bound");

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopping = readiness.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("proxy shutting down");
        stopping.set_ready(false);
        let _ = stop_tx.send(true);
    });
    tokio::spawn(admin::serve(
        admin_socket,
        metrics.clone(),
        readiness.clone(),
        stop_rx.clone(),
    ));

    let (updates_tx, updates_rx) = watch::channel(0u64);
    if let Some(x509) = workload_api {
        tokio::spawn(identity::follow(
            x509,
            updates_tx,
            metrics.clone(),
            stop_rx.clone(),
        ));
    } else {
        // A caller-fed source has no updates to announce; readiness polls it instead.
        drop(updates_tx);
    }

    let task = tokio::spawn(supervise(
        listeners,
        timeouts,
        source.clone(),
        updates_rx,
        readiness.clone(),
        stop_rx,
    ));
    Ok(RunningProxy {
        inbound,
        outbound,
        admin,
        metrics,
        readiness,
        source,
        task,
    })
}

async fn bind(
    name: &str,
    addr: SocketAddr,
    handler: Handler,
    max_connections: usize,
    metrics: &ProxyMetrics,
    direction: &'static str,
) -> Result<Listener, ProxyError> {
    let socket = TcpListener::bind(addr)
        .await
        .map_err(|source| ProxyError::Bind {
            listener: name.to_owned(),
            addr,
            source,
        })?;
    Ok(Listener {
        name: name.to_owned(),
        socket,
        handler,
        max_connections,
        metrics: metrics.listener(name, direction),
    })
}

fn server_name(l: &OutboundConfig) -> Result<ServerName<'static>, ProxyError> {
    let host = match &l.server_name {
        Some(name) => name.clone(),
        None => match l.connect.parse::<SocketAddr>() {
            Ok(addr) => addr.ip().to_string(),
            Err(_) => l
                .connect
                .rsplit_once(':')
                .map(|(host, _)| host.to_owned())
                .unwrap_or_default(),
        },
    };
    ServerName::try_from(host).map_err(|_| ProxyError::ServerName {
        listener: l.name.clone(),
        connect: l.connect.clone(),
    })
}

/// Waits for the first SVID, then runs every accept loop until shutdown.
async fn supervise(
    listeners: Vec<Listener>,
    timeouts: Timeouts,
    source: Arc<MemorySource>,
    mut updates: watch::Receiver<u64>,
    readiness: Readiness,
    mut stop: watch::Receiver<bool>,
) {
    while source.svid().is_none() {
        tokio::select! {
            () = stopped(&mut stop) => return,
            changed = updates.changed() => {
                if changed.is_err() {
                    // No watcher (a caller-fed source): look again now and then.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    if *stop.borrow() {
        return;
    }

    let mut loops = JoinSet::new();
    for l in listeners {
        loops.spawn(listener::accept_loop(l, timeouts, stop.clone()));
    }
    readiness.set_ready(true);
    tracing::info!("proxy ready");
    while loops.join_next().await.is_some() {}
}

/// Completes once `stop` holds true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests;
