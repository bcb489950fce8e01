//! The rotating CA: X.509 authorities and JWT signing keys, each moving through
//! prepared -> active -> retired -> dropped as the clock moves.
//!
//! # Schedule
//!
//! Both kinds follow the same rule, measured on the **active** authority's own lifetime
//! `L = notAfter - start`, where `start` is when the authority was made (a certificate's
//! notBefore is back-dated for clock skew and does not count; for a JWT key `L` is the
//! configured key lifetime):
//!
//! - at `start + L/2` a successor is **prepared**: generated, persisted, and published in
//!   the bundle, so every relying party learns it long before it signs anything;
//! - at `start + 5L/6` the successor becomes **active** (it signs from now on) and the old
//!   one is **retired** (it signs nothing more, but stays in the bundle);
//! - a retired authority is **dropped** from the bundle at `min(notAfter, retiredAt + max TTL)`,
//!   where max TTL is the cap on SVIDs (X.509) or JWT-SVIDs (JWT) it could have signed: by
//!   then every credential it signed has expired.
//!
//! With the defaults (CA and JWT key lifetime 24 h), a successor appears in the bundle after
//! 12 h, takes over after 20 h, and the old one leaves the bundle one SVID TTL later (1 h for
//! X.509, 5 min for JWT) and at the latest at its own expiry. An authority is prepared for
//! `L/3`, active for `L/2`. Keep the CA lifetime at least 6 times the SVID TTL so SVIDs signed
//! just before a hand-over still get their full TTL (SVIDs are always capped at their
//! signer's notAfter, so none outlives its signer).
//!
//! After a long stop, [`Ca::tick`] catches up in one call: an expired active authority is
//! replaced at once (by the prepared one if still valid, else by a new one).
//!
//! A CA that signs directly with an upstream CA ([`UpstreamMode::Direct`]) cannot rotate its
//! X.509 authority (the team's CA certificate is what it is); its JWT keys still rotate.
//!
//! # Change notification
//!
//! Nothing here runs by itself: the owner calls [`Ca::tick`] periodically (e.g. every few
//! seconds, or at [`Ca::next_change`]). Every change bumps [`Ca::generation`] and calls the
//! callbacks given to [`Ca::subscribe`]; the bundle's sequence number grows whenever the
//! bundle's content changes (a prepare or a drop; an activation leaves the bundle as it is).

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use rustls_pki_types::CertificateDer;

use super::authority::{whole_seconds, UpstreamCa, UpstreamMode, X509Issuer};
use super::store::{sha256_hex, CaMode, JwtRecord, StateFile, Store, X509Record};
use super::{CaError, SvidRequest};
use crate::bundle::{Bundle, JwtAuthority};
use crate::clock::SharedClock;
use crate::id::TrustDomain;
use crate::key::{KeyPair, KeyType};
use crate::x509::{self, X509Svid};

/// Most schedule steps one [`Ca::tick`] takes; far more than a catch-up after any outage needs.
const MAX_STEPS_PER_TICK: usize = 32;

/// Random bytes in a JWT key ID (32 base64url characters).
const KID_BYTES: usize = 24;

/// Longest refresh hint put in the bundle.
const MAX_REFRESH_HINT: Duration = Duration::from_secs(300);

/// A team's CA and how to use it.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The loaded CA.
    pub ca: Arc<UpstreamCa>,
    /// Sign with it directly, or with intermediates made under it.
    pub mode: UpstreamMode,
}

/// Configuration of a [`Ca`].
#[derive(Debug, Clone)]
pub struct CaConfig {
    /// The trust domain the CA issues for.
    pub trust_domain: TrustDomain,
    /// Where keys, certificates and the state file live (created with mode 0700).
    pub data_dir: PathBuf,
    /// Key type of CA keys made here (roots or intermediates).
    pub ca_key_type: KeyType,
    /// Lifetime of each CA certificate made here.
    pub ca_ttl: Duration,
    /// Cap on X509-SVID lifetimes.
    pub max_svid_ttl: Duration,
    /// Key type of JWT signing keys.
    pub jwt_key_type: KeyType,
    /// Lifetime of each JWT signing key.
    pub jwt_key_ttl: Duration,
    /// Cap on JWT-SVID lifetimes.
    pub max_jwt_svid_ttl: Duration,
    /// A team's CA to chain to instead of self-signed roots.
    pub upstream: Option<Upstream>,
}

impl CaConfig {
    /// Defaults: EC P-256 keys, CA and JWT key lifetime 24 h, X509-SVIDs at most 1 h,
    /// JWT-SVIDs at most 5 min, self-signed roots.
    pub fn new(trust_domain: TrustDomain, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            trust_domain,
            data_dir: data_dir.into(),
            ca_key_type: KeyType::EcP256,
            ca_ttl: Duration::from_secs(24 * 3600),
            max_svid_ttl: Duration::from_secs(3600),
            jwt_key_type: KeyType::EcP256,
            jwt_key_ttl: Duration::from_secs(24 * 3600),
            max_jwt_svid_ttl: Duration::from_secs(300),
            upstream: None,
        }
    }
}

/// The stage of an authority's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthorityState {
    /// Published in the bundle, not yet signing.
    Prepared,
    /// Signing.
    Active,
    /// No longer signing; still in the bundle until what it signed has expired.
    Retired,
}

/// X.509 CA or JWT signing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthorityKind {
    /// An X.509 CA.
    X509,
    /// A JWT signing key.
    Jwt,
}

/// A snapshot of one authority, for inspection and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorityInfo {
    /// X.509 or JWT.
    pub kind: AuthorityKind,
    /// Stable number of this authority in the data directory.
    pub id: u64,
    /// Its stage.
    pub state: AuthorityState,
    /// The key ID of a JWT key.
    pub key_id: Option<String>,
    /// The signing certificate of an X.509 authority.
    pub certificate: Option<CertificateDer<'static>>,
    /// Start of its validity.
    pub not_before: SystemTime,
    /// End of its validity.
    pub not_after: SystemTime,
    /// When it was prepared.
    pub prepared_at: SystemTime,
    /// When it became active.
    pub activated_at: Option<SystemTime>,
    /// When it was retired.
    pub retired_at: Option<SystemTime>,
}

/// The JWT key that signs now, with its key ID.
///
/// `Debug` never shows the private key.
#[derive(Clone)]
pub struct JwtSigningKey {
    kid: String,
    key: Arc<KeyPair>,
    not_after: SystemTime,
    max_ttl: Duration,
}

impl JwtSigningKey {
    /// The key ID to put in the token header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The private key.
    pub fn key(&self) -> &KeyPair {
        &self.key
    }

    /// End of this key's life; no token it signs may expire later.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The lifetime a token minted now may have: `requested`, capped by the CA's maximum
    /// JWT-SVID TTL and by this key's end of life (zero if that has passed).
    pub fn ttl_cap(&self, requested: Duration, now: SystemTime) -> Duration {
        let left = self.not_after.duration_since(now).unwrap_or_default();
        requested.min(self.max_ttl).min(left)
    }
}

impl fmt::Debug for JwtSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSigningKey")
            .field("kid", &self.kid)
            .field("key", &self.key)
            .field("not_after", &x509::format_time(self.not_after))
            .finish()
    }
}

type Callback = Box<dyn Fn(u64) + Send + Sync>;

/// The rotating CA of one trust domain.
///
/// Share it with `Arc`; every method takes `&self`.
///
/// # Limitations
///
/// - Nothing stops two processes from opening the same data directory; both would rotate and
///   overwrite each other's state file. Run one CA per directory.
/// - If the configured upstream CA certificate changes, opening fails with
///   [`CaError::ConfigMismatch`]: authorities made under the old one are not migrated, so the
///   operator has to move the data directory away, which starts a new CA.
/// - In direct mode the upstream certificate cannot be rotated here; when it expires, issuing
///   fails with [`CaError::IssuerExpired`] until the team installs a new one.
pub struct Ca {
    config: CaConfig,
    mode: CaMode,
    clock: SharedClock,
    store: Store,
    upstream_issuer: Option<Arc<X509Issuer>>,
    /// Held for a whole tick so two ticks never interleave; issuing does not take it.
    tick_lock: Mutex<()>,
    inner: Mutex<Inner>,
    subscribers: Mutex<Vec<Callback>>,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("trust_domain", &self.config.trust_domain)
            .field("data_dir", &self.config.data_dir)
            .field("mode", &self.mode)
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct Inner {
    state: CaState,
    bundle: Bundle,
    generation: u64,
}

#[derive(Clone, Default)]
struct CaState {
    x509: Vec<X509Slot>,
    jwt: Vec<JwtSlot>,
    sequence: u64,
    next_id: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Timeline {
    state: AuthorityState,
    not_before: SystemTime,
    not_after: SystemTime,
    prepared_at: SystemTime,
    activated_at: Option<SystemTime>,
    retired_at: Option<SystemTime>,
}

#[derive(Clone)]
struct X509Slot {
    id: u64,
    t: Timeline,
    issuer: Arc<X509Issuer>,
    upstream: bool,
}

#[derive(Clone)]
struct JwtSlot {
    id: u64,
    t: Timeline,
    kid: String,
    key: Arc<KeyPair>,
}

enum Step {
    Drop(usize),
    Activate(usize),
    Prepare,
}

impl Ca {
    /// Opens the CA in `config.data_dir`: reloads it if the directory has a state file, or
    /// makes a new one if the directory has no CA file at all; then catches up with the clock
    /// (see [`Ca::tick`]).
    ///
    /// # Errors
    ///
    /// Returns [`CaError::File`] naming a missing, corrupt or tampered file,
    /// [`CaError::StateMissing`] if CA files exist without a state file (a new root is never
    /// made silently), [`CaError::ConfigMismatch`] if the trust domain, mode or upstream CA
    /// differ from the persisted ones, or any error of making a new authority.
    pub fn open(config: CaConfig, clock: SharedClock) -> Result<Self, CaError> {
        if config.ca_ttl.is_zero() || config.jwt_key_ttl.is_zero() {
            return Err(CaError::InvalidCa(
                "CA and JWT key lifetimes must not be zero".to_owned(),
            ));
        }
        if config.ca_ttl < config.max_svid_ttl * 6 {
            tracing::warn!(
                ca_ttl = ?config.ca_ttl,
                max_svid_ttl = ?config.max_svid_ttl,
                "CA lifetime is under 6 times the SVID TTL; SVIDs signed near a hand-over get shorter lives"
            );
        }
        crate::fs::create_private_dir(&config.data_dir)?;
        let mode = CaMode::from_upstream(config.upstream.as_ref().map(|u| u.mode));
        let upstream_issuer = match &config.upstream {
            Some(up) => Some(Arc::new(
                up.ca
                    .issuer(&config.trust_domain)?
                    .with_max_svid_ttl(config.max_svid_ttl),
            )),
            None => None,
        };
        let store = Store::new(&config.data_dir);

        let ca = Self {
            mode,
            clock,
            upstream_issuer,
            tick_lock: Mutex::new(()),
            inner: Mutex::new(Inner {
                state: CaState::default(),
                bundle: Bundle::new(config.trust_domain.clone()),
                generation: 0,
            }),
            subscribers: Mutex::new(Vec::new()),
            store,
            config,
        };
        if let Some(file) = ca.store.load()? {
            let state = ca.state_from_file(&file)?;
            let bundle = ca.build_bundle(&state);
            let mut inner = lock(&ca.inner);
            inner.state = state;
            inner.bundle = bundle;
            drop(inner);
            tracing::info!(
                trust_domain = %ca.config.trust_domain,
                dir = %ca.config.data_dir.display(),
                "CA state loaded"
            );
        } else {
            tracing::info!(
                trust_domain = %ca.config.trust_domain,
                dir = %ca.config.data_dir.display(),
                mode = ?ca.mode,
                "no CA state yet; creating the first authorities"
            );
        }
        ca.tick()?;
        Ok(ca)
    }

    /// Moves every authority along the schedule (see the module docs) to the clock's current
    /// time, persists the result, and notifies subscribers. Returns whether anything changed.
    ///
    /// # Errors
    ///
    /// Returns an error if a new authority cannot be made or the state cannot be persisted;
    /// the CA then keeps its previous state and the next tick tries again.
    pub fn tick(&self) -> Result<bool, CaError> {
        let _serial = lock(&self.tick_lock);
        let now = whole_seconds(self.clock.now());
        let before = lock(&self.inner).clone();

        let mut next = before.state.clone();
        if !self.advance(&mut next, now)? {
            return Ok(false);
        }
        let mut bundle = self.build_bundle(&next);
        if bundle.x509_authorities() != before.bundle.x509_authorities()
            || bundle.jwt_authorities() != before.bundle.jwt_authorities()
        {
            next.sequence += 1;
            bundle.set_sequence(next.sequence);
        }
        self.store.save(&self.state_to_file(&next))?;

        let generation = before.generation + 1;
        {
            let mut inner = lock(&self.inner);
            inner.state = next.clone();
            inner.bundle = bundle;
            inner.generation = generation;
        }
        for slot in &before.state.x509 {
            if !slot.upstream && !next.x509.iter().any(|s| s.id == slot.id) {
                self.store.remove_x509(slot.id);
            }
        }
        for slot in &before.state.jwt {
            if !next.jwt.iter().any(|s| s.id == slot.id) {
                self.store.remove_jwt(slot.id);
            }
        }
        for callback in lock(&self.subscribers).iter() {
            callback(generation);
        }
        Ok(true)
    }

    /// The trust bundle of this CA's trust domain: the roots of every X.509 authority and the
    /// public keys of every JWT key that is prepared, active or retired.
    pub fn current_bundle(&self) -> Bundle {
        lock(&self.inner).bundle.clone()
    }

    /// The X.509 authority that signs now.
    ///
    /// # Panics
    ///
    /// Never: a successfully opened CA always has an active X.509 authority.
    pub fn x509_issuer(&self) -> Arc<X509Issuer> {
        let inner = lock(&self.inner);
        let slot = inner
            .state
            .x509
            .iter()
            .find(|s| s.t.state == AuthorityState::Active)
            // Invariant: `open` ends with a tick that activates an authority, and a tick only
            // replaces the active one, never removes it without a successor.
            .expect("an opened CA has an active X.509 authority");
        Arc::clone(&slot.issuer)
    }

    /// The JWT key that signs now, with its key ID.
    ///
    /// # Panics
    ///
    /// Never: a successfully opened CA always has an active JWT key.
    pub fn jwt_signing_key(&self) -> JwtSigningKey {
        let inner = lock(&self.inner);
        let slot = inner
            .state
            .jwt
            .iter()
            .find(|s| s.t.state == AuthorityState::Active)
            // Invariant: as for `x509_issuer`.
            .expect("an opened CA has an active JWT key");
        JwtSigningKey {
            kid: slot.kid.clone(),
            key: Arc::clone(&slot.key),
            not_after: slot.t.not_after,
            max_ttl: self.config.max_jwt_svid_ttl,
        }
    }

    /// Issues an X509-SVID for a public key (SubjectPublicKeyInfo DER) with the active
    /// authority at the clock's time. See [`X509Issuer::issue_for_public_key`].
    ///
    /// # Errors
    ///
    /// As [`X509Issuer::issue_for_public_key`].
    pub fn issue_x509_svid(
        &self,
        request: &SvidRequest,
        spki_der: &[u8],
    ) -> Result<Vec<CertificateDer<'static>>, CaError> {
        self.x509_issuer()
            .issue_for_public_key(request, spki_der, self.clock.now())
    }

    /// Issues an X509-SVID for the public key of a CSR (PEM or DER). See
    /// [`X509Issuer::issue_for_csr`].
    ///
    /// # Errors
    ///
    /// As [`X509Issuer::issue_for_csr`].
    pub fn issue_x509_svid_for_csr(
        &self,
        request: &SvidRequest,
        csr: &[u8],
    ) -> Result<Vec<CertificateDer<'static>>, CaError> {
        self.x509_issuer()
            .issue_for_csr(request, csr, self.clock.now())
    }

    /// Generates a key and issues an X509-SVID for it. See
    /// [`X509Issuer::issue_with_new_key`].
    ///
    /// # Errors
    ///
    /// As [`X509Issuer::issue_with_new_key`].
    pub fn issue_x509_svid_with_new_key(
        &self,
        request: &SvidRequest,
        key_type: KeyType,
    ) -> Result<X509Svid, CaError> {
        self.x509_issuer()
            .issue_with_new_key(request, key_type, self.clock.now())
    }

    /// A number that grows by one on every change of authorities (prepare, activate, retire,
    /// drop). Poll it to learn that SVIDs or bundles should be refreshed.
    pub fn generation(&self) -> u64 {
        lock(&self.inner).generation
    }

    /// Calls `callback` with the new generation after every change. Callbacks run on the
    /// thread that called [`Ca::tick`]; keep them short and do not call `subscribe` from one.
    pub fn subscribe(&self, callback: impl Fn(u64) + Send + Sync + 'static) {
        lock(&self.subscribers).push(Box::new(callback));
    }

    /// Every authority, X.509 first, oldest first.
    pub fn authorities(&self) -> Vec<AuthorityInfo> {
        let inner = lock(&self.inner);
        let x509 = inner.state.x509.iter().map(|s| AuthorityInfo {
            kind: AuthorityKind::X509,
            id: s.id,
            state: s.t.state,
            key_id: None,
            certificate: Some(s.issuer.certificate().clone()),
            not_before: s.t.not_before,
            not_after: s.t.not_after,
            prepared_at: s.t.prepared_at,
            activated_at: s.t.activated_at,
            retired_at: s.t.retired_at,
        });
        let jwt = inner.state.jwt.iter().map(|s| AuthorityInfo {
            kind: AuthorityKind::Jwt,
            id: s.id,
            state: s.t.state,
            key_id: Some(s.kid.clone()),
            certificate: None,
            not_before: s.t.not_before,
            not_after: s.t.not_after,
            prepared_at: s.t.prepared_at,
            activated_at: s.t.activated_at,
            retired_at: s.t.retired_at,
        });
        x509.chain(jwt).collect()
    }

    /// The earliest time at which [`Ca::tick`] will have something to do.
    pub fn next_change(&self) -> Option<SystemTime> {
        let inner = lock(&self.inner);
        let x509: Vec<&Timeline> = inner.state.x509.iter().map(|s| &s.t).collect();
        let jwt: Vec<&Timeline> = inner.state.jwt.iter().map(|s| &s.t).collect();
        [
            next_event(&x509, self.config.max_svid_ttl, self.x509_rotates()),
            next_event(&jwt, self.config.max_jwt_svid_ttl, true),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.config.trust_domain
    }

    /// The configuration the CA was opened with.
    pub fn config(&self) -> &CaConfig {
        &self.config
    }

    fn x509_rotates(&self) -> bool {
        self.mode != CaMode::UpstreamDirect
    }

    /// Applies schedule steps until none is due. Returns whether anything changed.
    fn advance(&self, state: &mut CaState, now: SystemTime) -> Result<bool, CaError> {
        let mut changed = false;

        // Direct mode: the upstream CA is the one and only X.509 authority.
        if self.mode == CaMode::UpstreamDirect && state.x509.is_empty() {
            let issuer = self.upstream_issuer.clone().ok_or_else(|| {
                CaError::InvalidCa("direct mode without an upstream CA".to_owned())
            })?;
            let id = take_id(state);
            state.x509.push(X509Slot {
                id,
                t: Timeline {
                    state: AuthorityState::Active,
                    not_before: issuer.not_before(),
                    not_after: issuer.not_after(),
                    prepared_at: now,
                    activated_at: Some(now),
                    retired_at: None,
                },
                issuer,
                upstream: true,
            });
            changed = true;
        }

        for _ in 0..MAX_STEPS_PER_TICK {
            let mut stepped = false;

            let x509: Vec<&Timeline> = state.x509.iter().map(|s| &s.t).collect();
            match next_step(&x509, now, self.config.max_svid_ttl, self.x509_rotates()) {
                Some(Step::Drop(i)) => {
                    let slot = state.x509.remove(i);
                    tracing::info!(id = slot.id, "X.509 authority dropped from the bundle");
                    stepped = true;
                }
                Some(Step::Activate(i)) => {
                    activate(state.x509.iter_mut().map(|s| &mut s.t), i, now);
                    tracing::info!(id = state.x509[i].id, "X.509 authority activated");
                    stepped = true;
                }
                Some(Step::Prepare) => {
                    let slot = self.prepare_x509(state, now)?;
                    tracing::info!(id = slot.id, not_after = %x509::format_time(slot.t.not_after), "X.509 authority prepared");
                    state.x509.push(slot);
                    stepped = true;
                }
                None => {}
            }

            let jwt: Vec<&Timeline> = state.jwt.iter().map(|s| &s.t).collect();
            match next_step(&jwt, now, self.config.max_jwt_svid_ttl, true) {
                Some(Step::Drop(i)) => {
                    let slot = state.jwt.remove(i);
                    tracing::info!(id = slot.id, kid = %slot.kid, "JWT key dropped from the bundle");
                    stepped = true;
                }
                Some(Step::Activate(i)) => {
                    activate(state.jwt.iter_mut().map(|s| &mut s.t), i, now);
                    tracing::info!(id = state.jwt[i].id, kid = %state.jwt[i].kid, "JWT key activated");
                    stepped = true;
                }
                Some(Step::Prepare) => {
                    let slot = self.prepare_jwt(state, now)?;
                    tracing::info!(id = slot.id, kid = %slot.kid, "JWT key prepared");
                    state.jwt.push(slot);
                    stepped = true;
                }
                None => {}
            }

            if !stepped {
                break;
            }
            changed = true;
        }
        Ok(changed)
    }

    fn prepare_x509(&self, state: &mut CaState, now: SystemTime) -> Result<X509Slot, CaError> {
        let key = KeyPair::generate(self.config.ca_key_type)?;
        let issuer = match &self.upstream_issuer {
            Some(upstream) => upstream.new_intermediate(key, now, self.config.ca_ttl)?,
            None => {
                X509Issuer::self_signed(&self.config.trust_domain, key, now, self.config.ca_ttl)?
            }
        }
        .with_max_svid_ttl(self.config.max_svid_ttl);
        if issuer.not_after() < now + self.config.ca_ttl {
            tracing::warn!(
                not_after = %x509::format_time(issuer.not_after()),
                "the upstream CA expires before a full CA lifetime; new intermediates are cut short"
            );
        }
        let id = take_id(state);
        self.store
            .write_x509(id, issuer.full_chain(), issuer.key())?;
        Ok(X509Slot {
            id,
            t: Timeline {
                state: AuthorityState::Prepared,
                not_before: issuer.not_before(),
                not_after: issuer.not_after(),
                prepared_at: now,
                activated_at: None,
                retired_at: None,
            },
            issuer: Arc::new(issuer),
            upstream: false,
        })
    }

    fn prepare_jwt(&self, state: &mut CaState, now: SystemTime) -> Result<JwtSlot, CaError> {
        let key = KeyPair::generate(self.config.jwt_key_type)?;
        let id = take_id(state);
        self.store.write_jwt_key(id, &key)?;
        Ok(JwtSlot {
            id,
            t: Timeline {
                state: AuthorityState::Prepared,
                not_before: now,
                not_after: whole_seconds(now + self.config.jwt_key_ttl),
                prepared_at: now,
                activated_at: None,
                retired_at: None,
            },
            kid: random_kid(),
            key: Arc::new(key),
        })
    }

    fn build_bundle(&self, state: &CaState) -> Bundle {
        let mut bundle = Bundle::new(self.config.trust_domain.clone());
        for slot in &state.x509 {
            bundle.add_x509_authority(slot.issuer.root().clone());
        }
        for slot in &state.jwt {
            bundle.add_jwt_authority(JwtAuthority {
                key_id: slot.kid.clone(),
                public_key: slot.key.spki_der(),
            });
        }
        bundle.set_sequence(state.sequence);
        let hint = (self.config.ca_ttl.min(self.config.jwt_key_ttl) / 6).min(MAX_REFRESH_HINT);
        bundle.set_refresh_hint(Some(hint.max(Duration::from_secs(1))));
        bundle
    }

    fn state_to_file(&self, state: &CaState) -> StateFile {
        StateFile {
            version: 1,
            trust_domain: self.config.trust_domain.name().to_owned(),
            mode: self.mode,
            upstream_sha256: self
                .upstream_issuer
                .as_ref()
                .map(|u| sha256_hex(u.certificate())),
            sequence: state.sequence,
            next_id: state.next_id,
            x509: state
                .x509
                .iter()
                .map(|s| X509Record {
                    id: s.id,
                    state: s.t.state,
                    upstream: s.upstream,
                    cert_sha256: sha256_hex(s.issuer.certificate()),
                    not_before: unix(s.t.not_before),
                    not_after: unix(s.t.not_after),
                    prepared_at: unix(s.t.prepared_at),
                    activated_at: s.t.activated_at.map(unix),
                    retired_at: s.t.retired_at.map(unix),
                })
                .collect(),
            jwt: state
                .jwt
                .iter()
                .map(|s| JwtRecord {
                    id: s.id,
                    kid: s.kid.clone(),
                    state: s.t.state,
                    public_key_sha256: sha256_hex(&s.key.spki_der()),
                    not_before: unix(s.t.not_before),
                    not_after: unix(s.t.not_after),
                    prepared_at: unix(s.t.prepared_at),
                    activated_at: s.t.activated_at.map(unix),
                    retired_at: s.t.retired_at.map(unix),
                })
                .collect(),
        }
    }

    fn state_from_file(&self, file: &StateFile) -> Result<CaState, CaError> {
        let path = self.store.state_path();
        let mismatch = |reason: String| CaError::ConfigMismatch {
            path: path.clone(),
            reason,
        };
        if file.trust_domain != self.config.trust_domain.name() {
            return Err(mismatch(format!(
                "state is for trust domain `{}` but the configuration says `{}`",
                file.trust_domain, self.config.trust_domain
            )));
        }
        if file.mode != self.mode {
            return Err(mismatch(format!(
                "state was made in mode {:?} but the configuration asks for {:?}",
                file.mode, self.mode
            )));
        }
        let upstream_sha = self
            .upstream_issuer
            .as_ref()
            .map(|u| sha256_hex(u.certificate()));
        if file.upstream_sha256 != upstream_sha {
            return Err(mismatch(
                "the configured upstream CA certificate is not the one this state was made with; \
                 move the data directory away to start over with the new CA"
                    .to_owned(),
            ));
        }

        let mut x509 = Vec::with_capacity(file.x509.len());
        for record in &file.x509 {
            let issuer = if record.upstream {
                let issuer = self.upstream_issuer.clone().ok_or_else(|| {
                    mismatch("state names the upstream CA but none is configured".to_owned())
                })?;
                if sha256_hex(issuer.certificate()) != record.cert_sha256 {
                    return Err(mismatch("upstream CA certificate changed".to_owned()));
                }
                issuer
            } else {
                let (chain, key) = self.store.read_x509(record)?;
                let issuer = X509Issuer::from_chain(&self.config.trust_domain, chain, key)
                    .map_err(|e| CaError::File {
                        path: self.store.x509_chain_path(record.id),
                        reason: e.to_string(),
                    })?;
                Arc::new(issuer.with_max_svid_ttl(self.config.max_svid_ttl))
            };
            x509.push(X509Slot {
                id: record.id,
                t: Timeline {
                    state: record.state,
                    not_before: issuer.not_before(),
                    not_after: issuer.not_after(),
                    prepared_at: from_unix(record.prepared_at),
                    activated_at: record.activated_at.map(from_unix),
                    retired_at: record.retired_at.map(from_unix),
                },
                issuer,
                upstream: record.upstream,
            });
        }

        let mut jwt = Vec::with_capacity(file.jwt.len());
        for record in &file.jwt {
            let key = self.store.read_jwt_key(record)?;
            jwt.push(JwtSlot {
                id: record.id,
                t: Timeline {
                    state: record.state,
                    not_before: from_unix(record.not_before),
                    not_after: from_unix(record.not_after),
                    prepared_at: from_unix(record.prepared_at),
                    activated_at: record.activated_at.map(from_unix),
                    retired_at: record.retired_at.map(from_unix),
                },
                kid: record.kid.clone(),
                key: Arc::new(key),
            });
        }

        Ok(CaState {
            x509,
            jwt,
            sequence: file.sequence,
            next_id: file.next_id,
        })
    }
}

/// The next schedule step for one kind of authority, if one is due at `now`.
fn next_step(
    slots: &[&Timeline],
    now: SystemTime,
    max_ttl: Duration,
    rotates: bool,
) -> Option<Step> {
    if let Some(i) = slots
        .iter()
        .position(|t| t.state == AuthorityState::Retired && drop_at(t, max_ttl) <= now)
    {
        return Some(Step::Drop(i));
    }
    if !rotates {
        return None;
    }
    let active = slots.iter().find(|t| t.state == AuthorityState::Active);
    let prepared = slots
        .iter()
        .position(|t| t.state == AuthorityState::Prepared);
    let hand_over_due = active.is_none_or(|a| now >= activate_at(a) || now >= a.not_after);
    match prepared {
        Some(p) if hand_over_due => Some(Step::Activate(p)),
        Some(_) => None,
        None if hand_over_due || active.is_some_and(|a| now >= prepare_at(a)) => {
            Some(Step::Prepare)
        }
        None => None,
    }
}

/// When the next schedule step of one kind falls due.
fn next_event(slots: &[&Timeline], max_ttl: Duration, rotates: bool) -> Option<SystemTime> {
    let drops = slots
        .iter()
        .filter(|t| t.state == AuthorityState::Retired)
        .map(|t| drop_at(t, max_ttl));
    let rotation = if rotates {
        let active = slots.iter().find(|t| t.state == AuthorityState::Active);
        let prepared = slots.iter().any(|t| t.state == AuthorityState::Prepared);
        active.map(|a| {
            if prepared {
                activate_at(a)
            } else {
                prepare_at(a)
            }
        })
    } else {
        None
    };
    drops.chain(rotation).min()
}

fn activate<'a>(timelines: impl Iterator<Item = &'a mut Timeline>, index: usize, now: SystemTime) {
    for (i, t) in timelines.enumerate() {
        if i == index {
            t.state = AuthorityState::Active;
            t.activated_at = Some(now);
        } else if t.state == AuthorityState::Active {
            t.state = AuthorityState::Retired;
            t.retired_at = Some(now);
        }
    }
}

/// When the schedule of an authority starts: when it was made, or its notBefore if that is
/// later. A certificate's notBefore is back-dated for clock skew and must not count, or a
/// short-lived CA would be due for replacement the moment it is made.
fn start(t: &Timeline) -> SystemTime {
    t.prepared_at.max(t.not_before)
}

fn lifetime(t: &Timeline) -> Duration {
    t.not_after.duration_since(start(t)).unwrap_or_default()
}

fn prepare_at(t: &Timeline) -> SystemTime {
    start(t) + lifetime(t) / 2
}

fn activate_at(t: &Timeline) -> SystemTime {
    start(t) + lifetime(t) * 5 / 6
}

fn drop_at(t: &Timeline, max_ttl: Duration) -> SystemTime {
    let retired_at = t.retired_at.unwrap_or(t.not_after);
    t.not_after.min(retired_at + max_ttl)
}

fn take_id(state: &mut CaState) -> u64 {
    let id = state.next_id;
    state.next_id += 1;
    id
}

/// A fresh key ID: 32 base64url characters from 24 random bytes.
fn random_kid() -> String {
    let mut bytes = [0u8; KID_BYTES];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn from_unix(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
