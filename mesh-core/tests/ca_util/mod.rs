//! Helpers shared by the CA, X.509 and rotation tests.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use mesh_core::bundle::{Bundle, BundleSet};
use mesh_core::x509::certificates_to_pem;
use mesh_core::TrustDomain;
use rustls_pki_types::CertificateDer;

pub fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

/// A fixed start time for clock-driven tests: 2030-01-01T00:00:00Z.
pub fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_456_000)
}

pub fn hours(h: u64) -> Duration {
    Duration::from_secs(h * 3600)
}

pub fn bundle_set(td: &TrustDomain, roots: &[CertificateDer<'static>]) -> BundleSet {
    let mut bundle = Bundle::new(td.clone());
    for r in roots {
        bundle.add_x509_authority(r.clone());
    }
    std::iter::once(bundle).collect()
}

/// Runs `openssl verify` on `chain` (leaf first) against `roots`, optionally for a purpose,
/// optionally at a given time. Returns whether it succeeded and its output.
pub fn openssl_verify(
    dir: &Path,
    roots: &[CertificateDer<'_>],
    chain: &[CertificateDer<'_>],
    purpose: Option<&str>,
    at: Option<SystemTime>,
) -> (bool, String) {
    let bundle = dir.join("bundle.pem");
    let leaf = dir.join("leaf.pem");
    let untrusted = dir.join("untrusted.pem");
    std::fs::write(&bundle, certificates_to_pem(roots)).unwrap();
    std::fs::write(&leaf, certificates_to_pem(&chain[..1])).unwrap();
    let mut cmd = Command::new("openssl");
    cmd.arg("verify").arg("-CAfile").arg(&bundle);
    if chain.len() > 1 {
        std::fs::write(&untrusted, certificates_to_pem(&chain[1..])).unwrap();
        cmd.arg("-untrusted").arg(&untrusted);
    }
    if let Some(p) = purpose {
        cmd.arg("-purpose").arg(p);
    }
    if let Some(t) = at {
        let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        cmd.arg("-attime").arg(secs.to_string());
    }
    cmd.arg(&leaf);
    let out = cmd.output().expect("openssl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && text.contains(": OK"), text)
}

/// Runs openssl with `args` in `dir`, panicking with its output on failure.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const ROOT_CNF: &str = "\
[req]
distinguished_name = dn
prompt = no
x509_extensions = ext
[dn]
O = Team
CN = Team Root CA
[ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
";

const INTERMEDIATE_EXT: &str = "\
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = URI:spiffe://example.org
";

/// Makes a team root (`root.pem`, `root.key`) with openssl, the way a team would have, with
/// the given extra subject line for `[dn]` (e.g. `OU = Platform`) and key algorithm options.
pub fn make_team_root(dir: &Path, cnf: Option<&str>) {
    std::fs::write(dir.join("root.cnf"), cnf.unwrap_or(ROOT_CNF)).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-config",
            "root.cnf",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "root.key",
            "-out",
            "root.pem",
            "-days",
            "30",
        ],
    );
}

/// Makes a team intermediate CA (`int.pem`, `int.key`) under `root.pem` with openssl.
pub fn make_team_intermediate(dir: &Path, ext: Option<&str>) {
    std::fs::write(dir.join("int.ext"), ext.unwrap_or(INTERMEDIATE_EXT)).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "int.key",
            "-out",
            "int.csr",
            "-subj",
            "/O=Team/OU=Platform/CN=Team Mesh CA",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "int.csr",
            "-CA",
            "root.pem",
            "-CAkey",
            "root.key",
            "-CAcreateserial",
            "-out",
            "int.pem",
            "-days",
            "20",
            "-extfile",
            "int.ext",
        ],
    );
}
