//! `mesh-agent`: the per-node SPIFFE agent and its command-line tools.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use mesh_agent::admin;
use mesh_agent::attest::{process_start_time, Attestation, Attestor};
use mesh_agent::config::{
    format_duration, parse_duration, Config, ConfigArgs, ConfigLoader, KubernetesConfig, Overrides,
};
use mesh_agent::k8s::{KubernetesAttestor, PodContainer};
use mesh_agent::logging::{self, LogFormat};
use mesh_agent::registration::{Explanation, RuleSource};
use tokio::signal::unix::SignalKind;

mod api;

/// Large blocks in mappings of their own, so that idle connections' buffers cost only the
/// pages they use (see `mesh_agent::alloc`).
#[global_allocator]
static ALLOCATOR: mesh_agent::alloc::MapLargeBlocks = mesh_agent::alloc::MapLargeBlocks;

#[derive(Debug, Parser)]
#[command(
    name = "mesh-agent",
    version,
    about = "Per-node agent serving SPIFFE identities"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent: open or create the CA and serve the Workload API.
    Run {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Run the mTLS sidecar proxy described by a config file.
    Proxy {
        /// The proxy's TOML config file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Log format: text or json.
        #[arg(long, default_value = "text")]
        log_format: LogFormat,
        /// Log level or filter, e.g. info.
        #[arg(long, default_value = "info")]
        log_level: String,
    },
    /// Talk to a Workload API socket (this agent's or any other).
    Api {
        #[command(flatten)]
        socket: api::SocketArgs,
        #[command(subcommand)]
        command: api::ApiCommand,
    },
    /// Show a process's selectors, which entries match it and, for those that do not, what it
    /// lacks.
    Explain {
        /// The process to explain.
        #[arg(long)]
        pid: u32,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Validate a config file (with MESH_AGENT_* variables applied) and print every problem.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Exit 0 if the agent's /ready endpoint answers 200, 1 otherwise.
    Healthcheck {
        #[command(flatten)]
        config: ConfigArgs,
        /// How long to wait for an answer, e.g. `5s`.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        timeout: std::time::Duration,
    },
}

fn main() -> ExitCode {
    mesh_agent::alloc::tune_malloc();
    match Cli::parse().command {
        Command::Run { config } => run_agent(&config),
        Command::Proxy {
            config,
            log_format,
            log_level,
        } => run_proxy(&config, log_format, &log_level),
        Command::Api { socket, command } => tool(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?
                .block_on(api::run(command, &socket))
        }),
        Command::Explain { pid, json, config } => tool(|| explain(pid, &config, json)),
        Command::CheckConfig { file } => tool(|| check_config(&file)),
        Command::Healthcheck { config, timeout } => tool(|| healthcheck(&config, timeout)),
    }
}

/// Runs a one-shot tool: results on stdout, only warnings and errors in the log, errors with
/// their causes on stderr.
fn tool(f: impl FnOnce() -> anyhow::Result<ExitCode>) -> ExitCode {
    let _ = logging::init(LogFormat::Text, "warn");
    match f() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", describe(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, skipping a cause that the message before it already quotes.
fn describe(error: &anyhow::Error) -> String {
    let mut out = error.to_string();
    let mut last = out.clone();
    for cause in error.chain().skip(1) {
        let text = cause.to_string();
        if !last.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        last = text;
    }
    out
}

/// `mesh-agent run`: logs as configured, stops on SIGTERM or SIGINT.
fn run_agent(args: &ConfigArgs) -> ExitCode {
    let loader = args.loader();
    let config = match loader.load() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(error) = logging::init(config.log_format, &config.log_level) {
        eprintln!("error: {error}");
        return ExitCode::FAILURE;
    }
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let result = runtime.block_on(mesh_agent::run::run(config, loader, shutdown_signal()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `mesh-agent proxy`: the sidecar; stops on SIGTERM or SIGINT.
fn run_proxy(path: &Path, log_format: LogFormat, log_level: &str) -> ExitCode {
    if let Err(error) = logging::init(log_format, log_level) {
        eprintln!("error: {error}");
        return ExitCode::FAILURE;
    }
    let config = match mesh_agent::proxy::config::ProxyConfig::load(path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(mesh_agent::proxy::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// A multi-threaded runtime for the daemons, or `None` after printing why it cannot start.
fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Runtime::new() {
        Ok(rt) => Some(rt),
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            None
        }
    }
}

/// Completes on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(error) => {
            tracing::error!(%error, "cannot watch SIGTERM; stop with SIGINT");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

fn explain(pid: u32, args: &ConfigArgs, json: bool) -> anyhow::Result<ExitCode> {
    let config = args.loader().load()?;
    let mut attestation = Attestor::new(config.max_exe_hash_bytes)
        .attest_pid(pid)
        .with_context(|| format!("cannot attest process {pid}"))?;
    let pod = match &config.kubernetes {
        Some(kubernetes) => Some(
            attest_pod(pid, kubernetes)
                .with_context(|| format!("cannot attest process {pid} as a pod container"))?,
        ),
        None => None,
    };
    if let Some(Some(pod)) = &pod {
        attestation.selectors.extend(pod.selectors());
    }
    // The pod was looked up after the Unix attestation; it is the same process only if the
    // pid still has the same start time.
    if process_start_time(pid).ok() != Some(attestation.start_time) {
        bail!("process {pid} exited or its pid was reused during attestation");
    }
    let explanation = config.registry().explain(&attestation.selectors);

    if json {
        let out = serde_json::json!({
            "process": attestation,
            "kubernetes": config.kubernetes.is_some(),
            "pod": pod.flatten(),
            "config": config.source,
            "explanation": explanation,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!(
            "{}",
            render_explanation(&attestation, pod.as_ref(), &config, &explanation)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The pod container process `pid` runs in, asking the kubelet configured in `kubernetes`.
fn attest_pod(pid: u32, kubernetes: &KubernetesConfig) -> anyhow::Result<Option<PodContainer>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let attestor = KubernetesAttestor::from_config(kubernetes)?;
        Ok(attestor.attest(pid).await?)
    })
}

/// `pod` is `None` when Kubernetes attestation is off, `Some(None)` when the process runs in
/// no pod container.
fn render_explanation(
    a: &Attestation,
    pod: Option<&Option<PodContainer>>,
    config: &Config,
    ex: &Explanation,
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "process {} (uid {}, gid {}, start time {})",
        a.pid, a.uid, a.gid, a.start_time
    );
    if let Some(path) = &a.exe_path {
        let _ = writeln!(out, "executable: {}", path.display());
    }
    if let Some(note) = &a.exe_note {
        let _ = writeln!(out, "note: {note}");
    }
    match pod {
        Some(Some(p)) => {
            let _ = writeln!(
                out,
                "pod: {}/{} (uid {}), container {} ({})",
                p.namespace, p.pod_name, p.pod_uid, p.container_name, p.container_id
            );
        }
        Some(None) => {
            let _ = writeln!(out, "pod: none (the process runs in no pod container)");
        }
        None => {}
    }
    let _ = writeln!(out, "\nselectors:");
    for s in &ex.selectors {
        let _ = writeln!(out, "  {s}");
    }

    let source = config
        .source
        .as_ref()
        .map_or_else(|| "no config file".to_owned(), |p| p.display().to_string());
    let _ = writeln!(
        out,
        "\nentries ({source}, trust domain {}):",
        config.trust_domain
    );
    if ex.entries.is_empty() {
        let _ = writeln!(out, "  (none configured)");
    }
    for v in &ex.entries {
        let what = match v.source {
            RuleSource::Entry { index } => match config.entry_lines.get(index) {
                Some(line) => format!("entry at line {line}"),
                None => format!("entry #{}", index + 1),
            },
            RuleSource::UidTemplate => "uid template".to_owned(),
            RuleSource::PodTemplate => "pod template".to_owned(),
        };
        let pattern = match v.source {
            RuleSource::PodTemplate => &ex.pod_template,
            _ => &ex.uid_template,
        };
        let id = v
            .spiffe_id
            .as_ref()
            .map_or_else(|| pattern.clone().unwrap_or_default(), ToString::to_string);
        let verdict = match (v.matched, v.default) {
            (true, true) => "MATCH (default)".to_owned(),
            (true, false) => "MATCH".to_owned(),
            (false, _) => format!("no match, missing: {}", v.missing.join(", ")),
        };
        let _ = writeln!(out, "  {id}  [{what}]\n    {verdict}");
    }

    let granted = ex.granted();
    if granted.is_empty() {
        let _ = writeln!(out, "\nno identity: no entry matches this process");
    } else {
        let list: Vec<String> = granted.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "\nidentities: {}", list.join(", "));
    }
    out
}

fn check_config(file: &Path) -> anyhow::Result<ExitCode> {
    let loader = ConfigLoader::new(Some(file.to_owned()), Overrides::flags());
    match loader.load() {
        Ok(config) => {
            let registry = config.registry();
            let entries = match &config.entries {
                Some(e) => format!("{} entries", e.len()),
                None if registry.pod_template_domain().is_some() => format!(
                    "no entries: every pod gets spiffe://{}/ns/NAMESPACE/sa/SERVICE_ACCOUNT",
                    config.trust_domain
                ),
                None => format!(
                    "no entries: every local user N gets spiffe://{}/unix/uid/N",
                    config.trust_domain
                ),
            };
            println!(
                "{}: ok (trust domain {}, {entries}, svid_ttl {}, socket {})",
                file.display(),
                config.trust_domain,
                format_duration(config.svid_ttl),
                config.socket_path.display()
            );
            if !loader.env.is_empty() {
                println!("note: MESH_AGENT_* environment variables were applied");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("{error}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn healthcheck(args: &ConfigArgs, timeout: std::time::Duration) -> anyhow::Result<ExitCode> {
    let config = args.loader().load()?;
    let addr: SocketAddr = config.admin_addr;
    let (status, body) = admin::probe(addr, "/ready", timeout)?;
    match status {
        200 => {
            println!("ready");
            Ok(ExitCode::SUCCESS)
        }
        503 => {
            println!("not ready");
            Ok(ExitCode::FAILURE)
        }
        other => bail!(
            "unexpected status {other} from {addr}/ready: {}",
            body.trim()
        ),
    }
}
