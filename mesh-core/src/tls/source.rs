//! Where the TLS configs take the local SVID and the trust bundles from, at every handshake.
//!
//! A [`SvidSource`] is read once per handshake, so replacing what it holds (a renewed SVID, a
//! bundle with a new CA) changes what the next handshake presents and trusts without rebuilding
//! any config. Connections already established are not touched.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use crate::bundle::{Bundle, BundleSet};
use crate::ca::{Ca, CaError, SvidRequest};
use crate::key::KeyType;
use crate::x509::X509Svid;

/// A live source of the local X509-SVID and the bundles used to verify peers.
///
/// Implementations must be cheap to read: both methods are called on every handshake.
pub trait SvidSource: Send + Sync + fmt::Debug {
    /// The SVID to present now, or `None` while there is none yet (handshakes then fail).
    fn svid(&self) -> Option<Arc<X509Svid>>;

    /// The bundles of every trusted trust domain; a peer is verified against the bundle of
    /// its own trust domain.
    fn bundles(&self) -> Arc<BundleSet>;
}

/// An in-memory [`SvidSource`] that its owner updates: from a Workload API watch stream, or
/// from an embedded [`Ca`] with [`MemorySource::renew_from_ca`].
///
/// Readers get `Arc`s, so an update never waits for a handshake and a handshake never sees a
/// half-made update.
#[derive(Debug, Default)]
pub struct MemorySource {
    state: RwLock<Snapshot>,
    generation: AtomicU64,
}

#[derive(Debug, Default)]
struct Snapshot {
    svid: Option<Arc<X509Svid>>,
    bundles: Arc<BundleSet>,
}

impl MemorySource {
    /// A source with no SVID and no bundles.
    pub fn new() -> Self {
        Self::default()
    }

    /// A source holding `svid` and `bundles`.
    pub fn with(svid: X509Svid, bundles: BundleSet) -> Self {
        let source = Self::new();
        source.set(svid, bundles);
        source
    }

    /// Replaces the SVID and the bundles in one step.
    pub fn set(&self, svid: X509Svid, bundles: BundleSet) {
        self.update(|s| {
            s.svid = Some(Arc::new(svid));
            s.bundles = Arc::new(bundles);
        });
    }

    /// Replaces the SVID; the bundles stay.
    pub fn set_svid(&self, svid: X509Svid) {
        self.update(|s| s.svid = Some(Arc::new(svid)));
    }

    /// Replaces every bundle.
    pub fn set_bundles(&self, bundles: BundleSet) {
        self.update(|s| s.bundles = Arc::new(bundles));
    }

    /// Adds `bundle`, replacing the bundle of the same trust domain if there is one.
    pub fn set_bundle(&self, bundle: Bundle) {
        self.update(|s| {
            let mut bundles = BundleSet::clone(&s.bundles);
            bundles.insert(bundle);
            s.bundles = Arc::new(bundles);
        });
    }

    /// Issues a fresh SVID from `ca` (with a new key of `key_type`) and takes it together with
    /// the CA's current bundle, which replaces the bundle of the CA's trust domain. Call it at
    /// the SVID's half-life and after each CA change ([`Ca::subscribe`]).
    ///
    /// # Errors
    ///
    /// Returns the [`CaError`] of issuing; the source then keeps what it had.
    pub fn renew_from_ca(
        &self,
        ca: &Ca,
        request: &SvidRequest,
        key_type: KeyType,
    ) -> Result<(), CaError> {
        let svid = ca.issue_x509_svid_with_new_key(request, key_type)?;
        let bundle = ca.current_bundle();
        self.update(|s| {
            let mut bundles = BundleSet::clone(&s.bundles);
            bundles.insert(bundle);
            s.svid = Some(Arc::new(svid));
            s.bundles = Arc::new(bundles);
        });
        Ok(())
    }

    /// A number that grows by one on every update.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn update(&self, change: impl FnOnce(&mut Snapshot)) {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        change(&mut state);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn read(&self) -> RwLockReadGuard<'_, Snapshot> {
        // Every update replaces whole `Arc`s in one assignment, so a panic in another thread
        // cannot leave a torn snapshot behind the poison flag.
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }
}

impl SvidSource for MemorySource {
    fn svid(&self) -> Option<Arc<X509Svid>> {
        self.read().svid.clone()
    }

    fn bundles(&self) -> Arc<BundleSet> {
        Arc::clone(&self.read().bundles)
    }
}

impl<T: SvidSource + ?Sized> SvidSource for Arc<T> {
    fn svid(&self) -> Option<Arc<X509Svid>> {
        T::svid(self)
    }

    fn bundles(&self) -> Arc<BundleSet> {
        T::bundles(self)
    }
}
