//! The per-node agent: attests callers, maps them to registration entries, and serves their
//! identities. This library holds the parts the `mesh-agent` binary is made of.

pub mod admin;
pub mod alloc;
pub mod attest;
pub mod cache;
pub mod config;
pub mod k8s;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod registration;
pub mod reload;
pub mod run;
pub mod selector;
pub mod workload;
