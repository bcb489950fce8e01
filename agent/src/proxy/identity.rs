//! The proxy's identity from the Workload API, like any workload's.
//!
//! A [`workload_api::source::X509Source`] watches `FetchX509SVID` and keeps the proxy's live
//! SVID source current (reconnecting with backoff and keeping the last SVID meanwhile). This
//! module turns the source's progress into the proxy's update counter, which readiness waits
//! on, and into its metrics.

use mesh_core::tls::SvidSource;
use tokio::sync::watch;
use workload_api::source::X509Source;

use super::metrics::ProxyMetrics;
use super::stopped;

/// Follows `x509` until `shutdown` turns true (or the source stops for good): bumps `updates`
/// for each SVID taken in, records SVID expiry and Workload API failures in `metrics`. Keeps
/// the source alive, since dropping it would stop its watch.
pub async fn follow(
    x509: X509Source,
    updates: watch::Sender<u64>,
    metrics: ProxyMetrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut status = x509.subscribe();
    let mut last_error: Option<String> = None;
    loop {
        let now = status.borrow_and_update().clone();
        if now.updates > *updates.borrow() {
            if let Some(svid) = x509.memory().svid() {
                tracing::info!(
                    spiffe_id = %svid.spiffe_id(),
                    not_after = ?svid.not_after(),
                    "svid updated from the workload api"
                );
                metrics.svid_updated(svid.not_after());
            }
            updates.send_replace(now.updates);
        }
        if now.last_error.is_some() && now.last_error != last_error {
            metrics.workload_api_error();
            tracing::warn!(
                endpoint = %x509.endpoint(),
                error = now.last_error.as_deref().unwrap_or_default(),
                "workload api unavailable; keeping the current svid"
            );
        }
        last_error = now.last_error;
        if let Some(error) = now.stopped {
            tracing::error!(endpoint = %x509.endpoint(), %error, "workload api source stopped");
            return;
        }

        tokio::select! {
            changed = status.changed() => if changed.is_err() { return },
            () = stopped(&mut shutdown) => {
                x509.close();
                return;
            }
        }
    }
}
