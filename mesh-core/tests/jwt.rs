//! JWT-SVID minting and validation, checked against the `spiffe` crate and hand-built tokens.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use mesh_core::jwt::{self, JwtAlgorithm, JwtError, JwtSigner, LEEWAY};
use mesh_core::{Bundle, BundleSet, JwtAuthority, KeyPair, KeyType, SpiffeId, TrustDomain};
use serde_json::{json, Value};

const KID: &str = "kid-1";
const TTL: Duration = Duration::from_secs(300);

fn trust_domain() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn subject() -> SpiffeId {
    SpiffeId::new("spiffe://example.org/ns/default/sa/web").unwrap()
}

fn audiences() -> Vec<String> {
    vec!["db".to_owned(), "cache".to_owned()]
}

fn fixed_now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

fn bundle_for(key: &KeyPair, kid: &str) -> Bundle {
    let mut bundle = Bundle::new(trust_domain());
    bundle.add_jwt_authority(JwtAuthority {
        key_id: kid.to_owned(),
        public_key: key.spki_der(),
    });
    bundle
}

fn bundles_for(key: &KeyPair) -> BundleSet {
    [bundle_for(key, KID)].into_iter().collect()
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

fn claims_at(now: SystemTime) -> Value {
    let iat = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
    json!({
        "sub": subject().as_str(),
        "aud": ["db"],
        "iat": iat,
        "exp": iat + 300,
    })
}

/// Signs `header.claims` with ES256 so that only what the test changes is wrong.
fn sign_es256(key: &KeyPair, header: &Value, claims: &Value) -> String {
    let signing_input = format!("{}.{}", b64(header), b64(claims));
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, key.pkcs8_der()).unwrap();
    let sig = pair
        .sign(&SystemRandom::new(), signing_input.as_bytes())
        .unwrap();
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

fn decode_part(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

fn validate_fixed(token: &str, key: &KeyPair) -> Result<jwt::JwtSvid, JwtError> {
    jwt::validate(token, &bundles_for(key), "db", fixed_now())
}

#[test]
fn minted_token_passes_spiffe_crate_validation_for_every_key_type() {
    let cases = [
        (KeyType::EcP256, None, "ES256"),
        (KeyType::EcP384, None, "ES384"),
        (KeyType::Rsa2048, None, "RS256"),
        (KeyType::Rsa2048, Some(JwtAlgorithm::Ps256), "PS256"),
    ];
    for (key_type, alg, alg_name) in cases {
        let key = KeyPair::generate(key_type).unwrap();
        let signer = match alg {
            Some(alg) => JwtSigner::with_algorithm(&key, KID, alg).unwrap(),
            None => JwtSigner::new(&key, KID).unwrap(),
        };
        let now = SystemTime::now();
        let token = signer.mint(&subject(), &audiences(), TTL, now).unwrap();
        assert_eq!(decode_part(&token, 0)["alg"], alg_name);

        // The spiffe crate reads our Workload API JWKS and validates our token.
        let jwks = bundle_for(&key, KID).to_jwt_jwks().unwrap();
        let td = spiffe::TrustDomain::new("example.org").unwrap();
        let theirs = spiffe::JwtBundle::from_jwt_authorities(td, jwks.as_bytes()).unwrap();
        let set: spiffe::JwtBundleSet = [theirs].into_iter().collect();
        let svid = spiffe::JwtSvid::parse_and_validate(&token, &set, &["cache"])
            .unwrap_or_else(|e| panic!("{alg_name}: spiffe crate rejected our token: {e}"));
        assert_eq!(svid.spiffe_id().to_string(), subject().as_str());
        assert_eq!(svid.audience(), audiences().as_slice());
        assert_eq!(svid.key_id(), KID);

        // And so do we.
        let ours = jwt::validate(&token, &bundles_for(&key), "cache", now).unwrap();
        assert_eq!(ours.spiffe_id(), &subject());
        assert_eq!(ours.audiences(), audiences().as_slice());
        assert_eq!(ours.algorithm().name(), alg_name);
    }
}

#[test]
fn spiffe_crate_validates_against_jwt_keys_of_our_spiffe_bundle_document() {
    let key = KeyPair::generate(KeyType::EcP256).unwrap();
    let token = jwt::mint(&key, KID, &subject(), &audiences(), TTL, SystemTime::now()).unwrap();

    // The spiffe crate leaves filtering the document by `use` to its caller.
    let doc: Value = serde_json::from_str(&bundle_for(&key, KID).to_document().unwrap()).unwrap();
    let jwt_keys: Vec<&Value> = doc["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["use"] == "jwt-svid")
        .collect();
    let jwks = json!({ "keys": jwt_keys }).to_string();
    let td = spiffe::TrustDomain::new("example.org").unwrap();
    let theirs = spiffe::JwtBundle::from_jwt_authorities(td, jwks.as_bytes()).unwrap();
    let set: spiffe::JwtBundleSet = [theirs].into_iter().collect();
    spiffe::JwtSvid::parse_and_validate(&token, &set, &["db"]).unwrap();
}

#[test]
fn minted_token_has_kid_typ_and_every_audience() {
    let key = KeyPair::generate(KeyType::EcP256).unwrap();
    let token = jwt::mint(&key, KID, &subject(), &audiences(), TTL, fixed_now()).unwrap();

    let header = decode_part(&token, 0);
    assert_eq!(header, json!({"alg": "ES256", "kid": KID, "typ": "JWT"}));
    let claims = decode_part(&token, 1);
    assert_eq!(claims["sub"], subject().as_str());
    assert_eq!(claims["aud"], json!(["db", "cache"]));
    let iat = claims["iat"].as_u64().unwrap();
    assert_eq!(iat, 1_750_000_000);
    assert_eq!(claims["exp"].as_u64().unwrap() - iat, TTL.as_secs());
    // ES256 signatures are the 64-byte r || s form, not ASN.1.
    let sig = URL_SAFE_NO_PAD
        .decode(token.split('.').nth(2).unwrap())
        .unwrap();
    assert_eq!(sig.len(), 64);

    let svid = validate_fixed(&token, &key).unwrap();
    assert_eq!(svid.expiry(), fixed_now() + TTL, "expiry is the exp claim");
    assert_eq!(svid.key_id(), KID);
    assert_eq!(svid.claims()["sub"], subject().as_str());
}

#[test]
fn minting_without_an_audience_is_refused() {
    let key = KeyPair::generate(KeyType::EcP256).unwrap();
    let err = jwt::mint(&key, KID, &subject(), &[], TTL, fixed_now()).unwrap_err();
    assert!(matches!(err, JwtError::EmptyAudience), "{err}");
    let err = jwt::mint(&key, KID, &subject(), &[String::new()], TTL, fixed_now()).unwrap_err();
    assert!(matches!(err, JwtError::EmptyAudience), "{err}");
}

#[test]
fn minting_with_an_algorithm_the_key_cannot_use_is_refused() {
    let key = KeyPair::generate(KeyType::EcP256).unwrap();
    let err = JwtSigner::with_algorithm(&key, KID, JwtAlgorithm::Rs256).unwrap_err();
    assert!(
        matches!(err, JwtError::AlgorithmDoesNotFitKey { .. }),
        "{err}"
    );
    let err = JwtSigner::new(&key, "").unwrap_err();
    assert!(matches!(err, JwtError::EmptyKeyId), "{err}");
}

#[test]
fn tampered_payload_fails_the_signature_check() {
    let key = KeyPair::generate(KeyType::EcP256).unwrap();
    let token = jwt::mint(&key, KID, &subject(), &audiences(), TTL, fixed_now()).unwrap();
    let mut claims = decode_part(&token, 1);
    claims["sub"] = json!("spiffe://example.org/ns/default/sa/admin");
    let parts: Vec<&str> = token.split('.').collect();
    let forged = format!("{}.{}.{}", parts[0], b64(&claims), parts[2]);

    let err = validate_fixed(&forged, &key).unwrap_err();
    assert!(
        matches!(err, JwtError::BadSignature { ref kid } if kid == KID),
        "{err}"
    );
}

#[test]
fn tampered_signature_fails_the_signature_check() {
    let key = KeyPair::generate(KeyType::EcP256).unwrap();
    let token = jwt::mint(&key, KID, &subject(), &audiences(), TTL, fixed_now()).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    sig[10] ^= 0x01;
    let forged = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(sig));

    let err = validate_fixed(&forged, &key).unwrap_err();
    assert!(matches!(err, JwtError::BadSignature { .. }), "{err}");
}

#[test]
fn expired_token_is_rejected_but_the_leeway_is_honoured() {
    let key = KeyPair::generate(KeyType::EcP256).unwrap();
    let token = jwt::mint(&key, KID, &subject(), &audiences(), TTL, fixed_now()).unwrap();
    let exp = fixed_now() + TTL;

    let inside_leeway = exp + LEEWAY - Duration::from_secs(1);
    jwt::validate(&token, &bundles_for(&key), "db", inside_leeway).unwrap();

    let err = jwt::validate(&token, &bundles_for(&key), "db", exp + LEEWAY).unwrap_err();
    assert!(
        matches!(err, JwtError::Expired { exp: e, .. } if e == 1_750_000_300),
        "{err}"
    );
}

#[test]
fn token_without_exp_is_rejected() {
    let key = KeyPair::generate(KeyType::EcP256).unwrap();
    let mut claims = claims_at(fixed_now());
    claims.as_object_mut().unwrap().remove("exp");
    let token = sign_es256(&key, &json!({"alg": "ES256", "kid": KID}), &claims);
    let err = validate_fixed(&token, &key).unwrap_err();
    assert!(matches!(err, JwtError::MissingExpiry), "{err}");
}

#[test]
fn token_before_its_nbf_is_rejected() {
    let key = KeyPair::generate(KeyType::EcP256).unwrap();
    let mut claims = claims_at(fixed_now());
    claims["nbf"] = json!(1_750_000_000 + 120);
    let token = sign_es256(&key, &json!({"alg": "ES256", "kid": KID}), &claims);
    let err = validate_fixed(&token, &key).unwrap_err();
    assert!(matches!(err, JwtError::NotYetValid { .. }), "{err}");
}

#[test]
fn wrong_audience_is_rejected_and_named() {
    let key = KeyPair::generate(KeyType::EcP256).unwrap();
    let token = jwt::mint(&key, KID, &subject(), &audiences(), TTL, fixed_now()).unwrap();
    let err = jwt::validate(&token, &bundles_for(&key), "billing", fixed_now()).unwrap_err();
    assert!(
        matches!(err, JwtError::AudienceMismatch { ref expected, ref actual }
            if expected == "billing" && actual == &audiences()),
        "{err}"
    );
    assert!(err.to_string().contains("billing"));
}

#[test]
fn single_string_audience_is_accepted_and_reported_as_a_list() {
    let key = KeyPair::generate(KeyType::EcP256).unwrap();
    let mut claims = claims_at(fixed_now());
    claims["aud"] = json!("db");
    let token = sign_es256(
        &key,
        &json!({"alg": "ES256", "kid": KID, "typ": "JOSE"}),
        &claims,
    );
    let svid = validate_fixed(&token, &key).unwrap();
    assert_eq!(svid.audiences(), ["db".to_owned()]);
    assert_eq!(svid.claims()["aud"], json!(["db"]));
}

#[test]
fn alg_none_is_rejected() {
    let key = KeyPair::generate(KeyType::EcP256).unwrap();
    let header = json!({"alg": "none", "kid": KID, "typ": "JWT"});
    let token = format!("{}.{}.", b64(&header), b64(&claims_at(fixed_now())));
    let err = validate_fixed(&token, &key).unwrap_err();
    assert!(
        matches!(err, JwtError::UnsupportedAlgorithm(ref a) if a == "none"),
        "{err}"
    );
}

#[test]
fn hmac_token_keyed_with_the_public_key_is_rejected() {
    // The classic algorithm confusion: HS256 with the verifier's public key as the secret.
    let key = KeyPair::generate(KeyType::EcP256).unwrap();
    let header = json!({"alg": "HS256", "kid": KID, "typ": "JWT"});
    let signing_input = format!("{}.{}", b64(&header), b64(&claims_at(fixed_now())));
    let hmac_key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key.spki_der());
    let tag = aws_lc_rs::hmac::sign(&hmac_key, signing_input.as_bytes());
    let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()));

    let err = validate_fixed(&token, &key).unwrap_err();
    assert!(
        matches!(err, JwtError::UnsupportedAlgorithm(ref a) if a == "HS256"),
        "{err}"
    );
}

#[test]
fn unknown_kid_is_rejected() {
    let key = KeyPair::generate(KeyType::EcP256).unwrap();
    let token = jwt::mint(
        &key,
        "other-kid",
        &subject(),
        &audiences(),
        TTL,
        fixed_now(),
    )
    .unwrap();
    let err = validate_fixed(&token, &key).unwrap_err();
    assert!(
        matches!(err, JwtError::UnknownKeyId { ref kid, ref trust_domain }
            if kid == "other-kid" && trust_domain.name() == "example.org"),
        "{err}"
    );
}

#[test]
fn missing_kid_is_rejected() {
    let key = KeyPair::generate(KeyType::EcP256).unwrap();
    let token = sign_es256(
        &key,
        &json!({"alg": "ES256", "typ": "JWT"}),
        &claims_at(fixed_now()),
    );
    let err = validate_fixed(&token, &key).unwrap_err();
    assert!(matches!(err, JwtError::MissingKeyId), "{err}");
}

#[test]
fn bad_typ_is_rejected() {
    let key = KeyPair::generate(KeyType::EcP256).unwrap();
    let header = json!({"alg": "ES256", "kid": KID, "typ": "at+jwt"});
    let token = sign_es256(&key, &header, &claims_at(fixed_now()));
    let err = validate_fixed(&token, &key).unwrap_err();
    assert!(
        matches!(err, JwtError::BadType(ref t) if t == "at+jwt"),
        "{err}"
    );
}

#[test]
fn critical_header_is_rejected() {
    let key = KeyPair::generate(KeyType::EcP256).unwrap();
    let header = json!({"alg": "ES256", "kid": KID, "crit": ["exp"]});
    let token = sign_es256(&key, &header, &claims_at(fixed_now()));
    let err = validate_fixed(&token, &key).unwrap_err();
    assert!(matches!(err, JwtError::CriticalHeader), "{err}");
}

#[test]
fn subject_that_is_not_a_spiffe_id_is_rejected() {
    let key = KeyPair::generate(KeyType::EcP256).unwrap();
    let mut claims = claims_at(fixed_now());
    claims["sub"] = json!("https://example.org/web");
    let token = sign_es256(&key, &json!({"alg": "ES256", "kid": KID}), &claims);
    let err = validate_fixed(&token, &key).unwrap_err();
    assert!(
        matches!(err, JwtError::BadSubject { ref sub, .. } if sub == "https://example.org/web"),
        "{err}"
    );
}

#[test]
fn subject_in_a_trust_domain_without_a_bundle_is_rejected() {
    let key = KeyPair::generate(KeyType::EcP256).unwrap();
    let other = SpiffeId::new("spiffe://other.org/web").unwrap();
    let token = jwt::mint(&key, KID, &other, &audiences(), TTL, fixed_now()).unwrap();
    let err = validate_fixed(&token, &key).unwrap_err();
    assert!(
        matches!(err, JwtError::NoBundle(ref td) if td.name() == "other.org"),
        "{err}"
    );
}

#[test]
fn key_of_another_algorithm_is_rejected() {
    // The bundle holds a P-256 key under KID, the token claims ES384.
    let p256 = KeyPair::generate(KeyType::EcP256).unwrap();
    let p384 = KeyPair::generate(KeyType::EcP384).unwrap();
    let token = jwt::mint(&p384, KID, &subject(), &audiences(), TTL, fixed_now()).unwrap();
    let err = validate_fixed(&token, &p256).unwrap_err();
    assert!(
        matches!(
            err,
            JwtError::KeyAlgorithmMismatch {
                alg: JwtAlgorithm::Es384,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn token_signed_by_another_key_under_the_same_kid_is_rejected() {
    let trusted = KeyPair::generate(KeyType::EcP256).unwrap();
    let attacker = KeyPair::generate(KeyType::EcP256).unwrap();
    let token = jwt::mint(&attacker, KID, &subject(), &audiences(), TTL, fixed_now()).unwrap();
    let err = validate_fixed(&token, &trusted).unwrap_err();
    assert!(matches!(err, JwtError::BadSignature { .. }), "{err}");
}

#[test]
fn jwe_and_other_shapes_are_not_compact_jws() {
    let key = KeyPair::generate(KeyType::EcP256).unwrap();
    let err = validate_fixed("a.b.c.d.e", &key).unwrap_err();
    assert!(matches!(err, JwtError::NotCompactJws(5)), "{err}");
    let err = validate_fixed("no-dots", &key).unwrap_err();
    assert!(matches!(err, JwtError::NotCompactJws(1)), "{err}");
    let err = validate_fixed("!!.e30.", &key).unwrap_err();
    assert!(
        matches!(err, JwtError::Base64 { part: "header", .. }),
        "{err}"
    );
    let err = validate_fixed(&"a".repeat(20_000), &key).unwrap_err();
    assert!(matches!(err, JwtError::TokenTooLarge(20_000)), "{err}");
}

#[test]
fn neither_debug_nor_errors_show_the_token() {
    let key = KeyPair::generate(KeyType::EcP256).unwrap();
    let token = jwt::mint(&key, KID, &subject(), &audiences(), TTL, fixed_now()).unwrap();
    let svid = validate_fixed(&token, &key).unwrap();
    let shown = format!("{svid:?}");
    assert!(shown.contains("redacted"), "{shown}");
    let signature = token.split('.').nth(2).unwrap();
    assert!(!shown.contains(signature), "{shown}");
    assert!(!shown.contains(token.split('.').nth(1).unwrap()), "{shown}");

    let err = jwt::validate(&token, &bundles_for(&key), "nope", fixed_now()).unwrap_err();
    assert!(!format!("{err} {err:?}").contains(signature));
    let signer = JwtSigner::new(&key, KID).unwrap();
    assert!(format!("{signer:?}").contains("redacted"));
}

#[test]
fn every_rsa_algorithm_mints_and_validates() {
    let key = KeyPair::generate(KeyType::Rsa2048).unwrap();
    for alg in [
        JwtAlgorithm::Rs256,
        JwtAlgorithm::Rs384,
        JwtAlgorithm::Rs512,
        JwtAlgorithm::Ps256,
        JwtAlgorithm::Ps384,
        JwtAlgorithm::Ps512,
    ] {
        let signer = JwtSigner::with_algorithm(&key, KID, alg).unwrap();
        let token = signer
            .mint(&subject(), &audiences(), TTL, fixed_now())
            .unwrap();
        let svid = validate_fixed(&token, &key).unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(svid.algorithm(), alg);
    }
}

#[test]
fn es512_token_validates_with_a_p521_key_read_from_a_jwks() {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::{KeyPair as _, ECDSA_P521_SHA512_FIXED_SIGNING};

    let pair = EcdsaKeyPair::generate(&ECDSA_P521_SHA512_FIXED_SIGNING).unwrap();
    let spki = pair.public_key().as_der().unwrap().as_ref().to_vec();
    let mut bundle = Bundle::new(trust_domain());
    bundle.add_jwt_authority(JwtAuthority {
        key_id: KID.to_owned(),
        public_key: spki,
    });
    let jwks = bundle.to_jwt_jwks().unwrap();
    assert!(jwks.contains("\"crv\":\"P-521\""), "{jwks}");
    let read = Bundle::from_document(trust_domain(), jwks.as_bytes()).unwrap();
    assert_eq!(read, bundle);

    let header = json!({"alg": "ES512", "kid": KID, "typ": "JWT"});
    let input = format!("{}.{}", b64(&header), b64(&claims_at(fixed_now())));
    let sig = pair.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
    assert_eq!(sig.as_ref().len(), 132);
    let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()));

    let set: BundleSet = [read].into_iter().collect();
    let svid = jwt::validate(&token, &set, "db", fixed_now()).unwrap();
    assert_eq!(svid.algorithm(), JwtAlgorithm::Es512);
}
