//! Identity, CA and trust primitives for the mesh.
//!
//! This crate has no networking: it parses and checks SPIFFE IDs, issues and verifies
//! X509-SVIDs and JWT-SVIDs, keeps trust bundles, and runs a CA that rotates itself.

#![forbid(unsafe_code)]

pub mod bundle;
pub mod ca;
pub mod clock;
pub mod fs;
pub mod id;
pub mod jwt;
pub mod key;
pub mod tls;
pub mod x509;

pub use bundle::{Bundle, BundleSet, JwtAuthority};
pub use id::{IdError, SpiffeId, TrustDomain};
pub use key::{KeyPair, KeyType};
