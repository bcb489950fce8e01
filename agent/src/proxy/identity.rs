//! Feeding the proxy's live SVID source from the Workload API, like any workload would.
//!
//! The proxy opens the `FetchX509SVID` stream and puts each update (its default SVID, its trust
//! domain's bundle and the federated bundles, converted by
//! [`workload_api::source::svid_and_bundles`]) into a [`MemorySource`]. When the stream breaks
//! it reconnects with backoff and keeps serving with what it last had.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use mesh_core::tls::MemorySource;
use tokio::sync::watch;
use workload_api::source::svid_and_bundles;
use workload_api::{Endpoint, WorkloadApiClient};

use super::metrics::ProxyMetrics;
use super::stopped;

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Watches the Workload API at `endpoint` and keeps `source` current until `shutdown` turns
/// true. `updates` is bumped after each SVID taken in, so the caller can tell when the first
/// one arrived.
pub async fn watch_workload_api(
    endpoint: Endpoint,
    source: Arc<MemorySource>,
    updates: watch::Sender<u64>,
    metrics: ProxyMetrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let result = tokio::select! {
            r = follow(&endpoint, &source, &updates, &metrics, &mut backoff) => r,
            () = stopped(&mut shutdown) => return,
        };
        metrics.workload_api_error();
        match result {
            Ok(()) => {
                tracing::warn!(endpoint = %endpoint, "workload api stream ended; reconnecting")
            }
            Err(error) => tracing::warn!(
                endpoint = %endpoint,
                %error,
                retry_in = ?backoff,
                "workload api unavailable; keeping the current svid"
            ),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stopped(&mut shutdown) => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Follows one stream until it ends (`Ok`) or fails.
async fn follow(
    endpoint: &Endpoint,
    source: &MemorySource,
    updates: &watch::Sender<u64>,
    metrics: &ProxyMetrics,
    backoff: &mut Duration,
) -> Result<(), workload_api::ClientError> {
    let mut client = WorkloadApiClient::connect(endpoint).await?;
    let mut stream = client.watch_x509_context().await?;
    while let Some(context) = stream.next().await {
        let context = context?;
        match svid_and_bundles(&context) {
            Ok((svid, bundles)) => {
                tracing::info!(
                    spiffe_id = %svid.spiffe_id(),
                    not_after = ?svid.not_after(),
                    trust_domains = bundles.len(),
                    "svid updated from the workload api"
                );
                metrics.svid_updated(svid.not_after());
                source.set(svid, bundles);
                updates.send_modify(|n| *n += 1);
                *backoff = FIRST_BACKOFF;
            }
            Err(error) => {
                // Keep serving with the last good SVID; the next update may fix it.
                tracing::warn!(%error, "ignoring an unusable x509 context");
            }
        }
    }
    Ok(())
}
