//! The proxy's `/live`, `/ready` and `/metrics`: the agent's admin server, rendering
//! [`ProxyMetrics`]. The proxy is ready once its first SVID arrived and every listener is bound.

use tokio::net::TcpListener;
use tokio::sync::watch;

use super::metrics::ProxyMetrics;
use super::stopped;
use crate::admin::{serve_with, Readiness, RenderMetrics};

impl RenderMetrics for ProxyMetrics {
    fn render(&self) -> String {
        ProxyMetrics::render(self)
    }
}

/// Serves the admin routes on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    metrics: ProxyMetrics,
    readiness: Readiness,
    mut shutdown: watch::Receiver<bool>,
) {
    serve_with(listener, metrics, readiness, async move {
        stopped(&mut shutdown).await;
    })
    .await;
}
