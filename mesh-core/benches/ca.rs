//! Cost of issuing and verifying X509-SVIDs, next to the physical limit: one bare ECDSA P-256
//! signature over a certificate-sized message.

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use criterion::{criterion_group, Criterion};
use mesh_core::ca::{SvidRequest, X509Issuer};
use mesh_core::x509::verify_x509_svid;
use mesh_core::{Bundle, BundleSet, KeyPair, KeyType, TrustDomain};

fn benches(c: &mut Criterion) {
    let td = TrustDomain::new("example.org").unwrap();
    let now = SystemTime::now();
    let ca = X509Issuer::self_signed(
        &td,
        KeyPair::generate(KeyType::EcP256).unwrap(),
        now,
        Duration::from_secs(24 * 3600),
    )
    .unwrap();
    let request = SvidRequest::new(
        td.workload_id("/ns/default/sa/web").unwrap(),
        Duration::from_secs(3600),
    );
    let leaf_key = KeyPair::generate(KeyType::EcP256).unwrap();
    let spki = leaf_key.spki_der();

    // The floor: one ECDSA P-256 signature over ~500 bytes, about a leaf's to-be-signed part.
    let signer =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, ca.key().pkcs8_der()).unwrap();
    let rng = SystemRandom::new();
    let message = vec![0x5au8; 500];
    c.bench_function("ecdsa_p256_sign_500_bytes", |b| {
        b.iter(|| signer.sign(&rng, black_box(&message)).unwrap())
    });

    c.bench_function("issue_x509_svid_for_public_key", |b| {
        b.iter(|| {
            ca.issue_for_public_key(black_box(&request), black_box(&spki), now)
                .unwrap()
        })
    });

    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(leaf_key.rcgen())
        .unwrap()
        .der()
        .to_vec();
    c.bench_function("issue_x509_svid_for_csr", |b| {
        b.iter(|| {
            ca.issue_for_csr(black_box(&request), black_box(&csr), now)
                .unwrap()
        })
    });

    c.bench_function("issue_x509_svid_with_new_key", |b| {
        b.iter(|| {
            ca.issue_with_new_key(black_box(&request), KeyType::EcP256, now)
                .unwrap()
        })
    });

    let svid = ca
        .issue_with_new_key(&request, KeyType::EcP256, now)
        .unwrap();
    let mut bundle = Bundle::new(td.clone());
    bundle.add_x509_authority(ca.root().clone());
    let bundles: BundleSet = std::iter::once(bundle).collect();
    c.bench_function("verify_x509_svid", |b| {
        b.iter(|| verify_x509_svid(black_box(svid.chain()), &bundles, now).unwrap())
    });
}

/// On a shared, busy machine two benchmarks run one after the other see different loads; this
/// alternates batches of bare signatures and issuances so both see the same, and prints the
/// median ratio of issuing time to signing time.
fn interleaved_ratio() {
    let td = TrustDomain::new("example.org").unwrap();
    let now = SystemTime::now();
    let ca = X509Issuer::self_signed(
        &td,
        KeyPair::generate(KeyType::EcP256).unwrap(),
        now,
        Duration::from_secs(24 * 3600),
    )
    .unwrap();
    let request = SvidRequest::new(
        td.workload_id("/ns/default/sa/web").unwrap(),
        Duration::from_secs(3600),
    );
    let spki = KeyPair::generate(KeyType::EcP256).unwrap().spki_der();
    let signer =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, ca.key().pkcs8_der()).unwrap();
    let rng = SystemRandom::new();
    let message = vec![0x5au8; 500];

    const BATCH: u32 = 200;
    let mut ratios = Vec::new();
    for _ in 0..41 {
        let start = std::time::Instant::now();
        for _ in 0..BATCH {
            black_box(signer.sign(&rng, black_box(&message)).unwrap());
        }
        let sign = start.elapsed();
        let start = std::time::Instant::now();
        for _ in 0..BATCH {
            black_box(
                ca.issue_for_public_key(&request, black_box(&spki), now)
                    .unwrap(),
            );
        }
        let issue = start.elapsed();
        ratios.push(issue.as_secs_f64() / sign.as_secs_f64());
    }
    ratios.sort_by(f64::total_cmp);
    eprintln!(
        "issue_x509_svid_for_public_key / ecdsa_p256_sign_500_bytes, interleaved: median {:.2}x (min {:.2}x, max {:.2}x)",
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1]
    );
}

criterion_group!(ca, benches);

fn main() {
    ca();
    Criterion::default().configure_from_args().final_summary();
    interleaved_ratio();
}
