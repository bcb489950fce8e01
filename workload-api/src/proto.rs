//! Generated types of the SPIFFE Workload API (`proto/workload.proto`).
//!
//! The proto has no package, so the service path is `/SpiffeWorkloadAPI/<Method>`.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

use std::fmt;

include!(concat!(env!("OUT_DIR"), "/_.rs"));

/// The encoded file descriptor set of `workload.proto` (and its imports), for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/workload_descriptor.bin"));

// Debug of messages that carry private keys or tokens redacts them.

impl fmt::Debug for X509svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X509svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("x509_svid_len", &self.x509_svid.len())
            .field("x509_svid_key", &"<redacted>")
            .field("bundle_len", &self.bundle.len())
            .field("hint", &self.hint)
            .finish()
    }
}

impl fmt::Debug for Jwtsvid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwtsvid")
            .field("spiffe_id", &self.spiffe_id)
            .field("svid", &"<redacted>")
            .field("hint", &self.hint)
            .finish()
    }
}

impl fmt::Debug for ValidateJwtsvidRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidateJwtsvidRequest")
            .field("audience", &self.audience)
            .field("svid", &"<redacted>")
            .finish()
    }
}
