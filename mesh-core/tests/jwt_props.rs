//! Property tests: the JWT-SVID validator never panics, whatever it is given.
//!
//! Case counts come from `PROPTEST_CASES` (CI sets 256).

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use mesh_core::jwt;
use mesh_core::{Bundle, BundleSet, JwtAuthority, KeyPair, KeyType, SpiffeId, TrustDomain};
use proptest::prelude::*;
use serde_json::{json, Value};

const KID: &str = "kid-1";
const NOW_SECS: u64 = 1_750_000_000;

struct Fixture {
    bundles: BundleSet,
    token: String,
    /// The same key as the bundle's, for signing hand-built tokens.
    raw_key: EcdsaKeyPair,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let key = KeyPair::generate(KeyType::EcP256).unwrap();
        let mut bundle = Bundle::new(TrustDomain::new("example.org").unwrap());
        bundle.add_jwt_authority(JwtAuthority {
            key_id: KID.to_owned(),
            public_key: key.spki_der(),
        });
        let sub = SpiffeId::new("spiffe://example.org/web").unwrap();
        let token = jwt::mint(
            &key,
            KID,
            &sub,
            &["db".to_owned()],
            Duration::from_secs(300),
            now(),
        )
        .unwrap();
        let raw_key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, key.pkcs8_der()).unwrap();
        Fixture {
            bundles: [bundle].into_iter().collect(),
            token,
            raw_key,
        }
    })
}

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW_SECS)
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("json has no nan or infinity", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "[ -~]{0,24}".prop_map(Value::String),
        Just(json!("spiffe://example.org/web")),
        Just(json!("db")),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// Signs header and claims with the bundle's key, so the validator gets past the signature
/// and exercises every later check.
fn signed(header: &Value, claims: &Value) -> String {
    let input = format!("{}.{}", b64(header), b64(claims));
    let sig = fixture()
        .raw_key
        .sign(&SystemRandom::new(), input.as_bytes())
        .unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

fn validate(token: &str) {
    // The outcome does not matter here; only that there is one.
    let _ = jwt::validate(token, &fixture().bundles, "db", now());
}

proptest! {
    #[test]
    fn arbitrary_strings_never_panic(token in any::<String>()) {
        validate(&token);
    }

    #[test]
    fn dotted_base64url_strings_never_panic(token in "[A-Za-z0-9_=.-]{0,400}") {
        validate(&token);
    }

    #[test]
    fn mutated_valid_tokens_never_panic_and_never_validate_changed_signing_input(
        edits in prop::collection::vec((any::<prop::sample::Index>(), "[A-Za-z0-9_.-]"), 1..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let original = &fixture().token;
        let mut bytes = original.clone().into_bytes();
        for (at, replacement) in &edits {
            let i = at.index(bytes.len());
            bytes[i] = replacement.as_bytes()[0];
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        let token = String::from_utf8(bytes).unwrap();
        let result = jwt::validate(&token, &fixture().bundles, "db", now());

        // Whatever changed, a token that still validates must carry the original header and
        // payload bytes: a changed signing input never gets past the signature.
        if result.is_ok() {
            let signing_input = |t: &str| t.rsplit_once('.').map(|(s, _)| s.to_owned());
            prop_assert_eq!(signing_input(&token), signing_input(original));
        }
    }

    #[test]
    fn signed_tokens_with_arbitrary_header_and_claims_never_panic(
        header in arb_json(),
        claims in arb_json(),
    ) {
        validate(&signed(&header, &claims));
    }

    #[test]
    fn signed_tokens_with_one_mutated_claim_never_panic(
        field in prop::sample::select(vec!["sub", "aud", "exp", "nbf", "iat"]),
        value in prop::option::of(arb_json()),
        typ in prop::option::of(arb_json()),
    ) {
        let mut header = json!({"alg": "ES256", "kid": KID});
        if let Some(typ) = typ {
            header["typ"] = typ;
        }
        let mut claims = json!({
            "sub": "spiffe://example.org/web",
            "aud": ["db"],
            "iat": NOW_SECS,
            "exp": NOW_SECS + 300,
        });
        match value {
            Some(v) => claims[field] = v,
            None => { claims.as_object_mut().unwrap().remove(field); }
        }
        let token = signed(&header, &claims);
        if let Ok(svid) = jwt::validate(&token, &fixture().bundles, "db", now()) {
            prop_assert!(svid.audiences().iter().any(|a| a == "db"));
            prop_assert_eq!(svid.spiffe_id().trust_domain().name(), "example.org");
        }
    }
}
