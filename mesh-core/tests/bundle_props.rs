//! Property tests: the bundle document reader never panics, whatever it is given, and what it
//! accepts it writes back to the same bundle.
//!
//! Case counts come from `PROPTEST_CASES` (CI sets 256).

use std::sync::OnceLock;

use mesh_core::bundle::Strictness;
use mesh_core::{Bundle, JwtAuthority, KeyPair, KeyType, TrustDomain};
use proptest::prelude::*;
use serde_json::{json, Value};

fn trust_domain() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

/// A valid SPIFFE bundle document with EC and RSA CAs and JWT keys, made once.
fn valid_document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut bundle = Bundle::new(trust_domain());
        for key_type in [KeyType::EcP256, KeyType::Rsa2048] {
            let key = KeyPair::generate(key_type).unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            bundle.add_x509_authority(params.self_signed(key.rcgen()).unwrap().der().clone());
        }
        for (kid, key_type) in [("a", KeyType::EcP256), ("b", KeyType::EcP384)] {
            bundle.add_jwt_authority(JwtAuthority {
                key_id: kid.to_owned(),
                public_key: KeyPair::generate(key_type).unwrap().spki_der(),
            });
        }
        bundle.set_sequence(3);
        serde_json::from_str(&bundle.to_document().unwrap()).unwrap()
    })
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        "[ -~]{0,24}".prop_map(Value::String),
        prop::sample::select(vec![
            "EC",
            "RSA",
            "P-256",
            "P-384",
            "x509-svid",
            "jwt-svid",
            "AQAB"
        ])
        .prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z5]{1,4}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Parses in both modes; if the strict parse succeeds, writing the bundle and reading it back
/// must give the same bundle.
fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
    let _ = Bundle::from_document(trust_domain(), bytes);
    if let Ok(bundle) = Bundle::from_document_with(trust_domain(), bytes, Strictness::Strict) {
        let written = bundle.to_document().unwrap();
        let again =
            Bundle::from_document_with(trust_domain(), written.as_bytes(), Strictness::Strict)
                .unwrap();
        prop_assert_eq!(again, bundle);
    }
    Ok(())
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check(&bytes)?;
    }

    #[test]
    fn arbitrary_json_never_panics(doc in arb_json(), keys in prop::collection::vec(arb_json(), 0..4)) {
        check(doc.to_string().as_bytes())?;
        check(json!({"keys": keys}).to_string().as_bytes())?;
    }

    #[test]
    fn valid_document_with_one_member_mutated_never_panics(
        key in any::<prop::sample::Index>(),
        field in prop::sample::select(vec!["kty", "crv", "x", "y", "n", "e", "kid", "use", "x5c"]),
        value in prop::option::of(arb_json()),
        top in prop::option::of((prop::sample::select(vec!["keys", "spiffe_sequence", "spiffe_refresh_hint"]), arb_json())),
    ) {
        let mut doc = valid_document().clone();
        let keys = doc["keys"].as_array_mut().unwrap();
        let i = key.index(keys.len());
        let jwk = keys[i].as_object_mut().unwrap();
        match value {
            Some(v) => { jwk.insert(field.to_owned(), v); }
            None => { jwk.remove(field); }
        }
        if let Some((name, v)) = top {
            doc[name] = v;
        }
        check(doc.to_string().as_bytes())?;
    }

    #[test]
    fn valid_document_with_flipped_bytes_never_panics(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = valid_document().to_string().into_bytes();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        check(&bytes)?;
    }
}
