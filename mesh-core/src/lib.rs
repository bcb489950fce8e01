//! Identity, CA and trust primitives for the mesh.
//!
//! This crate has no networking: it parses and checks SPIFFE IDs, issues and verifies
//! X509-SVIDs and JWT-SVIDs, keeps trust bundles, and runs a CA that rotates itself.

#![forbid(unsafe_code)]

pub mod clock;
pub mod id;

pub use id::{IdError, SpiffeId, TrustDomain};
