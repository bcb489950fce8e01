//! Side-by-side benchmark on loopback: plain TCP, a mesh proxy pair (outbound + inbound), and a
//! stunnel pair configured for the same mutual TLS with the same SVID.
//!
//! Run it with `scripts/proxy-bench.sh` (release build). It starts a real `mesh-agent` for the
//! identity, two proxy processes (this binary re-executed with `--serve-proxy`), two stunnel
//! processes, and a backend server, then measures for each path:
//!
//! - throughput of large uploads over 1 and 64 connections;
//! - p50 and p99 latency of small request/response round trips on one connection;
//! - new connections per second, each a full mTLS handshake between the two proxies.
//!
//! Arguments: `[--out FILE] [--agent PATH] [--mb N]`.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CHUNK: usize = 64 * 1024;
const LATENCY_ROUNDS: usize = 5000;
const LATENCY_WARMUP: usize = 200;
const LATENCY_SIZE: usize = 64;
const HANDSHAKE_SECONDS: u64 = 3;
/// Cap per client, so plain TCP cannot run out of ephemeral ports in TIME_WAIT.
const HANDSHAKE_MAX_PER_WORKER: u64 = 2500;
const HANDSHAKE_WORKERS: usize = 4;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve-proxy") {
        let path = args
            .get(i + 1)
            .context("--serve-proxy needs a config file")?;
        return serve_proxy(Path::new(path));
    }
    // `cargo bench` passes `--bench`; nothing else is expected from it.
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let out = value("--out").map(PathBuf::from);
    let agent = value("--agent")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/release/mesh-agent"));
    let total_mb: usize = value("--mb").map_or(Ok(256), |v| v.parse())?;
    let report = orchestrate(&agent, total_mb)?;
    println!("{report}");
    if let Some(out) = out {
        std::fs::write(&out, &report).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

/// The proxy process: runs `mesh_agent::proxy` with the given config until killed.
fn serve_proxy(config: &Path) -> Result<()> {
    let config = mesh_agent::proxy::ProxyConfig::load(config)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        mesh_agent::proxy::run(config, shutdown).await
    })?;
    Ok(())
}

/// Child processes killed on drop.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn orchestrate(agent: &Path, total_mb: usize) -> Result<String> {
    if !agent.exists() {
        bail!(
            "agent binary `{}` not found; build it with `cargo build --release -p mesh-agent`",
            agent.display()
        );
    }
    let stunnel = which("stunnel4")
        .or_else(|| which("stunnel"))
        .context("stunnel not found; install it with `apt-get install -y stunnel4`")?;
    let dir = tempfile::TempDir::new()?;
    let d = dir.path();
    let mut children = Children(Vec::new());
    let uid = unsafe_free_uid()?;

    // The identity: a real agent with one entry for this user.
    let socket = d.join("agent.sock");
    let agent_config = d.join("agent.toml");
    std::fs::write(
        &agent_config,
        format!(
            "trust_domain = \"example.org\"\nsocket_path = \"{}\"\ndata_dir = \"{}\"\n\
             admin_addr = \"127.0.0.1:{}\"\nlog_level = \"warn\"\n\n[[entries]]\n\
             spiffe_id = \"spiffe://example.org/bench\"\nselectors = [\"unix:uid:{uid}\"]\n",
            socket.display(),
            d.join("agent-data").display(),
            free_port()?
        ),
    )?;
    children.0.push(
        Command::new(agent)
            .args(["run", "--config"])
            .arg(&agent_config)
            .stdout(Stdio::null())
            .spawn()
            .context("starting mesh-agent")?,
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let context = runtime.block_on(fetch_context(&socket))?;
    let svid = &context.svids[0];
    let pem = |tag: &str, der: &[u8]| pem::encode(&pem::Pem::new(tag, der.to_vec()));
    let certs = mesh_core::x509::split_concatenated_der(&svid.cert_chain)?;
    let bundle = mesh_core::x509::split_concatenated_der(&svid.bundle)?;
    let cert_pem: String = certs.iter().map(|c| pem("CERTIFICATE", c)).collect();
    let bundle_pem: String = bundle.iter().map(|c| pem("CERTIFICATE", c)).collect();
    std::fs::write(d.join("svid.pem"), cert_pem)?;
    std::fs::write(d.join("key.pem"), pem("PRIVATE KEY", &svid.private_key))?;
    std::fs::write(d.join("bundle.pem"), bundle_pem)?;

    // The backend, on its own thread and runtime.
    let backend_listener = StdListener::bind("127.0.0.1:0")?;
    backend_listener.set_nonblocking(true)?;
    let backend = backend_listener.local_addr()?;
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("backend runtime");
        rt.block_on(serve_backend(backend_listener));
    });

    // Our proxy pair.
    let (mesh_in, mesh_out) = (free_port()?, free_port()?);
    let (admin_in, admin_out) = (free_port()?, free_port()?);
    let me = std::env::current_exe()?;
    let proxy_in = d.join("proxy-in.toml");
    std::fs::write(
        &proxy_in,
        format!(
            "socket_path = \"{}\"\nadmin_addr = \"127.0.0.1:{admin_in}\"\n[[inbound]]\n\
             listen = \"127.0.0.1:{mesh_in}\"\nforward = \"{backend}\"\n\
             allow = [\"spiffe://example.org/bench\"]\n",
            socket.display()
        ),
    )?;
    let proxy_out = d.join("proxy-out.toml");
    std::fs::write(
        &proxy_out,
        format!(
            "socket_path = \"{}\"\nadmin_addr = \"127.0.0.1:{admin_out}\"\n[[outbound]]\n\
             listen = \"127.0.0.1:{mesh_out}\"\nconnect = \"127.0.0.1:{mesh_in}\"\n\
             expect = \"spiffe://example.org/bench\"\n",
            socket.display()
        ),
    )?;
    for config in [&proxy_in, &proxy_out] {
        children.0.push(
            Command::new(&me)
                .arg("--serve-proxy")
                .arg(config)
                .env("RUST_LOG", "warn")
                .spawn()
                .context("starting a proxy")?,
        );
    }

    // The stunnel pair: same SVID, same bundle, chain verification required on both ends.
    let (st_in, st_out) = (free_port()?, free_port()?);
    let common = format!(
        "foreground = yes\npid =\nsyslog = no\ndebug = 3\noutput = {}\n\
         socket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n",
        d.join("stunnel.log").display()
    );
    let tls = format!(
        "cert = {}\nkey = {}\nCAfile = {}\nverifyChain = yes\nrequireCert = yes\n",
        d.join("svid.pem").display(),
        d.join("key.pem").display(),
        d.join("bundle.pem").display()
    );
    let st_server = d.join("stunnel-in.conf");
    std::fs::write(
        &st_server,
        format!("{common}[in]\naccept = 127.0.0.1:{st_in}\nconnect = {backend}\n{tls}sessionCacheSize = 1\nsessionCacheTimeout = 1\n"),
    )?;
    let st_client = d.join("stunnel-out.conf");
    std::fs::write(
        &st_client,
        format!("{common}[out]\nclient = yes\naccept = 127.0.0.1:{st_out}\nconnect = 127.0.0.1:{st_in}\n{tls}sessionResume = no\n"),
    )?;
    for config in [&st_server, &st_client] {
        children.0.push(
            Command::new(&stunnel)
                .arg(config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting stunnel")?,
        );
    }

    let targets = [
        ("plain TCP", backend),
        (
            "mesh proxy pair",
            SocketAddr::from(([127, 0, 0, 1], mesh_out)),
        ),
        ("stunnel pair", SocketAddr::from(([127, 0, 0, 1], st_out))),
    ];
    runtime.block_on(async {
        for (name, addr) in &targets {
            wait_serving(*addr)
                .await
                .with_context(|| format!("{name} at {addr} never served"))?;
        }
        anyhow::Ok(())
    })?;

    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let total = total_mb * 1024 * 1024;
    let mut results = Vec::new();
    for (name, addr) in &targets {
        eprintln!("measuring {name}...");
        let r = runtime.block_on(measure(*addr, total))?;
        results.push(r);
    }
    let fmt_all = |f: &dyn Fn(&Measured) -> String| results.iter().map(f).collect::<Vec<_>>();
    rows.push((
        format!("throughput, 1 connection, {total_mb} MiB upload (MiB/s)"),
        fmt_all(&|m| format!("{:.0}", m.throughput_1)),
    ));
    rows.push((
        format!("throughput, 64 connections, {total_mb} MiB total (MiB/s)"),
        fmt_all(&|m| format!("{:.0}", m.throughput_64)),
    ));
    rows.push((
        format!("latency p50, {LATENCY_SIZE} B request/response (µs)"),
        fmt_all(&|m| format!("{:.0}", m.p50_us)),
    ));
    rows.push((
        format!("latency p99, {LATENCY_SIZE} B request/response (µs)"),
        fmt_all(&|m| format!("{:.0}", m.p99_us)),
    ));
    rows.push((
        format!("new connections per second ({HANDSHAKE_WORKERS} clients)"),
        fmt_all(&|m| format!("{:.0}", m.conns_per_sec)),
    ));

    let mut out = String::new();
    let _ = writeln!(
        out,
        "| measurement | {} |",
        targets.map(|t| t.0).join(" | ")
    );
    let _ = writeln!(out, "|---|---:|---:|---:|");
    for (label, values) in rows {
        let _ = writeln!(out, "| {label} | {} |", values.join(" | "));
    }
    let plain = &results[0];
    for (i, (name, _)) in targets.iter().enumerate().skip(1) {
        let added = (results[i].p50_us - plain.p50_us) / 2.0;
        let _ = writeln!(
            out,
            "\nAdded p50 latency per hop, {name}: {added:.0} µs (two hops: outbound and inbound)."
        );
    }
    drop(children);
    Ok(out)
}

/// Finds the uid of this process without `unsafe`, from `/proc/self/status`.
fn unsafe_free_uid() -> Result<u32> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .context("no Uid line in /proc/self/status")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("malformed Uid line")?
        .parse()?)
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.exists())
}

async fn fetch_context(socket: &Path) -> Result<workload_api::X509Context> {
    let endpoint = workload_api::Endpoint::Unix(socket.to_owned());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = async {
            let mut client = workload_api::WorkloadApiClient::connect(&endpoint).await?;
            client.fetch_x509_context().await
        };
        match attempt.await {
            Ok(c) if !c.svids.is_empty() => return Ok(c),
            Ok(_) => {}
            Err(e) if Instant::now() > deadline => bail!("no SVID from the agent: {e}"),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until an echo round trip through `addr` works.
async fn wait_serving(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = async {
            let mut s = TcpStream::connect(addr).await?;
            s.write_all(b"E?").await?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await?;
            std::io::Result::Ok(())
        };
        if tokio::time::timeout(Duration::from_secs(2), attempt)
            .await
            .is_ok_and(|r| r.is_ok())
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The backend: the first byte picks the mode. `S`: read to EOF, then answer the byte count
/// (8 bytes, big endian). `E`: echo until EOF.
async fn serve_backend(listener: StdListener) {
    let listener = TcpListener::from_std(listener).expect("backend listener");
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let mut mode = [0u8; 1];
            if s.read_exact(&mut mode).await.is_err() {
                return;
            }
            let mut buf = vec![0u8; CHUNK];
            if mode[0] == b'S' {
                let mut n: u64 = 0;
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k as u64,
                    }
                }
                let _ = s.write_all(&n.to_be_bytes()).await;
                let _ = s.shutdown().await;
            } else {
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => {
                            if s.write_all(&buf[..k]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        });
    }
}

struct Measured {
    throughput_1: f64,
    throughput_64: f64,
    p50_us: f64,
    p99_us: f64,
    conns_per_sec: f64,
}

async fn measure(addr: SocketAddr, total: usize) -> Result<Measured> {
    let throughput_1 = upload(addr, 1, total).await?;
    let throughput_64 = upload(addr, 64, total).await?;
    let (p50_us, p99_us) = latency(addr).await?;
    let conns_per_sec = connections(addr).await?;
    Ok(Measured {
        throughput_1,
        throughput_64,
        p50_us,
        p99_us,
        conns_per_sec,
    })
}

/// MiB/s of `total` bytes uploaded over `conns` connections at once, until the backend has
/// acknowledged every byte.
async fn upload(addr: SocketAddr, conns: usize, total: usize) -> Result<f64> {
    let per = total / conns;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns {
        tasks.spawn(async move {
            let mut s = TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            s.write_all(b"S").await?;
            let chunk = vec![0xA5u8; CHUNK];
            let mut left = per;
            while left > 0 {
                let n = left.min(CHUNK);
                s.write_all(&chunk[..n]).await?;
                left -= n;
            }
            s.shutdown().await?;
            let mut ack = [0u8; 8];
            s.read_exact(&mut ack).await?;
            let got = u64::from_be_bytes(ack);
            if got != per as u64 {
                bail!("backend received {got} bytes, sent {per}");
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok((per * conns) as f64 / (1024.0 * 1024.0) / secs)
}

/// p50 and p99 in microseconds of small echo round trips on one connection.
async fn latency(addr: SocketAddr) -> Result<(f64, f64)> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(b"E").await?;
    let req = [0x42u8; LATENCY_SIZE];
    let mut resp = [0u8; LATENCY_SIZE];
    let mut samples = Vec::with_capacity(LATENCY_ROUNDS);
    for i in 0..LATENCY_WARMUP + LATENCY_ROUNDS {
        let t = Instant::now();
        s.write_all(&req).await?;
        s.read_exact(&mut resp).await?;
        if i >= LATENCY_WARMUP {
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    samples.sort_by(f64::total_cmp);
    let pick = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    Ok((pick(0.50), pick(0.99)))
}

/// New connections per second, each carrying one echoed byte, from several clients at once.
async fn connections(addr: SocketAddr) -> Result<f64> {
    let until = Instant::now() + Duration::from_secs(HANDSHAKE_SECONDS);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..HANDSHAKE_WORKERS {
        tasks.spawn(async move {
            let mut done = 0u64;
            while Instant::now() < until && done < HANDSHAKE_MAX_PER_WORKER {
                let mut s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                s.write_all(b"Ex").await?;
                let mut b = [0u8; 1];
                s.read_exact(&mut b).await?;
                done += 1;
            }
            anyhow::Ok(done)
        });
    }
    let mut total = 0;
    while let Some(r) = tasks.join_next().await {
        total += r??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}
