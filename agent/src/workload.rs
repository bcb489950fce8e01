//! The agent's Workload API provider: attests each caller, finds its registration entries, and
//! answers from the SVID cache.
//!
//! A caller is attested by the Unix attestor and, when the registry needs `k8s:` selectors and
//! a [`KubernetesAttestor`] is configured, by the kubelet after it.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use mesh_core::{BundleSet, SpiffeId, TrustDomain};
use tokio::sync::watch;
use workload_api::{
    Caller, JwtBundles, JwtSvid, Provider, ProviderError, ProviderStream, ValidatedJwt,
    X509Bundles, X509Context,
};

use crate::attest::{Attestor, Needs};
use crate::cache::{CacheError, SvidCache};
use crate::k8s::KubernetesAttestor;
use crate::metrics::{Metrics, StreamGuard};
use crate::registration::{Entry, Registry};
use crate::selector::SelectorSet;

/// Serves identities from an [`SvidCache`] to attested callers.
#[derive(Debug, Clone)]
pub struct AgentProvider {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    trust_domain: TrustDomain,
    cache: Arc<SvidCache>,
    registry: watch::Receiver<Arc<Registry>>,
    attestor: Arc<Attestor>,
    kubernetes: Option<Arc<KubernetesAttestor>>,
    /// Set once the missing Kubernetes attestor has been warned about.
    warned_no_kubernetes: AtomicBool,
    metrics: Metrics,
}

impl AgentProvider {
    /// A provider over `cache`, following the registry in `registry`, attesting callers with
    /// the Unix attestor only.
    pub fn new(
        trust_domain: TrustDomain,
        cache: Arc<SvidCache>,
        registry: watch::Receiver<Arc<Registry>>,
        attestor: Arc<Attestor>,
        metrics: Metrics,
    ) -> Self {
        Self::with_kubernetes(trust_domain, cache, registry, attestor, None, metrics)
    }

    /// As [`AgentProvider::new`], with the Kubernetes attestor (if any) adding `k8s:`
    /// selectors when the registry in force uses them.
    pub fn with_kubernetes(
        trust_domain: TrustDomain,
        cache: Arc<SvidCache>,
        registry: watch::Receiver<Arc<Registry>>,
        attestor: Arc<Attestor>,
        kubernetes: Option<Arc<KubernetesAttestor>>,
        metrics: Metrics,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                trust_domain,
                cache,
                registry,
                attestor,
                kubernetes,
                warned_no_kubernetes: AtomicBool::new(false),
                metrics,
            }),
        }
    }
}

impl Inner {
    /// The caller's selectors, known to describe the process that connected, with the optional
    /// parts the registry in force needs.
    async fn attest(&self, caller: &Caller) -> Result<SelectorSet, ProviderError> {
        let needs = self.registry.borrow().needs();
        self.attest_for(caller, needs).await
    }

    /// The caller's selectors with the optional parts in `needs`.
    async fn attest_for(
        &self,
        caller: &Caller,
        needs: Needs,
    ) -> Result<SelectorSet, ProviderError> {
        let pid = u32::try_from(caller.pid())
            .ok()
            .filter(|pid| *pid > 0)
            .ok_or_else(|| ProviderError::AttestationFailed("caller pid is unknown".to_owned()))?;
        let (uid, gid) = (caller.uid(), caller.gid());

        // Reading /proc takes microseconds; NSS lookups and hashing an executable may block,
        // so only those go to the blocking pool.
        let attestation = if needs.may_block() {
            let attestor = Arc::clone(&self.attestor);
            tokio::task::spawn_blocking(move || attestor.attest(pid, uid, gid, needs))
                .await
                .map_err(|e| ProviderError::Internal(format!("attestation task failed: {e}")))?
        } else {
            self.attestor.attest(pid, uid, gid, needs)
        }
        .map_err(|e| ProviderError::AttestationFailed(e.to_string()))?;
        let mut selectors = attestation.selectors;
        if needs.kubernetes {
            self.add_kubernetes_selectors(pid, &mut selectors).await?;
        }

        // What was read under /proc/<pid> belongs to the caller only if the caller still
        // exists now: a pid is not reused while its process lives.
        caller.ensure_alive()?;
        Ok(selectors)
    }

    /// Adds the `k8s:` selectors of process `pid`, if it runs in a pod container.
    async fn add_kubernetes_selectors(
        &self,
        pid: u32,
        selectors: &mut SelectorSet,
    ) -> Result<(), ProviderError> {
        let Some(kubernetes) = &self.kubernetes else {
            if !self.warned_no_kubernetes.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "registration uses k8s: selectors but the Kubernetes attestor is off (no \
                     [kubernetes] table when the agent started); no caller has them"
                );
            }
            return Ok(());
        };
        let pod = kubernetes
            .attest(pid)
            .await
            .map_err(|e| ProviderError::AttestationFailed(e.to_string()))?;
        if let Some(pod) = pod {
            selectors.extend(pod.selectors());
        }
        Ok(())
    }

    fn x509_context(&self, selectors: &SelectorSet) -> Result<X509Context, ProviderError> {
        let registry = Arc::clone(&self.registry.borrow());
        self.context_of(&registry.matching(selectors))
    }

    /// Like [`Inner::x509_context`] for an open stream. The caller's selectors are kept in
    /// `state` and attested again only when a new registry needs parts they were made without
    /// (say, a `unix:sha256` entry was added). The entries it matched are kept too and looked up
    /// again only when the registry changes: matching scans every entry, and every change of
    /// any SVID wakes every stream, so without them a change costs streams times entries.
    async fn stream_x509_context(
        &self,
        caller: &Caller,
        state: &tokio::sync::Mutex<StreamState>,
    ) -> Result<X509Context, ProviderError> {
        let registry = Arc::clone(&self.registry.borrow());
        let mut state = state.lock().await;
        if !state.attested_for.covers(registry.needs()) {
            let selectors = self.attest_for(caller, registry.needs()).await?;
            state.keep(selectors, registry.needs());
        }
        let matched = match state.matched.take() {
            Some(matched) if Arc::ptr_eq(&matched.registry, &registry) => matched,
            _ => Matched::of(registry, &state.selectors),
        };
        let entries: Vec<Cow<'_, Entry>> = matched
            .entries
            .iter()
            .map(|m| match m {
                MatchedEntry::Listed(i) => Cow::Borrowed(&matched.registry.entries()[*i]),
                MatchedEntry::Made(entry) => Cow::Borrowed(entry),
            })
            .collect();
        let context = self.context_of(&entries);
        drop(entries);
        state.matched = Some(matched);
        context
    }

    fn context_of(&self, entries: &[Cow<'_, Entry>]) -> Result<X509Context, ProviderError> {
        if entries.is_empty() {
            return Err(ProviderError::NoIdentity);
        }
        let svids = entries
            .iter()
            .map(|entry| self.cache.svid(entry).map(|svid| svid.wire.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(internal)?;
        Ok(X509Context {
            svids,
            federated_bundles: BTreeMap::new(),
        })
    }

    fn x509_bundles(&self) -> X509Bundles {
        let view = self.cache.bundle();
        X509Bundles {
            bundles: BTreeMap::from([(self.trust_domain.id_string(), view.x509_der.clone())]),
        }
    }

    fn jwt_bundles(&self) -> JwtBundles {
        let view = self.cache.bundle();
        JwtBundles {
            bundles: BTreeMap::from([(self.trust_domain.id_string(), view.jwks.clone())]),
        }
    }

    fn record<T>(&self, method: &str, started: Instant, result: &Result<T, ProviderError>) {
        let code = match result {
            Ok(_) => tonic::Code::Ok,
            Err(error) => tonic::Status::from(error.clone()).code(),
        };
        self.metrics
            .record_call(method, code_name(code), started.elapsed());
    }
}

/// What an X.509 context stream knows about its caller.
struct StreamState {
    /// The caller's selectors.
    selectors: SelectorSet,
    /// The optional attestation parts `selectors` were made with.
    attested_for: Needs,
    /// The entries the selectors matched in the registry last seen.
    matched: Option<Matched>,
}

impl StreamState {
    fn new(selectors: SelectorSet, attested_for: Needs) -> Self {
        let mut state = Self {
            selectors: SelectorSet::new(),
            attested_for,
            matched: None,
        };
        state.keep(selectors, attested_for);
        state
    }

    /// Keeps `selectors`, made with the parts in `needs`, for as long as the stream is open,
    /// and forgets the entries the previous ones matched.
    fn keep(&mut self, mut selectors: SelectorSet, needs: Needs) {
        selectors.shrink_to_fit();
        self.selectors = selectors;
        self.attested_for = needs;
        self.matched = None;
    }
}

/// The entries one stream's caller matched in one version of the registry.
struct Matched {
    registry: Arc<Registry>,
    entries: Vec<MatchedEntry>,
}

impl Matched {
    /// The entries of `registry` that match `selectors`.
    fn of(registry: Arc<Registry>, selectors: &SelectorSet) -> Self {
        let listed = registry.entries();
        let mut entries: Vec<MatchedEntry> = registry
            .matching(selectors)
            .into_iter()
            .map(|entry| match entry {
                Cow::Borrowed(entry) => listed
                    .iter()
                    .position(|e| std::ptr::eq(e, entry))
                    .map_or_else(|| MatchedEntry::Made(entry.clone()), MatchedEntry::Listed),
                Cow::Owned(entry) => MatchedEntry::Made(entry),
            })
            .collect();
        // The collect above reuses the allocation of the larger `Cow<Entry>` items; this value
        // lives as long as the caller's stream, so give the spare bytes back.
        entries.shrink_to_fit();
        Self { registry, entries }
    }
}

/// One matched entry, without copying the entries the registry holds.
enum MatchedEntry {
    /// The registry's explicit entry at this position.
    Listed(usize),
    /// An entry a template made for this caller.
    Made(Entry),
}

/// Turns a stream of "something changed" signals into a stream of snapshots, sending the first
/// at once and later ones only when they differ from the last sent.
fn snapshots<T, F, Fut>(
    first: T,
    changes: watch::Receiver<u64>,
    registry: watch::Receiver<Arc<Registry>>,
    guard: StreamGuard,
    compute: F,
) -> ProviderStream<T>
where
    T: Clone + PartialEq + Send + Sync + 'static,
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, ProviderError>> + Send,
{
    struct Watch<T, F> {
        last: Option<T>,
        pending: Option<T>,
        changes: watch::Receiver<u64>,
        registry: watch::Receiver<Arc<Registry>>,
        compute: F,
        done: bool,
        _guard: StreamGuard,
    }

    let state = Watch {
        last: None,
        pending: Some(first),
        changes,
        registry,
        compute,
        done: false,
        _guard: guard,
    };
    futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        if let Some(item) = st.pending.take() {
            st.last = Some(item.clone());
            return Some((Ok(item), st));
        }
        loop {
            tokio::select! {
                changed = st.changes.changed() => if changed.is_err() { return None },
                changed = st.registry.changed() => if changed.is_err() { return None },
            }
            // Boxed: the future may attest the caller again (through the kubelet, too) and is
            // kilobytes large; inline, every idle stream's state would hold room for it.
            match Box::pin((st.compute)()).await {
                Ok(item) if st.last.as_ref() == Some(&item) => {}
                Ok(item) => {
                    st.last = Some(item.clone());
                    return Some((Ok(item), st));
                }
                Err(error) => {
                    st.done = true;
                    return Some((Err(error), st));
                }
            }
        }
    })
    .boxed()
}

#[tonic::async_trait]
impl Provider for AgentProvider {
    async fn watch_x509_context(
        &self,
        caller: &Caller,
    ) -> Result<ProviderStream<X509Context>, ProviderError> {
        let started = Instant::now();
        let inner = &self.inner;
        let result = async {
            let needs = inner.registry.borrow().needs();
            let selectors = inner.attest_for(caller, needs).await?;
            let first = inner.x509_context(&selectors)?;
            Ok((selectors, needs, first))
        }
        .await;
        inner.record("FetchX509SVID", started, &result);
        let (selectors, attested_for, first) =
            result.inspect_err(|error| log_refusal(caller, error))?;

        tracing::debug!(
            pid = caller.pid(),
            uid = caller.uid(),
            spiffe_id = %first.svids[0].spiffe_id,
            svids = first.svids.len(),
            "X.509 context stream opened"
        );
        let provider = Arc::clone(inner);
        let caller = caller.clone();
        let state = Arc::new(tokio::sync::Mutex::new(StreamState::new(
            selectors,
            attested_for,
        )));
        Ok(snapshots(
            first,
            inner.cache.subscribe(),
            inner.registry.clone(),
            inner.metrics.stream_opened(),
            move || {
                let provider = Arc::clone(&provider);
                let caller = caller.clone();
                let state = Arc::clone(&state);
                async move { provider.stream_x509_context(&caller, &state).await }
            },
        ))
    }

    async fn watch_x509_bundles(
        &self,
        caller: &Caller,
    ) -> Result<ProviderStream<X509Bundles>, ProviderError> {
        let started = Instant::now();
        let inner = &self.inner;
        let result = inner.attest(caller).await;
        inner.record("FetchX509Bundles", started, &result);
        result.inspect_err(|error| log_refusal(caller, error))?;
        tracing::debug!(
            pid = caller.pid(),
            uid = caller.uid(),
            "X.509 bundle stream opened"
        );
        let provider = Arc::clone(inner);
        Ok(snapshots(
            inner.x509_bundles(),
            inner.cache.subscribe(),
            inner.registry.clone(),
            inner.metrics.stream_opened(),
            move || std::future::ready(Ok(provider.x509_bundles())),
        ))
    }

    async fn watch_jwt_bundles(
        &self,
        caller: &Caller,
    ) -> Result<ProviderStream<JwtBundles>, ProviderError> {
        let started = Instant::now();
        let inner = &self.inner;
        let result = inner.attest(caller).await;
        inner.record("FetchJWTBundles", started, &result);
        result.inspect_err(|error| log_refusal(caller, error))?;
        tracing::debug!(
            pid = caller.pid(),
            uid = caller.uid(),
            "JWT bundle stream opened"
        );
        let provider = Arc::clone(inner);
        Ok(snapshots(
            inner.jwt_bundles(),
            inner.cache.subscribe(),
            inner.registry.clone(),
            inner.metrics.stream_opened(),
            move || std::future::ready(Ok(provider.jwt_bundles())),
        ))
    }

    async fn fetch_jwt_svids(
        &self,
        caller: &Caller,
        audience: Vec<String>,
        spiffe_id: Option<String>,
    ) -> Result<Vec<JwtSvid>, ProviderError> {
        let started = Instant::now();
        let inner = &self.inner;
        let result = async {
            if audience.is_empty() || audience.iter().any(String::is_empty) {
                return Err(ProviderError::InvalidArgument(
                    "audience must not be empty".to_owned(),
                ));
            }
            let wanted = spiffe_id
                .as_deref()
                .map(SpiffeId::new)
                .transpose()
                .map_err(|e| ProviderError::InvalidArgument(format!("spiffe_id: {e}")))?;
            let selectors = inner.attest(caller).await?;
            let registry = Arc::clone(&inner.registry.borrow());
            let entries = registry.matching(&selectors);
            if entries.is_empty() {
                return Err(ProviderError::NoIdentity);
            }
            let chosen: Vec<_> = match &wanted {
                Some(id) => entries.iter().filter(|e| &e.spiffe_id == id).collect(),
                None => entries.iter().collect(),
            };
            if chosen.is_empty() {
                return Err(ProviderError::PermissionDenied(format!(
                    "caller may not have the identity {}",
                    spiffe_id.unwrap_or_default()
                )));
            }
            let mut svids = Vec::with_capacity(chosen.len());
            for entry in chosen {
                // A caller may hold the same identity through several entries; mint it once.
                if svids
                    .iter()
                    .any(|s: &JwtSvid| s.spiffe_id == entry.spiffe_id.as_str())
                {
                    continue;
                }
                let token = inner
                    .cache
                    .jwt_svid(&entry.spiffe_id, &audience)
                    .map_err(internal)?;
                svids.push(JwtSvid {
                    spiffe_id: entry.spiffe_id.to_string(),
                    token,
                    hint: entry.hint.clone().unwrap_or_default(),
                });
            }
            Ok(svids)
        }
        .await;
        inner.record("FetchJWTSVID", started, &result);
        match &result {
            Ok(svids) => tracing::debug!(
                pid = caller.pid(),
                uid = caller.uid(),
                spiffe_id = %svids[0].spiffe_id,
                "JWT-SVID fetched"
            ),
            Err(error) => log_refusal(caller, error),
        }
        result
    }

    async fn validate_jwt_svid(
        &self,
        caller: &Caller,
        audience: &str,
        token: &str,
    ) -> Result<ValidatedJwt, ProviderError> {
        let started = Instant::now();
        let inner = &self.inner;
        let result = async {
            if audience.is_empty() {
                return Err(ProviderError::InvalidArgument(
                    "audience must not be empty".to_owned(),
                ));
            }
            if token.is_empty() {
                return Err(ProviderError::InvalidArgument(
                    "svid must not be empty".to_owned(),
                ));
            }
            inner.attest(caller).await?;
            let bundles: BundleSet = std::iter::once(inner.cache.bundle().bundle.clone()).collect();
            let now = std::time::SystemTime::now();
            let svid = mesh_core::jwt::validate(token, &bundles, audience, now)
                .map_err(|e| ProviderError::InvalidArgument(e.to_string()))?;
            Ok(ValidatedJwt {
                spiffe_id: svid.spiffe_id().to_string(),
                claims: svid.claims().clone(),
            })
        }
        .await;
        inner.record("ValidateJWTSVID", started, &result);
        match &result {
            Ok(valid) => tracing::debug!(
                pid = caller.pid(),
                uid = caller.uid(),
                subject = %valid.spiffe_id,
                "JWT-SVID validated"
            ),
            Err(error) => log_refusal(caller, error),
        }
        result
    }
}

fn internal(error: CacheError) -> ProviderError {
    tracing::error!(%error, "cannot serve an identity");
    ProviderError::Internal(error.to_string())
}

fn log_refusal(caller: &Caller, error: &ProviderError) {
    tracing::info!(pid = caller.pid(), uid = caller.uid(), %error, "workload api call refused");
}

fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::InvalidArgument => "InvalidArgument",
        tonic::Code::PermissionDenied => "PermissionDenied",
        tonic::Code::Unavailable => "Unavailable",
        tonic::Code::Unimplemented => "Unimplemented",
        tonic::Code::Internal => "Internal",
        _ => "Other",
    }
}
