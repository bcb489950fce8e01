//! JWT-SVID minting and validation costs.
//!
//! Run with `cargo bench -p mesh-core --bench jwt`.

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion};
use mesh_core::jwt::{self, JwtSigner};
use mesh_core::{Bundle, BundleSet, JwtAuthority, KeyPair, KeyType, SpiffeId, TrustDomain};

const KID: &str = "bench-kid";
const TTL: Duration = Duration::from_secs(300);

fn jwt_svid(c: &mut Criterion) {
    let key = KeyPair::generate(KeyType::EcP256).expect("generate key");
    let sub = SpiffeId::new("spiffe://example.org/ns/default/sa/web").expect("spiffe id");
    let audiences = vec!["db".to_owned()];
    let signer = JwtSigner::new(&key, KID).expect("signer");

    let mut bundle = Bundle::new(TrustDomain::new("example.org").expect("trust domain"));
    bundle.add_jwt_authority(JwtAuthority {
        key_id: KID.to_owned(),
        public_key: key.spki_der(),
    });
    let bundles: BundleSet = [bundle].into_iter().collect();

    c.bench_function("mint_es256_signer", |b| {
        b.iter(|| {
            signer
                .mint(
                    black_box(&sub),
                    black_box(&audiences),
                    TTL,
                    SystemTime::now(),
                )
                .expect("mint")
        })
    });
    c.bench_function("mint_es256_from_key_pair", |b| {
        b.iter(|| {
            jwt::mint(
                black_box(&key),
                KID,
                black_box(&sub),
                black_box(&audiences),
                TTL,
                SystemTime::now(),
            )
            .expect("mint")
        })
    });

    let token = signer
        .mint(&sub, &audiences, TTL, SystemTime::now())
        .expect("mint");
    c.bench_function("validate_es256", |b| {
        b.iter(|| {
            jwt::validate(black_box(&token), &bundles, "db", SystemTime::now()).expect("validate")
        })
    });
}

criterion_group!(benches, jwt_svid);
criterion_main!(benches);
