//! The SPIFFE bundle document and the plain JWKS of the Workload API, both ways.
//!
//! A SPIFFE bundle document (SPIFFE Trust Domain and Bundle standard, section 4) is a JWK Set
//! with `spiffe_sequence` and `spiffe_refresh_hint`; X.509 CAs are JWKs with
//! `use: "x509-svid"` and an `x5c` of one certificate, JWT keys are JWKs with
//! `use: "jwt-svid"` and a `kid`. What the Workload API's `FetchJWTBundles` sends is a plain
//! JWK Set whose keys all carry a `kid` and no `use`; reading accepts both forms.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::jwk::{Curve, KeyParams};
use super::{Bundle, JwtAuthority};
use crate::id::TrustDomain;

/// The `use` of a JWK that is an X.509 CA.
const USE_X509_SVID: &str = "x509-svid";
/// The `use` of a JWK that validates JWT-SVIDs.
const USE_JWT_SVID: &str = "jwt-svid";

/// Which key of a JWK Set an error is about: its position in `keys` and its `kid`, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRef {
    /// The position of the key in the `keys` array, from 0.
    pub index: usize,
    /// The key's `kid`, when it has a string one.
    pub kid: Option<String>,
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kid {
            Some(kid) => write!(f, "key {} (kid `{kid}`)", self.index),
            None => write!(f, "key {} (no kid)", self.index),
        }
    }
}

/// How strictly [`Bundle::from_document_with`] treats keys it cannot use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Strictness {
    /// As the SPIFFE standard requires of clients: a key with an unknown `kty`, an unknown
    /// `use` or an unsupported EC curve is skipped. Every other problem is an error.
    #[default]
    Standard,
    /// Every key must be usable: an unknown `kty`, `use` or curve is an error too. Meant for
    /// documents this project wrote itself or an operator typed in, where a typo must show.
    Strict,
}

/// Why a bundle document could not be read or written.
///
/// Every variant about one key names it with a [`KeyRef`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleDocumentError {
    /// The document is not JSON, or not a JWK Set (an object with a `keys` array and, when
    /// present, non-negative integer `spiffe_sequence` and `spiffe_refresh_hint`).
    #[error("bundle document is not a valid jwk set at line {line} column {column}: {source}")]
    Json {
        /// The line (from 1) where parsing stopped.
        line: usize,
        /// The column (from 1) where parsing stopped.
        column: usize,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// An element of `keys` is not a JSON object.
    #[error("{key} is not a json object")]
    KeyNotObject {
        /// The key.
        key: KeyRef,
    },
    /// A required member is missing.
    #[error("{key} has no `{field}`")]
    MissingField {
        /// The key.
        key: KeyRef,
        /// The member's name.
        field: &'static str,
    },
    /// A member that must be a string is something else.
    #[error("{key} has a `{field}` that is not a string")]
    FieldNotString {
        /// The key.
        key: KeyRef,
        /// The member's name.
        field: &'static str,
    },
    /// The `kty` is neither `EC` nor `RSA`.
    #[error("{key} has unsupported key type `{kty}`; expected `EC` or `RSA`")]
    UnsupportedKeyType {
        /// The key.
        key: KeyRef,
        /// The `kty` found.
        kty: String,
    },
    /// The `crv` of an EC key is not P-256, P-384 or P-521.
    #[error("{key} has unsupported curve `{crv}`; expected P-256, P-384 or P-521")]
    UnsupportedCurve {
        /// The key.
        key: KeyRef,
        /// The `crv` found.
        crv: String,
    },
    /// The `use` is neither `x509-svid` nor `jwt-svid` (only in [`Strictness::Strict`]).
    #[error("{key} has unknown use `{key_use}`; expected `x509-svid` or `jwt-svid`")]
    UnknownUse {
        /// The key.
        key: KeyRef,
        /// The `use` found.
        key_use: String,
    },
    /// A JWT key has no `kid`; JWT-SVIDs name their key by it, so the key would be unusable.
    #[error("{key} is a jwt-svid key without a `kid`")]
    MissingKeyId {
        /// The key.
        key: KeyRef,
    },
    /// An X.509 CA key does not carry exactly one certificate in `x5c`.
    #[error("{key} is an x509-svid key with {count} certificates in `x5c`; expected exactly 1")]
    X5cCount {
        /// The key.
        key: KeyRef,
        /// How many `x5c` entries there are (0 when `x5c` is missing or not an array).
        count: usize,
    },
    /// A base64 member does not decode (`x5c` is standard base64, key parameters base64url).
    #[error("{key} has a `{field}` that is not valid base64: {source}")]
    Base64 {
        /// The key.
        key: KeyRef,
        /// The member's name.
        field: &'static str,
        /// The decoder's error.
        #[source]
        source: base64::DecodeError,
    },
    /// The key parameters do not form a valid public key.
    #[error("{key} has invalid key parameters: {reason}")]
    BadKeyParams {
        /// The key.
        key: KeyRef,
        /// What is wrong.
        reason: String,
    },
    /// The `x5c` certificate does not parse, or (when writing) an X.509 authority does not.
    #[error("{key} has a certificate that does not parse: {reason}")]
    BadCertificate {
        /// The key.
        key: KeyRef,
        /// What is wrong.
        reason: String,
    },
    /// The public key in the `x5c` certificate is not the one the JWK parameters describe.
    #[error("{key} has an `x5c` certificate whose public key does not match the jwk parameters")]
    CertificateKeyMismatch {
        /// The key.
        key: KeyRef,
    },
    /// Two JWT keys share a `kid`, so a token could not say which one signed it.
    #[error("{key} repeats the kid of key {first_index}")]
    DuplicateKeyId {
        /// The later key.
        key: KeyRef,
        /// The position of the first key with that `kid`.
        first_index: usize,
    },
    /// When writing: a JWT authority's public key cannot be expressed as a JWK.
    #[error("{key} cannot be written as a jwk: {reason}")]
    UnsupportedPublicKey {
        /// The key, by its position among the keys being written.
        key: KeyRef,
        /// What is wrong.
        reason: String,
    },
}

impl BundleDocumentError {
    fn json(source: serde_json::Error) -> Self {
        Self::Json {
            line: source.line(),
            column: source.column(),
            source,
        }
    }
}

impl Bundle {
    /// Reads a SPIFFE bundle document, or a plain JWK Set as the Workload API serves JWT
    /// bundles, into the bundle of `trust_domain`.
    ///
    /// Keys with `use: "x509-svid"` become X.509 authorities; keys with `use: "jwt-svid"` or
    /// no `use` become JWT authorities. Keys the standard tells clients to ignore (unknown
    /// `kty` or `use`, and here also unsupported curves) are skipped; see
    /// [`Bundle::from_document_with`] to reject them instead. `spiffe_sequence` defaults to 0.
    ///
    /// # Errors
    ///
    /// Returns the [`BundleDocumentError`] of the first problem found, naming the key.
    pub fn from_document(
        trust_domain: TrustDomain,
        json: &[u8],
    ) -> Result<Self, BundleDocumentError> {
        Self::from_document_with(trust_domain, json, Strictness::Standard)
    }

    /// Like [`Bundle::from_document`], with a choice of how unusable keys are treated.
    ///
    /// # Errors
    ///
    /// Returns the [`BundleDocumentError`] of the first problem found, naming the key.
    pub fn from_document_with(
        trust_domain: TrustDomain,
        json: &[u8],
        strictness: Strictness,
    ) -> Result<Self, BundleDocumentError> {
        let doc: InDocument = serde_json::from_slice(json).map_err(BundleDocumentError::json)?;

        let mut bundle = Bundle::new(trust_domain);
        bundle.set_sequence(doc.spiffe_sequence.unwrap_or(0));
        bundle.set_refresh_hint(doc.spiffe_refresh_hint.map(Duration::from_secs));

        let mut first_with_kid: HashMap<String, usize> = HashMap::new();
        let mut jwt_authorities = Vec::new();
        for (index, value) in doc.keys.iter().enumerate() {
            let kid = value.get("kid").and_then(Value::as_str).map(str::to_owned);
            let key = KeyRef { index, kid };
            let Value::Object(jwk) = value else {
                return Err(BundleDocumentError::KeyNotObject { key });
            };
            match read_key(jwk, &key, strictness)? {
                ReadKey::Skipped => {}
                ReadKey::X509(cert) => bundle.add_x509_authority(cert),
                ReadKey::Jwt(public_key) => {
                    let Some(kid) = key.kid.clone() else {
                        return Err(BundleDocumentError::MissingKeyId { key });
                    };
                    if let Some(&first_index) = first_with_kid.get(&kid) {
                        return Err(BundleDocumentError::DuplicateKeyId { key, first_index });
                    }
                    first_with_kid.insert(kid.clone(), index);
                    jwt_authorities.push(JwtAuthority {
                        key_id: kid,
                        public_key,
                    });
                }
            }
        }
        bundle.set_jwt_authorities(jwt_authorities);
        Ok(bundle)
    }

    /// Writes the SPIFFE bundle document: X.509 authorities first (`use: "x509-svid"`, one
    /// `x5c`, key parameters from the certificate), then JWT authorities (`use: "jwt-svid"`,
    /// `kid`), with `spiffe_sequence` and, when set, `spiffe_refresh_hint` in whole seconds.
    ///
    /// # Errors
    ///
    /// Returns [`BundleDocumentError::BadCertificate`] if an X.509 authority does not parse and
    /// [`BundleDocumentError::UnsupportedPublicKey`] if a public key is not EC or RSA.
    pub fn to_document(&self) -> Result<String, BundleDocumentError> {
        let mut keys = Vec::new();
        for (index, cert) in self.x509_authorities().iter().enumerate() {
            let key = KeyRef { index, kid: None };
            let params = certificate_params(cert.as_ref())
                .map_err(|reason| BundleDocumentError::BadCertificate { key, reason })?;
            let mut jwk = OutJwk::new(&params, Some(USE_X509_SVID), None);
            jwk.x5c = Some(vec![STANDARD.encode(cert.as_ref())]);
            keys.push(jwk);
        }
        let offset = keys.len();
        keys.extend(self.jwt_jwks(offset, Some(USE_JWT_SVID))?);

        let doc = OutDocument {
            keys,
            spiffe_sequence: Some(self.sequence()),
            spiffe_refresh_hint: self.refresh_hint().map(|d| d.as_secs()),
        };
        Ok(to_json(&doc))
    }

    /// Writes the JWT authorities as the plain JWK Set the Workload API's `FetchJWTBundles`
    /// serves: `{"keys":[...]}`, a `kid` on every key and no `use`.
    ///
    /// # Errors
    ///
    /// Returns [`BundleDocumentError::UnsupportedPublicKey`] if a public key is not EC or RSA.
    pub fn to_jwt_jwks(&self) -> Result<String, BundleDocumentError> {
        let doc = OutDocument {
            keys: self.jwt_jwks(0, None)?,
            spiffe_sequence: None,
            spiffe_refresh_hint: None,
        };
        Ok(to_json(&doc))
    }

    fn jwt_jwks(
        &self,
        offset: usize,
        key_use: Option<&'static str>,
    ) -> Result<Vec<OutJwk>, BundleDocumentError> {
        self.jwt_authorities()
            .iter()
            .enumerate()
            .map(|(i, authority)| {
                let params = KeyParams::from_spki(&authority.public_key).map_err(|reason| {
                    BundleDocumentError::UnsupportedPublicKey {
                        key: KeyRef {
                            index: offset + i,
                            kid: Some(authority.key_id.clone()),
                        },
                        reason,
                    }
                })?;
                Ok(OutJwk::new(&params, key_use, Some(&authority.key_id)))
            })
            .collect()
    }
}

/// The members of a JWK Set this crate reads; others are ignored as the standard asks.
#[derive(Deserialize)]
struct InDocument {
    keys: Vec<Value>,
    #[serde(default)]
    spiffe_sequence: Option<u64>,
    #[serde(default)]
    spiffe_refresh_hint: Option<u64>,
}

/// What one JWK turned out to be.
enum ReadKey {
    Skipped,
    X509(CertificateDer<'static>),
    /// A JWT key, as SPKI DER; its `kid` is checked by the caller.
    Jwt(Vec<u8>),
}

fn read_key(
    jwk: &Map<String, Value>,
    key: &KeyRef,
    strictness: Strictness,
) -> Result<ReadKey, BundleDocumentError> {
    let strict = strictness == Strictness::Strict;

    // The use decides what the key is for; without one it is a key of the plain JWKS form.
    let key_use = optional_string(jwk, "use", key)?;
    let is_x509 = match key_use {
        Some(USE_X509_SVID) => true,
        Some(USE_JWT_SVID) | None => false,
        Some(other) if strict => {
            return Err(BundleDocumentError::UnknownUse {
                key: key.clone(),
                key_use: other.to_owned(),
            });
        }
        Some(other) => {
            tracing::debug!(key = %key, key_use = other, "skipping jwk with unknown use");
            return Ok(ReadKey::Skipped);
        }
    };

    let Some(params) = read_params(jwk, key, strict)? else {
        return Ok(ReadKey::Skipped);
    };
    let spki = params
        .to_spki()
        .map_err(|reason| BundleDocumentError::BadKeyParams {
            key: key.clone(),
            reason,
        })?;

    if !is_x509 {
        return Ok(ReadKey::Jwt(spki));
    }

    let x5c = match jwk.get("x5c") {
        Some(Value::Array(items)) => items,
        _ => {
            return Err(BundleDocumentError::X5cCount {
                key: key.clone(),
                count: 0,
            })
        }
    };
    let [only] = x5c.as_slice() else {
        return Err(BundleDocumentError::X5cCount {
            key: key.clone(),
            count: x5c.len(),
        });
    };
    let Value::String(encoded) = only else {
        return Err(BundleDocumentError::FieldNotString {
            key: key.clone(),
            field: "x5c",
        });
    };
    let der = STANDARD
        .decode(encoded)
        .map_err(|source| BundleDocumentError::Base64 {
            key: key.clone(),
            field: "x5c",
            source,
        })?;
    let cert_params =
        certificate_params(&der).map_err(|reason| BundleDocumentError::BadCertificate {
            key: key.clone(),
            reason,
        })?;
    if cert_params != params {
        return Err(BundleDocumentError::CertificateKeyMismatch { key: key.clone() });
    }
    Ok(ReadKey::X509(CertificateDer::from(der)))
}

/// Reads `kty` and its parameters; `None` means the key is of a kind to skip.
fn read_params(
    jwk: &Map<String, Value>,
    key: &KeyRef,
    strict: bool,
) -> Result<Option<KeyParams>, BundleDocumentError> {
    let kty = required_string(jwk, "kty", key)?;
    match kty {
        "EC" => {
            let crv = required_string(jwk, "crv", key)?;
            let Some(curve) = Curve::from_jwk_name(crv) else {
                if strict {
                    return Err(BundleDocumentError::UnsupportedCurve {
                        key: key.clone(),
                        crv: crv.to_owned(),
                    });
                }
                tracing::debug!(key = %key, crv, "skipping jwk on an unsupported curve");
                return Ok(None);
            };
            let x = base64url_field(jwk, "x", key)?;
            let y = base64url_field(jwk, "y", key)?;
            Ok(Some(KeyParams::Ec { curve, x, y }))
        }
        "RSA" => {
            let n = base64url_field(jwk, "n", key)?;
            let e = base64url_field(jwk, "e", key)?;
            Ok(Some(KeyParams::Rsa {
                n: super::jwk::strip_leading_zeros(&n).to_vec(),
                e: super::jwk::strip_leading_zeros(&e).to_vec(),
            }))
        }
        other if strict => Err(BundleDocumentError::UnsupportedKeyType {
            key: key.clone(),
            kty: other.to_owned(),
        }),
        other => {
            tracing::debug!(key = %key, kty = other, "skipping jwk with unknown key type");
            Ok(None)
        }
    }
}

fn optional_string<'a>(
    jwk: &'a Map<String, Value>,
    field: &'static str,
    key: &KeyRef,
) -> Result<Option<&'a str>, BundleDocumentError> {
    match jwk.get(field) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(BundleDocumentError::FieldNotString {
            key: key.clone(),
            field,
        }),
    }
}

fn required_string<'a>(
    jwk: &'a Map<String, Value>,
    field: &'static str,
    key: &KeyRef,
) -> Result<&'a str, BundleDocumentError> {
    optional_string(jwk, field, key)?.ok_or_else(|| BundleDocumentError::MissingField {
        key: key.clone(),
        field,
    })
}

fn base64url_field(
    jwk: &Map<String, Value>,
    field: &'static str,
    key: &KeyRef,
) -> Result<Vec<u8>, BundleDocumentError> {
    let text = required_string(jwk, field, key)?;
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|source| BundleDocumentError::Base64 {
            key: key.clone(),
            field,
            source,
        })
}

/// The JWK parameters of the public key in a DER certificate.
fn certificate_params(der: &[u8]) -> Result<KeyParams, String> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!(
            "{} trailing bytes after the certificate",
            rest.len()
        ));
    }
    KeyParams::from_spki_info(cert.public_key())
}

fn to_json(doc: &OutDocument) -> String {
    // Serializing these plain structs of strings and integers cannot fail; fall back to an
    // empty set rather than panic should serde_json ever say otherwise.
    serde_json::to_string(doc).unwrap_or_else(|_| String::from(r#"{"keys":[]}"#))
}

#[derive(Serialize)]
struct OutDocument {
    keys: Vec<OutJwk>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spiffe_sequence: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spiffe_refresh_hint: Option<u64>,
}

#[derive(Serialize)]
struct OutJwk {
    kty: &'static str,
    #[serde(rename = "use", skip_serializing_if = "Option::is_none")]
    key_use: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    crv: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    y: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    e: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    x5c: Option<Vec<String>>,
}

impl OutJwk {
    fn new(params: &KeyParams, key_use: Option<&'static str>, kid: Option<&str>) -> Self {
        let mut jwk = OutJwk {
            kty: "",
            key_use,
            kid: kid.map(str::to_owned),
            crv: None,
            x: None,
            y: None,
            n: None,
            e: None,
            x5c: None,
        };
        match params {
            KeyParams::Ec { curve, x, y } => {
                jwk.kty = "EC";
                jwk.crv = Some(curve.jwk_name());
                jwk.x = Some(URL_SAFE_NO_PAD.encode(x));
                jwk.y = Some(URL_SAFE_NO_PAD.encode(y));
            }
            KeyParams::Rsa { n, e } => {
                jwk.kty = "RSA";
                jwk.n = Some(URL_SAFE_NO_PAD.encode(n));
                jwk.e = Some(URL_SAFE_NO_PAD.encode(e));
            }
        }
        jwk
    }
}
