//! `spiffe-example-server`: HTTPS with mutual TLS on the SVID from the Workload API.
//!
//! Environment: `SPIFFE_ENDPOINT_SOCKET` (`unix:///path`), `LISTEN_ADDR` (default
//! `127.0.0.1:8443`), `ALLOWED_CLIENT_IDS` (comma-separated SPIFFE IDs; every other client is
//! refused). Listens only once it holds an SVID; follows rotations without a restart; stops on
//! SIGTERM or Ctrl-C. Exits 2 on a setup error.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use spiffe_example_mtls::server::Server;
use spiffe_example_mtls::{ids_from_env, init_logging, SVID_WAIT};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use workload_api::source::X509Source;

#[tokio::main]
async fn main() -> ExitCode {
    init_logging();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let allowed = ids_from_env("ALLOWED_CLIENT_IDS")?;
    let addr = std::env::var("LISTEN_ADDR")
        .ok()
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| "127.0.0.1:8443".to_owned());
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the sigterm handler")?;

    let source = Arc::new(X509Source::from_env()?);
    let svid = source.wait_until_ready(SVID_WAIT).await?;
    tracing::info!(spiffe_id = %svid.spiffe_id(), "got an svid");

    let server = Server::new(source.clone(), &allowed)?;
    let listener = TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on `{addr}`"))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        allowed = %allowed.iter().map(|i| i.as_str()).collect::<Vec<_>>().join(","),
        "listening"
    );
    server
        .serve(listener, async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("stopping");
        })
        .await;
    Ok(())
}
