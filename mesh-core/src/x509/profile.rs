//! The X509-SVID profile: what a leaf SVID and its signing certificates must look like.
//!
//! Implements sections 4 and 5 of the SPIFFE X509-SVID standard (`standards/X509-SVID.md`):
//! a leaf carries exactly one URI SAN, a SPIFFE ID with a path; basicConstraints is present
//! with `cA` false; keyUsage is present, critical, has digitalSignature and neither
//! keyCertSign nor cRLSign. A signing certificate has `cA` true and keyCertSign, and a SPIFFE
//! ID on it (if any) has no path. Extended key usage is not required; when present it is
//! checked by path building.

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    Oid, OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_KEY_USAGE, OID_X509_EXT_SUBJECT_ALT_NAME,
};

use crate::id::{IdError, SpiffeId};

/// Why a certificate breaks the X509-SVID profile.
///
/// `position` is the certificate's index in the chain: 0 for the leaf, 1 for the certificate
/// that signed it, and so on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    /// The leaf has no URI SAN, so it carries no SPIFFE ID.
    #[error("leaf certificate has no URI SAN, so no SPIFFE ID")]
    NoUriSan,
    /// The leaf has more than one URI SAN; an SVID carries exactly one.
    #[error("leaf certificate has {count} URI SANs; an X509-SVID has exactly one")]
    SeveralUriSans {
        /// How many URI SANs the leaf has.
        count: usize,
    },
    /// A URI SAN is not a valid SPIFFE ID.
    #[error("URI SAN `{uri}` of certificate {position} is not a SPIFFE ID: {reason}")]
    NotSpiffeId {
        /// Index of the certificate in the chain.
        position: usize,
        /// The URI as found in the certificate.
        uri: String,
        /// The rule of the SPIFFE ID standard it breaks.
        #[source]
        reason: IdError,
    },
    /// The leaf's SPIFFE ID is the trust domain itself; a workload ID has a path.
    #[error("leaf SPIFFE ID `{0}` has no path; a workload ID needs one")]
    LeafIdWithoutPath(String),
    /// The leaf is a CA certificate.
    #[error("leaf certificate for `{0}` is a CA (basicConstraints cA is true)")]
    LeafIsCa(String),
    /// A certificate lacks the basicConstraints extension.
    #[error("certificate {position} has no basicConstraints extension")]
    MissingBasicConstraints {
        /// Index of the certificate in the chain.
        position: usize,
    },
    /// A certificate lacks the keyUsage extension.
    #[error("certificate {position} has no keyUsage extension")]
    MissingKeyUsage {
        /// Index of the certificate in the chain.
        position: usize,
    },
    /// The leaf's keyUsage extension is not marked critical.
    #[error("leaf keyUsage extension is not marked critical")]
    KeyUsageNotCritical,
    /// The leaf's keyUsage lacks digitalSignature.
    #[error("leaf keyUsage lacks digitalSignature")]
    NoDigitalSignature,
    /// The leaf's keyUsage has keyCertSign, which only signing certificates may have.
    #[error("leaf keyUsage has keyCertSign")]
    KeyCertSignOnLeaf,
    /// The leaf's keyUsage has cRLSign, which only signing certificates may have.
    #[error("leaf keyUsage has cRLSign")]
    CrlSignOnLeaf,
    /// A certificate above the leaf is not a CA.
    #[error("signing certificate {position} is not a CA (basicConstraints cA is false)")]
    SigningCertNotCa {
        /// Index of the certificate in the chain.
        position: usize,
    },
    /// A certificate above the leaf lacks keyCertSign.
    #[error("signing certificate {position} keyUsage lacks keyCertSign")]
    SigningCertWithoutKeyCertSign {
        /// Index of the certificate in the chain.
        position: usize,
    },
    /// A signing certificate carries a SPIFFE ID with a path.
    #[error("signing certificate {position} has SPIFFE ID `{id}` with a path; a CA's ID has none")]
    SigningCertIdWithPath {
        /// Index of the certificate in the chain.
        position: usize,
        /// The SPIFFE ID found.
        id: String,
    },
    /// An extension the profile depends on is duplicated or cannot be parsed.
    #[error("certificate {position} has a malformed or duplicated {extension} extension")]
    MalformedExtension {
        /// Index of the certificate in the chain.
        position: usize,
        /// The extension's name.
        extension: &'static str,
    },
}

/// Checks a leaf certificate against the profile and returns its SPIFFE ID.
///
/// # Errors
///
/// Returns the [`ProfileError`] for the first rule the certificate breaks.
pub(crate) fn check_leaf(cert: &X509Certificate<'_>) -> Result<SpiffeId, ProfileError> {
    let uris = uri_sans(cert, 0)?;
    let uri = match uris.as_slice() {
        [] => return Err(ProfileError::NoUriSan),
        [one] => *one,
        many => return Err(ProfileError::SeveralUriSans { count: many.len() }),
    };
    let id = SpiffeId::new(uri).map_err(|reason| ProfileError::NotSpiffeId {
        position: 0,
        uri: uri.to_owned(),
        reason,
    })?;
    if !id.is_workload() {
        return Err(ProfileError::LeafIdWithoutPath(id.to_string()));
    }

    match extension(cert, &OID_X509_EXT_BASIC_CONSTRAINTS, "basicConstraints", 0)? {
        None => return Err(ProfileError::MissingBasicConstraints { position: 0 }),
        Some((_, ParsedExtension::BasicConstraints(bc))) if bc.ca => {
            return Err(ProfileError::LeafIsCa(id.to_string()))
        }
        Some(_) => {}
    }

    match extension(cert, &OID_X509_EXT_KEY_USAGE, "keyUsage", 0)? {
        None => Err(ProfileError::MissingKeyUsage { position: 0 }),
        Some((critical, ParsedExtension::KeyUsage(ku))) => {
            if !critical {
                Err(ProfileError::KeyUsageNotCritical)
            } else if ku.key_cert_sign() {
                Err(ProfileError::KeyCertSignOnLeaf)
            } else if ku.crl_sign() {
                Err(ProfileError::CrlSignOnLeaf)
            } else if !ku.digital_signature() {
                Err(ProfileError::NoDigitalSignature)
            } else {
                Ok(id)
            }
        }
        Some(_) => Err(ProfileError::MalformedExtension {
            position: 0,
            extension: "keyUsage",
        }),
    }
}

/// Checks a certificate above the leaf (an intermediate or a CA sent along) against the profile.
///
/// # Errors
///
/// Returns the [`ProfileError`] for the first rule the certificate breaks.
pub(crate) fn check_signing_cert(
    cert: &X509Certificate<'_>,
    position: usize,
) -> Result<(), ProfileError> {
    match extension(
        cert,
        &OID_X509_EXT_BASIC_CONSTRAINTS,
        "basicConstraints",
        position,
    )? {
        None => return Err(ProfileError::MissingBasicConstraints { position }),
        Some((_, ParsedExtension::BasicConstraints(bc))) if bc.ca => {}
        Some(_) => return Err(ProfileError::SigningCertNotCa { position }),
    }
    match extension(cert, &OID_X509_EXT_KEY_USAGE, "keyUsage", position)? {
        None => return Err(ProfileError::MissingKeyUsage { position }),
        Some((_, ParsedExtension::KeyUsage(ku))) if ku.key_cert_sign() => {}
        Some(_) => return Err(ProfileError::SigningCertWithoutKeyCertSign { position }),
    }

    // A CA may carry other URIs (an upstream corporate CA often does); only SPIFFE IDs count.
    for uri in uri_sans(cert, position)? {
        if !uri.starts_with("spiffe:") {
            continue;
        }
        let id = SpiffeId::new(uri).map_err(|reason| ProfileError::NotSpiffeId {
            position,
            uri: uri.to_owned(),
            reason,
        })?;
        if id.is_workload() {
            return Err(ProfileError::SigningCertIdWithPath {
                position,
                id: id.to_string(),
            });
        }
    }
    Ok(())
}

/// The URI SANs of a certificate.
pub(crate) fn uri_sans<'a>(
    cert: &'a X509Certificate<'_>,
    position: usize,
) -> Result<Vec<&'a str>, ProfileError> {
    match extension(
        cert,
        &OID_X509_EXT_SUBJECT_ALT_NAME,
        "subjectAltName",
        position,
    )? {
        None => Ok(Vec::new()),
        Some((_, ParsedExtension::SubjectAlternativeName(san))) => Ok(san
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some(*uri),
                _ => None,
            })
            .collect()),
        Some(_) => Err(ProfileError::MalformedExtension {
            position,
            extension: "subjectAltName",
        }),
    }
}

/// The single extension with `oid` and whether it is critical; an unparseable or duplicated
/// one is an error rather than "absent", so a malformed extension cannot bypass a check.
fn extension<'c, 'a>(
    cert: &'c X509Certificate<'a>,
    oid: &Oid<'_>,
    name: &'static str,
    position: usize,
) -> Result<Option<(bool, &'c ParsedExtension<'a>)>, ProfileError> {
    let malformed = ProfileError::MalformedExtension {
        position,
        extension: name,
    };
    match cert.get_extension_unique(oid) {
        Err(_) => Err(malformed),
        Ok(None) => Ok(None),
        Ok(Some(ext)) => match ext.parsed_extension() {
            ParsedExtension::ParseError { .. } | ParsedExtension::UnsupportedExtension { .. } => {
                Err(malformed)
            }
            parsed => Ok(Some((ext.critical, parsed))),
        },
    }
}
