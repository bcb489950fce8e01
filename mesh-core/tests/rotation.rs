//! A full rotation cycle of the CA driven by a manual clock, with a restart from the data
//! directory at every step.

mod ca_util;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ca_util::{bundle_set, hours, t0, td};
use mesh_core::ca::{
    AuthorityKind, AuthorityState, Ca, CaConfig, SvidRequest, Upstream, UpstreamCa, UpstreamMode,
};
use mesh_core::clock::{ManualClock, SharedClock};
use mesh_core::x509::{verify_x509_svid, VerifyError, X509Svid};
use mesh_core::KeyType;
use rustls_pki_types::CertificateDer;

fn config(dir: &std::path::Path) -> CaConfig {
    CaConfig::new(td(), dir)
}

fn mins(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}

/// (state, certificate) of each X.509 authority, and (state, kid) of each JWT key.
type Snapshot = (
    Vec<(AuthorityState, CertificateDer<'static>)>,
    Vec<(AuthorityState, String)>,
);

fn snapshot(ca: &Ca) -> Snapshot {
    let all = ca.authorities();
    let x509 = all
        .iter()
        .filter(|a| a.kind == AuthorityKind::X509)
        .map(|a| (a.state, a.certificate.clone().unwrap()))
        .collect();
    let jwt = all
        .iter()
        .filter(|a| a.kind == AuthorityKind::Jwt)
        .map(|a| (a.state, a.key_id.clone().unwrap()))
        .collect();
    (x509, jwt)
}

/// Drops nothing but reopens a second CA from the same directory at the same time and checks
/// it comes back with the same authorities, bundle, active issuer and JWT key.
fn assert_restart_is_identical(ca: &Ca, dir: &std::path::Path, clock: &ManualClock) {
    let again = Ca::open(config(dir), Arc::new(clock.clone())).unwrap();
    assert_eq!(again.authorities(), ca.authorities());
    assert_eq!(again.current_bundle(), ca.current_bundle());
    assert_eq!(
        again.x509_issuer().certificate(),
        ca.x509_issuer().certificate()
    );
    assert_eq!(again.jwt_signing_key().kid(), ca.jwt_signing_key().kid());
    assert_eq!(
        again.generation(),
        0,
        "a reload at the same time changes nothing"
    );
}

fn issue(ca: &Ca, path: &str) -> X509Svid {
    let request = SvidRequest::new(td().workload_id(path).unwrap(), hours(1));
    ca.issue_x509_svid_with_new_key(&request, KeyType::EcP256)
        .unwrap()
}

fn verifies(svid: &X509Svid, ca: &Ca, at: SystemTime) -> Result<(), VerifyError> {
    let bundles: mesh_core::BundleSet = std::iter::once(ca.current_bundle()).collect();
    verify_x509_svid(svid.chain(), &bundles, at).map(|_| ())
}

fn signed_by(svid: &X509Svid, root: &CertificateDer<'static>, at: SystemTime) -> bool {
    verify_x509_svid(
        svid.chain(),
        &bundle_set(&td(), std::slice::from_ref(root)),
        at,
    )
    .is_ok()
}

#[test]
fn a_full_rotation_cycle_prepares_activates_retires_and_drops_and_survives_restarts() {
    use AuthorityState::{Active, Prepared, Retired};

    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(t0());
    let shared: SharedClock = Arc::new(clock.clone());
    let ca = Ca::open(config(dir.path()), shared).unwrap();
    let changes = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&changes);
    ca.subscribe(move |generation| seen.store(generation, Ordering::SeqCst));

    // t0: one X.509 root and one JWT key, both active.
    let (x509, jwt) = snapshot(&ca);
    assert_eq!(x509.len(), 1);
    assert_eq!(x509[0].0, Active);
    assert_eq!(jwt.len(), 1);
    assert_eq!(jwt[0].0, Active);
    let r1 = x509[0].1.clone();
    let j1 = jwt[0].1.clone();
    assert_eq!(j1.len(), 32, "kid is 32 base64url characters");
    assert!(j1
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    let bundle = ca.current_bundle();
    assert_eq!(bundle.x509_authorities(), std::slice::from_ref(&r1));
    assert_eq!(bundle.jwt_authorities().len(), 1);
    assert_eq!(bundle.jwt_authorities()[0].key_id, j1);
    assert_eq!(bundle.sequence(), 1);
    assert_eq!(ca.jwt_signing_key().kid(), j1);
    assert_eq!(ca.generation(), 1);
    let s1 = issue(&ca, "/one");
    assert!(signed_by(&s1, &r1, t0()));
    verifies(&s1, &ca, t0()).unwrap();
    assert_restart_is_identical(&ca, dir.path(), &clock);

    // Just before half-life nothing happens.
    clock.set(t0() + hours(12) - mins(1));
    assert!(!ca.tick().unwrap());
    // The schedule runs from when the root was made, not from its back-dated notBefore.
    assert_eq!(ca.next_change(), Some(t0() + hours(12)));

    // Half-life: successors are prepared and published, the old ones still sign.
    clock.set(t0() + hours(12));
    assert!(ca.tick().unwrap());
    let (x509, jwt) = snapshot(&ca);
    assert_eq!(
        x509.iter().map(|a| a.0).collect::<Vec<_>>(),
        vec![Active, Prepared]
    );
    assert_eq!(
        jwt.iter().map(|a| a.0).collect::<Vec<_>>(),
        vec![Active, Prepared]
    );
    assert_eq!(x509[0].1, r1);
    let r2 = x509[1].1.clone();
    let j2 = jwt[1].1.clone();
    assert_ne!(r1, r2);
    assert_ne!(j1, j2);
    let bundle = ca.current_bundle();
    assert_eq!(bundle.x509_authorities(), &[r1.clone(), r2.clone()]);
    let kids: Vec<_> = bundle
        .jwt_authorities()
        .iter()
        .map(|a| a.key_id.clone())
        .collect();
    assert_eq!(kids, vec![j1.clone(), j2.clone()]);
    assert_eq!(bundle.sequence(), 2);
    assert_eq!(ca.generation(), 2);
    assert_eq!(changes.load(Ordering::SeqCst), 2);
    assert_eq!(ca.x509_issuer().root(), &r1);
    assert_eq!(ca.jwt_signing_key().kid(), j1);
    assert!(signed_by(&issue(&ca, "/two"), &r1, clock_now(&clock)));
    assert_restart_is_identical(&ca, dir.path(), &clock);

    // Just before the hand-over an SVID is still signed by the first root.
    clock.set(t0() + hours(20) - mins(1));
    assert!(!ca.tick().unwrap());
    let late = issue(&ca, "/late");
    assert!(signed_by(&late, &r1, clock_now(&clock)));

    // 5/6 of the life: successors take over, old ones retire but stay in the bundle.
    clock.set(t0() + hours(20));
    assert!(ca.tick().unwrap());
    let (x509, jwt) = snapshot(&ca);
    assert_eq!(
        x509.iter().map(|a| a.0).collect::<Vec<_>>(),
        vec![Retired, Active]
    );
    assert_eq!(
        jwt.iter().map(|a| a.0).collect::<Vec<_>>(),
        vec![Retired, Active]
    );
    assert_eq!(
        ca.current_bundle().sequence(),
        2,
        "activation leaves the bundle as it is"
    );
    assert_eq!(ca.generation(), 3);
    assert_eq!(ca.x509_issuer().root(), &r2);
    assert_eq!(ca.jwt_signing_key().kid(), j2);
    let s3 = issue(&ca, "/three");
    assert!(signed_by(&s3, &r2, clock_now(&clock)));
    assert!(!signed_by(&s3, &r1, clock_now(&clock)));
    verifies(&late, &ca, clock_now(&clock)).unwrap();
    assert_restart_is_identical(&ca, dir.path(), &clock);

    // The retired JWT key leaves one JWT-SVID TTL (5 min) after retirement.
    clock.set(t0() + hours(20) + mins(5));
    assert!(ca.tick().unwrap());
    let (x509, jwt) = snapshot(&ca);
    assert_eq!(x509.len(), 2);
    assert_eq!(jwt, vec![(Active, j2.clone())]);
    assert_eq!(ca.current_bundle().sequence(), 3);
    assert_restart_is_identical(&ca, dir.path(), &clock);

    // The last SVID of the retired root is still valid and trusted until it expires ...
    clock.set(t0() + hours(21) - mins(2));
    assert!(!ca.tick().unwrap());
    verifies(&late, &ca, clock_now(&clock)).unwrap();

    // ... and the root leaves one SVID TTL (1 h) after retirement.
    clock.set(t0() + hours(21));
    assert!(ca.tick().unwrap());
    let (x509, _) = snapshot(&ca);
    assert_eq!(x509, vec![(Active, r2.clone())]);
    let bundle = ca.current_bundle();
    assert_eq!(bundle.x509_authorities(), std::slice::from_ref(&r2));
    assert_eq!(bundle.sequence(), 4);
    assert!(matches!(
        verifies(&late, &ca, clock_now(&clock)),
        Err(VerifyError::Expired { .. })
    ));
    verifies(&s3, &ca, clock_now(&clock)).unwrap();
    assert_restart_is_identical(&ca, dir.path(), &clock);

    // The next cycle starts: the second root's half-life prepares a third.
    clock.set(t0() + hours(24));
    assert!(ca.tick().unwrap());
    let (x509, jwt) = snapshot(&ca);
    assert_eq!(
        x509.iter().map(|a| a.0).collect::<Vec<_>>(),
        vec![Active, Prepared]
    );
    assert_eq!(
        jwt.iter().map(|a| a.0).collect::<Vec<_>>(),
        vec![Active, Prepared]
    );
    assert_eq!(x509[0].1, r2);
    assert_eq!(ca.current_bundle().sequence(), 5);
    assert_restart_is_identical(&ca, dir.path(), &clock);
}

fn clock_now(clock: &ManualClock) -> SystemTime {
    use mesh_core::clock::Clock;
    clock.now()
}

#[test]
fn dropped_authorities_lose_their_files() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(t0());
    let ca = Ca::open(config(dir.path()), Arc::new(clock.clone())).unwrap();
    let first: Vec<u64> = ca.authorities().iter().map(|a| a.id).collect();
    clock.set(t0() + hours(12));
    ca.tick().unwrap();
    clock.set(t0() + hours(20));
    ca.tick().unwrap();
    clock.set(t0() + hours(21));
    ca.tick().unwrap();
    let left: Vec<u64> = ca.authorities().iter().map(|a| a.id).collect();
    for id in first {
        assert!(!left.contains(&id));
        assert!(!dir.path().join(format!("x509-{id}.pem")).exists());
        assert!(!dir.path().join(format!("x509-{id}.key.pem")).exists());
        assert!(!dir.path().join(format!("jwt-{id}.key.pem")).exists());
    }
    for id in left {
        let exists = dir.path().join(format!("x509-{id}.key.pem")).exists()
            || dir.path().join(format!("jwt-{id}.key.pem")).exists();
        assert!(exists, "files of live authority {id} are kept");
    }
}

#[test]
fn a_long_stop_is_caught_up_in_one_tick() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(t0());
    let ca = Ca::open(config(dir.path()), Arc::new(clock.clone())).unwrap();
    let old_root = ca.x509_issuer().root().clone();
    drop(ca);

    // Ten days later every old authority has expired: fresh ones are active, old ones gone.
    clock.set(t0() + hours(240));
    let ca = Ca::open(config(dir.path()), Arc::new(clock.clone())).unwrap();
    let all = ca.authorities();
    assert!(all.iter().all(|a| a.not_after > clock_now(&clock)));
    assert_eq!(
        all.iter()
            .filter(|a| a.state == AuthorityState::Active)
            .count(),
        2
    );
    assert!(!ca.current_bundle().x509_authorities().contains(&old_root));
    let svid = issue(&ca, "/back");
    verifies(&svid, &ca, clock_now(&clock)).unwrap();
}

#[test]
fn svids_never_outlive_their_signer_near_its_end() {
    // A CA that lives 3 h while SVIDs may live 1 h: right before the hand-over (at 2.5 h) the
    // SVID is cut at the CA's notAfter.
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(t0());
    let mut cfg = config(dir.path());
    cfg.ca_ttl = hours(3);
    let ca = Ca::open(cfg, Arc::new(clock.clone())).unwrap();
    clock.set(t0() + mins(149));
    ca.tick().unwrap();
    let svid = issue(&ca, "/edge");
    assert!(svid.not_after() <= ca.x509_issuer().not_after());
    assert!(svid.not_after() < clock_now(&clock) + hours(1));
}

#[test]
fn direct_mode_keeps_the_team_ca_and_still_rotates_jwt_keys() {
    let team = tempfile::tempdir().unwrap();
    ca_util::make_team_root(team.path(), None);
    // The team root was made "now" by openssl; run the CA clock from now as well.
    let start = SystemTime::now();
    let upstream = Arc::new(
        UpstreamCa::from_files(
            &team.path().join("root.pem"),
            &team.path().join("root.key"),
            None,
        )
        .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.upstream = Some(Upstream {
        ca: Arc::clone(&upstream),
        mode: UpstreamMode::Direct,
    });
    let clock = ManualClock::new(start);
    let ca = Ca::open(cfg.clone(), Arc::new(clock.clone())).unwrap();
    assert_eq!(
        ca.current_bundle().x509_authorities(),
        std::slice::from_ref(upstream.root())
    );
    assert_eq!(ca.x509_issuer().certificate(), upstream.certificate());
    let j1 = ca.jwt_signing_key().kid().to_owned();
    // No key file for the team's CA is copied into the data directory.
    assert!(!std::fs::read_dir(dir.path()).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("x509-")));

    clock.set(start + hours(20));
    ca.tick().unwrap();
    assert_ne!(ca.jwt_signing_key().kid(), j1);
    assert_eq!(ca.x509_issuer().certificate(), upstream.certificate());
    assert_eq!(
        ca.current_bundle().x509_authorities(),
        std::slice::from_ref(upstream.root())
    );
    let again = Ca::open(cfg, Arc::new(clock.clone())).unwrap();
    assert_eq!(again.authorities(), ca.authorities());
    assert_eq!(again.current_bundle(), ca.current_bundle());
}

#[test]
fn intermediate_mode_rotates_intermediates_under_the_unchanging_team_root() {
    let team = tempfile::tempdir().unwrap();
    ca_util::make_team_root(team.path(), None);
    let start = SystemTime::now();
    let upstream = Arc::new(
        UpstreamCa::from_files(
            &team.path().join("root.pem"),
            &team.path().join("root.key"),
            None,
        )
        .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.upstream = Some(Upstream {
        ca: Arc::clone(&upstream),
        mode: UpstreamMode::Intermediate,
    });
    let clock = ManualClock::new(start);
    let ca = Ca::open(cfg.clone(), Arc::new(clock.clone())).unwrap();
    let first = ca.x509_issuer().certificate().clone();
    assert_ne!(&first, upstream.certificate());
    assert_eq!(
        ca.current_bundle().x509_authorities(),
        std::slice::from_ref(upstream.root())
    );
    let s1 = issue(&ca, "/a");
    assert_eq!(s1.chain().len(), 2);
    let team_roots = std::slice::from_ref(upstream.root());
    let tmp = tempfile::tempdir().unwrap();
    let (ok, out) = ca_util::openssl_verify(tmp.path(), team_roots, s1.chain(), None, None);
    assert!(ok, "{out}");

    clock.set(start + hours(20));
    ca.tick().unwrap();
    let second = ca.x509_issuer().certificate().clone();
    assert_ne!(first, second);
    assert_eq!(
        ca.current_bundle().x509_authorities(),
        std::slice::from_ref(upstream.root())
    );
    let s2 = issue(&ca, "/b");
    assert_eq!(&s2.chain()[1], &second);
    verifies(&s2, &ca, clock_now(&clock)).unwrap();

    let again = Ca::open(cfg, Arc::new(clock.clone())).unwrap();
    assert_eq!(again.authorities(), ca.authorities());
    assert_eq!(again.current_bundle(), ca.current_bundle());
}

#[test]
fn jwt_ttl_is_capped_by_the_max_and_the_key_life() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(t0());
    let ca = Ca::open(config(dir.path()), Arc::new(clock.clone())).unwrap();
    let key = ca.jwt_signing_key();
    assert_eq!(key.ttl_cap(hours(1), t0()), mins(5));
    assert_eq!(key.ttl_cap(mins(1), t0()), mins(1));
    assert_eq!(
        key.ttl_cap(mins(5), key.not_after() - Duration::from_secs(10)),
        Duration::from_secs(10)
    );
    assert!(!format!("{key:?}").contains(&hex_prefix(key.key().pkcs8_der())));
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes[bytes.len() - 8..]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn the_ca_can_be_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Ca>();
    assert_send_sync::<mesh_core::ca::X509Issuer>();
    assert_send_sync::<mesh_core::ca::JwtSigningKey>();

    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(Ca::open(config(dir.path()), Arc::new(ManualClock::new(t0()))).unwrap());
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let ca = Arc::clone(&ca);
            std::thread::spawn(move || issue(&ca, &format!("/t{i}")))
        })
        .collect();
    for h in handles {
        let svid = h.join().unwrap();
        verifies(&svid, &ca, t0()).unwrap();
    }
}
