//! The certificate authority: issues X509-SVIDs, holds the JWT signing keys, rotates both, and
//! keeps its state in a data directory.
//!
//! - [`authority`]: one X.509 signing CA ([`X509Issuer`]): a self-signed root made here, a
//!   team's own CA loaded from PEM ([`UpstreamCa`]), or an intermediate made under it; and
//!   issuing leaves for a public key, a CSR, or a fresh key.
//! - [`rotation`]: the [`Ca`] that owns several authorities of each kind (X.509 and JWT),
//!   walks them through prepared -> active -> retired -> dropped as its clock moves, and builds
//!   the trust [`Bundle`](crate::bundle::Bundle) from them.
//! - [`store`]: the data directory: keys (mode 0600), certificates and a JSON state file, all
//!   written atomically.

pub mod authority;
pub mod rotation;
pub mod store;

use std::path::PathBuf;

use crate::fs::FsError;
use crate::id::TrustDomain;
use crate::key::KeyError;

pub use authority::{csr_public_key, SvidRequest, UpstreamCa, UpstreamMode, X509Issuer};
pub use rotation::{
    AuthorityInfo, AuthorityKind, AuthorityState, Ca, CaConfig, JwtSigningKey, Upstream,
};

/// Why the CA could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// A key could not be generated or read.
    #[error("key: {0}")]
    Key(#[from] KeyError),
    /// rcgen could not build a certificate.
    #[error("building the {0} certificate failed: {1}")]
    Certificate(&'static str, #[source] rcgen::Error),
    /// A CA certificate, its chain or its key is not usable.
    #[error("CA is not usable: {0}")]
    InvalidCa(String),
    /// The issuing CA's validity has ended, so it cannot issue anything.
    #[error("issuing CA expired at {not_after}")]
    IssuerExpired {
        /// The CA's notAfter, RFC 3339.
        not_after: String,
    },
    /// The requested SPIFFE ID is a trust domain ID; a leaf needs a path.
    #[error("SPIFFE ID `{0}` has no path; an X509-SVID names a workload")]
    LeafIdWithoutPath(String),
    /// The requested SPIFFE ID belongs to another trust domain.
    #[error("SPIFFE ID `{id}` is not in trust domain `{trust_domain}` of this CA")]
    WrongTrustDomain {
        /// The requested ID.
        id: String,
        /// The CA's trust domain.
        trust_domain: TrustDomain,
    },
    /// A requested DNS name is not a valid DNS SAN.
    #[error("`{0}` is not a valid DNS name")]
    InvalidDnsName(String),
    /// The public key to certify is of an unsupported kind or size.
    #[error("unsupported public key: {0}")]
    UnsupportedPublicKey(String),
    /// The input is not a PKCS#10 certificate signing request.
    #[error("not a valid CSR: {0}")]
    BadCsr(String),
    /// The CSR's signature does not verify with its own public key.
    #[error("CSR signature does not verify with its public key")]
    CsrSignature,
    /// A file of the data directory (or a configured CA file) is missing, unreadable or
    /// corrupt.
    #[error("`{path}`: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The data directory holds CA keys or certificates but no state file; starting afresh
    /// would silently replace the root, so this is refused.
    #[error("`{path}` is missing but the data directory holds CA files; restore it or move the directory away to start a new CA")]
    StateMissing {
        /// The expected state file.
        path: PathBuf,
    },
    /// The configuration disagrees with the persisted state (trust domain, upstream CA, mode).
    #[error("`{path}`: {reason}")]
    ConfigMismatch {
        /// The state file.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
    /// Writing a file failed.
    #[error(transparent)]
    Write(#[from] FsError),
}
