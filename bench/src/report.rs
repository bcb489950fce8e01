//! The results as markdown, with the machine they were measured on and a verdict per target.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::scenarios::{Latency, Startup, Streams, Throughput};
use crate::stats::{ms, Summary};

/// Start of the generated block in a document.
pub const BEGIN_MARKER: &str = "<!-- agent-bench results: begin -->";
/// End of the generated block in a document.
pub const END_MARKER: &str = "<!-- agent-bench results: end -->";

const TARGET_FIRST_SVID: Duration = Duration::from_millis(50);
const TARGET_FRESH_P99: Duration = Duration::from_millis(2);
/// The "30 MB", read as decimal megabytes (28.6 MiB), the stricter reading.
const TARGET_RSS_KIB: u64 = 30_000_000 / 1024;
const TARGET_ROTATION: Duration = Duration::from_millis(200);

/// Where the figures were measured.
#[derive(Debug)]
pub struct Machine {
    cpus: usize,
    cpu_model: String,
    kernel: String,
    memory: String,
    load_at_start: String,
    load_at_end: String,
    date: String,
    commit: String,
    command: String,
}

impl Machine {
    /// Reads the machine's description from `/proc` and the clock.
    pub fn probe() -> Self {
        let cpuinfo = read("/proc/cpuinfo");
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, v)| v.trim().to_owned());
        let memory = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or_else(
                || "unknown".to_owned(),
                |kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0),
            );
        let commit = std::process::Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map_or_else(
                || "unknown".to_owned(),
                |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
            );
        let args: Vec<String> = std::env::args().skip(1).collect();
        Self {
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            cpu_model,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            memory,
            load_at_start: load_average(),
            load_at_end: String::new(),
            date: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            commit,
            command: format!("agent-bench {}", args.join(" ")).trim().to_owned(),
        }
    }
}

/// Every scenario's result; `None` for scenarios not run.
#[derive(Debug)]
pub struct Results {
    binary: PathBuf,
    machine: Machine,
    /// Scenario 1.
    pub startup: Option<Startup>,
    /// Scenario 2.
    pub latency: Option<Latency>,
    /// Scenario 3.
    pub throughput: Option<[Throughput; 2]>,
    /// Scenarios 4 and 5.
    pub streams: Option<Streams>,
}

impl Results {
    /// Empty results for `binary` on `machine`.
    pub fn new(binary: &Path, machine: Machine) -> Self {
        Self {
            binary: binary.to_owned(),
            machine,
            startup: None,
            latency: None,
            throughput: None,
            streams: None,
        }
    }

    /// Records the end of the run (the load average then).
    pub fn finish(&mut self) {
        self.machine.load_at_end = load_average();
    }

    /// The block of markdown with the results, between the markers.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(out, "{BEGIN_MARKER}");
        let _ = writeln!(
            out,
            "Measured {} on {} CPUs ({}), Linux {}, {} RAM, commit `{}`; load average (1/5/15 min) \
             {} at the start and {} at the end. Agent binary: `{}`.\n",
            m.date,
            m.cpus,
            m.cpu_model,
            m.kernel,
            m.memory,
            m.commit,
            m.load_at_start,
            m.load_at_end,
            self.binary.display()
        );
        let _ = writeln!(
            out,
            "Command: `scripts/bench-agent.sh` (which builds both release binaries and runs `{}`).\n",
            m.command
        );
        self.summary(&mut out);
        self.details(&mut out);
        let _ = writeln!(out, "{END_MARKER}");
        out
    }

    fn summary(&self, out: &mut String) {
        let _ = writeln!(out, "### Targets\n");
        let _ = writeln!(out, "| Measure | Result | Target | Verdict |");
        let _ = writeln!(out, "|---|---|---|---|");
        if let Some(s) = &self.startup {
            for (what, samples) in [("fresh data dir", &s.fresh), ("restart", &s.restart)] {
                if let Some(sum) = Summary::of(samples) {
                    let _ = writeln!(
                        out,
                        "| First SVID after spawn, {what} (median / max of {}) | {} / {} | ≤ 50 ms | {} |",
                        sum.count,
                        ms(sum.p50),
                        ms(sum.max),
                        verdict_median_max(sum, TARGET_FIRST_SVID)
                    );
                }
            }
        }
        if let Some(l) = &self.latency {
            let _ = writeln!(
                out,
                "| FetchX509SVID p99, new connection per call, sequential ({} calls) | {} (p50 {}) | < 2 ms | {} |",
                l.fresh.count,
                ms(l.fresh.p99),
                ms(l.fresh.p50),
                verdict(l.fresh.p99 < TARGET_FRESH_P99)
            );
        }
        if let Some([reused, fresh]) = &self.throughput {
            let _ = writeln!(
                out,
                "| Fetches per second, {} clients: long-lived connections / new connection per fetch | {:.0} / {:.0} | none set | - |",
                reused.clients,
                reused.rate(),
                fresh.rate()
            );
        }
        if let Some(s) = &self.streams {
            let _ = writeln!(
                out,
                "| Agent memory with {} entries and {} open streams (VmRSS / VmHWM) | {} / {} | < 30 MB (28.6 MiB) RSS | {} |",
                s.spec.entries,
                s.spec.streams,
                mib(s.with_streams.rss_kib),
                mib(s.with_streams.hwm_kib),
                verdict(s.with_streams.rss_kib < TARGET_RSS_KIB)
            );
            let (value, ok) = match (s.since_activation(), s.spread()) {
                (Some(since), _) => (
                    format!("{} after activation", ms(since)),
                    since <= TARGET_ROTATION,
                ),
                (None, Some(spread)) => (
                    format!(
                        "{} first to last receipt (activation not logged)",
                        ms(spread)
                    ),
                    spread <= TARGET_ROTATION,
                ),
                (None, None) => ("no stream reached".to_owned(), false),
            };
            let complete = s.receipts.len() == s.spec.streams;
            let _ = writeln!(
                out,
                "| CA rotation reaching all {} streams (last receipt) | {value}{} | ≤ 200 ms | {} |",
                s.spec.streams,
                if complete {
                    String::new()
                } else {
                    format!(", only {} reached", s.receipts.len())
                },
                verdict(ok && complete)
            );
        }
        let _ = writeln!(out);
    }

    fn details(&self, out: &mut String) {
        if let Some(s) = &self.startup {
            let _ = writeln!(
                out,
                "### 1. Spawn to first SVID (one entry, probe every 0.2 ms on a new connection)\n"
            );
            let _ = writeln!(out, "| Data dir | Runs | Min | Median | Max |");
            let _ = writeln!(out, "|---|---|---|---|---|");
            for (what, samples) in [
                ("fresh (CA created)", &s.fresh),
                ("restart (CA loaded)", &s.restart),
            ] {
                if let Some(sum) = Summary::of(samples) {
                    let _ = writeln!(
                        out,
                        "| {what} | {} | {} | {} | {} |",
                        sum.count,
                        ms(sum.min),
                        ms(sum.p50),
                        ms(sum.max)
                    );
                }
            }
            let _ = writeln!(out);
        }
        if let Some(l) = &self.latency {
            let _ = writeln!(out, "### 2. Sequential FetchX509SVID latency (one entry)\n");
            let _ = writeln!(
                out,
                "| Connection | Calls | p50 | p90 | p99 | Max | Mean | Agent CPU per call |"
            );
            let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
            for (what, sum, cpu) in [
                (
                    "new per call (connect + HTTP/2 handshake + first message)",
                    &l.fresh,
                    l.fresh_cpu,
                ),
                (
                    "one connection, new stream per call",
                    &l.reused,
                    l.reused_cpu,
                ),
            ] {
                let _ = writeln!(
                    out,
                    "| {what} | {} | {} | {} | {} | {} | {} | {} |",
                    sum.count,
                    ms(sum.p50),
                    ms(sum.p90),
                    ms(sum.p99),
                    ms(sum.max),
                    ms(sum.mean),
                    us(cpu)
                );
            }
            let _ = writeln!(out);
        }
        if let Some(runs) = &self.throughput {
            let _ = writeln!(
                out,
                "### 3. Throughput ({} concurrent clients in the bench process, sharing the CPUs with the agent)\n",
                runs[0].clients
            );
            let _ = writeln!(
                out,
                "| Connections | Duration | Fetches | Fetches/s | Errors | p50 | p99 | Agent CPU (cores) | Agent CPU per fetch |"
            );
            let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
            for t in runs {
                let what = if t.fresh_connections {
                    "new connection per fetch"
                } else {
                    "one long-lived connection per client"
                };
                let _ = writeln!(
                    out,
                    "| {what} | {:.1} s | {} | {:.0} | {} | {} | {} | {:.2} | {} |",
                    t.elapsed.as_secs_f64(),
                    t.fetches,
                    t.rate(),
                    t.errors,
                    ms(t.latency.p50),
                    ms(t.latency.p99),
                    t.agent_cpu.as_secs_f64() / t.elapsed.as_secs_f64(),
                    us(t.agent_cpu / u32::try_from(t.fetches.max(1)).unwrap_or(u32::MAX))
                );
            }
            let _ = writeln!(out);
        }
        if let Some(s) = &self.streams {
            self.stream_details(s, out);
        }
    }

    fn stream_details(&self, s: &Streams, out: &mut String) {
        let _ = writeln!(
            out,
            "### 4. Agent memory ({} entries: one for the bench's uid, the rest for other uids, all pre-issued; {})\n",
            s.spec.entries,
            if s.spec.per_connection <= 1 {
                "one connection per stream".to_owned()
            } else {
                format!("{} streams per connection", s.spec.per_connection)
            }
        );
        let _ = writeln!(out, "| State | VmRSS | VmHWM | Threads |");
        let _ = writeln!(out, "|---|---|---|---|");
        let mut rows = vec![
            ("idle, 1 s after start".to_owned(), s.idle),
            (
                format!("{} FetchX509SVID streams open", s.spec.streams),
                s.with_streams,
            ),
        ];
        if let Some(after) = s.after_rotation {
            rows.push((
                "0.5 s after the rotation reached every stream".to_owned(),
                after,
            ));
        }
        for (what, m) in rows {
            let _ = writeln!(
                out,
                "| {what} | {} | {} | {} |",
                mib(m.rss_kib),
                mib(m.hwm_kib),
                m.threads
            );
        }
        let _ = writeln!(
            out,
            "\nWith {} entries the first SVID came {} after spawn (fresh data dir; the agent issues \
             for its entries in the background once the socket is bound); opening the {} streams took {}.\n",
            s.spec.entries,
            ms(s.first_svid),
            s.spec.streams,
            ms(s.open_time)
        );

        let _ = writeln!(
            out,
            "### 5. CA rotation fan-out (ca_ttl = svid_ttl = {} s, {} streams)\n",
            s.spec.ca_ttl.as_secs(),
            s.spec.streams
        );
        let _ = writeln!(out, "| Measure | Value |");
        let _ = writeln!(out, "|---|---|");
        let since_spawn = s
            .activated_at
            .and_then(|a| a.duration_since(s.spawned_at).ok());
        let rows = [
            (
                "activation logged (\"X.509 authority activated\"), after spawn",
                since_spawn.map(|d| format!("{:.3} s", d.as_secs_f64())),
            ),
            (
                "first stream received a new-CA SVID, after activation",
                s.first_since_activation().map(ms),
            ),
            (
                "last stream received a new-CA SVID, after activation",
                s.since_activation().map(ms),
            ),
            ("last receipt − first receipt", s.spread().map(ms)),
            (
                "streams reached",
                Some(format!("{} of {}", s.receipts.len(), s.spec.streams)),
            ),
            (
                "old-CA renewals a stream received before (min–max)",
                match (
                    s.messages_before_new.iter().min(),
                    s.messages_before_new.iter().max(),
                ) {
                    (Some(lo), Some(hi)) => Some(format!("{lo}–{hi}")),
                    _ => None,
                },
            ),
        ];
        for (what, value) in rows {
            let _ = writeln!(
                out,
                "| {what} | {} |",
                value.unwrap_or_else(|| "n/a".to_owned())
            );
        }
        if !s.lost.is_empty() {
            let mut reasons = s.lost.clone();
            reasons.sort();
            reasons.dedup();
            let _ = writeln!(
                out,
                "\n{} streams were lost: {}",
                s.lost.len(),
                reasons.join("; ")
            );
        }
        let _ = writeln!(out);
    }
}

/// `existing` with the text between the markers replaced by `block` (which holds the markers);
/// just `block` when `existing` has no markers.
pub fn splice(existing: &str, block: &str) -> String {
    let begin = existing.find(BEGIN_MARKER);
    let end = existing.find(END_MARKER);
    match (begin, end) {
        (Some(b), Some(e)) if b < e => {
            let after = &existing[e + END_MARKER.len()..];
            let after = after.strip_prefix('\n').unwrap_or(after);
            format!("{}{block}{after}", &existing[..b])
        }
        _ => block.to_owned(),
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

fn verdict_median_max(sum: Summary, target: Duration) -> &'static str {
    if sum.max <= target {
        "met (every run)"
    } else if sum.p50 <= target {
        "median met, **max missed**"
    } else {
        "**missed**"
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn load_average() -> String {
    read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_replaces_only_the_marked_block() {
        let doc = format!("intro\n{BEGIN_MARKER}\nold\n{END_MARKER}\nanalysis\n");
        let block = format!("{BEGIN_MARKER}\nnew\n{END_MARKER}\n");
        assert_eq!(
            splice(&doc, &block),
            format!("intro\n{BEGIN_MARKER}\nnew\n{END_MARKER}\nanalysis\n")
        );
        assert_eq!(splice("no markers", &block), block);
    }

    #[test]
    fn verdicts_distinguish_median_and_max() {
        let at = |p50, max| Summary {
            count: 2,
            min: Duration::ZERO,
            p50: Duration::from_millis(p50),
            p90: Duration::ZERO,
            p99: Duration::ZERO,
            max: Duration::from_millis(max),
            mean: Duration::ZERO,
        };
        assert_eq!(
            verdict_median_max(at(10, 40), TARGET_FIRST_SVID),
            "met (every run)"
        );
        assert!(verdict_median_max(at(10, 60), TARGET_FIRST_SVID).starts_with("median met"));
        assert_eq!(
            verdict_median_max(at(60, 70), TARGET_FIRST_SVID),
            "**missed**"
        );
    }
}
