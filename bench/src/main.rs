//! `agent-bench`: benchmarks of the real `mesh-agent` daemon, started as a child process with
//! its own directory, config and socket for every scenario.
//!
//! Scenarios: time from spawn to the first SVID served (fresh data dir and restart),
//! sequential `FetchX509SVID` latency on fresh connections, throughput with many concurrent
//! clients, memory with many entries and open streams, and how fast a CA rotation reaches
//! every open stream. Results are printed as markdown and, with `--out`, written into a
//! document between two marker comments.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};

mod agent;
mod probe;
mod report;
mod scenarios;
mod stats;

/// Benchmark the mesh-agent daemon.
#[derive(Debug, Parser)]
#[command(name = "agent-bench")]
struct Cli {
    /// The mesh-agent binary; default: `mesh-agent` next to this program.
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Scenarios to run (comma-separated); default: all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<Scenario>,
    /// Fresh starts (and as many restarts) to time.
    #[arg(long, default_value_t = 10)]
    startup_runs: usize,
    /// Sequential fetches per latency series.
    #[arg(long, default_value_t = 2000)]
    samples: usize,
    /// Concurrent clients of the throughput scenario.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds each throughput mode runs.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Registration entries of the stream scenario.
    #[arg(long, default_value_t = 1000)]
    entries: usize,
    /// Streams (one connection each) of the stream scenario.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Streams sharing one connection in the stream scenario (1: a connection per stream).
    #[arg(long, default_value_t = 1)]
    streams_per_connection: usize,
    /// CA lifetime in the stream scenario, in seconds; the first authority hands over to its
    /// successor at 5/6 of it after start, so every stream must be open before then.
    #[arg(long, default_value_t = 12)]
    rotation_ca_ttl: u64,
    /// Markdown file to write the results into (between the result markers if it has them).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Startup,
    Latency,
    Throughput,
    Streams,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let binary = match &cli.agent {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .context("cannot find this program's path")?
            .with_file_name("mesh-agent"),
    };
    if !binary.is_file() {
        bail!(
            "mesh-agent binary {} not found; build it with `cargo build --release -p mesh-agent` or pass --agent",
            binary.display()
        );
    }
    raise_fd_limit(cli.streams * 2 + 256)?;

    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let mut results = report::Results::new(&binary, report::Machine::probe());
    let wanted = |s: Scenario| cli.only.is_empty() || cli.only.contains(&s);

    runtime.block_on(async {
        if wanted(Scenario::Startup) {
            eprintln!("startup: {} fresh starts and restarts", cli.startup_runs);
            results.startup = Some(scenarios::startup(&binary, cli.startup_runs).await?);
        }
        if wanted(Scenario::Latency) {
            eprintln!("latency: {} sequential fetches per series", cli.samples);
            results.latency = Some(scenarios::latency(&binary, cli.samples).await?);
        }
        if wanted(Scenario::Throughput) {
            eprintln!(
                "throughput: {} clients, {} s per mode",
                cli.clients, cli.seconds
            );
            results.throughput = Some(
                scenarios::throughput(&binary, cli.clients, Duration::from_secs(cli.seconds))
                    .await?,
            );
        }
        if wanted(Scenario::Streams) {
            eprintln!(
                "streams: {} entries, {} streams, ca_ttl {} s",
                cli.entries, cli.streams, cli.rotation_ca_ttl
            );
            let spec = scenarios::StreamsSpec {
                entries: cli.entries,
                streams: cli.streams,
                per_connection: cli.streams_per_connection,
                ca_ttl: Duration::from_secs(cli.rotation_ca_ttl),
            };
            results.streams = Some(scenarios::streams(&binary, spec).await?);
        }
        anyhow::Ok(())
    })?;

    results.finish();
    let markdown = results.markdown();
    println!("{markdown}");
    if let Some(out) = &cli.out {
        write_into(out, &markdown)?;
        eprintln!("results written to {}", out.display());
    }
    Ok(())
}

/// Replaces what lies between the result markers of `path` with `block`, or writes a new file
/// holding only the block.
fn write_into(path: &Path, block: &str) -> anyhow::Result<()> {
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let text = report::splice(&existing, block);
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Raises the soft limit on open files to at least `wanted` (up to the hard limit); the agent,
/// started as a child, inherits it and needs one descriptor per connection as well.
fn raise_fd_limit(wanted: usize) -> anyhow::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes one rlimit into the valid, exclusively borrowed `limit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        bail!(
            "cannot read the open-file limit: {}",
            std::io::Error::last_os_error()
        );
    }
    let wanted = libc::rlim_t::try_from(wanted).unwrap_or(libc::rlim_t::MAX);
    if limit.rlim_cur >= wanted {
        return Ok(());
    }
    if limit.rlim_max < wanted {
        bail!(
            "the open-file hard limit {} is below the {wanted} this run needs; lower --streams or raise the limit",
            limit.rlim_max
        );
    }
    limit.rlim_cur = wanted;
    // SAFETY: setrlimit(2) only reads the valid, initialized `limit`.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) } != 0 {
        bail!(
            "cannot raise the open-file limit to {wanted}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}
