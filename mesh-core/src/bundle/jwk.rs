//! Public keys as JSON Web Key parameters (RFC 7518, section 6) and back to SPKI DER.
//!
//! Only the key kinds this project signs with are covered: EC on P-256, P-384 and P-521
//! (uncompressed points) and RSA. The SPKI DER is produced by aws-lc-rs and read by
//! x509-parser, so no ASN.1 is written by hand here.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{self, ParsedPublicKey, RsaPublicKeyComponents};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_PKCS1_RSAENCRYPTION,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

/// A NIST curve a JWK of `kty: EC` may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Curve {
    P256,
    P384,
    P521,
}

impl Curve {
    /// The `crv` value of RFC 7518, section 6.2.1.1.
    pub(crate) fn jwk_name(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
            Curve::P521 => "P-521",
        }
    }

    pub(crate) fn from_jwk_name(name: &str) -> Option<Self> {
        match name {
            "P-256" => Some(Curve::P256),
            "P-384" => Some(Curve::P384),
            "P-521" => Some(Curve::P521),
            _ => None,
        }
    }

    /// Length in bytes of one coordinate.
    pub(crate) fn coordinate_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }

    /// An aws-lc-rs verification algorithm on this curve, used to check and encode points.
    fn verification(self) -> &'static signature::EcdsaVerificationAlgorithm {
        match self {
            Curve::P256 => &signature::ECDSA_P256_SHA256_FIXED,
            Curve::P384 => &signature::ECDSA_P384_SHA384_FIXED,
            Curve::P521 => &signature::ECDSA_P521_SHA512_FIXED,
        }
    }
}

/// The public parameters of a key, as a JWK carries them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyParams {
    /// An EC public key: the affine coordinates, each exactly `coordinate_len` bytes.
    Ec {
        curve: Curve,
        x: Vec<u8>,
        y: Vec<u8>,
    },
    /// An RSA public key: modulus and exponent, big-endian without leading zero bytes.
    Rsa { n: Vec<u8>, e: Vec<u8> },
}

impl KeyParams {
    /// Reads the parameters of an SPKI DER public key.
    ///
    /// Returns a lowercase reason when the key is not one a JWK of this crate can carry.
    pub(crate) fn from_spki(spki: &[u8]) -> Result<Self, String> {
        let (rest, info) = SubjectPublicKeyInfo::from_der(spki)
            .map_err(|e| format!("public key is not valid spki der: {e}"))?;
        if !rest.is_empty() {
            return Err("public key has trailing bytes after the spki".to_owned());
        }
        Self::from_spki_info(&info)
    }

    /// Reads the parameters of a parsed SPKI (for example one taken from a certificate).
    pub(crate) fn from_spki_info(info: &SubjectPublicKeyInfo<'_>) -> Result<Self, String> {
        let algorithm = &info.algorithm.algorithm;
        if *algorithm == OID_PKCS1_RSAENCRYPTION {
            let Ok(PublicKey::RSA(rsa)) = info.parsed() else {
                return Err("rsa public key does not parse".to_owned());
            };
            let n = strip_leading_zeros(rsa.modulus);
            let e = strip_leading_zeros(rsa.exponent);
            if n.is_empty() || e.is_empty() {
                return Err("rsa public key has a zero modulus or exponent".to_owned());
            }
            return Ok(KeyParams::Rsa {
                n: n.to_vec(),
                e: e.to_vec(),
            });
        }
        if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve_oid = info
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .ok_or_else(|| "ec public key names no curve".to_owned())?;
            let curve = if curve_oid == OID_EC_P256 {
                Curve::P256
            } else if curve_oid == OID_NIST_EC_P384 {
                Curve::P384
            } else if curve_oid == OID_NIST_EC_P521 {
                Curve::P521
            } else {
                return Err(format!("ec curve {curve_oid} is not supported"));
            };
            let point: &[u8] = &info.subject_public_key.data;
            let len = curve.coordinate_len();
            if point.len() != 1 + 2 * len || point[0] != 0x04 {
                return Err(format!(
                    "ec point on {} is not an uncompressed point of {} bytes",
                    curve.jwk_name(),
                    1 + 2 * len
                ));
            }
            return Ok(KeyParams::Ec {
                curve,
                x: point[1..=len].to_vec(),
                y: point[1 + len..].to_vec(),
            });
        }
        Err(format!("public key algorithm {algorithm} is not supported"))
    }

    /// Encodes these parameters as SPKI DER, checking that they form a valid key.
    ///
    /// Returns a lowercase reason when they do not (an EC point off the curve, a coordinate of
    /// the wrong length, an empty RSA modulus).
    pub(crate) fn to_spki(&self) -> Result<Vec<u8>, String> {
        match self {
            KeyParams::Ec { curve, x, y } => {
                let len = curve.coordinate_len();
                if x.len() != len || y.len() != len {
                    return Err(format!(
                        "coordinates on {} must be {len} bytes each, found {} and {}",
                        curve.jwk_name(),
                        x.len(),
                        y.len()
                    ));
                }
                let mut point = Vec::with_capacity(1 + 2 * len);
                point.push(0x04);
                point.extend_from_slice(x);
                point.extend_from_slice(y);
                let key = ParsedPublicKey::new(curve.verification(), &point)
                    .map_err(|_| format!("point is not on curve {}", curve.jwk_name()))?;
                let der = key
                    .as_der()
                    .map_err(|_| "ec public key could not be encoded".to_owned())?;
                Ok(der.as_ref().to_vec())
            }
            KeyParams::Rsa { n, e } => {
                let n = strip_leading_zeros(n);
                let e = strip_leading_zeros(e);
                if n.is_empty() || e.is_empty() {
                    return Err("rsa modulus and exponent must be non-zero".to_owned());
                }
                let components = RsaPublicKeyComponents { n, e };
                let der = components
                    .as_der()
                    .map_err(|_| "rsa modulus and exponent do not form a key".to_owned())?;
                Ok(der.as_ref().to_vec())
            }
        }
    }
}

/// Base64urlUInt values (RFC 7518, section 2) have no leading zero bytes.
pub(crate) fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{KeyPair, KeyType};

    #[test]
    fn every_key_type_survives_spki_to_params_and_back() {
        for key_type in [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048] {
            let key = KeyPair::generate(key_type).unwrap();
            let params = KeyParams::from_spki(&key.spki_der()).unwrap();
            let spki = params.to_spki().unwrap();
            assert_eq!(spki, key.spki_der(), "{key_type}");
        }
    }

    #[test]
    fn point_off_the_curve_is_rejected() {
        let params = KeyParams::Ec {
            curve: Curve::P256,
            x: vec![1; 32],
            y: vec![2; 32],
        };
        assert!(params.to_spki().unwrap_err().contains("not on curve P-256"));
    }

    #[test]
    fn short_coordinate_is_rejected_with_its_length() {
        let params = KeyParams::Ec {
            curve: Curve::P384,
            x: vec![1; 47],
            y: vec![2; 48],
        };
        assert!(params.to_spki().unwrap_err().contains("found 47"));
    }
}
