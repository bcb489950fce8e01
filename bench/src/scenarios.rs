//! The measurements, one function per scenario; each starts its own agent(s) in its own
//! directory.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use futures::{StreamExt, TryStreamExt};
use tokio::sync::{mpsc, Barrier};
use workload_api::{Endpoint, WorkloadApiClient};

use crate::agent::{Agent, AgentSpec, Memory, Workdir};
use crate::probe::{self, SignerCheck};
use crate::stats::Summary;

/// Pause between two attempts of the start-up probe.
const POLL_INTERVAL: Duration = Duration::from_micros(200);

/// Longest an agent may take to serve its first SVID.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Streams opened at the same time while setting up the stream scenario.
const OPEN_CONCURRENCY: usize = 32;

/// Time from spawn to first SVID, fresh and restarted.
#[derive(Debug)]
pub struct Startup {
    /// With an empty data dir (the CA is created).
    pub fresh: Vec<Duration>,
    /// With the data dir of the previous run (the CA is loaded).
    pub restart: Vec<Duration>,
}

/// Measures `runs` fresh starts and `runs` restarts of an agent with one entry.
///
/// # Errors
///
/// When an agent fails to start or serve.
pub async fn startup(binary: &Path, runs: usize) -> anyhow::Result<Startup> {
    let mut result = Startup {
        fresh: Vec::with_capacity(runs),
        restart: Vec::with_capacity(runs),
    };
    for _ in 0..runs {
        let dir = Workdir::new(&AgentSpec::default())?;
        let mut agent = dir.start(binary)?;
        result.fresh.push(first_svid(&mut agent).await?);
        agent.stop()?;

        let mut agent = dir.start(binary)?;
        result.restart.push(first_svid(&mut agent).await?);
        agent.stop()?;
    }
    Ok(result)
}

/// Polls the agent's socket with `FetchX509SVID` on fresh connections until one succeeds;
/// returns the time since the agent was spawned.
///
/// # Errors
///
/// When the agent exits or does not serve within [`START_TIMEOUT`].
pub async fn first_svid(agent: &mut Agent) -> anyhow::Result<Duration> {
    let endpoint = Endpoint::Unix(agent.socket.clone());
    loop {
        match probe::fetch_fresh(&endpoint).await {
            Ok(context) if !context.svids.is_empty() => return Ok(agent.spawned.elapsed()),
            Ok(_) => bail!("the agent answered without an SVID"),
            Err(_) => {}
        }
        if let Some(why) = agent.exited() {
            bail!(
                "{why} before serving; its log ends:\n{}",
                agent.log_tail(20)
            );
        }
        if agent.spawned.elapsed() > START_TIMEOUT {
            bail!(
                "no SVID within {START_TIMEOUT:?} of start; log ends:\n{}",
                agent.log_tail(20)
            );
        }
        // A blocking sleep on purpose: tokio's timer rounds up to whole milliseconds, and
        // nothing else runs on this runtime during the probe.
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Sequential `FetchX509SVID` latency.
#[derive(Debug)]
pub struct Latency {
    /// New connection (socket connect + HTTP/2 handshake) per call.
    pub fresh: Summary,
    /// Agent CPU time per fresh-connection call.
    pub fresh_cpu: Duration,
    /// One connection, a new stream per call.
    pub reused: Summary,
    /// Agent CPU time per reused-connection call.
    pub reused_cpu: Duration,
}

/// Measures `samples` fetches on fresh connections, then `samples` on one connection.
///
/// # Errors
///
/// When the agent fails or a call fails.
pub async fn latency(binary: &Path, samples: usize) -> anyhow::Result<Latency> {
    let dir = Workdir::new(&AgentSpec::default())?;
    let mut agent = dir.start(binary)?;
    first_svid(&mut agent).await?;
    let endpoint = Endpoint::Unix(agent.socket.clone());

    // Warm-up: the agent's first calls fill its executable-digest cache and its allocator.
    for _ in 0..samples.min(100) {
        probe::fetch_fresh(&endpoint).await?;
    }

    let cpu_before = agent.cpu_time()?;
    let mut fresh = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        probe::fetch_fresh(&endpoint).await?;
        fresh.push(started.elapsed());
    }
    let fresh_cpu = per_call(agent.cpu_time()? - cpu_before, samples);

    let mut client = WorkloadApiClient::connect(&endpoint).await?;
    client.fetch_x509_context().await?;
    let cpu_before = agent.cpu_time()?;
    let mut reused = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        client.fetch_x509_context().await?;
        reused.push(started.elapsed());
    }
    let reused_cpu = per_call(agent.cpu_time()? - cpu_before, samples);
    drop(client);
    agent.stop()?;

    Ok(Latency {
        fresh: Summary::of(&fresh).context("no samples")?,
        fresh_cpu,
        reused: Summary::of(&reused).context("no samples")?,
        reused_cpu,
    })
}

/// Fetches per second with many concurrent clients.
#[derive(Debug)]
pub struct Throughput {
    /// Whether every fetch used a new connection.
    pub fresh_connections: bool,
    /// Concurrent clients.
    pub clients: usize,
    /// Successful fetches.
    pub fetches: usize,
    /// Failed fetches.
    pub errors: usize,
    /// How long the clients ran.
    pub elapsed: Duration,
    /// Latency of each fetch under this load.
    pub latency: Summary,
    /// Agent CPU time during the run.
    pub agent_cpu: Duration,
}

impl Throughput {
    /// Successful fetches per second.
    pub fn rate(&self) -> f64 {
        self.fetches as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs `clients` clients for `duration`, first each on its own long-lived connection, then
/// each opening a new connection per fetch.
///
/// # Errors
///
/// When the agent fails or no fetch succeeds.
pub async fn throughput(
    binary: &Path,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<[Throughput; 2]> {
    let dir = Workdir::new(&AgentSpec::default())?;
    let mut agent = dir.start(binary)?;
    first_svid(&mut agent).await?;
    let endpoint = Endpoint::Unix(agent.socket.clone());
    let reused = load(&agent, &endpoint, clients, duration, false).await?;
    let fresh = load(&agent, &endpoint, clients, duration, true).await?;
    agent.stop()?;
    Ok([reused, fresh])
}

async fn load(
    agent: &Agent,
    endpoint: &Endpoint,
    clients: usize,
    duration: Duration,
    fresh_connections: bool,
) -> anyhow::Result<Throughput> {
    // Every client connects first, then all start together.
    let start = Arc::new(Barrier::new(clients + 1));
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let endpoint = endpoint.clone();
        let start = Arc::clone(&start);
        let mut client = if fresh_connections {
            None
        } else {
            Some(WorkloadApiClient::connect(&endpoint).await?)
        };
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut errors = 0usize;
            start.wait().await;
            let end = Instant::now() + duration;
            while Instant::now() < end {
                let started = Instant::now();
                let result = match client.as_mut() {
                    Some(client) => client.fetch_x509_context().await,
                    None => probe::fetch_fresh(&endpoint).await,
                };
                match result {
                    Ok(_) => samples.push(started.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (samples, errors)
        }));
    }

    let cpu_before = agent.cpu_time()?;
    let started = Instant::now();
    start.wait().await;
    let mut samples = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (s, e) = task.await.context("client task failed")?;
        samples.extend(s);
        errors += e;
    }
    let elapsed = started.elapsed();
    let agent_cpu = agent.cpu_time()? - cpu_before;

    Ok(Throughput {
        fresh_connections,
        clients,
        fetches: samples.len(),
        errors,
        elapsed,
        latency: Summary::of(&samples).context("no fetch succeeded")?,
        agent_cpu,
    })
}

/// Settings of the stream and rotation scenario.
#[derive(Debug, Clone)]
pub struct StreamsSpec {
    /// Registration entries of the agent.
    pub entries: usize,
    /// Streams to open.
    pub streams: usize,
    /// Streams sharing one connection (1: a connection per stream).
    pub per_connection: usize,
    /// CA lifetime, short enough that an activation falls inside the run.
    pub ca_ttl: Duration,
}

/// Memory with many entries and streams, and how fast a CA rotation reaches every stream.
#[derive(Debug)]
pub struct Streams {
    /// The settings.
    pub spec: StreamsSpec,
    /// Spawn to first SVID with every entry pre-issued.
    pub first_svid: Duration,
    /// Memory one second after start-up, no stream open.
    pub idle: Memory,
    /// Time to open every stream (with its first message).
    pub open_time: Duration,
    /// Memory one second after every stream opened.
    pub with_streams: Memory,
    /// Memory half a second after the rotation reached every stream.
    pub after_rotation: Option<Memory>,
    /// For each stream, the messages it received after the first and before the new CA's
    /// SVID (renewals by the old CA).
    pub messages_before_new: Vec<usize>,
    /// When each stream received its first SVID signed by the new CA (wall clock).
    pub receipts: Vec<SystemTime>,
    /// Streams that ended or failed before the rotation reached them.
    pub lost: Vec<String>,
    /// When the agent logged the activation of the new authority.
    pub activated_at: Option<SystemTime>,
    /// When the agent was spawned (wall clock).
    pub spawned_at: SystemTime,
}

impl Streams {
    /// Last receipt minus first receipt.
    pub fn spread(&self) -> Option<Duration> {
        let first = self.receipts.iter().min()?;
        let last = self.receipts.iter().max()?;
        last.duration_since(*first).ok()
    }

    /// Last receipt minus the logged activation.
    pub fn since_activation(&self) -> Option<Duration> {
        let last = self.receipts.iter().max()?;
        last.duration_since(self.activated_at?).ok()
    }

    /// First receipt minus the logged activation.
    pub fn first_since_activation(&self) -> Option<Duration> {
        let first = self.receipts.iter().min()?;
        first.duration_since(self.activated_at?).ok()
    }
}

enum Event {
    NewCa { at: SystemTime, messages: usize },
    Lost(String),
}

/// Starts an agent with `spec.entries` entries and a short CA lifetime, measures its memory,
/// opens `spec.streams` streams on as many connections, measures again, and waits for the
/// next CA activation to reach every stream.
///
/// # Errors
///
/// When the agent fails, a stream cannot be opened, or the activation happens before every
/// stream is open.
pub async fn streams(binary: &Path, spec: StreamsSpec) -> anyhow::Result<Streams> {
    let ca_ttl_secs = spec.ca_ttl.as_secs();
    let agent_spec = AgentSpec {
        entries: spec.entries,
        ca_ttl: format!("{ca_ttl_secs}s"),
        svid_ttl: format!("{ca_ttl_secs}s"),
        jwt_ttl: format!("{ca_ttl_secs}s"),
    };
    let dir = Workdir::new(&agent_spec)?;
    let mut agent = dir.start(binary)?;
    let first = first_svid(&mut agent).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = agent.memory()?;

    let endpoint = Endpoint::Unix(agent.socket.clone());
    let reference = probe::fetch_fresh(&endpoint).await?;
    let check = Arc::new(SignerCheck::new(probe::signer_key_id(&reference)?));

    let opening = Instant::now();
    let per_connection = spec.per_connection.max(1);
    let mut shared = Vec::new();
    if per_connection > 1 {
        for _ in 0..spec.streams.div_ceil(per_connection) {
            shared.push(WorkloadApiClient::connect(&endpoint).await?);
        }
    }
    let opened: Vec<_> = futures::stream::iter(0..spec.streams)
        .map(|i| {
            let endpoint = endpoint.clone();
            let existing = shared.get(i / per_connection).cloned();
            async move {
                let mut client = match existing {
                    Some(client) => client,
                    None => WorkloadApiClient::connect(&endpoint).await?,
                };
                let mut stream = client.watch_x509_context().await?;
                let first = stream
                    .next()
                    .await
                    .context("stream ended before its first message")??;
                anyhow::Ok((client, stream, first))
            }
        })
        .buffer_unordered(OPEN_CONCURRENCY)
        .try_collect()
        .await
        .context("cannot open every stream")?;
    let open_time = opening.elapsed();
    let opened_wall = SystemTime::now();

    let (events, mut received) = mpsc::unbounded_channel();
    let mut tasks = Vec::with_capacity(opened.len());
    for (client, mut stream, first) in opened {
        if check.is_new(&first)? {
            bail!(
                "the CA rotated before every stream was open ({open_time:?} to open them); \
                 give a longer --rotation-ca-ttl"
            );
        }
        let check = Arc::clone(&check);
        let events = events.clone();
        tasks.push(tokio::spawn(async move {
            // The client owns the connection; it must live as long as the stream.
            let _client = client;
            let mut messages = 0;
            let mut reported = false;
            while let Some(item) = stream.next().await {
                let at = SystemTime::now();
                messages += 1;
                if reported {
                    continue;
                }
                match item
                    .map_err(anyhow::Error::from)
                    .and_then(|c| check.is_new(&c))
                {
                    Ok(true) => {
                        reported = true;
                        let _ = events.send(Event::NewCa { at, messages });
                    }
                    Ok(false) => {}
                    Err(error) => {
                        let _ = events.send(Event::Lost(format!("{error:#}")));
                        return;
                    }
                }
            }
            if !reported {
                let _ = events.send(Event::Lost("stream ended".to_owned()));
            }
        }));
    }
    drop(events);

    tokio::time::sleep(Duration::from_secs(1)).await;
    let with_streams = agent.memory()?;

    // The first authority hands over to its successor 5/6 of ca_ttl after it was made.
    let deadline = agent.spawned + spec.ca_ttl + Duration::from_secs(15);
    let mut receipts = Vec::with_capacity(spec.streams);
    let mut before_new = Vec::with_capacity(spec.streams);
    let mut lost = Vec::new();
    while receipts.len() + lost.len() < spec.streams {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, received.recv()).await {
            Ok(Some(Event::NewCa { at, messages })) => {
                receipts.push(at);
                before_new.push(messages - 1);
            }
            Ok(Some(Event::Lost(why))) => lost.push(why),
            Ok(None) | Err(_) => break,
        }
    }
    let after_rotation = if receipts.is_empty() {
        None
    } else {
        tokio::time::sleep(Duration::from_millis(500)).await;
        Some(agent.memory()?)
    };
    for task in &tasks {
        task.abort();
    }

    let activated_at = probe::logged_times(&agent.log, probe::ACTIVATED_MESSAGE)?
        .into_iter()
        .filter(|t| *t > opened_wall)
        .min();
    let spawned_at = agent.spawned_wall;
    if receipts.len() < spec.streams && lost.is_empty() {
        let missing = spec.streams - receipts.len();
        lost.push(format!(
            "{missing} streams saw no SVID from a new CA within {:?} of start",
            deadline - agent.spawned
        ));
    }
    agent.stop()?;

    Ok(Streams {
        spec,
        first_svid: first,
        idle,
        open_time,
        with_streams,
        after_rotation,
        messages_before_new: before_new,
        receipts,
        lost,
        activated_at,
        spawned_at,
    })
}

fn per_call(total: Duration, calls: usize) -> Duration {
    total / u32::try_from(calls.max(1)).unwrap_or(u32::MAX)
}
