//! Feeding the proxy's live SVID source from the Workload API, like any workload would.
//!
//! The proxy opens the `FetchX509SVID` stream and puts each update (its default SVID, its trust
//! domain's bundle and the federated bundles) into a [`MemorySource`]. When the stream breaks
//! it reconnects with backoff and keeps serving with what it last had.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use mesh_core::bundle::{Bundle, BundleSet};
use mesh_core::tls::MemorySource;
use mesh_core::x509::{split_concatenated_der, X509Svid};
use mesh_core::{SpiffeId, TrustDomain};
use tokio::sync::watch;
use workload_api::provider::X509Context;
use workload_api::{Endpoint, WorkloadApiClient};

use super::metrics::ProxyMetrics;
use super::stopped;

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Why an X.509 context from the Workload API could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContextError {
    /// The response holds no SVID.
    #[error("x509 context has no svid")]
    NoSvid,
    /// The SVID's certificates or key do not form a valid X509-SVID.
    #[error("svid `{spiffe_id}` is not usable: {reason}")]
    BadSvid {
        /// The SPIFFE ID the response named.
        spiffe_id: String,
        /// What is wrong.
        reason: String,
    },
    /// A bundle is empty or not DER certificates, or its key is not a trust domain.
    #[error("bundle of `{trust_domain}` is not usable: {reason}")]
    BadBundle {
        /// The trust domain (or the bad key).
        trust_domain: String,
        /// What is wrong.
        reason: String,
    },
}

/// Turns a Workload API X.509 context into the default SVID and the bundle set (the SVID's
/// own trust domain plus the federated ones).
///
/// # Errors
///
/// A [`ContextError`] naming the SVID or bundle that cannot be used.
pub fn from_x509_context(context: &X509Context) -> Result<(X509Svid, BundleSet), ContextError> {
    let first = context.svids.first().ok_or(ContextError::NoSvid)?;
    let bad_svid = |reason: String| ContextError::BadSvid {
        spiffe_id: first.spiffe_id.clone(),
        reason,
    };
    let svid = X509Svid::from_der(&first.cert_chain, &first.private_key)
        .map_err(|e| bad_svid(e.to_string()))?;
    let named = SpiffeId::new(&first.spiffe_id).map_err(|e| bad_svid(e.to_string()))?;
    if &named != svid.spiffe_id() {
        return Err(bad_svid(format!(
            "certificate names `{}`",
            svid.spiffe_id()
        )));
    }

    let mut bundles = BundleSet::new();
    let own = svid.spiffe_id().trust_domain().clone();
    for (key, der) in &context.federated_bundles {
        let td = TrustDomain::new(key).map_err(|e| ContextError::BadBundle {
            trust_domain: key.clone(),
            reason: e.to_string(),
        })?;
        if td != own {
            bundles.insert(bundle(td, der)?);
        }
    }
    bundles.insert(bundle(own, &first.bundle)?);
    Ok((svid, bundles))
}

fn bundle(trust_domain: TrustDomain, der: &[u8]) -> Result<Bundle, ContextError> {
    let certs = split_concatenated_der(der).map_err(|e| ContextError::BadBundle {
        trust_domain: trust_domain.to_string(),
        reason: e.to_string(),
    })?;
    let mut bundle = Bundle::new(trust_domain);
    bundle.set_x509_authorities(certs);
    Ok(bundle)
}

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
        match from_x509_context(&context) {
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
