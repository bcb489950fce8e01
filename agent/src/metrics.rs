//! The agent's Prometheus metrics and their text exposition.
//!
//! A handful of counters, gauges and one histogram, kept in atomics and small maps and rendered
//! in the Prometheus text format (version 0.0.4). The set is small and fixed, so this file
//! writes the format itself rather than pulling in a metrics library.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Upper bounds, in seconds, of the Workload API call duration histogram buckets.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A handle to the agent's metrics; clones share the same values.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    svids_issued: AtomicU64,
    svid_renewals: AtomicU64,
    ca_expiry: AtomicI64,
    open_streams: AtomicI64,
    calls: Mutex<BTreeMap<(String, String), u64>>,
    durations: Mutex<BTreeMap<String, Histogram>>,
}

#[derive(Debug, Default, Clone)]
struct Histogram {
    /// Non-cumulative counts per bucket of [`DURATION_BUCKETS`]; the last slot is `+Inf`.
    counts: [u64; DURATION_BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl Metrics {
    /// Fresh metrics, all zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one X509-SVID issued (`svids_issued_total`).
    pub fn svid_issued(&self) {
        self.inner.svids_issued.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one X509-SVID renewal (`svid_renewals_total`).
    pub fn svid_renewed(&self) {
        self.inner.svid_renewals.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets the expiry of the active CA certificate (`ca_expiry_timestamp_seconds`).
    pub fn set_ca_expiry(&self, not_after: SystemTime) {
        let secs = match not_after.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
        };
        self.inner.ca_expiry.store(secs, Ordering::Relaxed);
    }

    /// Counts a Workload API stream as open (`open_streams`) until the guard is dropped.
    pub fn stream_opened(&self) -> StreamGuard {
        self.inner.open_streams.fetch_add(1, Ordering::Relaxed);
        StreamGuard {
            metrics: self.clone(),
        }
    }

    /// Records one finished Workload API call: `workload_api_calls_total{method,code}` and
    /// `workload_api_call_duration_seconds{method}`. `code` is the gRPC status name, e.g. `OK`.
    pub fn record_call(&self, method: &str, code: &str, elapsed: Duration) {
        *lock(&self.inner.calls)
            .entry((method.to_owned(), code.to_owned()))
            .or_default() += 1;
        let secs = elapsed.as_secs_f64();
        let mut durations = lock(&self.inner.durations);
        let h = durations.entry(method.to_owned()).or_default();
        let slot = DURATION_BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(DURATION_BUCKETS.len());
        h.counts[slot] += 1;
        h.sum += secs;
        h.count += 1;
    }

    /// Streams open now.
    pub fn open_streams(&self) -> i64 {
        self.inner.open_streams.load(Ordering::Relaxed)
    }

    /// Every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let i = &self.inner;
        family(
            &mut out,
            "svids_issued_total",
            "counter",
            "X509-SVIDs issued.",
        );
        let _ = writeln!(
            out,
            "svids_issued_total {}",
            i.svids_issued.load(Ordering::Relaxed)
        );
        family(
            &mut out,
            "svid_renewals_total",
            "counter",
            "X509-SVIDs renewed before expiry.",
        );
        let _ = writeln!(
            out,
            "svid_renewals_total {}",
            i.svid_renewals.load(Ordering::Relaxed)
        );
        family(
            &mut out,
            "ca_expiry_timestamp_seconds",
            "gauge",
            "Expiry of the active CA certificate, in seconds since the Unix epoch.",
        );
        let _ = writeln!(
            out,
            "ca_expiry_timestamp_seconds {}",
            i.ca_expiry.load(Ordering::Relaxed)
        );
        family(
            &mut out,
            "open_streams",
            "gauge",
            "Workload API streams open now.",
        );
        let _ = writeln!(
            out,
            "open_streams {}",
            i.open_streams.load(Ordering::Relaxed)
        );

        family(
            &mut out,
            "workload_api_calls_total",
            "counter",
            "Workload API calls by method and gRPC status code.",
        );
        for ((method, code), n) in lock(&i.calls).iter() {
            let _ = writeln!(
                out,
                "workload_api_calls_total{{method=\"{}\",code=\"{}\"}} {n}",
                escape(method),
                escape(code)
            );
        }

        let name = "workload_api_call_duration_seconds";
        family(
            &mut out,
            name,
            "histogram",
            "Duration of Workload API calls (for streams, until the first response).",
        );
        for (method, h) in lock(&i.durations).iter() {
            let method = escape(method);
            let mut cumulative = 0;
            for (le, n) in DURATION_BUCKETS.iter().zip(h.counts.iter()) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "{name}_bucket{{method=\"{method}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{method=\"{method}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(out, "{name}_sum{{method=\"{method}\"}} {}", h.sum);
            let _ = writeln!(out, "{name}_count{{method=\"{method}\"}} {}", h.count);
        }
        out
    }
}

/// Keeps a stream counted in `open_streams` while alive.
#[derive(Debug)]
pub struct StreamGuard {
    metrics: Metrics,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.metrics
            .inner
            .open_streams
            .fetch_sub(1, Ordering::Relaxed);
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value: backslash, double quote and newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is a single step, so a panic elsewhere cannot leave the
    // data half-changed.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix} in\n{text}"))
    }

    #[test]
    fn counters_and_gauges_render_their_values() {
        let m = Metrics::new();
        m.svid_issued();
        m.svid_issued();
        m.svid_renewed();
        m.set_ca_expiry(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let text = m.render();
        assert_eq!(line(&text, "svids_issued_total "), "svids_issued_total 2");
        assert_eq!(line(&text, "svid_renewals_total "), "svid_renewals_total 1");
        assert_eq!(
            line(&text, "ca_expiry_timestamp_seconds "),
            "ca_expiry_timestamp_seconds 1700000000"
        );
        assert!(text.contains("# TYPE svids_issued_total counter\n"));
        assert!(text.contains("# TYPE open_streams gauge\n"));
        assert!(text.contains("# TYPE workload_api_call_duration_seconds histogram\n"));
    }

    #[test]
    fn open_streams_follows_guards() {
        let m = Metrics::new();
        let a = m.stream_opened();
        let b = m.clone().stream_opened();
        assert_eq!(line(&m.render(), "open_streams "), "open_streams 2");
        drop(a);
        drop(b);
        assert_eq!(m.open_streams(), 0);
    }

    #[test]
    fn calls_are_counted_by_method_and_code_with_a_cumulative_histogram() {
        let m = Metrics::new();
        m.record_call("FetchX509SVID", "OK", Duration::from_millis(3));
        m.record_call("FetchX509SVID", "OK", Duration::from_millis(30));
        m.record_call("FetchX509SVID", "PermissionDenied", Duration::from_secs(20));
        let text = m.render();
        assert_eq!(
            line(
                &text,
                "workload_api_calls_total{method=\"FetchX509SVID\",code=\"OK\"}"
            ),
            "workload_api_calls_total{method=\"FetchX509SVID\",code=\"OK\"} 2"
        );
        let b = "workload_api_call_duration_seconds_bucket{method=\"FetchX509SVID\",le=";
        assert!(line(&text, &format!("{b}\"0.0025\"}}")).ends_with(" 0"));
        assert!(line(&text, &format!("{b}\"0.005\"}}")).ends_with(" 1"));
        assert!(line(&text, &format!("{b}\"0.05\"}}")).ends_with(" 2"));
        assert!(line(&text, &format!("{b}\"10\"}}")).ends_with(" 2"));
        assert!(line(&text, &format!("{b}\"+Inf\"}}")).ends_with(" 3"));
        assert!(line(&text, "workload_api_call_duration_seconds_count{").ends_with(" 3"));
        let sum: f64 = line(&text, "workload_api_call_duration_seconds_sum{")
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - 20.033).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        m.record_call("a\"b\\c\nd", "OK", Duration::ZERO);
        let text = m.render();
        assert!(text.contains(r#"method="a\"b\\c\nd""#), "{text}");
    }
}
