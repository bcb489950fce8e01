//! Key pairs for CAs and SVIDs.
//!
//! ECDSA P-256 is the default: it is the fastest to sign with and every SPIFFE client accepts
//! it. P-384 and RSA (2048, 3072, 4096 bits) are there for teams whose policy asks for them;
//! java-spiffe handles only EC and RSA keys, so no other kind is offered. All keys come from
//! aws-lc-rs, the only crypto provider of this project.

use std::fmt;
use std::str::FromStr;

use rcgen::{PublicKeyData, RsaKeySize, SignatureAlgorithm};
use rustls_pki_types::PrivatePkcs8KeyDer;

/// The kind of a key pair.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[non_exhaustive]
pub enum KeyType {
    /// ECDSA on NIST P-256 with SHA-256 (the default).
    #[default]
    #[serde(rename = "ec-p256")]
    EcP256,
    /// ECDSA on NIST P-384 with SHA-384.
    #[serde(rename = "ec-p384")]
    EcP384,
    /// RSA with a 2048-bit modulus, signing with PKCS#1 v1.5 and SHA-256.
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    /// RSA with a 3072-bit modulus, signing with PKCS#1 v1.5 and SHA-256.
    #[serde(rename = "rsa-3072")]
    Rsa3072,
    /// RSA with a 4096-bit modulus, signing with PKCS#1 v1.5 and SHA-256.
    #[serde(rename = "rsa-4096")]
    Rsa4096,
}

impl KeyType {
    /// Every supported key type.
    pub const ALL: [KeyType; 5] = [
        KeyType::EcP256,
        KeyType::EcP384,
        KeyType::Rsa2048,
        KeyType::Rsa3072,
        KeyType::Rsa4096,
    ];

    /// The name used in configuration files, e.g. `ec-p256`.
    pub fn name(self) -> &'static str {
        match self {
            KeyType::EcP256 => "ec-p256",
            KeyType::EcP384 => "ec-p384",
            KeyType::Rsa2048 => "rsa-2048",
            KeyType::Rsa3072 => "rsa-3072",
            KeyType::Rsa4096 => "rsa-4096",
        }
    }

    /// Whether this is an RSA key type.
    pub fn is_rsa(self) -> bool {
        matches!(self, KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096)
    }

    /// The X.509 signature algorithm a key of this type signs certificates with.
    pub fn signature_algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            KeyType::EcP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::EcP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => &rcgen::PKCS_RSA_SHA256,
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KeyType {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyType::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| KeyError::UnknownType(s.to_owned()))
    }
}

/// Why a key could not be made or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key type name is not one of the supported ones.
    #[error(
        "unknown key type `{0}`; expected one of ec-p256, ec-p384, rsa-2048, rsa-3072, rsa-4096"
    )]
    UnknownType(String),
    /// Generating a key failed in the crypto library.
    #[error("generating a {0} key failed: {1}")]
    Generate(KeyType, rcgen::Error),
    /// The PKCS#8 document is not a key this crate supports.
    #[error("private key is not a supported PKCS#8 EC P-256, EC P-384 or RSA key")]
    Unsupported,
    /// The PEM text holds no private key.
    #[error("no PRIVATE KEY block found in PEM input")]
    NoPem,
}

/// A private key with its public half.
///
/// `Debug` shows the key type and never the private key.
pub struct KeyPair {
    key_type: KeyType,
    inner: rcgen::KeyPair,
}

impl KeyPair {
    /// Generates a new key of the given type.
    ///
    /// # Errors
    ///
    /// Returns [`KeyError::Generate`] if the crypto library fails.
    pub fn generate(key_type: KeyType) -> Result<Self, KeyError> {
        let alg = key_type.signature_algorithm();
        let inner = match key_type {
            KeyType::EcP256 | KeyType::EcP384 => rcgen::KeyPair::generate_for(alg),
            KeyType::Rsa2048 => rcgen::KeyPair::generate_rsa_for(alg, RsaKeySize::_2048),
            KeyType::Rsa3072 => rcgen::KeyPair::generate_rsa_for(alg, RsaKeySize::_3072),
            KeyType::Rsa4096 => rcgen::KeyPair::generate_rsa_for(alg, RsaKeySize::_4096),
        }
        .map_err(|e| KeyError::Generate(key_type, e))?;
        Ok(Self { key_type, inner })
    }

    /// Reads an unencrypted PKCS#8 DER private key, finding out its type.
    ///
    /// # Errors
    ///
    /// Returns [`KeyError::Unsupported`] if the key is not EC P-256, EC P-384 or RSA.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, KeyError> {
        let pkcs8 = PrivatePkcs8KeyDer::from(der);
        for key_type in [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048] {
            let Ok(inner) = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
                &pkcs8,
                key_type.signature_algorithm(),
            ) else {
                continue;
            };
            let key_type = if key_type.is_rsa() {
                rsa_type_from_spki(&inner.subject_public_key_info())?
            } else {
                key_type
            };
            return Ok(Self { key_type, inner });
        }
        Err(KeyError::Unsupported)
    }

    /// Reads the first `PRIVATE KEY` (PKCS#8) block of a PEM document.
    ///
    /// # Errors
    ///
    /// Returns [`KeyError::NoPem`] if there is no such block, or [`KeyError::Unsupported`].
    pub fn from_pkcs8_pem(text: &str) -> Result<Self, KeyError> {
        let blocks = pem::parse_many(text).map_err(|_| KeyError::NoPem)?;
        let block = blocks
            .iter()
            .find(|b| b.tag() == "PRIVATE KEY")
            .ok_or(KeyError::NoPem)?;
        Self::from_pkcs8_der(block.contents())
    }

    /// The key type.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The private key as unencrypted PKCS#8 DER. Handle with care: this is the secret.
    pub fn pkcs8_der(&self) -> &[u8] {
        self.inner.serialized_der()
    }

    /// The private key as a PEM `PRIVATE KEY` block. Handle with care: this is the secret.
    pub fn pkcs8_pem(&self) -> String {
        pem::encode(&pem::Pem::new("PRIVATE KEY", self.pkcs8_der().to_vec()))
    }

    /// The public key as an X.509 SubjectPublicKeyInfo in DER.
    pub fn spki_der(&self) -> Vec<u8> {
        self.inner.subject_public_key_info()
    }

    /// The rcgen key pair, for building certificates.
    pub fn rcgen(&self) -> &rcgen::KeyPair {
        &self.inner
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("key_type", &self.key_type)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

/// Tells RSA key sizes apart by the modulus length in the public key.
fn rsa_type_from_spki(spki: &[u8]) -> Result<KeyType, KeyError> {
    use x509_parser::prelude::FromDer;
    use x509_parser::public_key::PublicKey;
    use x509_parser::x509::SubjectPublicKeyInfo;

    let (_, info) = SubjectPublicKeyInfo::from_der(spki).map_err(|_| KeyError::Unsupported)?;
    match info.parsed() {
        Ok(PublicKey::RSA(rsa)) => match rsa.key_size() {
            2048 => Ok(KeyType::Rsa2048),
            3072 => Ok(KeyType::Rsa3072),
            4096 => Ok(KeyType::Rsa4096),
            _ => Err(KeyError::Unsupported),
        },
        _ => Err(KeyError::Unsupported),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_type_generates_and_reloads_as_the_same_type() {
        for key_type in KeyType::ALL {
            let key = KeyPair::generate(key_type).unwrap();
            assert_eq!(key.key_type(), key_type);
            let again = KeyPair::from_pkcs8_der(key.pkcs8_der()).unwrap();
            assert_eq!(again.key_type(), key_type);
            assert_eq!(again.spki_der(), key.spki_der());
            let from_pem = KeyPair::from_pkcs8_pem(&key.pkcs8_pem()).unwrap();
            assert_eq!(from_pem.spki_der(), key.spki_der());
        }
    }

    #[test]
    fn key_type_names_round_trip_and_unknown_is_named() {
        for key_type in KeyType::ALL {
            assert_eq!(key_type.name().parse::<KeyType>().unwrap(), key_type);
        }
        let err = "ed25519".parse::<KeyType>().unwrap_err();
        assert!(err.to_string().contains("ed25519"));
    }

    #[test]
    fn serde_names_match_config_names() {
        for key_type in KeyType::ALL {
            let json = serde_json::to_string(&key_type).unwrap();
            assert_eq!(json, format!("\"{}\"", key_type.name()));
            assert_eq!(serde_json::from_str::<KeyType>(&json).unwrap(), key_type);
        }
    }

    #[test]
    fn debug_never_shows_the_private_key() {
        let key = KeyPair::generate(KeyType::EcP256).unwrap();
        let shown = format!("{key:?}");
        assert!(shown.contains("redacted"));
        assert!(!shown.contains(&hex::encode(&key.pkcs8_der()[..8])));
    }

    #[test]
    fn garbage_is_not_a_key() {
        assert!(matches!(
            KeyPair::from_pkcs8_der(b"not a key"),
            Err(KeyError::Unsupported)
        ));
        assert!(matches!(
            KeyPair::from_pkcs8_pem("nothing"),
            Err(KeyError::NoPem)
        ));
    }
}
