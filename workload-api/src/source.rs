//! A live X509-SVID source fed by the Workload API, for mutual TLS with `mesh_core::tls`.
//!
//! [`X509Source`] opens the `FetchX509SVID` stream and turns every message into the default
//! X509-SVID (`svids[0]`) and a bundle set: the SVID's own trust domain from `svids[0].bundle`
//! plus every federated bundle. It publishes them into a [`MemorySource`], so TLS configs built
//! with [`SpiffeTls`](mesh_core::tls::SpiffeTls) over it present the SVID in force at each
//! handshake and pick up rotations without being rebuilt.
//!
//! When the stream breaks (agent restarted, socket gone, `Unavailable`, `PermissionDenied`
//! "no identity issued") the source keeps what it last had and reconnects with exponential
//! backoff. `InvalidArgument` and `Unimplemented` mean the request itself is wrong, so the
//! source stops and reports the failure instead of retrying (the Workload API standard's
//! status code rules).
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use mesh_core::tls::{Authorizer, SpiffeTls};
//! use workload_api::source::X509Source;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let source = Arc::new(X509Source::from_env()?);
//! let svid = source.wait_until_ready(Duration::from_secs(30)).await?;
//! println!("running as {}", svid.spiffe_id());
//! let config = SpiffeTls::new(source).server_config(Authorizer::any())?;
//! # let _ = config;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use mesh_core::bundle::{Bundle, BundleSet};
use mesh_core::tls::{MemorySource, SvidSource};
use mesh_core::x509::{split_concatenated_der, X509Svid};
use mesh_core::{SpiffeId, TrustDomain};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::{ClientError, WorkloadApiClient};
use crate::endpoint::{Endpoint, EndpointError};
use crate::provider::X509Context;

/// First wait before reconnecting after a failure.
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_millis(200);
/// Longest wait between reconnection attempts.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Why a Workload API X.509 context cannot be used as an SVID and bundles.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContextError {
    /// The message holds no SVID.
    #[error("x509 context has no svid")]
    NoSvid,
    /// The first SVID's certificates or key do not make a valid X509-SVID.
    #[error("svid `{spiffe_id}` is not usable: {reason}")]
    BadSvid {
        /// The SPIFFE ID the message named.
        spiffe_id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A bundle is not concatenated DER certificates, or its key is not a trust domain.
    #[error("bundle of `{trust_domain}` is not usable: {reason}")]
    BadBundle {
        /// The trust domain, or the map key that is not one.
        trust_domain: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Why an [`X509Source`] could not be made or has no SVID to offer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// `SPIFFE_ENDPOINT_SOCKET` is unset or not a valid endpoint.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The Workload API refused the request with a status that must not be retried
    /// (`InvalidArgument`, `Unimplemented`); the source has stopped.
    #[error("workload api at `{endpoint}` refused the x509 svid request for good: {message}")]
    Refused {
        /// The endpoint.
        endpoint: String,
        /// The status the server sent.
        message: String,
    },
    /// No SVID arrived in time.
    #[error("no x509 svid from `{endpoint}` after {waited:?}; last error: {last_error}")]
    Timeout {
        /// The endpoint.
        endpoint: String,
        /// How long the caller waited.
        waited: Duration,
        /// The last failure seen, or `none`.
        last_error: String,
    },
    /// The source was closed.
    #[error("x509 source for `{endpoint}` is closed")]
    Closed {
        /// The endpoint.
        endpoint: String,
    },
}

/// What an [`X509Source`] has done so far, as seen through [`X509Source::subscribe`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceStatus {
    /// How many usable updates have been taken in; 0 until the first SVID.
    pub updates: u64,
    /// The last failure (connection, status, unusable message) since the last update.
    pub last_error: Option<String>,
    /// Set once the source has stopped for good (a refused request, or closed).
    pub stopped: Option<SourceError>,
}

/// Settings of an [`X509Source`] other than its endpoint.
#[derive(Debug, Clone)]
pub struct X509SourceBuilder {
    endpoint: Endpoint,
    initial_backoff: Duration,
    max_backoff: Duration,
}

impl X509SourceBuilder {
    /// Waits `initial` before the first reconnection, doubling up to `max` while failures
    /// continue; back to `initial` after each usable update.
    #[must_use]
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// Starts watching. Returns at once; see [`X509Source::wait_until_ready`].
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (the watch runs as a task).
    pub fn start(self) -> X509Source {
        let memory = Arc::new(MemorySource::new());
        let (status_tx, status) = watch::channel(SourceStatus::default());
        let task = tokio::spawn(watch_loop(
            self.endpoint.clone(),
            Arc::clone(&memory),
            status_tx,
            self.initial_backoff,
            self.max_backoff,
        ));
        X509Source {
            endpoint: self.endpoint,
            memory,
            status,
            task,
        }
    }
}

/// A live X509-SVID and bundle set taken from the Workload API; an [`SvidSource`] for
/// [`SpiffeTls`](mesh_core::tls::SpiffeTls).
///
/// The watch runs as a tokio task until the source is dropped or [closed](Self::close).
pub struct X509Source {
    endpoint: Endpoint,
    memory: Arc<MemorySource>,
    status: watch::Receiver<SourceStatus>,
    task: JoinHandle<()>,
}

impl X509Source {
    /// Settings for a source watching `endpoint`, with the default backoff.
    pub fn builder(endpoint: Endpoint) -> X509SourceBuilder {
        X509SourceBuilder {
            endpoint,
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
        }
    }

    /// Starts watching `endpoint` with the default backoff.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn new(endpoint: Endpoint) -> Self {
        Self::builder(endpoint).start()
    }

    /// Starts watching the endpoint named by `SPIFFE_ENDPOINT_SOCKET`.
    ///
    /// # Errors
    ///
    /// [`SourceError::Endpoint`] when the variable is unset or not a valid endpoint.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn from_env() -> Result<Self, SourceError> {
        Ok(Self::new(Endpoint::from_env()?))
    }

    /// The endpoint watched.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Waits until the first SVID has arrived and returns the current one.
    ///
    /// # Errors
    ///
    /// [`SourceError::Timeout`] (naming the last failure, e.g. "no identity issued") when none
    /// arrived within `timeout`; [`SourceError::Refused`] or [`SourceError::Closed`] when the
    /// source stopped.
    pub async fn wait_until_ready(&self, timeout: Duration) -> Result<Arc<X509Svid>, SourceError> {
        let mut status = self.status.clone();
        let waited = tokio::time::timeout(
            timeout,
            status.wait_for(|s| s.updates > 0 || s.stopped.is_some()),
        )
        .await;
        let current = match waited {
            Ok(Ok(current)) => current.clone(),
            // The sender lives in the watch task, which only ends by being aborted.
            Ok(Err(_)) => return Err(self.closed()),
            Err(_) => {
                return Err(SourceError::Timeout {
                    endpoint: self.endpoint.to_string(),
                    waited: timeout,
                    last_error: self
                        .status
                        .borrow()
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "none".to_owned()),
                })
            }
        };
        match (self.memory.svid(), current.stopped) {
            (Some(svid), _) => Ok(svid),
            (None, Some(error)) => Err(error),
            (None, None) => Err(self.closed()),
        }
    }

    /// How many usable updates have been taken in (grows by one per rotation or bundle
    /// change the Workload API sends).
    pub fn updates(&self) -> u64 {
        self.status.borrow().updates
    }

    /// A receiver that sees every change of [`SourceStatus`]: await `changed()` on it to learn
    /// of a new SVID or a failure.
    pub fn subscribe(&self) -> watch::Receiver<SourceStatus> {
        self.status.clone()
    }

    /// The in-memory source the watch writes into; it keeps the last SVID after a close.
    pub fn memory(&self) -> &Arc<MemorySource> {
        &self.memory
    }

    /// Stops watching. The last SVID and bundles stay readable.
    pub fn close(&self) {
        self.task.abort();
    }

    fn closed(&self) -> SourceError {
        SourceError::Closed {
            endpoint: self.endpoint.to_string(),
        }
    }
}

impl Drop for X509Source {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl fmt::Debug for X509Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X509Source")
            .field("endpoint", &self.endpoint.to_string())
            .field(
                "spiffe_id",
                &self.memory.svid().map(|s| s.spiffe_id().clone()),
            )
            .field("status", &*self.status.borrow())
            .finish_non_exhaustive()
    }
}

impl SvidSource for X509Source {
    fn svid(&self) -> Option<Arc<X509Svid>> {
        self.memory.svid()
    }

    fn bundles(&self) -> Arc<BundleSet> {
        self.memory.bundles()
    }
}

/// Turns one `FetchX509SVID` message into its default SVID (`svids[0]`) and the bundle set
/// (the SVID's own trust domain from `svids[0].bundle`, plus the federated bundles).
///
/// The SVID is checked against the X509-SVID profile and its key, and the message's
/// `spiffe_id` must name the same ID as the certificate.
///
/// # Errors
///
/// A [`ContextError`] naming the SVID or bundle that cannot be used.
pub fn svid_and_bundles(context: &X509Context) -> Result<(X509Svid, BundleSet), ContextError> {
    let first = context.svids.first().ok_or(ContextError::NoSvid)?;
    let bad_svid = |reason: String| ContextError::BadSvid {
        spiffe_id: first.spiffe_id.clone(),
        reason,
    };
    let named = SpiffeId::new(&first.spiffe_id).map_err(|e| bad_svid(e.to_string()))?;
    let svid = X509Svid::from_der(&first.cert_chain, &first.private_key)
        .map_err(|e| bad_svid(e.to_string()))?;
    if svid.spiffe_id() != &named {
        return Err(bad_svid(format!(
            "its certificate names `{}`",
            svid.spiffe_id()
        )));
    }

    let own = named.trust_domain().clone();
    let mut bundles = BundleSet::new();
    for (key, der) in &context.federated_bundles {
        let trust_domain = TrustDomain::new(key).map_err(|e| ContextError::BadBundle {
            trust_domain: key.clone(),
            reason: e.to_string(),
        })?;
        // The SVID's own bundle is authoritative for its trust domain.
        if trust_domain != own {
            bundles.insert(bundle_from_der(trust_domain, der)?);
        }
    }
    bundles.insert(bundle_from_der(own, &first.bundle)?);
    Ok((svid, bundles))
}

fn bundle_from_der(trust_domain: TrustDomain, der: &[u8]) -> Result<Bundle, ContextError> {
    let bad = |reason: String| ContextError::BadBundle {
        trust_domain: trust_domain.to_string(),
        reason,
    };
    let certs = split_concatenated_der(der).map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("it holds no certificate".to_owned()));
    }
    let mut bundle = Bundle::new(trust_domain.clone());
    bundle.set_x509_authorities(certs);
    Ok(bundle)
}

/// Follows the stream, reconnecting with backoff, until a status that must not be retried.
async fn watch_loop(
    endpoint: Endpoint,
    memory: Arc<MemorySource>,
    status: watch::Sender<SourceStatus>,
    initial_backoff: Duration,
    max_backoff: Duration,
) {
    let mut backoff = initial_backoff;
    loop {
        let error = match follow(&endpoint, &memory, &status).await {
            Ok(taken) => {
                if taken {
                    backoff = initial_backoff;
                }
                "workload api stream ended".to_owned()
            }
            Err(FollowError { error, taken }) => {
                if taken {
                    backoff = initial_backoff;
                }
                if is_final(&error) {
                    tracing::error!(
                        endpoint = %endpoint,
                        %error,
                        "workload api refused the x509 svid request; not retrying"
                    );
                    let stopped = SourceError::Refused {
                        endpoint: endpoint.to_string(),
                        message: error.to_string(),
                    };
                    status.send_modify(|s| {
                        s.last_error = Some(error.to_string());
                        s.stopped = Some(stopped);
                    });
                    return;
                }
                error.to_string()
            }
        };

        tracing::warn!(
            endpoint = %endpoint,
            error = %error,
            retry_in = ?backoff,
            "x509 svid watch interrupted; keeping the current svid"
        );
        status.send_modify(|s| s.last_error = Some(error));
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(max_backoff);
    }
}

/// A failed stream, and whether it delivered a usable update before failing.
struct FollowError {
    error: ClientError,
    taken: bool,
}

/// Follows one stream until it ends (`Ok`, with whether any update was taken) or fails.
async fn follow(
    endpoint: &Endpoint,
    memory: &MemorySource,
    status: &watch::Sender<SourceStatus>,
) -> Result<bool, FollowError> {
    let mut taken = false;
    let fail = |error, taken| FollowError { error, taken };

    let mut client = WorkloadApiClient::connect(endpoint)
        .await
        .map_err(|e| fail(e, taken))?;
    let mut stream = client
        .watch_x509_context()
        .await
        .map_err(|e| fail(e, taken))?;
    while let Some(message) = stream.next().await {
        let context = message.map_err(|e| fail(e, taken))?;
        match svid_and_bundles(&context) {
            Ok((svid, bundles)) => {
                tracing::info!(
                    spiffe_id = %svid.spiffe_id(),
                    expires_in_s = svid
                        .not_after()
                        .duration_since(std::time::SystemTime::now())
                        .map_or(0, |left| left.as_secs()),
                    trust_domains = bundles.len(),
                    "x509 svid updated from the workload api"
                );
                memory.set(svid, bundles);
                taken = true;
                status.send_modify(|s| {
                    s.updates += 1;
                    s.last_error = None;
                });
            }
            Err(error) => {
                // Keep the last good SVID: a later message may be usable again.
                tracing::warn!(%error, "ignoring an unusable x509 context");
                status.send_modify(|s| s.last_error = Some(error.to_string()));
            }
        }
    }
    Ok(taken)
}

/// Statuses that say the request itself is wrong, so retrying cannot help.
fn is_final(error: &ClientError) -> bool {
    matches!(
        error.code(),
        Some(tonic::Code::InvalidArgument | tonic::Code::Unimplemented)
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::SystemTime;

    use bytes::Bytes;
    use mesh_core::ca::{SvidRequest, X509Issuer};
    use mesh_core::{KeyPair, KeyType};

    use super::*;
    use crate::provider::X509Svid as WireSvid;

    const TTL: Duration = Duration::from_secs(3600);

    fn issuer(td: &str) -> X509Issuer {
        let td = TrustDomain::new(td).unwrap();
        let key = KeyPair::generate(KeyType::EcP256).unwrap();
        X509Issuer::self_signed(&td, key, SystemTime::now(), TTL).unwrap()
    }

    fn wire(issuer: &X509Issuer, id: &str) -> WireSvid {
        let request = SvidRequest::new(SpiffeId::new(id).unwrap(), TTL);
        let svid = issuer
            .issue_with_new_key(&request, KeyType::EcP256, SystemTime::now())
            .unwrap();
        WireSvid {
            spiffe_id: id.to_owned(),
            cert_chain: svid.chain_der().into(),
            private_key: Bytes::copy_from_slice(svid.private_key_pkcs8_der()),
            bundle: Bytes::copy_from_slice(issuer.root()),
            hint: String::new(),
        }
    }

    #[test]
    fn first_svid_and_its_bundle_and_federated_bundles_are_taken() {
        let ours = issuer("example.org");
        let theirs = issuer("other.org");
        let context = X509Context {
            svids: vec![
                wire(&ours, "spiffe://example.org/web"),
                wire(&ours, "spiffe://example.org/second"),
            ],
            federated_bundles: BTreeMap::from([(
                "spiffe://other.org".to_owned(),
                Bytes::copy_from_slice(theirs.root()),
            )]),
        };

        let (svid, bundles) = svid_and_bundles(&context).unwrap();

        assert_eq!(svid.spiffe_id().as_str(), "spiffe://example.org/web");
        assert_eq!(bundles.len(), 2);
        let own = bundles
            .get(&TrustDomain::new("example.org").unwrap())
            .unwrap();
        assert_eq!(own.x509_authorities(), std::slice::from_ref(ours.root()));
        let other = bundles
            .get(&TrustDomain::new("other.org").unwrap())
            .unwrap();
        assert_eq!(
            other.x509_authorities(),
            std::slice::from_ref(theirs.root())
        );
    }

    #[test]
    fn own_bundle_wins_over_a_federated_entry_for_the_same_trust_domain() {
        let ours = issuer("example.org");
        let impostor = issuer("example.org");
        let context = X509Context {
            svids: vec![wire(&ours, "spiffe://example.org/web")],
            federated_bundles: BTreeMap::from([(
                "example.org".to_owned(),
                Bytes::copy_from_slice(impostor.root()),
            )]),
        };

        let (_, bundles) = svid_and_bundles(&context).unwrap();

        assert_eq!(bundles.len(), 1);
        let own = bundles
            .get(&TrustDomain::new("example.org").unwrap())
            .unwrap();
        assert_eq!(own.x509_authorities(), std::slice::from_ref(ours.root()));
    }

    #[test]
    fn message_naming_another_id_than_the_certificate_is_refused() {
        let ours = issuer("example.org");
        let mut svid = wire(&ours, "spiffe://example.org/web");
        svid.spiffe_id = "spiffe://example.org/admin".to_owned();
        let context = X509Context {
            svids: vec![svid],
            ..X509Context::default()
        };

        let error = svid_and_bundles(&context).unwrap_err();

        assert!(
            matches!(&error, ContextError::BadSvid { spiffe_id, reason }
                if spiffe_id == "spiffe://example.org/admin" && reason.contains("/web")),
            "{error}"
        );
    }

    #[test]
    fn key_of_another_certificate_is_refused() {
        let ours = issuer("example.org");
        let mut svid = wire(&ours, "spiffe://example.org/web");
        svid.private_key = wire(&ours, "spiffe://example.org/web").private_key;
        let context = X509Context {
            svids: vec![svid],
            ..X509Context::default()
        };

        assert!(matches!(
            svid_and_bundles(&context),
            Err(ContextError::BadSvid { .. })
        ));
    }

    #[test]
    fn empty_or_garbled_bundles_and_bad_keys_are_refused() {
        let ours = issuer("example.org");
        let mut empty = wire(&ours, "spiffe://example.org/web");
        empty.bundle.clear();
        let context = X509Context {
            svids: vec![empty],
            ..X509Context::default()
        };
        assert!(matches!(
            svid_and_bundles(&context),
            Err(ContextError::BadBundle { trust_domain, .. }) if trust_domain == "example.org"
        ));

        let garbled = X509Context {
            svids: vec![wire(&ours, "spiffe://example.org/web")],
            federated_bundles: BTreeMap::from([(
                "other.org".to_owned(),
                Bytes::from_static(b"junk"),
            )]),
        };
        assert!(matches!(
            svid_and_bundles(&garbled),
            Err(ContextError::BadBundle { trust_domain, .. }) if trust_domain == "other.org"
        ));

        let bad_key = X509Context {
            svids: vec![wire(&ours, "spiffe://example.org/web")],
            federated_bundles: BTreeMap::from([(
                "spiffe://Other.org".to_owned(),
                Bytes::copy_from_slice(ours.root()),
            )]),
        };
        assert!(matches!(
            svid_and_bundles(&bad_key),
            Err(ContextError::BadBundle { trust_domain, .. }) if trust_domain == "spiffe://Other.org"
        ));
    }

    #[test]
    fn message_without_svids_is_refused() {
        assert_eq!(
            svid_and_bundles(&X509Context::default()).unwrap_err(),
            ContextError::NoSvid
        );
    }

    #[test]
    fn only_invalid_argument_and_unimplemented_are_final() {
        let status = |code| ClientError::Status(tonic::Status::new(code, "x"));
        assert!(is_final(&status(tonic::Code::InvalidArgument)));
        assert!(is_final(&status(tonic::Code::Unimplemented)));
        assert!(!is_final(&status(tonic::Code::Unavailable)));
        assert!(!is_final(&status(tonic::Code::PermissionDenied)));
        assert!(!is_final(&status(tonic::Code::Internal)));
        assert!(!is_final(&ClientError::StreamEnded));
    }
}
