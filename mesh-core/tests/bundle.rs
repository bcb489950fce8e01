//! SPIFFE bundle documents and Workload API JWKS, both ways, and every reading error.

use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use mesh_core::bundle::{BundleDocumentError, Strictness};
use mesh_core::{Bundle, JwtAuthority, KeyPair, KeyType, TrustDomain};
use rustls_pki_types::CertificateDer;
use serde_json::{json, Value};

fn trust_domain() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn ca_cert(key: &KeyPair) -> CertificateDer<'static> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "example.org");
    params.self_signed(key.rcgen()).unwrap().der().clone()
}

fn authority(kid: &str, key: &KeyPair) -> JwtAuthority {
    JwtAuthority {
        key_id: kid.to_owned(),
        public_key: key.spki_der(),
    }
}

/// A bundle with an EC and an RSA CA, and P-256, P-384 and RSA JWT keys.
fn full_bundle() -> Bundle {
    let mut bundle = Bundle::new(trust_domain());
    bundle.add_x509_authority(ca_cert(&KeyPair::generate(KeyType::EcP256).unwrap()));
    bundle.add_x509_authority(ca_cert(&KeyPair::generate(KeyType::Rsa2048).unwrap()));
    bundle.add_jwt_authority(authority(
        "p256",
        &KeyPair::generate(KeyType::EcP256).unwrap(),
    ));
    bundle.add_jwt_authority(authority(
        "p384",
        &KeyPair::generate(KeyType::EcP384).unwrap(),
    ));
    bundle.add_jwt_authority(authority(
        "rsa",
        &KeyPair::generate(KeyType::Rsa2048).unwrap(),
    ));
    bundle.set_sequence(7);
    bundle.set_refresh_hint(Some(Duration::from_secs(300)));
    bundle
}

fn parse(json: &Value) -> Result<Bundle, BundleDocumentError> {
    Bundle::from_document(trust_domain(), json.to_string().as_bytes())
}

fn parse_strict(json: &Value) -> Result<Bundle, BundleDocumentError> {
    Bundle::from_document_with(
        trust_domain(),
        json.to_string().as_bytes(),
        Strictness::Strict,
    )
}

/// A valid EC P-256 JWT key as a JWK with the given kid.
fn ec_jwk(kid: &str) -> Value {
    let key = KeyPair::generate(KeyType::EcP256).unwrap();
    let mut bundle = Bundle::new(trust_domain());
    bundle.add_jwt_authority(authority(kid, &key));
    let jwks: Value = serde_json::from_str(&bundle.to_jwt_jwks().unwrap()).unwrap();
    jwks["keys"][0].clone()
}

/// A valid x509-svid JWK for a fresh CA of the given key type.
fn x509_jwk(key_type: KeyType) -> Value {
    let mut bundle = Bundle::new(trust_domain());
    bundle.add_x509_authority(ca_cert(&KeyPair::generate(key_type).unwrap()));
    let doc: Value = serde_json::from_str(&bundle.to_document().unwrap()).unwrap();
    doc["keys"][0].clone()
}

fn assert_names_key(err: &BundleDocumentError, needle: &str) {
    let message = err.to_string();
    assert!(
        message.contains(needle),
        "`{message}` does not name `{needle}`"
    );
}

#[test]
fn spiffe_document_round_trips_ec_and_rsa_keys() {
    let bundle = full_bundle();
    let text = bundle.to_document().unwrap();
    let again =
        Bundle::from_document_with(trust_domain(), text.as_bytes(), Strictness::Strict).unwrap();
    assert_eq!(again, bundle);

    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["spiffe_sequence"], 7);
    assert_eq!(doc["spiffe_refresh_hint"], 300);
    let keys = doc["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 5);
    for key in &keys[..2] {
        assert_eq!(key["use"], "x509-svid");
        assert_eq!(key["x5c"].as_array().unwrap().len(), 1);
        assert!(key.get("kid").is_none());
    }
    assert_eq!(keys[0]["kty"], "EC");
    assert_eq!(keys[0]["crv"], "P-256");
    assert_eq!(keys[1]["kty"], "RSA");
    assert_eq!(keys[1]["e"], "AQAB");
    for (key, kid) in keys[2..].iter().zip(["p256", "p384", "rsa"]) {
        assert_eq!(key["use"], "jwt-svid");
        assert_eq!(key["kid"], kid);
        assert!(key.get("x5c").is_none());
    }
    assert_eq!(keys[3]["crv"], "P-384");
    // P-384 coordinates are 48 bytes.
    let x = URL_SAFE_NO_PAD
        .decode(keys[3]["x"].as_str().unwrap())
        .unwrap();
    assert_eq!(x.len(), 48);
}

#[test]
fn workload_api_jwks_round_trips_with_kid_and_no_use() {
    let bundle = full_bundle();
    let text = bundle.to_jwt_jwks().unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc.as_object().unwrap().len(), 1, "only `keys`: {text}");
    for key in doc["keys"].as_array().unwrap() {
        assert!(key.get("use").is_none(), "{key}");
        assert!(key["kid"].is_string(), "{key}");
    }

    let again = Bundle::from_document(trust_domain(), text.as_bytes()).unwrap();
    assert_eq!(again.jwt_authorities(), bundle.jwt_authorities());
    assert!(again.x509_authorities().is_empty());
    assert_eq!(again.sequence(), 0);
    assert_eq!(again.refresh_hint(), None);
}

#[test]
fn spiffe_crate_reads_our_certificates_and_jwks() {
    let bundle = full_bundle();
    let td = spiffe::TrustDomain::new("example.org").unwrap();

    let doc: Value = serde_json::from_str(&bundle.to_document().unwrap()).unwrap();
    let mut der = Vec::new();
    for key in doc["keys"].as_array().unwrap() {
        if key["use"] == "x509-svid" {
            der.extend(STANDARD.decode(key["x5c"][0].as_str().unwrap()).unwrap());
        }
    }
    let x509 = spiffe::X509Bundle::parse_from_der(td.clone(), &der).unwrap();
    assert_eq!(x509.authorities().len(), 2);

    let jwks = bundle.to_jwt_jwks().unwrap();
    let jwt = spiffe::JwtBundle::from_jwt_authorities(td, jwks.as_bytes()).unwrap();
    for kid in ["p256", "p384", "rsa"] {
        assert!(jwt.find_jwt_authority(kid).is_some(), "{kid}");
    }
}

#[test]
fn document_of_the_standard_appendix_shape_is_read() {
    let doc = json!({
        "spiffe_sequence": 1,
        "spiffe_refresh_hint": 2_419_200,
        "keys": [x509_jwk(KeyType::Rsa2048), ec_jwk("jwt-1")],
        "extra": "ignored",
    });
    let bundle = parse(&doc).unwrap();
    assert_eq!(bundle.x509_authorities().len(), 1);
    assert!(bundle.jwt_authority("jwt-1").is_some());
    assert_eq!(bundle.refresh_hint(), Some(Duration::from_secs(2_419_200)));
}

#[test]
fn bad_json_reports_line_and_column() {
    let text = "{\n  \"keys\": [\n    {\"kty\": }\n  ]\n}";
    let err = Bundle::from_document(trust_domain(), text.as_bytes()).unwrap_err();
    assert!(
        matches!(err, BundleDocumentError::Json { line: 3, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("line 3"), "{err}");

    let err = Bundle::from_document(trust_domain(), b"{}").unwrap_err();
    assert!(matches!(err, BundleDocumentError::Json { .. }), "{err}");
    let err = parse(&json!({"keys": [], "spiffe_sequence": -1})).unwrap_err();
    assert!(matches!(err, BundleDocumentError::Json { .. }), "{err}");
}

#[test]
fn unknown_key_type_is_skipped_by_default_and_an_error_when_strict() {
    let oct = json!({"kty": "oct", "use": "jwt-svid", "kid": "hmac", "k": "c2VjcmV0"});
    let doc = json!({"keys": [ec_jwk("a"), oct]});

    let bundle = parse(&doc).unwrap();
    assert_eq!(bundle.jwt_authorities().len(), 1);

    let err = parse_strict(&doc).unwrap_err();
    assert!(
        matches!(err, BundleDocumentError::UnsupportedKeyType { ref key, ref kty }
            if key.index == 1 && kty == "oct"),
        "{err}"
    );
    assert_names_key(&err, "key 1 (kid `hmac`)");
}

#[test]
fn unsupported_curve_is_skipped_by_default_and_an_error_when_strict() {
    let mut jwk = ec_jwk("k1");
    jwk["crv"] = json!("secp256k1");
    let doc = json!({"keys": [jwk]});
    assert!(parse(&doc).unwrap().jwt_authorities().is_empty());
    let err = parse_strict(&doc).unwrap_err();
    assert!(
        matches!(err, BundleDocumentError::UnsupportedCurve { ref crv, .. } if crv == "secp256k1"),
        "{err}"
    );
    assert_names_key(&err, "key 0 (kid `k1`)");
}

#[test]
fn unknown_use_is_skipped_by_default_and_an_error_when_strict() {
    let mut jwk = ec_jwk("k1");
    jwk["use"] = json!("wit-svid");
    let doc = json!({"keys": [jwk]});
    assert!(parse(&doc).unwrap().jwt_authorities().is_empty());
    let err = parse_strict(&doc).unwrap_err();
    assert!(
        matches!(err, BundleDocumentError::UnknownUse { ref key_use, .. } if key_use == "wit-svid"),
        "{err}"
    );
    assert_names_key(&err, "key 0 (kid `k1`)");
}

#[test]
fn jwt_key_without_kid_is_rejected_in_both_forms() {
    for key_use in [Some("jwt-svid"), None] {
        let mut jwk = ec_jwk("gone");
        let map = jwk.as_object_mut().unwrap();
        map.remove("kid");
        if let Some(u) = key_use {
            map.insert("use".to_owned(), json!(u));
        }
        let err = parse(&json!({"keys": [ec_jwk("first"), jwk]})).unwrap_err();
        assert!(
            matches!(err, BundleDocumentError::MissingKeyId { ref key } if key.index == 1),
            "{err}"
        );
        assert_names_key(&err, "key 1 (no kid)");
    }
}

#[test]
fn x509_key_needs_exactly_one_certificate() {
    let mut two = x509_jwk(KeyType::EcP256);
    let cert = two["x5c"][0].clone();
    two["x5c"] = json!([cert.clone(), cert]);
    let err = parse(&json!({"keys": [two]})).unwrap_err();
    assert!(
        matches!(err, BundleDocumentError::X5cCount { count: 2, .. }),
        "{err}"
    );
    assert_names_key(&err, "key 0");

    let mut none = x509_jwk(KeyType::EcP256);
    none.as_object_mut().unwrap().remove("x5c");
    let err = parse(&json!({"keys": [none]})).unwrap_err();
    assert!(
        matches!(err, BundleDocumentError::X5cCount { count: 0, .. }),
        "{err}"
    );
}

#[test]
fn bad_base64_is_rejected_naming_the_member() {
    let mut jwk = x509_jwk(KeyType::EcP256);
    jwk["x5c"] = json!(["not base64!"]);
    let err = parse(&json!({"keys": [jwk]})).unwrap_err();
    assert!(
        matches!(err, BundleDocumentError::Base64 { field: "x5c", .. }),
        "{err}"
    );
    assert_names_key(&err, "key 0");

    let mut jwk = ec_jwk("k9");
    jwk["y"] = json!("a+b/");
    let err = parse(&json!({"keys": [jwk]})).unwrap_err();
    assert!(
        matches!(err, BundleDocumentError::Base64 { field: "y", .. }),
        "{err}"
    );
    assert_names_key(&err, "kid `k9`");
}

#[test]
fn certificate_that_does_not_parse_is_rejected() {
    let mut jwk = x509_jwk(KeyType::EcP256);
    jwk["x5c"] = json!([STANDARD.encode(b"definitely not a certificate")]);
    let err = parse(&json!({"keys": [jwk]})).unwrap_err();
    assert!(
        matches!(err, BundleDocumentError::BadCertificate { .. }),
        "{err}"
    );
    assert_names_key(&err, "key 0");
}

#[test]
fn certificate_whose_key_differs_from_the_jwk_is_rejected() {
    let mut jwk = x509_jwk(KeyType::EcP256);
    let other = ec_jwk("other");
    jwk["x"] = other["x"].clone();
    jwk["y"] = other["y"].clone();
    let err = parse(&json!({"keys": [jwk]})).unwrap_err();
    assert!(
        matches!(err, BundleDocumentError::CertificateKeyMismatch { .. }),
        "{err}"
    );

    // An RSA certificate presented as an EC key.
    let mut jwk = x509_jwk(KeyType::Rsa2048);
    let ec = ec_jwk("ec");
    let map = jwk.as_object_mut().unwrap();
    map.remove("n");
    map.remove("e");
    map.insert("kty".to_owned(), json!("EC"));
    for field in ["crv", "x", "y"] {
        map.insert(field.to_owned(), ec[field].clone());
    }
    let err = parse(&json!({"keys": [jwk]})).unwrap_err();
    assert!(
        matches!(err, BundleDocumentError::CertificateKeyMismatch { .. }),
        "{err}"
    );
    assert_names_key(&err, "key 0");
}

#[test]
fn duplicate_kid_is_rejected_naming_both_keys() {
    let doc = json!({"keys": [ec_jwk("same"), x509_jwk(KeyType::EcP256), ec_jwk("same")]});
    let err = parse(&doc).unwrap_err();
    assert!(
        matches!(err, BundleDocumentError::DuplicateKeyId { ref key, first_index: 0 }
            if key.index == 2),
        "{err}"
    );
    assert_names_key(&err, "key 2 (kid `same`) repeats the kid of key 0");
}

#[test]
fn invalid_key_parameters_are_rejected() {
    let mut jwk = ec_jwk("k1");
    jwk["x"] = json!(URL_SAFE_NO_PAD.encode([7u8; 32]));
    let err = parse(&json!({"keys": [jwk]})).unwrap_err();
    assert!(
        matches!(err, BundleDocumentError::BadKeyParams { ref reason, .. }
            if reason.contains("not on curve")),
        "{err}"
    );
    assert_names_key(&err, "kid `k1`");

    let mut jwk = ec_jwk("k2");
    jwk["crv"] = json!("P-384");
    let err = parse(&json!({"keys": [jwk]})).unwrap_err();
    assert!(
        matches!(err, BundleDocumentError::BadKeyParams { .. }),
        "{err}"
    );
}

#[test]
fn structural_problems_name_the_key_and_member() {
    let err = parse(&json!({"keys": [ec_jwk("a"), "text"]})).unwrap_err();
    assert!(
        matches!(err, BundleDocumentError::KeyNotObject { ref key } if key.index == 1),
        "{err}"
    );

    let mut jwk = ec_jwk("k1");
    jwk.as_object_mut().unwrap().remove("kty");
    let err = parse(&json!({"keys": [jwk]})).unwrap_err();
    assert!(
        matches!(err, BundleDocumentError::MissingField { field: "kty", .. }),
        "{err}"
    );
    assert_names_key(&err, "kid `k1`");

    let mut jwk = ec_jwk("k1");
    jwk["crv"] = json!(256);
    let err = parse(&json!({"keys": [jwk]})).unwrap_err();
    assert!(
        matches!(
            err,
            BundleDocumentError::FieldNotString { field: "crv", .. }
        ),
        "{err}"
    );
}

#[test]
fn writing_a_key_that_is_not_ec_or_rsa_is_an_error() {
    let mut bundle = Bundle::new(trust_domain());
    bundle.add_jwt_authority(JwtAuthority {
        key_id: "junk".to_owned(),
        public_key: b"not spki".to_vec(),
    });
    let err = bundle.to_jwt_jwks().unwrap_err();
    assert!(
        matches!(err, BundleDocumentError::UnsupportedPublicKey { .. }),
        "{err}"
    );
    assert_names_key(&err, "kid `junk`");

    let mut bundle = Bundle::new(trust_domain());
    bundle.add_x509_authority(CertificateDer::from(b"not a cert".to_vec()));
    let err = bundle.to_document().unwrap_err();
    assert!(
        matches!(err, BundleDocumentError::BadCertificate { .. }),
        "{err}"
    );
}
