//! The SPIFFE Workload API: the protocol, a server generic over a [`Provider`], a client, and
//! `SPIFFE_ENDPOINT_SOCKET` parsing.
//!
//! This crate knows nothing about certificate authorities or registration: the
//! [`Provider`] the caller plugs in decides who gets which identity. The server honours the
//! wire rules of the SPIFFE Workload API standard (security header, complete-state stream
//! messages, status codes clients rely on) and accepts the `:authority` that Java and gRPC-core
//! clients send over Unix sockets.

#![warn(missing_docs)]

pub mod authority;
pub mod client;
mod codec;
pub mod endpoint;
pub mod header;
mod hpack;
pub mod proto;
pub mod provider;
pub mod server;
pub mod source;
mod streaming;

pub use client::{ClientError, WorkloadApiClient};
pub use endpoint::{Endpoint, EndpointError};
pub use provider::{
    Caller, JwtBundles, JwtSvid, Provider, ProviderError, ProviderStream, ValidatedJwt,
    X509Bundles, X509Context, X509Svid,
};
pub use server::{serve_unix, ServeError, WorkloadApiServer};
