//! `mesh-agent api …`: a Workload API client for people, working against any agent's socket.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use futures::StreamExt;
use mesh_core::x509::{certificates_to_pem, split_concatenated_der, X509Svid};
use workload_api::{Endpoint, WorkloadApiClient, X509Context};

/// Where the agent listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/tmp/mesh-agent/public/api.sock";

/// The socket to talk to.
#[derive(Debug, Clone, Args)]
pub struct SocketArgs {
    /// Workload API socket: a path, `unix:///path` or `tcp://IP:port`. Defaults to
    /// $SPIFFE_ENDPOINT_SOCKET, then /tmp/mesh-agent/public/api.sock.
    #[arg(long, global = true, value_name = "PATH_OR_URI")]
    pub socket_path: Option<String>,
}

impl SocketArgs {
    fn endpoint(&self) -> anyhow::Result<Endpoint> {
        match &self.socket_path {
            Some(s) if s.starts_with('/') => Ok(Endpoint::Unix(PathBuf::from(s))),
            Some(s) => Endpoint::parse(s).with_context(|| format!("--socket-path {s}")),
            None => match std::env::var(workload_api::endpoint::ENDPOINT_SOCKET_ENV) {
                Ok(v) if !v.is_empty() => {
                    Endpoint::parse(&v).with_context(|| format!("SPIFFE_ENDPOINT_SOCKET={v}"))
                }
                _ => Ok(Endpoint::Unix(PathBuf::from(DEFAULT_SOCKET))),
            },
        }
    }
}

/// `mesh-agent api …`
#[derive(Debug, Subcommand)]
pub enum ApiCommand {
    /// Fetch an X509-SVID or JWT-SVID.
    #[command(subcommand)]
    Fetch(FetchCommand),
    /// Validate a token.
    #[command(subcommand)]
    Validate(ValidateCommand),
    /// Print every X.509 update the agent streams, until interrupted.
    Watch,
}

/// `mesh-agent api fetch …`
#[derive(Debug, Subcommand)]
pub enum FetchCommand {
    /// Print the caller's X509-SVIDs; with --write, store the default one as PEM files.
    X509 {
        /// Write svid.pem, svid_key.pem (mode 0600) and bundle.pem into this directory.
        #[arg(long, value_name = "DIR")]
        write: Option<PathBuf>,
    },
    /// Print JWT-SVIDs for an audience.
    Jwt {
        /// Audience to put in the token; repeat for several.
        #[arg(long, required = true)]
        audience: Vec<String>,
        /// Ask for this identity only (default: every identity of the caller).
        #[arg(long)]
        spiffe_id: Option<String>,
    },
}

/// `mesh-agent api validate …`
#[derive(Debug, Subcommand)]
pub enum ValidateCommand {
    /// Validate a JWT-SVID through the agent and print its subject and claims.
    Jwt {
        /// The audience the token must carry.
        #[arg(long)]
        audience: String,
        /// The token.
        token: String,
    },
}

/// Runs an `api` subcommand.
///
/// # Errors
///
/// Connection, status and output errors, with context.
pub async fn run(command: ApiCommand, socket: &SocketArgs) -> anyhow::Result<ExitCode> {
    let endpoint = socket.endpoint()?;
    // The client's error already names the endpoint.
    let mut client = WorkloadApiClient::connect(&endpoint).await?;
    match command {
        ApiCommand::Fetch(FetchCommand::X509 { write }) => {
            let context = client
                .fetch_x509_context()
                .await
                .context("FetchX509SVID failed")?;
            print_context(&context)?;
            if let Some(dir) = write {
                write_pem(&dir, &context)?;
                println!(
                    "wrote svid.pem, svid_key.pem and bundle.pem to {}",
                    dir.display()
                );
            }
        }
        ApiCommand::Fetch(FetchCommand::Jwt {
            audience,
            spiffe_id,
        }) => {
            let svids = client
                .fetch_jwt_svids(&audience, spiffe_id.as_deref())
                .await
                .context("FetchJWTSVID failed")?;
            for svid in svids {
                println!("spiffe_id: {}", svid.spiffe_id);
                if !svid.hint.is_empty() {
                    println!("hint: {}", svid.hint);
                }
                println!("token: {}", svid.token);
            }
        }
        ApiCommand::Validate(ValidateCommand::Jwt { audience, token }) => {
            let valid = client
                .validate_jwt_svid(&audience, &token)
                .await
                .context("ValidateJWTSVID failed")?;
            println!("spiffe_id: {}", valid.spiffe_id);
            println!(
                "claims: {}",
                serde_json::to_string_pretty(&valid.claims).context("printing claims")?
            );
        }
        ApiCommand::Watch => {
            let mut updates = client
                .watch_x509_context()
                .await
                .context("FetchX509SVID failed")?;
            while let Some(update) = updates.next().await {
                let context = update.context("X.509 stream failed")?;
                println!("--- update at {}", rfc3339(SystemTime::now()));
                print_context(&context)?;
            }
            bail!("the agent ended the stream");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_context(context: &X509Context) -> anyhow::Result<()> {
    for (i, svid) in context.svids.iter().enumerate() {
        let parsed = X509Svid::from_der(&svid.cert_chain, &svid.private_key)
            .with_context(|| format!("the agent sent an invalid SVID for {}", svid.spiffe_id))?;
        let bundle = split_concatenated_der(&svid.bundle).context("the agent sent a bad bundle")?;
        println!("spiffe_id: {}", svid.spiffe_id);
        if !svid.hint.is_empty() {
            println!("  hint: {}", svid.hint);
        }
        if i == 0 {
            println!("  default: yes");
        }
        println!("  serial: {}", serial_hex(parsed.leaf().as_ref()));
        println!("  not_before: {}", rfc3339(parsed.not_before()));
        println!("  not_after: {}", rfc3339(parsed.not_after()));
        println!("  chain: {} certificate(s)", parsed.chain().len());
        println!("  bundle: {} CA certificate(s)", bundle.len());
    }
    for td in context.federated_bundles.keys() {
        println!("federated bundle: {td}");
    }
    Ok(())
}

fn write_pem(dir: &Path, context: &X509Context) -> anyhow::Result<()> {
    let svid = context
        .svids
        .first()
        .context("the agent sent no SVID to write")?;
    let parsed = X509Svid::from_der(&svid.cert_chain, &svid.private_key)
        .context("the agent sent an invalid SVID")?;
    let bundle = split_concatenated_der(&svid.bundle).context("the agent sent a bad bundle")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let files: [(&str, String, u32); 3] = [
        ("svid_key.pem", parsed.private_key_pem(), 0o600),
        ("svid.pem", parsed.chain_pem(), 0o644),
        ("bundle.pem", certificates_to_pem(&bundle), 0o644),
    ];
    for (name, text, mode) in files {
        let path = dir.join(name);
        mesh_core::fs::atomic_write(&path, text.as_bytes(), mode)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn serial_hex(der: &[u8]) -> String {
    use x509_parser::prelude::FromDer;
    x509_parser::certificate::X509Certificate::from_der(der)
        .map(|(_, cert)| cert.raw_serial_as_string())
        .unwrap_or_else(|_| "?".to_owned())
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{:?}", t.duration_since(UNIX_EPOCH).unwrap_or_default()))
}
