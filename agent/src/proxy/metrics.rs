//! The proxy's Prometheus metrics, per listener, in the text format (version 0.0.4).
//!
//! Counters live in atomics owned by each listener, so the data path never takes a lock.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

/// Why a connection was closed before carrying data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The listener was at `max_connections`.
    Limit,
    /// The TLS handshake failed or timed out (bad certificate, not TLS, too slow).
    Handshake,
    /// The peer's SPIFFE ID is not allowed by the listener's rule.
    Unauthorized,
    /// The forward or connect address could not be reached.
    Upstream,
}

impl Refusal {
    const ALL: [Refusal; 4] = [
        Refusal::Limit,
        Refusal::Handshake,
        Refusal::Unauthorized,
        Refusal::Upstream,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Limit => "limit",
            Self::Handshake => "handshake",
            Self::Unauthorized => "unauthorized",
            Self::Upstream => "upstream",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters of one listener; shared by its connections.
#[derive(Debug)]
pub struct ListenerMetrics {
    name: String,
    direction: &'static str,
    accepted: AtomicU64,
    active: AtomicI64,
    plaintext: AtomicU64,
    refused: [AtomicU64; 4],
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    idle_closed: AtomicU64,
}

impl ListenerMetrics {
    fn new(name: &str, direction: &'static str) -> Self {
        Self {
            name: name.to_owned(),
            direction,
            accepted: AtomicU64::new(0),
            active: AtomicI64::new(0),
            plaintext: AtomicU64::new(0),
            refused: Default::default(),
            bytes_received: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            idle_closed: AtomicU64::new(0),
        }
    }

    /// Counts an accepted TCP connection and keeps it in the active gauge until the guard
    /// drops.
    pub fn accepted(self: &Arc<Self>) -> ActiveGuard {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(Arc::clone(self))
    }

    /// Counts a connection closed for `reason`.
    pub fn refused(&self, reason: Refusal) {
        self.refused[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a plaintext connection on a permissive inbound listener.
    pub fn plaintext(&self) {
        self.plaintext.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection closed by the idle timeout.
    pub fn idle_closed(&self) {
        self.idle_closed.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds the bytes a finished connection carried: `received` from the accepted client,
    /// `sent` back to it.
    pub fn bytes(&self, received: u64, sent: u64) {
        self.bytes_received.fetch_add(received, Ordering::Relaxed);
        self.bytes_sent.fetch_add(sent, Ordering::Relaxed);
    }

    /// Plaintext connections seen so far.
    pub fn plaintext_count(&self) -> u64 {
        self.plaintext.load(Ordering::Relaxed)
    }

    /// Connections refused for `reason` so far.
    pub fn refused_count(&self, reason: Refusal) -> u64 {
        self.refused[reason.index()].load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn active_count(&self) -> i64 {
        self.active.load(Ordering::Relaxed)
    }
}

/// Keeps a connection counted as active while alive.
#[derive(Debug)]
pub struct ActiveGuard(Arc<ListenerMetrics>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every metric of the proxy; clones share the values.
#[derive(Debug, Clone, Default)]
pub struct ProxyMetrics {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    listeners: Mutex<Vec<Arc<ListenerMetrics>>>,
    svid_updates: AtomicU64,
    svid_expiry: AtomicI64,
    workload_api_errors: AtomicU64,
}

impl ProxyMetrics {
    /// Fresh metrics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a listener's counters under `name`; `direction` is `inbound` or `outbound`.
    pub fn listener(&self, name: &str, direction: &'static str) -> Arc<ListenerMetrics> {
        let m = Arc::new(ListenerMetrics::new(name, direction));
        self.inner
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::clone(&m));
        m
    }

    /// Counts a new SVID taken from the Workload API and records its expiry.
    pub fn svid_updated(&self, not_after: SystemTime) {
        self.inner.svid_updates.fetch_add(1, Ordering::Relaxed);
        let secs = not_after
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.inner.svid_expiry.store(secs, Ordering::Relaxed);
    }

    /// Counts a failed Workload API connection or stream.
    pub fn workload_api_error(&self) {
        self.inner
            .workload_api_errors
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Connections refused for `reason`, summed over every listener.
    pub fn refused_total(&self, reason: Refusal) -> u64 {
        self.listeners()
            .iter()
            .map(|l| l.refused_count(reason))
            .sum()
    }

    /// Plaintext connections, summed over every listener.
    pub fn plaintext_total(&self) -> u64 {
        self.listeners().iter().map(|l| l.plaintext_count()).sum()
    }

    fn listeners(&self) -> Vec<Arc<ListenerMetrics>> {
        self.inner
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let listeners = self.listeners();
        let mut out = String::new();
        let per_listener = |out: &mut String,
                            name: &str,
                            kind: &str,
                            help: &str,
                            value: &dyn Fn(&ListenerMetrics) -> String| {
            family(out, name, kind, help);
            for l in &listeners {
                let _ = writeln!(
                    out,
                    "{name}{{listener=\"{}\",direction=\"{}\"}} {}",
                    escape(&l.name),
                    l.direction,
                    value(l)
                );
            }
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
        per_listener(
            &mut out,
            "proxy_connections_total",
            "counter",
            "TCP connections accepted.",
            &|l| load(&l.accepted),
        );
        per_listener(
            &mut out,
            "proxy_connections_active",
            "gauge",
            "Connections open now.",
            &|l| l.active.load(Ordering::Relaxed).to_string(),
        );
        per_listener(
            &mut out,
            "proxy_plaintext_connections_total",
            "counter",
            "Plaintext connections accepted by permissive inbound listeners.",
            &|l| load(&l.plaintext),
        );
        per_listener(
            &mut out,
            "proxy_idle_timeouts_total",
            "counter",
            "Connections closed after carrying no byte for idle_timeout.",
            &|l| load(&l.idle_closed),
        );
        per_listener(
            &mut out,
            "proxy_received_bytes_total",
            "counter",
            "Bytes received from accepted clients, counted when connections close.",
            &|l| load(&l.bytes_received),
        );
        per_listener(
            &mut out,
            "proxy_sent_bytes_total",
            "counter",
            "Bytes sent to accepted clients, counted when connections close.",
            &|l| load(&l.bytes_sent),
        );

        let name = "proxy_connections_refused_total";
        family(
            &mut out,
            name,
            "counter",
            "Connections closed before carrying data, by reason.",
        );
        for l in &listeners {
            for reason in Refusal::ALL {
                let _ = writeln!(
                    out,
                    "{name}{{listener=\"{}\",direction=\"{}\",reason=\"{}\"}} {}",
                    escape(&l.name),
                    l.direction,
                    reason.label(),
                    l.refused_count(reason)
                );
            }
        }

        let i = &self.inner;
        family(
            &mut out,
            "proxy_svid_updates_total",
            "counter",
            "X509-SVID updates received from the Workload API.",
        );
        let _ = writeln!(out, "proxy_svid_updates_total {}", load(&i.svid_updates));
        family(
            &mut out,
            "proxy_svid_expiry_timestamp_seconds",
            "gauge",
            "Expiry of the current X509-SVID, in seconds since the Unix epoch.",
        );
        let _ = writeln!(
            out,
            "proxy_svid_expiry_timestamp_seconds {}",
            i.svid_expiry.load(Ordering::Relaxed)
        );
        family(
            &mut out,
            "proxy_workload_api_errors_total",
            "counter",
            "Failed Workload API connections and streams.",
        );
        let _ = writeln!(
            out,
            "proxy_workload_api_errors_total {}",
            load(&i.workload_api_errors)
        );
        out
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_counters_render_with_their_labels() {
        let m = ProxyMetrics::new();
        let l = m.listener("db \"main\"", "inbound");
        let guard = l.accepted();
        l.plaintext();
        l.refused(Refusal::Unauthorized);
        l.bytes(10, 20);
        let text = m.render();
        let labels = r#"listener="db \"main\"",direction="inbound""#;
        for line in [
            format!("proxy_connections_total{{{labels}}} 1"),
            format!("proxy_connections_active{{{labels}}} 1"),
            format!("proxy_plaintext_connections_total{{{labels}}} 1"),
            format!("proxy_received_bytes_total{{{labels}}} 10"),
            format!("proxy_sent_bytes_total{{{labels}}} 20"),
            format!("proxy_connections_refused_total{{{labels},reason=\"unauthorized\"}} 1"),
            format!("proxy_connections_refused_total{{{labels},reason=\"limit\"}} 0"),
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
        drop(guard);
        assert_eq!(l.active_count(), 0);
    }
}
