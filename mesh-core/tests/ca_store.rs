//! Persistence of the CA: file modes, reload, and every kind of damaged data directory, which
//! must give an error naming the file and never a new root.

mod ca_util;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ca_util::{t0, td};
use mesh_core::ca::store::STATE_FILE;
use mesh_core::ca::{AuthorityKind, Ca, CaConfig, CaError};
use mesh_core::clock::ManualClock;
use mesh_core::TrustDomain;

fn open(dir: &Path) -> Result<Ca, CaError> {
    Ca::open(CaConfig::new(td(), dir), Arc::new(ManualClock::new(t0())))
}

/// Every file of the directory with its content.
fn contents(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

fn x509_id(ca: &Ca) -> u64 {
    ca.authorities()
        .iter()
        .find(|a| a.kind == AuthorityKind::X509)
        .unwrap()
        .id
}

fn jwt_id(ca: &Ca) -> u64 {
    ca.authorities()
        .iter()
        .find(|a| a.kind == AuthorityKind::Jwt)
        .unwrap()
        .id
}

/// Makes a CA, damages its directory with `damage`, and checks that opening fails with an
/// error naming `file` and leaves the directory exactly as it was.
fn assert_refused(damage: impl FnOnce(&Path, &Ca) -> PathBuf, expect: &str) {
    let dir = tempfile::tempdir().unwrap();
    let ca = open(dir.path()).unwrap();
    let file = damage(dir.path(), &ca);
    drop(ca);
    let before = contents(dir.path());

    let err = open(dir.path()).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains(&file.display().to_string()),
        "error does not name {}: {message}",
        file.display()
    );
    assert!(
        message.contains(expect),
        "expected `{expect}` in: {message}"
    );
    assert_eq!(
        contents(dir.path()),
        before,
        "a refused open writes nothing"
    );
}

#[test]
fn keys_are_owner_only_and_the_directory_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ca = open(&data).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    let mut keys = 0;
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".key.pem") {
            assert_eq!(mode(&path), 0o600, "{name}");
            keys += 1;
        }
        assert!(!name.contains(".tmp"), "no temporary file is left: {name}");
    }
    assert_eq!(keys, 2, "one CA key and one JWT key");
    assert_eq!(mode(&data.join(STATE_FILE)), 0o600);
    drop(ca);
}

#[test]
fn a_reopened_ca_has_the_same_root_and_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let ca = open(dir.path()).unwrap();
    let bundle = ca.current_bundle();
    let root = ca.x509_issuer().root().clone();
    drop(ca);
    let again = open(dir.path()).unwrap();
    assert_eq!(again.current_bundle(), bundle);
    assert_eq!(again.x509_issuer().root(), &root);
    let state = std::fs::read_to_string(dir.path().join(STATE_FILE)).unwrap();
    let json: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert_eq!(json["trust_domain"], "example.org");
    assert_eq!(json["sequence"], 1);
    assert_eq!(json["x509"][0]["state"], "active");
    assert_eq!(
        json["jwt"][0]["kid"],
        again.jwt_signing_key().kid(),
        "the state file records the kid"
    );
}

#[test]
fn a_torn_state_file_is_refused_naming_it() {
    assert_refused(
        |dir, _| {
            let path = dir.join(STATE_FILE);
            let text = std::fs::read(&path).unwrap();
            std::fs::write(&path, &text[..text.len() / 2]).unwrap();
            path
        },
        "corrupt or truncated",
    );
}

#[test]
fn an_empty_state_file_is_refused_naming_it() {
    assert_refused(
        |dir, _| {
            let path = dir.join(STATE_FILE);
            std::fs::write(&path, b"").unwrap();
            path
        },
        "corrupt or truncated",
    );
}

#[test]
fn a_state_file_with_two_active_authorities_is_refused() {
    assert_refused(
        |dir, _| {
            let path = dir.join(STATE_FILE);
            let text = std::fs::read_to_string(&path).unwrap();
            let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
            let first = json["x509"][0].clone();
            let mut second = first.clone();
            second["id"] = serde_json::json!(0);
            json["x509"].as_array_mut().unwrap().push(second);
            std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
            path
        },
        "at most one",
    );
}

#[test]
fn a_missing_state_file_next_to_ca_files_is_refused_not_replaced() {
    assert_refused(
        |dir, _| {
            let path = dir.join(STATE_FILE);
            std::fs::remove_file(&path).unwrap();
            path
        },
        "is missing",
    );
}

#[test]
fn a_missing_key_file_is_refused_naming_it() {
    assert_refused(
        |dir, ca| {
            let path = dir.join(format!("x509-{}.key.pem", x509_id(ca)));
            std::fs::remove_file(&path).unwrap();
            path
        },
        "missing",
    );
}

#[test]
fn a_corrupt_ca_key_file_is_refused_naming_it() {
    assert_refused(
        |dir, ca| {
            let path = dir.join(format!("x509-{}.key.pem", x509_id(ca)));
            std::fs::write(&path, b"-----BEGIN PRIVATE KEY-----\nAAAA\n").unwrap();
            path
        },
        "corrupt key file",
    );
}

#[test]
fn a_ca_key_of_another_certificate_is_refused_naming_the_certificate() {
    assert_refused(
        |dir, ca| {
            let key = mesh_core::KeyPair::generate(mesh_core::KeyType::EcP256).unwrap();
            std::fs::write(
                dir.join(format!("x509-{}.key.pem", x509_id(ca))),
                key.pkcs8_pem(),
            )
            .unwrap();
            dir.join(format!("x509-{}.pem", x509_id(ca)))
        },
        "does not belong",
    );
}

#[test]
fn a_replaced_certificate_is_refused_naming_it() {
    assert_refused(
        |dir, ca| {
            let other = tempfile::tempdir().unwrap();
            let other_ca = open(other.path()).unwrap();
            let path = dir.join(format!("x509-{}.pem", x509_id(ca)));
            std::fs::write(
                &path,
                mesh_core::x509::certificates_to_pem(other_ca.x509_issuer().full_chain()),
            )
            .unwrap();
            path
        },
        "does not match",
    );
}

#[test]
fn a_truncated_certificate_file_is_refused_naming_it() {
    assert_refused(
        |dir, ca| {
            let path = dir.join(format!("x509-{}.pem", x509_id(ca)));
            let text = std::fs::read(&path).unwrap();
            std::fs::write(&path, &text[..text.len() / 3]).unwrap();
            path
        },
        "corrupt certificate file",
    );
}

#[test]
fn a_corrupt_or_swapped_jwt_key_is_refused_naming_it() {
    assert_refused(
        |dir, ca| {
            let path = dir.join(format!("jwt-{}.key.pem", jwt_id(ca)));
            std::fs::write(&path, b"garbage").unwrap();
            path
        },
        "corrupt key file",
    );
    assert_refused(
        |dir, ca| {
            let path = dir.join(format!("jwt-{}.key.pem", jwt_id(ca)));
            let key = mesh_core::KeyPair::generate(mesh_core::KeyType::EcP256).unwrap();
            std::fs::write(&path, key.pkcs8_pem()).unwrap();
            path
        },
        "does not match",
    );
}

#[test]
fn another_trust_domain_in_the_configuration_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()).unwrap());
    let before = contents(dir.path());
    let err = Ca::open(
        CaConfig::new(TrustDomain::new("other.org").unwrap(), dir.path()),
        Arc::new(ManualClock::new(t0())),
    )
    .unwrap_err();
    assert!(matches!(err, CaError::ConfigMismatch { .. }), "{err}");
    assert!(err.to_string().contains("other.org"), "{err}");
    assert_eq!(contents(dir.path()), before);
}

#[test]
fn an_empty_directory_is_a_first_start() {
    let dir = tempfile::tempdir().unwrap();
    // Unrelated files do not count as CA state.
    std::fs::write(dir.path().join("README"), b"notes").unwrap();
    let ca = open(dir.path()).unwrap();
    assert_eq!(ca.current_bundle().sequence(), 1);
}
