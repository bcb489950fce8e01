//! The SVID cache: one X509-SVID per registration entry in use, renewed at half-life.
//!
//! Callers never wait for the CA on the common path: an entry's SVID is issued once, when the
//! entry first appears in the registry (or, for the uid template, when a user first asks), and
//! renewed in the background at about half its life. Every change (a renewal, an entry added
//! or removed, a CA rotation) bumps a generation number on a watch channel; each open
//! Workload API stream waits on that channel and sends its caller a new full snapshot.
//!
//! JWT-SVIDs are cached per identity and audience set until half their life has passed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use hyper::body::Bytes;
use mesh_core::ca::{Ca, CaError, SvidRequest, X509Issuer};
use mesh_core::clock::SharedClock;
use mesh_core::{Bundle, KeyType, SpiffeId};
use rand::Rng;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::registration::{Entry, Registry};

/// Why an SVID could not be produced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The CA refused or failed to issue.
    #[error("issuing an X509-SVID for {spiffe_id} failed: {source}")]
    Issue {
        /// The identity asked for.
        spiffe_id: SpiffeId,
        /// The CA's error.
        source: CaError,
    },
    /// Minting a JWT-SVID failed.
    #[error("minting a JWT-SVID for {spiffe_id} failed: {source}")]
    Mint {
        /// The identity asked for.
        spiffe_id: SpiffeId,
        /// The signer's error.
        source: mesh_core::jwt::JwtError,
    },
    /// The bundle could not be written as JWKS.
    #[error("writing the JWT bundle failed: {0}")]
    Jwks(String),
}

/// An issued X509-SVID in the form the Workload API sends, with its renewal time.
#[derive(Debug)]
pub struct CachedSvid {
    /// The SVID as sent to workloads (chain, key, bundle, hint). Its byte fields are built once
    /// and shared by every clone, and its bundle is the buffer of the cache's [`BundleView`]:
    /// cloning it for a caller or a stream copies no certificate, key or bundle.
    pub wire: workload_api::X509Svid,
    /// When the leaf expires.
    pub not_after: SystemTime,
    /// When the background task renews it.
    pub renew_at: SystemTime,
    issuer: Arc<X509Issuer>,
}

/// The trust bundle of the agent's trust domain in the forms the Workload API sends.
///
/// Each form is encoded once per bundle; every SVID and response shares its buffer.
#[derive(Debug)]
pub struct BundleView {
    /// The bundle itself.
    pub bundle: Bundle,
    /// The X.509 authorities as concatenated DER.
    pub x509_der: Bytes,
    /// The JWT authorities as a JWKS document (every key with `kid`, no `use`).
    pub jwks: Bytes,
}

impl BundleView {
    fn of(bundle: Bundle) -> Result<Self, CacheError> {
        let jwks = bundle
            .to_jwt_jwks()
            .map_err(|e| CacheError::Jwks(e.to_string()))?;
        Ok(Self {
            x509_der: exact(bundle.x509_authorities_concatenated()),
            jwks: exact(jwks.into_bytes()),
            bundle,
        })
    }
}

struct CachedJwt {
    token: String,
    kid: String,
    refresh_at: SystemTime,
}

struct State {
    svids: HashMap<Entry, Arc<CachedSvid>>,
    /// Entries whose SVID a caller has asked for; renewed first.
    served: HashSet<Entry>,
    jwts: HashMap<(SpiffeId, Vec<String>), CachedJwt>,
    bundle: Arc<BundleView>,
    ca_generation: u64,
}

/// Settings of the cache.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// Key type of the SVIDs' keys.
    pub key_type: KeyType,
    /// Lifetime of X509-SVIDs whose entry sets none.
    pub svid_ttl: Duration,
    /// Lifetime of JWT-SVIDs.
    pub jwt_ttl: Duration,
}

/// The SVID cache of one agent. See the module documentation.
pub struct SvidCache {
    ca: Arc<Ca>,
    clock: SharedClock,
    options: CacheOptions,
    metrics: Metrics,
    state: Mutex<State>,
    sync: Mutex<()>,
    changes: watch::Sender<u64>,
}

impl SvidCache {
    /// A cache issuing from `ca`, with nothing issued yet.
    ///
    /// # Errors
    ///
    /// [`CacheError::Jwks`] if the CA's bundle cannot be written as JWKS.
    pub fn new(
        ca: Arc<Ca>,
        clock: SharedClock,
        options: CacheOptions,
        metrics: Metrics,
    ) -> Result<Self, CacheError> {
        let bundle = Arc::new(BundleView::of(ca.current_bundle())?);
        let ca_generation = ca.generation();
        let (changes, _) = watch::channel(0);
        Ok(Self {
            ca,
            clock,
            options,
            metrics,
            state: Mutex::new(State {
                svids: HashMap::new(),
                served: HashSet::new(),
                jwts: HashMap::new(),
                bundle,
                ca_generation,
            }),
            sync: Mutex::new(()),
            changes,
        })
    }

    /// A receiver whose value changes whenever any SVID or the bundle changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The bundle of the agent's trust domain now.
    pub fn bundle(&self) -> Arc<BundleView> {
        Arc::clone(&self.lock().bundle)
    }

    /// The CA the cache issues from.
    pub fn ca(&self) -> &Arc<Ca> {
        &self.ca
    }

    /// The SVID of `entry`, issuing it now if the cache has none.
    ///
    /// # Errors
    ///
    /// [`CacheError::Issue`] if the CA cannot issue.
    pub fn svid(&self, entry: &Entry) -> Result<Arc<CachedSvid>, CacheError> {
        let mut state = self.lock();
        if !state.served.contains(entry) {
            state.served.insert(entry.clone());
        }
        if let Some(svid) = state.svids.get(entry) {
            return Ok(Arc::clone(svid));
        }
        let svid = Arc::new(self.issue(entry, &state.bundle)?);
        state.svids.insert(entry.clone(), Arc::clone(&svid));
        drop(state);
        self.metrics.svid_issued();
        Ok(svid)
    }

    /// Makes the cache follow `registry`: issues an SVID for every explicit entry that has
    /// none, and drops those of entries no longer registered. Notifies streams if anything
    /// changed.
    ///
    /// Entries made from the uid template are kept while the template is in force; they are
    /// issued when a user first asks.
    pub fn sync_registry(&self, registry: &Registry) {
        // One sync at a time, so an older sync cannot put back an entry a newer one removed.
        let _sync = self.sync.lock().unwrap_or_else(PoisonError::into_inner);

        let (missing, bundle, mut changed) = {
            let mut state = self.lock();
            let before = state.svids.len();
            // An entry stays if the registry still has it, or (for entries a template made)
            // if the registry would make exactly this entry for a workload with its selectors.
            state.svids.retain(|entry, _| registry.grants(entry));
            let State { svids, served, .. } = &mut *state;
            served.retain(|entry| svids.contains_key(entry));
            let missing: Vec<Entry> = registry
                .entries()
                .iter()
                .filter(|e| !state.svids.contains_key(*e))
                .cloned()
                .collect();
            let removed = state.svids.len() != before;
            (missing, Arc::clone(&state.bundle), removed)
        };

        // Issued without the cache's lock, so callers are served while a large registry is
        // issued for (at start, or after a reload that adds many entries).
        let mut issued = 0;
        for entry in missing {
            match self.issue(&entry, &bundle) {
                Ok(svid) => {
                    let mut state = self.lock();
                    // A caller may have had it issued meanwhile; keep that one.
                    if let std::collections::hash_map::Entry::Vacant(slot) =
                        state.svids.entry(entry)
                    {
                        slot.insert(Arc::new(svid));
                        issued += 1;
                        changed = true;
                    }
                }
                Err(error) => tracing::error!(%error, "cannot issue for a registration entry"),
            }
        }
        for _ in 0..issued {
            self.metrics.svid_issued();
        }
        if changed {
            self.notify();
        }
    }

    /// Renews every SVID that is due, or that an authority no longer active signed, and takes
    /// up a new bundle if the CA changed. Notifies streams if anything changed. Returns when
    /// the next SVID falls due.
    ///
    /// SVIDs are issued without holding the cache's lock, so callers are served while a CA
    /// rotation re-issues every SVID; those of entries callers have asked for are renewed
    /// first and announced at once, before the ones nobody has asked for yet.
    pub fn refresh(&self) -> Option<SystemTime> {
        let now = self.clock.now();
        let mut state = self.lock();
        let mut changed = false;

        let ca_generation = self.ca.generation();
        if ca_generation != state.ca_generation {
            match BundleView::of(self.ca.current_bundle()) {
                Ok(view) => {
                    state.bundle = Arc::new(view);
                    state.ca_generation = ca_generation;
                    changed = true;
                    tracing::info!(
                        sequence = state.bundle.bundle.sequence(),
                        "trust bundle changed"
                    );
                }
                Err(error) => tracing::error!(%error, "cannot take up the new bundle"),
            }
        }

        // SVIDs keep the bundle they were issued with; a bundle change alone (a new authority
        // prepared) must reach them too. An SVID holding equal bytes in another buffer is moved
        // to the new one as well, so that only one copy of the bundle stays alive.
        if changed {
            let bundle = Arc::clone(&state.bundle);
            for svid in state.svids.values_mut() {
                if !shares_buffer(&svid.wire.bundle, &bundle.x509_der) {
                    let mut wire = svid.wire.clone();
                    wire.bundle = bundle.x509_der.clone();
                    *svid = Arc::new(CachedSvid {
                        wire,
                        not_after: svid.not_after,
                        renew_at: svid.renew_at,
                        issuer: Arc::clone(&svid.issuer),
                    });
                }
            }
        }

        let active = self.ca.x509_issuer();
        let mut due: Vec<(Entry, bool)> = state
            .svids
            .iter()
            .filter(|(_, svid)| svid.renew_at <= now || !Arc::ptr_eq(&svid.issuer, &active))
            .map(|(entry, _)| (entry.clone(), state.served.contains(entry)))
            .collect();
        due.sort_by_key(|(_, served)| !served);
        let served = due.iter().filter(|(_, served)| *served).count();
        let bundle = Arc::clone(&state.bundle);
        drop(state);
        if changed && served == 0 {
            self.notify();
        }

        let mut renewed = 0;
        let mut renewed_unserved = 0;
        for (i, (entry, _)) in due.into_iter().enumerate() {
            match self.issue(&entry, &bundle) {
                Ok(svid) => {
                    let mut state = self.lock();
                    // A registry sync may have dropped the entry meanwhile; keep it dropped.
                    if let Some(slot) = state.svids.get_mut(&entry) {
                        tracing::debug!(spiffe_id = %entry.spiffe_id, "X509-SVID renewed");
                        *slot = Arc::new(svid);
                        renewed += 1;
                        if i >= served {
                            renewed_unserved += 1;
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "renewal failed; retrying later"),
            }
            // The SVIDs callers wait for are done: tell their streams before renewing the rest.
            if i + 1 == served {
                self.notify();
            }
        }
        let next = self.lock().svids.values().map(|s| s.renew_at).min();

        for _ in 0..renewed {
            self.metrics.svid_renewed();
        }
        if renewed_unserved > 0 {
            self.notify();
        }
        next
    }

    /// A JWT-SVID for `spiffe_id` and `audiences`, from the cache if the cached one has more
    /// than half its life left and its key is still in the bundle.
    ///
    /// # Errors
    ///
    /// [`CacheError::Mint`] if minting fails.
    pub fn jwt_svid(
        &self,
        spiffe_id: &SpiffeId,
        audiences: &[String],
    ) -> Result<String, CacheError> {
        let now = self.clock.now();
        let mut key_audiences = audiences.to_vec();
        key_audiences.sort();
        key_audiences.dedup();
        let key = (spiffe_id.clone(), key_audiences);

        let mut state = self.lock();
        if let Some(cached) = state.jwts.get(&key) {
            if now < cached.refresh_at && state.bundle.bundle.jwt_authority(&cached.kid).is_some() {
                return Ok(cached.token.clone());
            }
        }

        let signing = self.ca.jwt_signing_key();
        let ttl = signing.ttl_cap(self.options.jwt_ttl, now);
        let token =
            mesh_core::jwt::mint(signing.key(), signing.kid(), spiffe_id, audiences, ttl, now)
                .map_err(|source| CacheError::Mint {
                    spiffe_id: spiffe_id.clone(),
                    source,
                })?;
        // Entries whose tokens have expired would otherwise pile up for callers that never
        // come back.
        state.jwts.retain(|_, jwt| jwt.refresh_at > now);
        state.jwts.insert(
            key,
            CachedJwt {
                token: token.clone(),
                kid: signing.kid().to_owned(),
                refresh_at: now + ttl / 2,
            },
        );
        Ok(token)
    }

    /// How many X509-SVIDs the cache holds.
    pub fn len(&self) -> usize {
        self.lock().svids.len()
    }

    /// Whether the cache holds no X509-SVID.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn notify(&self) {
        self.changes.send_modify(|generation| *generation += 1);
    }

    fn issue(&self, entry: &Entry, bundle: &BundleView) -> Result<CachedSvid, CacheError> {
        let now = self.clock.now();
        let issuer = self.ca.x509_issuer();
        let ttl = entry.ttl.unwrap_or(self.options.svid_ttl);
        let cap = self.ca.config().max_svid_ttl;
        if ttl > cap {
            tracing::warn!(
                spiffe_id = %entry.spiffe_id,
                ttl = ?ttl,
                cap = ?cap,
                "entry asks for a longer SVID lifetime than this agent allows since it started; restart it to raise the cap"
            );
        }
        let request = SvidRequest::new(entry.spiffe_id.clone(), ttl)
            .with_dns_names(entry.dns_names.iter().cloned());
        let svid = issuer
            .issue_with_new_key(&request, self.options.key_type, now)
            .map_err(|source| CacheError::Issue {
                spiffe_id: entry.spiffe_id.clone(),
                source,
            })?;

        let not_after = svid.not_after();
        let life = not_after.duration_since(now).unwrap_or_default();
        // Renew at half-life, a little earlier at random so that many SVIDs issued together
        // do not all renew in the same instant.
        let jitter = life.mul_f64(rand::rng().random_range(0.0..0.1));
        let renew_at = now + life / 2 - jitter;

        Ok(CachedSvid {
            wire: workload_api::X509Svid {
                spiffe_id: entry.spiffe_id.to_string(),
                cert_chain: exact(svid.chain_der()),
                private_key: Bytes::copy_from_slice(svid.private_key_pkcs8_der()),
                bundle: bundle.x509_der.clone(),
                hint: entry.hint.clone().unwrap_or_default(),
            },
            not_after,
            renew_at,
            issuer,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `bytes` in a buffer of exactly its length: these buffers live as long as an SVID or bundle,
/// and a vector built by pushing may have up to twice the room it needs.
fn exact(bytes: Vec<u8>) -> Bytes {
    Bytes::from(bytes.into_boxed_slice())
}

/// Whether `a` and `b` are views of the same bytes in the same buffer.
fn shares_buffer(a: &Bytes, b: &Bytes) -> bool {
    a.as_ptr() == b.as_ptr() && a.len() == b.len()
}

impl std::fmt::Debug for SvidCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SvidCache")
            .field("svids", &self.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use mesh_core::ca::CaConfig;
    use mesh_core::clock::ManualClock;
    use mesh_core::TrustDomain;

    use super::*;
    use crate::selector::{Selector, SelectorSet};

    const HOUR: Duration = Duration::from_secs(3600);

    struct Fixture {
        _dir: tempfile::TempDir,
        clock: ManualClock,
        cache: SvidCache,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_900_000_000));
        let shared: SharedClock = Arc::new(clock.clone());
        let td = TrustDomain::new("example.org").unwrap();
        let ca = Ca::open(CaConfig::new(td, dir.path()), Arc::clone(&shared)).unwrap();
        let options = CacheOptions {
            key_type: KeyType::EcP256,
            svid_ttl: HOUR,
            jwt_ttl: Duration::from_secs(300),
        };
        let cache = SvidCache::new(Arc::new(ca), shared, options, Metrics::new()).unwrap();
        Fixture {
            _dir: dir,
            clock,
            cache,
        }
    }

    fn entry(path: &str, uid: u32) -> Entry {
        let id = TrustDomain::new("example.org")
            .unwrap()
            .workload_id(path)
            .unwrap();
        Entry::new(id, SelectorSet::from([Selector::uid(uid)]))
    }

    #[test]
    fn sync_issues_for_new_entries_and_drops_removed_ones() {
        let f = fixture();
        let (a, b) = (entry("/a", 1), entry("/b", 2));
        let changes = f.cache.subscribe();

        f.cache
            .sync_registry(&Registry::new(vec![a.clone(), b.clone()]));
        assert_eq!(f.cache.len(), 2);
        assert!(changes.has_changed().unwrap());

        f.cache.sync_registry(&Registry::new(vec![b.clone()]));
        assert_eq!(f.cache.len(), 1);
        assert_eq!(
            f.cache.svid(&b).unwrap().wire.spiffe_id,
            b.spiffe_id.as_str()
        );
    }

    #[test]
    fn switching_to_the_uid_template_drops_explicit_entries() {
        let f = fixture();
        let explicit = entry("/billing", 7);
        f.cache
            .sync_registry(&Registry::new(vec![explicit.clone()]));

        let template = Registry::uid_template(TrustDomain::new("example.org").unwrap());
        f.cache.sync_registry(&template);
        assert!(f.cache.is_empty(), "the explicit entry's SVID must go");

        let made = template.matching(&SelectorSet::from([Selector::uid(7)]));
        f.cache.svid(&made[0]).unwrap();
        f.cache.sync_registry(&template);
        assert_eq!(f.cache.len(), 1, "the template's own entries stay");
    }

    #[test]
    fn svids_are_renewed_near_half_life_and_streams_are_told() {
        let f = fixture();
        let a = entry("/a", 1);
        f.cache.sync_registry(&Registry::new(vec![a.clone()]));
        let first = f.cache.svid(&a).unwrap();
        let mut changes = f.cache.subscribe();
        changes.mark_unchanged();

        // Before 40% of the life nothing is due (jitter takes at most 10% off the half).
        f.clock.advance(HOUR * 2 / 5);
        f.cache.refresh();
        assert!(Arc::ptr_eq(&first, &f.cache.svid(&a).unwrap()));
        assert!(!changes.has_changed().unwrap());

        f.clock.advance(HOUR / 10 + Duration::from_secs(1));
        f.cache.refresh();
        let renewed = f.cache.svid(&a).unwrap();
        assert_ne!(renewed.wire.cert_chain, first.wire.cert_chain);
        assert!(renewed.not_after > first.not_after);
        assert!(changes.has_changed().unwrap());
    }

    #[test]
    fn every_svid_shares_the_bundle_buffer_before_and_after_a_bundle_change() {
        let f = fixture();
        let entries = vec![entry("/a", 1), entry("/b", 2), entry("/c", 3)];
        f.cache.sync_registry(&Registry::new(entries.clone()));
        let shares_bundle = |bundle: &Bytes| {
            entries.iter().all(|e| {
                let svid = f.cache.svid(e).unwrap();
                shares_buffer(&svid.wire.bundle, bundle)
                    && svid.wire.clone().bundle.as_ptr() == bundle.as_ptr()
            })
        };
        let before = f.cache.bundle().x509_der.clone();
        assert!(shares_bundle(&before));

        // Half the CA's life: a successor is prepared and published in the bundle.
        f.clock.advance(Duration::from_secs(12 * 3600 + 1));
        assert!(f.cache.ca().tick().unwrap());
        f.cache.refresh();

        let after = f.cache.bundle().x509_der.clone();
        assert_ne!(after, before, "the bundle must have gained the successor");
        assert!(shares_bundle(&after));
    }

    #[test]
    fn jwt_svids_are_reused_until_half_life() {
        let f = fixture();
        let id = entry("/a", 1).spiffe_id;
        let audiences = vec!["db".to_owned(), "api".to_owned()];

        let first = f.cache.jwt_svid(&id, &audiences).unwrap();
        let reordered = vec!["api".to_owned(), "db".to_owned()];
        assert_eq!(f.cache.jwt_svid(&id, &reordered).unwrap(), first);

        f.clock.advance(Duration::from_secs(151));
        assert_ne!(f.cache.jwt_svid(&id, &audiences).unwrap(), first);
    }
}
