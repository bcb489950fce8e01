//! `spiffe-example-client URL...`: calls every URL over mutual TLS with the SVID from the
//! Workload API and prints one JSON line per call.
//!
//! Environment: `SPIFFE_ENDPOINT_SOCKET`, `ALLOWED_SERVER_IDS` (comma-separated; every other
//! server is refused), `REPEAT_FOR_SECONDS` (keep calling for that long; default one round),
//! `INTERVAL_MS` (pause between rounds, default 1000). Every call opens a new connection, so
//! it shows the certificates in force. Exits 1 if any call failed, 2 on a setup error; logs go
//! to stderr.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use spiffe_example_mtls::client::Client;
use spiffe_example_mtls::{
    ids_from_env, init_logging, number_from_env, seconds_from_env, SVID_WAIT,
};
use workload_api::source::X509Source;

#[tokio::main]
async fn main() -> ExitCode {
    init_logging();
    let urls: Vec<String> = std::env::args().skip(1).collect();
    if urls.is_empty() {
        eprintln!("usage: spiffe-example-client URL...");
        return ExitCode::from(2);
    }
    let (client, source, repeat, interval) = match setup().await {
        Ok(setup) => setup,
        Err(error) => {
            tracing::error!("{error:#}");
            return ExitCode::from(2);
        }
    };

    let deadline = Instant::now() + repeat;
    let mut failures = 0_u64;
    let mut stdout = std::io::stdout().lock();
    loop {
        for url in &urls {
            let result = client.call(url).await;
            if !result.ok {
                failures += 1;
            }
            let line = serde_json::to_string(&result).unwrap_or_else(|e| {
                format!("{{\"client\":\"rust\",\"url\":{url:?},\"ok\":false,\"error\":\"{e}\"}}")
            });
            if writeln!(stdout, "{line}")
                .and_then(|()| stdout.flush())
                .is_err()
            {
                return ExitCode::from(2);
            }
        }
        if repeat.is_zero() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(interval).await;
    }
    tracing::info!(failures, svid_updates = source.updates(), "done");
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn setup() -> anyhow::Result<(Client, Arc<X509Source>, Duration, Duration)> {
    let allowed = ids_from_env("ALLOWED_SERVER_IDS")?;
    let repeat = seconds_from_env("REPEAT_FOR_SECONDS", Duration::ZERO)?;
    let interval = Duration::from_millis(number_from_env("INTERVAL_MS", 1000)?);

    let source = Arc::new(X509Source::from_env()?);
    let svid = source
        .wait_until_ready(SVID_WAIT)
        .await
        .context("waiting for an svid")?;
    tracing::info!(spiffe_id = %svid.spiffe_id(), "got an svid");
    let client = Client::new(source.clone(), &allowed)?;
    Ok((client, source, repeat, interval))
}
