//! JWT-SVIDs: minting and validation.
//!
//! Implements the SPIFFE JWT-SVID standard (`standards/JWT-SVID.md`): JWS compact
//! serialization only, `alg` from an allow-list of asymmetric algorithms, a `kid` naming a key
//! in the bundle of the subject's trust domain, `sub` a SPIFFE ID, `aud` and `exp` required.
//! Signatures go through aws-lc-rs directly; ECDSA signatures are the fixed-size `r || s`
//! form JWS uses (RFC 7518, section 3.4), not ASN.1.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    self, EcdsaKeyPair, EcdsaSigningAlgorithm, ParsedPublicKey, RsaEncoding, RsaKeyPair,
    VerificationAlgorithm,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::bundle::BundleSet;
use crate::id::{IdError, SpiffeId, TrustDomain};
use crate::key::{KeyPair, KeyType};

/// Clock skew tolerated when checking `exp` and `nbf`.
///
/// A token is still accepted up to 30 seconds after its `exp`, and from 30 seconds before its
/// `nbf`. This absorbs small clock differences between the node that minted a token and the
/// one validating it, and stays far below the 5 minute default JWT-SVID lifetime.
pub const LEEWAY: Duration = Duration::from_secs(30);

/// The longest token [`validate`] looks at, in bytes. JWT-SVIDs are a few hundred bytes; the
/// limit keeps a hostile caller from making the validator decode megabytes.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// A JWS signature algorithm allowed for JWT-SVIDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JwtAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// ECDSA on P-384 with SHA-384.
    Es384,
    /// ECDSA on P-521 with SHA-512.
    Es512,
    /// RSASSA-PSS with SHA-256.
    Ps256,
    /// RSASSA-PSS with SHA-384.
    Ps384,
    /// RSASSA-PSS with SHA-512.
    Ps512,
}

impl JwtAlgorithm {
    /// Every allowed algorithm.
    pub const ALL: [JwtAlgorithm; 9] = [
        JwtAlgorithm::Rs256,
        JwtAlgorithm::Rs384,
        JwtAlgorithm::Rs512,
        JwtAlgorithm::Es256,
        JwtAlgorithm::Es384,
        JwtAlgorithm::Es512,
        JwtAlgorithm::Ps256,
        JwtAlgorithm::Ps384,
        JwtAlgorithm::Ps512,
    ];

    /// The `alg` header value, e.g. `ES256`.
    pub fn name(self) -> &'static str {
        match self {
            JwtAlgorithm::Rs256 => "RS256",
            JwtAlgorithm::Rs384 => "RS384",
            JwtAlgorithm::Rs512 => "RS512",
            JwtAlgorithm::Es256 => "ES256",
            JwtAlgorithm::Es384 => "ES384",
            JwtAlgorithm::Es512 => "ES512",
            JwtAlgorithm::Ps256 => "PS256",
            JwtAlgorithm::Ps384 => "PS384",
            JwtAlgorithm::Ps512 => "PS512",
        }
    }

    /// The algorithm with this `alg` name, if it is on the allow-list (names are
    /// case-sensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The algorithm a key of this type signs JWT-SVIDs with by default: ES256 for P-256,
    /// ES384 for P-384, RS256 for RSA.
    pub fn default_for(key_type: KeyType) -> Self {
        match key_type {
            KeyType::EcP384 => JwtAlgorithm::Es384,
            k if k.is_rsa() => JwtAlgorithm::Rs256,
            _ => JwtAlgorithm::Es256,
        }
    }

    /// Whether a key of this type can sign with this algorithm.
    pub fn fits(self, key_type: KeyType) -> bool {
        match self {
            JwtAlgorithm::Es256 => key_type == KeyType::EcP256,
            JwtAlgorithm::Es384 => key_type == KeyType::EcP384,
            JwtAlgorithm::Es512 => false,
            _ => key_type.is_rsa(),
        }
    }

    fn verification(self) -> &'static dyn VerificationAlgorithm {
        match self {
            JwtAlgorithm::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            JwtAlgorithm::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            JwtAlgorithm::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            JwtAlgorithm::Es256 => &signature::ECDSA_P256_SHA256_FIXED,
            JwtAlgorithm::Es384 => &signature::ECDSA_P384_SHA384_FIXED,
            JwtAlgorithm::Es512 => &signature::ECDSA_P521_SHA512_FIXED,
            JwtAlgorithm::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
            JwtAlgorithm::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
            JwtAlgorithm::Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
        }
    }
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a JWT-SVID could not be minted or did not validate.
///
/// No variant ever holds the token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    // === minting ===
    /// No audience was given, or one of them is the empty string.
    #[error("audience must be non-empty and contain no empty string")]
    EmptyAudience,
    /// The lifetime is shorter than one second.
    #[error("jwt-svid ttl must be at least 1 second, got {0:?}")]
    TtlTooShort(Duration),
    /// The lifetime does not fit in a timestamp.
    #[error("jwt-svid ttl {0:?} is too large")]
    TtlTooLarge(Duration),
    /// The key ID is empty.
    #[error("key id must not be empty")]
    EmptyKeyId,
    /// The chosen algorithm cannot be used with the key.
    #[error("algorithm {alg} cannot sign with a {key_type} key")]
    AlgorithmDoesNotFitKey {
        /// The algorithm asked for.
        alg: JwtAlgorithm,
        /// The key's type.
        key_type: KeyType,
    },
    /// The private key was refused by the crypto library.
    #[error("{0} private key cannot be used for signing")]
    SigningKey(KeyType),
    /// The crypto library failed to sign.
    #[error("signing the jwt-svid failed")]
    Signing,
    /// The time given as "now" is before 1970.
    #[error("current time is before the unix epoch")]
    ClockBeforeEpoch,

    // === structure ===
    /// The token is longer than [`MAX_TOKEN_LEN`].
    #[error("token is {0} bytes long; the limit is {MAX_TOKEN_LEN}")]
    TokenTooLarge(usize),
    /// The token is not three dot-separated parts (JWS compact serialization).
    #[error("token has {0} dot-separated parts; a jws compact token has 3")]
    NotCompactJws(usize),
    /// A part is not unpadded base64url.
    #[error("token {part} is not valid base64url: {source}")]
    Base64 {
        /// `header`, `payload` or `signature`.
        part: &'static str,
        /// The decoder's error.
        #[source]
        source: base64::DecodeError,
    },
    /// The header or payload is not a JSON object.
    #[error("token {part} is not a json object: {reason}")]
    Json {
        /// `header` or `payload`.
        part: &'static str,
        /// What the parser said.
        reason: String,
    },

    // === header ===
    /// The header has no `alg`, or it is not a string.
    #[error("token header has no string `alg`")]
    MissingAlgorithm,
    /// The `alg` is not on the allow-list (this covers `none` and every HMAC algorithm).
    #[error("token algorithm `{0}` is not allowed; expected one of RS256/384/512, ES256/384/512, PS256/384/512")]
    UnsupportedAlgorithm(String),
    /// The `typ` is present but neither `JWT` nor `JOSE`.
    #[error("token type `{0}` is not allowed; expected `JWT` or `JOSE`")]
    BadType(String),
    /// The header lists critical extensions, none of which this validator understands.
    #[error("token header has a `crit` parameter; no critical extensions are supported")]
    CriticalHeader,
    /// The header has no `kid`, or it is not a string.
    #[error("token header has no string `kid`")]
    MissingKeyId,

    // === claims ===
    /// The payload has no `sub`, or it is not a string.
    #[error("token has no string `sub` claim")]
    MissingSubject,
    /// The `sub` is not a SPIFFE ID.
    #[error("token subject `{sub}` is not a spiffe id: {source}")]
    BadSubject {
        /// The `sub` claim.
        sub: String,
        /// Which rule it breaks.
        #[source]
        source: IdError,
    },
    /// The payload has no `aud`, or an empty one.
    #[error("token has no `aud` claim")]
    MissingAudience,
    /// The payload has no `exp`.
    #[error("token has no `exp` claim")]
    MissingExpiry,
    /// A claim has the wrong JSON type (`aud` not a string or string array, `exp`/`nbf` not a
    /// number).
    #[error("token claim `{0}` has the wrong type")]
    BadClaim(&'static str),

    // === trust ===
    /// There is no bundle for the trust domain of the `sub`.
    #[error("no bundle for trust domain `{0}`")]
    NoBundle(TrustDomain),
    /// The bundle of the `sub`'s trust domain has no JWT key with this `kid`.
    #[error("no jwt authority with key id `{kid}` in the bundle of `{trust_domain}`")]
    UnknownKeyId {
        /// The `kid` of the token.
        kid: String,
        /// The trust domain whose bundle was searched.
        trust_domain: TrustDomain,
    },
    /// The key named by `kid` is not a key of the token's algorithm (say, an RSA key for ES256).
    #[error("jwt authority `{kid}` is not a key for algorithm {alg}")]
    KeyAlgorithmMismatch {
        /// The `kid` of the token.
        kid: String,
        /// The `alg` of the token.
        alg: JwtAlgorithm,
    },
    /// The signature does not verify.
    #[error("token signature does not verify with jwt authority `{kid}`")]
    BadSignature {
        /// The `kid` of the token.
        kid: String,
    },

    // === time and audience ===
    /// The token expired (more than [`LEEWAY`] ago).
    #[error("token expired at {exp} (unix seconds); now is {now}")]
    Expired {
        /// The `exp` claim, in seconds since the epoch.
        exp: i64,
        /// The validation time, in seconds since the epoch.
        now: u64,
    },
    /// The token's `nbf` is still more than [`LEEWAY`] away.
    #[error("token is not valid before {nbf} (unix seconds); now is {now}")]
    NotYetValid {
        /// The `nbf` claim, in seconds since the epoch.
        nbf: i64,
        /// The validation time, in seconds since the epoch.
        now: u64,
    },
    /// The `aud` does not contain the expected audience.
    #[error("token audience {actual:?} does not contain `{expected}`")]
    AudienceMismatch {
        /// The audience the validator expected.
        expected: String,
        /// The audiences of the token.
        actual: Vec<String>,
    },
}

/// A validated JWT-SVID.
///
/// `Debug` never shows the token.
#[derive(Clone)]
pub struct JwtSvid {
    token: String,
    spiffe_id: SpiffeId,
    audiences: Vec<String>,
    expiry: SystemTime,
    key_id: String,
    algorithm: JwtAlgorithm,
    claims: Map<String, Value>,
}

impl JwtSvid {
    /// The SPIFFE ID of the `sub` claim.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// Every audience of the `aud` claim.
    pub fn audiences(&self) -> &[String] {
        &self.audiences
    }

    /// When the token expires (the `exp` claim, without leeway).
    pub fn expiry(&self) -> SystemTime {
        self.expiry
    }

    /// The `kid` of the key that signed the token.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The signature algorithm.
    pub fn algorithm(&self) -> JwtAlgorithm {
        self.algorithm
    }

    /// All claims of the payload. `aud` is always an array of strings here, even when the
    /// token carried a single string.
    pub fn claims(&self) -> &Map<String, Value> {
        &self.claims
    }

    /// The token itself. It is a bearer credential: never log it.
    pub fn token(&self) -> &str {
        &self.token
    }
}

impl fmt::Debug for JwtSvid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSvid")
            .field("spiffe_id", &self.spiffe_id)
            .field("audiences", &self.audiences)
            .field("expiry", &self.expiry)
            .field("key_id", &self.key_id)
            .field("algorithm", &self.algorithm)
            .field("token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A private key ready to mint JWT-SVIDs under a key ID.
///
/// Parsing the key once and reusing the signer is cheaper than [`mint`], which parses it on
/// every call. `Debug` never shows the key.
pub struct JwtSigner {
    key_id: String,
    algorithm: JwtAlgorithm,
    key: SigningKey,
    rng: SystemRandom,
}

enum SigningKey {
    Ecdsa(EcdsaKeyPair),
    Rsa(RsaKeyPair, &'static dyn RsaEncoding),
}

impl JwtSigner {
    /// A signer for `key` with the default algorithm of its type
    /// ([`JwtAlgorithm::default_for`]).
    ///
    /// # Errors
    ///
    /// [`JwtError::EmptyKeyId`] or [`JwtError::SigningKey`].
    pub fn new(key: &KeyPair, key_id: impl Into<String>) -> Result<Self, JwtError> {
        Self::with_algorithm(key, key_id, JwtAlgorithm::default_for(key.key_type()))
    }

    /// A signer for `key` with a chosen algorithm, e.g. PS256 for an RSA key.
    ///
    /// # Errors
    ///
    /// [`JwtError::EmptyKeyId`], [`JwtError::AlgorithmDoesNotFitKey`] or
    /// [`JwtError::SigningKey`].
    pub fn with_algorithm(
        key: &KeyPair,
        key_id: impl Into<String>,
        algorithm: JwtAlgorithm,
    ) -> Result<Self, JwtError> {
        let key_id = key_id.into();
        if key_id.is_empty() {
            return Err(JwtError::EmptyKeyId);
        }
        let key_type = key.key_type();
        if !algorithm.fits(key_type) {
            return Err(JwtError::AlgorithmDoesNotFitKey {
                alg: algorithm,
                key_type,
            });
        }

        let der = key.pkcs8_der();
        let ecdsa = |alg: &'static EcdsaSigningAlgorithm| {
            EcdsaKeyPair::from_pkcs8(alg, der).map(SigningKey::Ecdsa)
        };
        let rsa = |encoding: &'static dyn RsaEncoding| {
            RsaKeyPair::from_pkcs8(der).map(|k| SigningKey::Rsa(k, encoding))
        };
        let signing_key = match algorithm {
            JwtAlgorithm::Es256 => ecdsa(&signature::ECDSA_P256_SHA256_FIXED_SIGNING),
            JwtAlgorithm::Es384 => ecdsa(&signature::ECDSA_P384_SHA384_FIXED_SIGNING),
            JwtAlgorithm::Es512 => ecdsa(&signature::ECDSA_P521_SHA512_FIXED_SIGNING),
            JwtAlgorithm::Rs256 => rsa(&signature::RSA_PKCS1_SHA256),
            JwtAlgorithm::Rs384 => rsa(&signature::RSA_PKCS1_SHA384),
            JwtAlgorithm::Rs512 => rsa(&signature::RSA_PKCS1_SHA512),
            JwtAlgorithm::Ps256 => rsa(&signature::RSA_PSS_SHA256),
            JwtAlgorithm::Ps384 => rsa(&signature::RSA_PSS_SHA384),
            JwtAlgorithm::Ps512 => rsa(&signature::RSA_PSS_SHA512),
        }
        .map_err(|_| JwtError::SigningKey(key_type))?;

        Ok(Self {
            key_id,
            algorithm,
            key: signing_key,
            rng: SystemRandom::new(),
        })
    }

    /// The key ID put in every token's header.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The signature algorithm.
    pub fn algorithm(&self) -> JwtAlgorithm {
        self.algorithm
    }

    /// Mints a JWT-SVID for `sub` valid from `now` for `ttl`, for every audience given.
    ///
    /// The header is `{"alg", "kid", "typ": "JWT"}`; the claims are `sub`, `aud` (an array of
    /// all audiences, in order), `iat` and `exp` in whole seconds.
    ///
    /// # Errors
    ///
    /// [`JwtError::EmptyAudience`], [`JwtError::TtlTooShort`], [`JwtError::TtlTooLarge`],
    /// [`JwtError::ClockBeforeEpoch`] or [`JwtError::Signing`].
    pub fn mint(
        &self,
        sub: &SpiffeId,
        audiences: &[String],
        ttl: Duration,
        now: SystemTime,
    ) -> Result<String, JwtError> {
        if audiences.is_empty() || audiences.iter().any(String::is_empty) {
            return Err(JwtError::EmptyAudience);
        }
        if ttl < Duration::from_secs(1) {
            return Err(JwtError::TtlTooShort(ttl));
        }
        let iat = unix_seconds(now)?;
        let exp = iat
            .checked_add(ttl.as_secs())
            .filter(|&e| i64::try_from(e).is_ok())
            .ok_or(JwtError::TtlTooLarge(ttl))?;

        let header = json!({
            "alg": self.algorithm.name(),
            "kid": self.key_id,
            "typ": "JWT",
        });
        let claims = json!({
            "sub": sub.as_str(),
            "aud": audiences,
            "iat": iat,
            "exp": exp,
        });
        let mut token = String::with_capacity(512);
        URL_SAFE_NO_PAD.encode_string(header.to_string(), &mut token);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(claims.to_string(), &mut token);

        let signature = self.sign(token.as_bytes())?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        Ok(token)
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, JwtError> {
        match &self.key {
            SigningKey::Ecdsa(key) => key
                .sign(&self.rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| JwtError::Signing),
            SigningKey::Rsa(key, encoding) => {
                let mut out = vec![0; key.public_modulus_len()];
                key.sign(*encoding, &self.rng, message, &mut out)
                    .map_err(|_| JwtError::Signing)?;
                Ok(out)
            }
        }
    }
}

impl fmt::Debug for JwtSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSigner")
            .field("key_id", &self.key_id)
            .field("algorithm", &self.algorithm)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

/// Mints a JWT-SVID with `key` under `kid`, with the default algorithm of the key's type.
///
/// A shorthand for [`JwtSigner::new`] then [`JwtSigner::mint`]; keep a [`JwtSigner`] to mint
/// many tokens with one key.
///
/// # Errors
///
/// As [`JwtSigner::new`] and [`JwtSigner::mint`].
pub fn mint(
    key: &KeyPair,
    kid: &str,
    sub: &SpiffeId,
    audiences: &[String],
    ttl: Duration,
    now: SystemTime,
) -> Result<String, JwtError> {
    JwtSigner::new(key, kid)?.mint(sub, audiences, ttl, now)
}

/// Validates a JWT-SVID against the JWT authorities of `bundles`, for `expected_audience`, at
/// time `now`.
///
/// Checks, in order: size and JWS compact form; header (`alg` on the allow-list, `typ` if
/// present `JWT` or `JOSE`, no `crit`, `kid` present); `sub` a SPIFFE ID; a bundle for its trust
/// domain holding the `kid`; the signature; `exp` (required) and `nbf` (if present) against
/// `now` with [`LEEWAY`]; `aud` containing `expected_audience`.
///
/// # Errors
///
/// Every reason for rejection is its own [`JwtError`] variant.
pub fn validate(
    token: &str,
    bundles: &BundleSet,
    expected_audience: &str,
    now: SystemTime,
) -> Result<JwtSvid, JwtError> {
    if expected_audience.is_empty() {
        return Err(JwtError::EmptyAudience);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::TokenTooLarge(token.len()));
    }
    let parts: Vec<&str> = token.split('.').collect();
    let [header_b64, payload_b64, signature_b64] = parts[..] else {
        return Err(JwtError::NotCompactJws(parts.len()));
    };

    // Header. A repeated member keeps its last value, which RFC 7515 (section 4) allows as
    // the alternative to rejecting the token.
    let header = decode_object(header_b64, "header")?;
    let alg_name = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(JwtError::MissingAlgorithm)?;
    let algorithm = JwtAlgorithm::from_name(alg_name)
        .ok_or_else(|| JwtError::UnsupportedAlgorithm(alg_name.to_owned()))?;
    match header.get("typ") {
        None => {}
        Some(Value::String(t)) if t == "JWT" || t == "JOSE" => {}
        Some(Value::String(t)) => return Err(JwtError::BadType(t.clone())),
        Some(other) => return Err(JwtError::BadType(other.to_string())),
    }
    if header.contains_key("crit") {
        return Err(JwtError::CriticalHeader);
    }
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .ok_or(JwtError::MissingKeyId)?;

    // Subject, which picks the bundle. It is read before the signature is checked because
    // the key to check it with depends on it; nothing else is trusted until then.
    let mut claims = decode_object(payload_b64, "payload")?;
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or(JwtError::MissingSubject)?;
    let spiffe_id = SpiffeId::new(sub).map_err(|source| JwtError::BadSubject {
        sub: sub.to_owned(),
        source,
    })?;
    let trust_domain = spiffe_id.trust_domain();
    let bundle = bundles
        .get(trust_domain)
        .ok_or_else(|| JwtError::NoBundle(trust_domain.clone()))?;
    let authority = bundle
        .jwt_authority(kid)
        .ok_or_else(|| JwtError::UnknownKeyId {
            kid: kid.to_owned(),
            trust_domain: trust_domain.clone(),
        })?;

    // Signature over the first two parts exactly as sent.
    let signature = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .map_err(|source| JwtError::Base64 {
            part: "signature",
            source,
        })?;
    let public_key = ParsedPublicKey::new(algorithm.verification(), &authority.public_key)
        .map_err(|_| JwtError::KeyAlgorithmMismatch {
            kid: kid.to_owned(),
            alg: algorithm,
        })?;
    let signed_len = header_b64.len() + 1 + payload_b64.len();
    public_key
        .verify_sig(&token.as_bytes()[..signed_len], &signature)
        .map_err(|_| JwtError::BadSignature {
            kid: kid.to_owned(),
        })?;

    // Time.
    let now_secs = unix_seconds(now)?;
    let leeway = LEEWAY.as_secs();
    let exp = numeric_date(&claims, "exp")?.ok_or(JwtError::MissingExpiry)?;
    if exp_passed(exp, now_secs, leeway) {
        return Err(JwtError::Expired { exp, now: now_secs });
    }
    if let Some(nbf) = numeric_date(&claims, "nbf")? {
        if nbf_ahead(nbf, now_secs, leeway) {
            return Err(JwtError::NotYetValid { nbf, now: now_secs });
        }
    }

    // Audience.
    let audiences = read_audiences(&claims)?;
    if !audiences.iter().any(|a| a == expected_audience) {
        return Err(JwtError::AudienceMismatch {
            expected: expected_audience.to_owned(),
            actual: audiences,
        });
    }
    claims.insert(
        "aud".to_owned(),
        Value::Array(audiences.iter().cloned().map(Value::String).collect()),
    );

    let expiry = u64::try_from(exp)
        .ok()
        .and_then(|e| UNIX_EPOCH.checked_add(Duration::from_secs(e)))
        .unwrap_or(UNIX_EPOCH);
    Ok(JwtSvid {
        token: token.to_owned(),
        spiffe_id,
        audiences,
        expiry,
        key_id: kid.to_owned(),
        algorithm,
        claims,
    })
}

fn decode_object(part_b64: &str, part: &'static str) -> Result<Map<String, Value>, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part_b64)
        .map_err(|source| JwtError::Base64 { part, source })?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(JwtError::Json {
            part,
            reason: "not an object".to_owned(),
        }),
        Err(e) => Err(JwtError::Json {
            part,
            reason: e.to_string(),
        }),
    }
}

/// A NumericDate claim (RFC 7519, section 2) as whole seconds, rounded down.
fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, JwtError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    let Value::Number(n) = value else {
        return Err(JwtError::BadClaim(name));
    };
    if let Some(i) = n.as_i64() {
        return Ok(Some(i));
    }
    if n.is_u64() {
        // Above i64::MAX: as far in the future as can be told.
        return Ok(Some(i64::MAX));
    }
    match n.as_f64() {
        // The float to int cast saturates, which is the wanted meaning for huge values.
        #[allow(clippy::cast_possible_truncation)]
        Some(f) if f.is_finite() => Ok(Some(f.floor() as i64)),
        _ => Err(JwtError::BadClaim(name)),
    }
}

/// Whether `exp` lies more than `leeway` seconds in the past (`now >= exp + leeway`).
fn exp_passed(exp: i64, now: u64, leeway: u64) -> bool {
    let now = i128::from(now);
    now >= i128::from(exp) + i128::from(leeway)
}

/// Whether `nbf` lies more than `leeway` seconds in the future (`now + leeway < nbf`).
fn nbf_ahead(nbf: i64, now: u64, leeway: u64) -> bool {
    i128::from(now) + i128::from(leeway) < i128::from(nbf)
}

fn read_audiences(claims: &Map<String, Value>) -> Result<Vec<String>, JwtError> {
    let audiences = match claims.get("aud") {
        None => return Err(JwtError::MissingAudience),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or(JwtError::BadClaim("aud"))?,
        Some(_) => return Err(JwtError::BadClaim("aud")),
    };
    if audiences.is_empty() {
        return Err(JwtError::MissingAudience);
    }
    Ok(audiences)
}

fn unix_seconds(now: SystemTime) -> Result<u64, JwtError> {
    now.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| JwtError::ClockBeforeEpoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_allowed_algorithm_round_trips_by_name_and_others_do_not() {
        for alg in JwtAlgorithm::ALL {
            assert_eq!(JwtAlgorithm::from_name(alg.name()), Some(alg));
        }
        for name in ["none", "HS256", "es256", "EdDSA", ""] {
            assert_eq!(JwtAlgorithm::from_name(name), None, "{name}");
        }
    }

    #[test]
    fn expiry_and_not_before_allow_exactly_the_leeway() {
        assert!(!exp_passed(100, 129, 30));
        assert!(exp_passed(100, 130, 30));
        assert!(!nbf_ahead(130, 100, 30));
        assert!(nbf_ahead(131, 100, 30));
        assert!(exp_passed(i64::MIN, 0, 30));
        assert!(!exp_passed(i64::MAX, 2_000_000_000, 30));
    }

    #[test]
    fn default_algorithm_follows_the_key_type() {
        assert_eq!(
            JwtAlgorithm::default_for(KeyType::EcP256),
            JwtAlgorithm::Es256
        );
        assert_eq!(
            JwtAlgorithm::default_for(KeyType::EcP384),
            JwtAlgorithm::Es384
        );
        assert_eq!(
            JwtAlgorithm::default_for(KeyType::Rsa3072),
            JwtAlgorithm::Rs256
        );
        assert!(!JwtAlgorithm::Es256.fits(KeyType::Rsa2048));
        assert!(JwtAlgorithm::Ps256.fits(KeyType::Rsa2048));
    }
}
