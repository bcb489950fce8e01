//! The CSR reader and the X509-SVID parsers never panic, whatever bytes they get.

mod ca_util;

use std::time::{Duration, SystemTime};

use mesh_core::ca::{csr_public_key, SvidRequest, X509Issuer};
use mesh_core::x509::{split_concatenated_der, verify_x509_svid, X509Svid};
use mesh_core::{KeyPair, KeyType};
use proptest::prelude::*;
use rustls_pki_types::CertificateDer;

fn valid_csr() -> Vec<u8> {
    let key = KeyPair::generate(KeyType::EcP256).unwrap();
    rcgen::CertificateParams::new(vec!["a.example".to_owned()])
        .unwrap()
        .serialize_request(key.rcgen())
        .unwrap()
        .der()
        .to_vec()
}

/// One SVID for the whole run, so damaged copies are checked against their real root.
fn valid_svid() -> &'static (X509Svid, CertificateDer<'static>) {
    static SVID: std::sync::OnceLock<(X509Svid, CertificateDer<'static>)> =
        std::sync::OnceLock::new();
    SVID.get_or_init(make_svid)
}

fn make_svid() -> (X509Svid, CertificateDer<'static>) {
    let now = SystemTime::now();
    let ca = X509Issuer::self_signed(
        &ca_util::td(),
        KeyPair::generate(KeyType::EcP256).unwrap(),
        now,
        Duration::from_secs(3600),
    )
    .unwrap();
    let req = SvidRequest::new(
        ca_util::td().workload_id("/p").unwrap(),
        Duration::from_secs(600),
    );
    let svid = ca.issue_with_new_key(&req, KeyType::EcP256, now).unwrap();
    (svid, ca.root().clone())
}

/// `base` with some bytes replaced, some truncated off the end.
fn mutated(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = base.len();
    (
        proptest::collection::vec((0..len, any::<u8>()), 1..8),
        0..=len,
    )
        .prop_map(move |(edits, keep)| {
            let mut bytes = base.clone();
            for (i, b) in edits {
                bytes[i] = b;
            }
            bytes.truncate(keep.max(1));
            bytes
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn csr_reader_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = csr_public_key(&bytes);
        let mut pem = b"-----BEGIN CERTIFICATE REQUEST-----\n".to_vec();
        pem.extend_from_slice(&bytes);
        let _ = csr_public_key(&pem);
    }

    #[test]
    fn csr_reader_never_panics_on_damaged_csrs(bytes in mutated(valid_csr())) {
        let _ = csr_public_key(&bytes);
    }

    #[test]
    fn svid_parsers_never_panic_on_arbitrary_bytes(
        chain in proptest::collection::vec(any::<u8>(), 0..2048),
        key in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let _ = X509Svid::from_der(&chain, &key);
        let _ = split_concatenated_der(&chain);
        let _ = X509Svid::from_pem(&String::from_utf8_lossy(&chain), &String::from_utf8_lossy(&key));
        let bundles = mesh_core::BundleSet::new();
        let _ = verify_x509_svid(&[CertificateDer::from(chain)], &bundles, SystemTime::now());
    }

    #[test]
    fn svid_parsers_never_panic_on_damaged_certificates(bytes in mutated(valid_svid().0.chain_der())) {
        let (svid, root) = valid_svid();
        let _ = X509Svid::from_der(&bytes, svid.private_key_pkcs8_der());
        let bundles = ca_util::bundle_set(&ca_util::td(), std::slice::from_ref(root));
        let _ = verify_x509_svid(&[CertificateDer::from(bytes)], &bundles, SystemTime::now());
    }
}
