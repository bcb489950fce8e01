//! The sidecar proxy's TOML configuration.
//!
//! ```toml
//! socket_path = "/tmp/mesh-agent/public/api.sock"   # the agent's Workload API
//! admin_addr = "127.0.0.1:8089"                     # /live /ready /metrics
//! max_connections = 1024                            # per listener, unless it sets its own
//! handshake_timeout = "10s"
//! idle_timeout = "1h"
//!
//! [[inbound]]
//! listen = "0.0.0.0:8443"
//! forward = "127.0.0.1:8080"
//! allow = ["spiffe://example.org/web/frontend"]    # and/or allow_trust_domain = "example.org"
//! mode = "strict"                                   # or "permissive"
//!
//! [[outbound]]
//! listen = "127.0.0.1:9001"
//! connect = "billing.prod.svc:8443"
//! expect = "spiffe://example.org/billing/api"       # or expect_trust_domain = "example.org"
//! ```
//!
//! Every problem found is reported at once, each with the file, line, key and the bad value.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mesh_core::tls::Authorizer;
use mesh_core::{SpiffeId, TrustDomain};
use serde::Deserialize;
use toml::Spanned;
use workload_api::Endpoint;

use crate::config::parse_duration;

/// The agent's default Workload API socket.
pub const DEFAULT_SOCKET_PATH: &str = "/tmp/mesh-agent/public/api.sock";
/// Default admin address of the proxy.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:8089";
/// Default cap on simultaneous connections of one listener.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default time allowed for a TLS handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a connection may carry no byte in either direction before it is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Default time allowed to open a TCP connection to a forward or connect address.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time open connections get to finish at shutdown.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Default wait for a client's first byte on a permissive listener before treating the
/// connection as plaintext of a protocol where the server speaks first.
pub const DEFAULT_PLAINTEXT_DETECT_TIMEOUT: Duration = Duration::from_millis(500);

const MAX_CONNECTIONS_LIMIT: i64 = 1_000_000;

/// The whole proxy configuration.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Where the agent's Workload API listens (`socket_path`: a path, `unix:///path` or
    /// `tcp://ip:port`).
    pub workload_api: Endpoint,
    /// Address of the admin server (`/live`, `/ready`, `/metrics`).
    pub admin_addr: SocketAddr,
    /// Time allowed for a TLS handshake, inbound or outbound.
    pub handshake_timeout: Duration,
    /// A connection with no byte in either direction for this long is closed.
    pub idle_timeout: Duration,
    /// Time allowed to open a TCP connection to a `forward` or `connect` address.
    pub connect_timeout: Duration,
    /// Time open connections get to finish after shutdown is asked for.
    pub shutdown_grace: Duration,
    /// Listeners taking mTLS (and in permissive mode plaintext) to the local app.
    pub inbound: Vec<InboundConfig>,
    /// Listeners taking plaintext from the local app to a remote over mTLS.
    pub outbound: Vec<OutboundConfig>,
}

/// An inbound listener: mTLS in, plaintext to the app.
#[derive(Debug, Clone)]
pub struct InboundConfig {
    /// Label in logs and metrics (`name`, default `inbound:<listen>`).
    pub name: String,
    /// Address to accept on.
    pub listen: SocketAddr,
    /// `host:port` of the local app.
    pub forward: String,
    /// SPIFFE IDs let in.
    pub allow: Vec<SpiffeId>,
    /// A trust domain whose every workload is let in.
    pub allow_trust_domain: Option<TrustDomain>,
    /// Strict (mTLS only) or permissive (plaintext too).
    pub mode: InboundMode,
    /// Cap on simultaneous connections; more are closed at once.
    pub max_connections: usize,
    /// In permissive mode, how long to wait for the client's first byte before treating the
    /// connection as plaintext (for protocols where the server speaks first, like MySQL).
    pub plaintext_detect_timeout: Duration,
}

impl InboundConfig {
    /// The rule built from `allow` and `allow_trust_domain`.
    pub fn authorizer(&self) -> Authorizer {
        let mut rules = Vec::new();
        match self.allow.as_slice() {
            [] => {}
            [one] => rules.push(Authorizer::exact(one.clone())),
            many => rules.push(Authorizer::one_of(many.iter().cloned())),
        }
        if let Some(td) = &self.allow_trust_domain {
            rules.push(Authorizer::member_of(td.clone()));
        }
        single_or_either(rules)
    }
}

/// Whether an inbound listener also takes plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundMode {
    /// Only mTLS; anything else fails its handshake.
    Strict,
    /// mTLS, or plaintext forwarded as is and counted (for migrating clients one by one).
    Permissive,
}

/// An outbound listener: plaintext from the app, mTLS to the remote.
#[derive(Debug, Clone)]
pub struct OutboundConfig {
    /// Label in logs and metrics (`name`, default `outbound:<listen>`).
    pub name: String,
    /// Loopback address to accept on.
    pub listen: SocketAddr,
    /// `host:port` of the remote proxy or mTLS server.
    pub connect: String,
    /// The SPIFFE ID the remote must have.
    pub expect: Option<SpiffeId>,
    /// A trust domain any workload of which the remote may be.
    pub expect_trust_domain: Option<TrustDomain>,
    /// The name sent as SNI; by default the host of `connect` when it is a DNS name.
    pub server_name: Option<String>,
    /// Cap on simultaneous connections; more are closed at once.
    pub max_connections: usize,
}

impl OutboundConfig {
    /// The rule built from `expect` and `expect_trust_domain`.
    pub fn authorizer(&self) -> Authorizer {
        let mut rules = Vec::new();
        if let Some(id) = &self.expect {
            rules.push(Authorizer::exact(id.clone()));
        }
        if let Some(td) = &self.expect_trust_domain {
            rules.push(Authorizer::member_of(td.clone()));
        }
        single_or_either(rules)
    }
}

fn single_or_either(mut rules: Vec<Authorizer>) -> Authorizer {
    if rules.len() == 1 {
        rules.remove(0)
    } else {
        Authorizer::either(rules)
    }
}

/// One thing wrong with the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Line in the file, from 1.
    pub line: usize,
    /// The key at fault (`inbound[0].allow`), when known.
    pub key: Option<String>,
    /// What is wrong, naming the bad value.
    pub message: String,
}

/// Why the proxy configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyConfigError {
    /// The file could not be read.
    #[error("cannot read proxy config `{}`: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file breaks one or more rules.
    #[error("{}", display_problems(path, problems))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem, in file order.
        problems: Vec<ConfigProblem>,
    },
}

impl ProxyConfigError {
    /// The problems, empty for [`ProxyConfigError::Read`].
    pub fn problems(&self) -> &[ConfigProblem] {
        match self {
            Self::Invalid { problems, .. } => problems,
            Self::Read { .. } => &[],
        }
    }
}

fn display_problems(path: &Path, problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(|p| match &p.key {
            Some(key) => format!("{}:{}: `{key}`: {}", path.display(), p.line, p.message),
            None => format!("{}:{}: {}", path.display(), p.line, p.message),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl ProxyConfig {
    /// Reads and checks the TOML file at `path`.
    ///
    /// # Errors
    ///
    /// [`ProxyConfigError::Read`] if the file cannot be read, [`ProxyConfigError::Invalid`]
    /// listing every problem with its line and key.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ProxyConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ProxyConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Checks TOML `text`; `path` only names the file in errors.
    ///
    /// # Errors
    ///
    /// [`ProxyConfigError::Invalid`] listing every problem with its line and key.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ProxyConfigError> {
        let invalid = |problems| ProxyConfigError::Invalid {
            path: path.to_owned(),
            problems,
        };
        let raw: RawFile =
            toml::from_str(text).map_err(|e| invalid(vec![parse_problem(text, &e)]))?;
        let mut checker = Checker {
            text,
            problems: Vec::new(),
        };
        let config = checker.check(raw);
        match config {
            Some(c) if checker.problems.is_empty() => Ok(c),
            _ => {
                checker.problems.sort_by_key(|p| p.line);
                Err(invalid(checker.problems))
            }
        }
    }
}

// === the file ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    socket_path: Option<Spanned<String>>,
    admin_addr: Option<Spanned<String>>,
    max_connections: Option<Spanned<i64>>,
    handshake_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    shutdown_grace: Option<Spanned<String>>,
    #[serde(default)]
    inbound: Vec<Spanned<RawInbound>>,
    #[serde(default)]
    outbound: Vec<Spanned<RawOutbound>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInbound {
    name: Option<Spanned<String>>,
    listen: Option<Spanned<String>>,
    forward: Option<Spanned<String>>,
    allow: Option<Spanned<Vec<Spanned<String>>>>,
    allow_trust_domain: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    max_connections: Option<Spanned<i64>>,
    plaintext_detect_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutbound {
    name: Option<Spanned<String>>,
    listen: Option<Spanned<String>>,
    connect: Option<Spanned<String>>,
    expect: Option<Spanned<String>>,
    expect_trust_domain: Option<Spanned<String>>,
    server_name: Option<Spanned<String>>,
    max_connections: Option<Spanned<i64>>,
}

/// Turns a TOML or serde error into a problem with a line and, where it can be told, the key.
fn parse_problem(text: &str, error: &toml::de::Error) -> ConfigProblem {
    let span = error.span().unwrap_or(0..0);
    let line = line_of(text, span.start);
    let message = error.message().trim().to_owned();
    // Unknown keys are named in the message; for a bad value the key is left of `=` on the
    // line the span points at.
    let key = backticked_after(&message, "unknown field ")
        .or_else(|| backticked_after(&message, "missing field "))
        .or_else(|| key_on_line(text, span.start));
    ConfigProblem { line, key, message }
}

fn backticked_after(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?.strip_prefix('`')?;
    Some(rest[..rest.find('`')?].to_owned())
}

fn key_on_line(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let (key, _) = text[start..end].split_once('=')?;
    let key = key.trim();
    (!key.is_empty() && !key.starts_with('[') && !key.starts_with('#')).then(|| key.to_owned())
}

/// 1-based line of byte `offset`.
fn line_of(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    text.as_bytes()[..offset]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

struct Checker<'a> {
    text: &'a str,
    problems: Vec<ConfigProblem>,
}

impl Checker<'_> {
    fn problem(&mut self, span: Range<usize>, key: &str, message: String) {
        self.problems.push(ConfigProblem {
            line: line_of(self.text, span.start),
            key: Some(key.to_owned()),
            message,
        });
    }

    /// Parses an optional value, recording a problem (and returning `None`) if it is bad.
    fn value<T, R>(
        &mut self,
        raw: Option<&Spanned<R>>,
        key: &str,
        parse: impl FnOnce(&R) -> Result<T, String>,
    ) -> Option<T> {
        let raw = raw?;
        match parse(raw.get_ref()) {
            Ok(v) => Some(v),
            Err(message) => {
                self.problem(raw.span(), key, message);
                None
            }
        }
    }

    /// Like [`Checker::value`] for a key that must be there; `table` is the span of the
    /// enclosing table, where a missing key is reported.
    fn required<T, R>(
        &mut self,
        raw: Option<&Spanned<R>>,
        key: &str,
        table: &Range<usize>,
        parse: impl FnOnce(&R) -> Result<T, String>,
    ) -> Option<T> {
        if raw.is_none() {
            self.problem(table.clone(), key, "is required".to_owned());
            return None;
        }
        self.value(raw, key, parse)
    }

    fn check(&mut self, raw: RawFile) -> Option<ProxyConfig> {
        let workload_api = self
            .value(raw.socket_path.as_ref(), "socket_path", |s| {
                parse_endpoint(s)
            })
            .or_else(|| raw.socket_path.is_none().then(default_endpoint));
        let admin_addr = self
            .value(raw.admin_addr.as_ref(), "admin_addr", |s| parse_addr(s))
            .or_else(|| raw.admin_addr.is_none().then(default_admin_addr));
        let max_connections =
            self.value(raw.max_connections.as_ref(), "max_connections", parse_max);
        let default_max = max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        let mut timeout = |raw: &Option<Spanned<String>>, key: &str, default: Duration| {
            self.value(raw.as_ref(), key, |s| parse_timeout(s))
                .or_else(|| raw.is_none().then_some(default))
        };
        let handshake_timeout = timeout(
            &raw.handshake_timeout,
            "handshake_timeout",
            DEFAULT_HANDSHAKE_TIMEOUT,
        );
        let idle_timeout = timeout(&raw.idle_timeout, "idle_timeout", DEFAULT_IDLE_TIMEOUT);
        let connect_timeout = timeout(
            &raw.connect_timeout,
            "connect_timeout",
            DEFAULT_CONNECT_TIMEOUT,
        );
        let shutdown_grace = timeout(
            &raw.shutdown_grace,
            "shutdown_grace",
            DEFAULT_SHUTDOWN_GRACE,
        );

        let mut listens: BTreeMap<SocketAddr, String> = BTreeMap::new();
        let mut inbound = Vec::new();
        for (i, table) in raw.inbound.iter().enumerate() {
            if let Some(l) = self.inbound(i, table, default_max) {
                self.unique_listen(
                    &mut listens,
                    l.listen,
                    &format!("inbound[{i}].listen"),
                    table,
                );
                inbound.push(l);
            }
        }
        let mut outbound = Vec::new();
        for (i, table) in raw.outbound.iter().enumerate() {
            if let Some(l) = self.outbound(i, table, default_max) {
                self.unique_listen(
                    &mut listens,
                    l.listen,
                    &format!("outbound[{i}].listen"),
                    table,
                );
                outbound.push(l);
            }
        }
        if raw.inbound.is_empty() && raw.outbound.is_empty() {
            self.problems.push(ConfigProblem {
                line: 1,
                key: None,
                message: "no [[inbound]] or [[outbound]] listener; the proxy would do nothing"
                    .to_owned(),
            });
        }

        Some(ProxyConfig {
            workload_api: workload_api?,
            admin_addr: admin_addr?,
            handshake_timeout: handshake_timeout?,
            idle_timeout: idle_timeout?,
            connect_timeout: connect_timeout?,
            shutdown_grace: shutdown_grace?,
            inbound,
            outbound,
        })
    }

    fn unique_listen(
        &mut self,
        seen: &mut BTreeMap<SocketAddr, String>,
        addr: SocketAddr,
        key: &str,
        table: &Spanned<impl Sized>,
    ) {
        if addr.port() == 0 {
            return;
        }
        if let Some(first) = seen.get(&addr) {
            let message = format!("address `{addr}` is already used by `{first}`");
            self.problem(table.span(), key, message);
        } else {
            seen.insert(addr, key.to_owned());
        }
    }

    fn inbound(
        &mut self,
        i: usize,
        table: &Spanned<RawInbound>,
        default_max: usize,
    ) -> Option<InboundConfig> {
        let span = table.span();
        let t = table.get_ref();
        let key = |k: &str| format!("inbound[{i}].{k}");
        let listen = self.required(t.listen.as_ref(), &key("listen"), &span, |s| parse_addr(s));
        let forward = self.required(t.forward.as_ref(), &key("forward"), &span, |s| {
            parse_host_port(s)
        });
        let allow = match &t.allow {
            Some(list) => {
                let mut ids = Vec::new();
                for (j, raw) in list.get_ref().iter().enumerate() {
                    if let Some(id) =
                        self.value(Some(raw), &format!("inbound[{i}].allow[{j}]"), |s| {
                            parse_spiffe_id(s)
                        })
                    {
                        ids.push(id);
                    }
                }
                ids
            }
            None => Vec::new(),
        };
        let allow_trust_domain = self.value(
            t.allow_trust_domain.as_ref(),
            &key("allow_trust_domain"),
            |s| parse_trust_domain(s),
        );
        let allow_given = t.allow.as_ref().is_some_and(|l| !l.get_ref().is_empty());
        if !allow_given && t.allow_trust_domain.is_none() {
            self.problem(
                span.clone(),
                &key("allow"),
                "an inbound listener needs `allow` or `allow_trust_domain`; it would let no one in"
                    .to_owned(),
            );
        }
        let mode = self
            .value(t.mode.as_ref(), &key("mode"), |s| match s.as_str() {
                "strict" => Ok(InboundMode::Strict),
                "permissive" => Ok(InboundMode::Permissive),
                other => Err(format!("mode `{other}` is not `strict` or `permissive`")),
            })
            .or_else(|| t.mode.is_none().then_some(InboundMode::Strict));
        let max_connections = self
            .value(
                t.max_connections.as_ref(),
                &key("max_connections"),
                parse_max,
            )
            .or_else(|| t.max_connections.is_none().then_some(default_max));
        let detect = self
            .value(
                t.plaintext_detect_timeout.as_ref(),
                &key("plaintext_detect_timeout"),
                |s| parse_timeout(s),
            )
            .or_else(|| {
                t.plaintext_detect_timeout
                    .is_none()
                    .then_some(DEFAULT_PLAINTEXT_DETECT_TIMEOUT)
            });
        let listen = listen?;
        let name = t
            .name
            .as_ref()
            .map_or_else(|| format!("inbound:{listen}"), |n| n.get_ref().clone());
        Some(InboundConfig {
            name,
            listen,
            forward: forward?,
            allow,
            allow_trust_domain,
            mode: mode?,
            max_connections: max_connections?,
            plaintext_detect_timeout: detect?,
        })
    }

    fn outbound(
        &mut self,
        i: usize,
        table: &Spanned<RawOutbound>,
        default_max: usize,
    ) -> Option<OutboundConfig> {
        let span = table.span();
        let t = table.get_ref();
        let key = |k: &str| format!("outbound[{i}].{k}");
        let listen = self.required(t.listen.as_ref(), &key("listen"), &span, |s| {
            let addr = parse_addr(s)?;
            if addr.ip().is_loopback() {
                Ok(addr)
            } else {
                Err(format!(
                    "outbound listener `{s}` is not a loopback address; plaintext accepted there \
                     would let any host on the network use this workload's identity"
                ))
            }
        });
        let connect = self.required(t.connect.as_ref(), &key("connect"), &span, |s| {
            parse_host_port(s)
        });
        let expect = self.value(t.expect.as_ref(), &key("expect"), |s| parse_spiffe_id(s));
        let expect_trust_domain = self.value(
            t.expect_trust_domain.as_ref(),
            &key("expect_trust_domain"),
            |s| parse_trust_domain(s),
        );
        if t.expect.is_none() && t.expect_trust_domain.is_none() {
            self.problem(
                span.clone(),
                &key("expect"),
                "an outbound listener needs `expect` or `expect_trust_domain`; any server would \
                 be trusted"
                    .to_owned(),
            );
        }
        let server_name = self.value(t.server_name.as_ref(), &key("server_name"), |s| {
            rustls_pki_types::ServerName::try_from(s.as_str())
                .map(|_| s.clone())
                .map_err(|_| format!("server name `{s}` is not a DNS name or IP address"))
        });
        let max_connections = self
            .value(
                t.max_connections.as_ref(),
                &key("max_connections"),
                parse_max,
            )
            .or_else(|| t.max_connections.is_none().then_some(default_max));
        let listen = listen?;
        let name = t
            .name
            .as_ref()
            .map_or_else(|| format!("outbound:{listen}"), |n| n.get_ref().clone());
        Some(OutboundConfig {
            name,
            listen,
            connect: connect?,
            expect,
            expect_trust_domain,
            server_name,
            max_connections: max_connections?,
        })
    }
}

fn default_endpoint() -> Endpoint {
    Endpoint::Unix(PathBuf::from(DEFAULT_SOCKET_PATH))
}

fn default_admin_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8089))
}

fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    if s.starts_with("unix:") || s.starts_with("tcp:") {
        return Endpoint::parse(s).map_err(|e| e.to_string());
    }
    let path = Path::new(s);
    if path.is_absolute() {
        Ok(Endpoint::Unix(path.to_owned()))
    } else {
        Err(format!("socket path `{s}` is not absolute"))
    }
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("`{s}` is not an IP address and port like `127.0.0.1:8443`"))
}

/// Checks `host:port` (host a DNS name, an IPv4 address or a bracketed IPv6 address).
fn parse_host_port(s: &str) -> Result<String, String> {
    let bad = || format!("`{s}` is not `host:port` like `127.0.0.1:8080` or `api.svc:8443`");
    if s.parse::<SocketAddr>().is_ok() {
        return Ok(s.to_owned());
    }
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 || host.is_empty() || host.contains(':') {
        return Err(bad());
    }
    rustls_pki_types::DnsName::try_from(host).map_err(|_| bad())?;
    Ok(s.to_owned())
}

fn parse_spiffe_id(s: &str) -> Result<SpiffeId, String> {
    SpiffeId::new(s).map_err(|e| format!("`{s}` is not a SPIFFE ID: {e}"))
}

fn parse_trust_domain(s: &str) -> Result<TrustDomain, String> {
    TrustDomain::new(s).map_err(|e| format!("`{s}` is not a trust domain: {e}"))
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("timeout `{s}` must be longer than zero"));
    }
    Ok(d)
}

fn parse_max(n: &i64) -> Result<usize, String> {
    if (1..=MAX_CONNECTIONS_LIMIT).contains(n) {
        usize::try_from(*n).map_err(|_| format!("{n} is too large"))
    } else {
        Err(format!(
            "max_connections {n} is not between 1 and {MAX_CONNECTIONS_LIMIT}"
        ))
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "line {}: `{key}`: {}", self.line, self.message),
            None => write!(f, "line {}: {}", self.line, self.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<ProxyConfig, ProxyConfigError> {
        ProxyConfig::from_toml(text, Path::new("proxy.toml"))
    }

    #[test]
    fn the_documented_example_loads_with_defaults() {
        let c = load(
            r#"
socket_path = "/tmp/mesh-agent/public/api.sock"
admin_addr = "127.0.0.1:8089"
[[inbound]]
listen = "0.0.0.0:8443"
forward = "127.0.0.1:8080"
allow = ["spiffe://example.org/web/frontend"]
mode = "strict"
[[outbound]]
listen = "127.0.0.1:9001"
connect = "billing.prod.svc:8443"
expect = "spiffe://example.org/billing/api"
"#,
        )
        .unwrap();
        assert_eq!(
            c.workload_api,
            Endpoint::Unix(PathBuf::from("/tmp/mesh-agent/public/api.sock"))
        );
        assert_eq!(c.handshake_timeout, DEFAULT_HANDSHAKE_TIMEOUT);
        assert_eq!(c.idle_timeout, DEFAULT_IDLE_TIMEOUT);
        assert_eq!(c.inbound.len(), 1);
        let inbound = &c.inbound[0];
        assert_eq!(inbound.mode, InboundMode::Strict);
        assert_eq!(inbound.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(inbound.name, "inbound:0.0.0.0:8443");
        let rule = inbound.authorizer();
        assert!(rule.allows(&SpiffeId::new("spiffe://example.org/web/frontend").unwrap()));
        assert!(!rule.allows(&SpiffeId::new("spiffe://example.org/web/other").unwrap()));
        let outbound = &c.outbound[0];
        assert_eq!(outbound.connect, "billing.prod.svc:8443");
        assert!(outbound
            .authorizer()
            .allows(&SpiffeId::new("spiffe://example.org/billing/api").unwrap()));
    }

    #[test]
    fn settings_override_defaults_and_rules_combine() {
        let c = load(
            r#"
socket_path = "unix:///run/agent.sock"
max_connections = 7
handshake_timeout = "2s"
idle_timeout = "90s"
[[inbound]]
name = "db"
listen = "127.0.0.1:3307"
forward = "localhost:3306"
allow = ["spiffe://example.org/a"]
allow_trust_domain = "partner.net"
mode = "permissive"
max_connections = 3
"#,
        )
        .unwrap();
        assert_eq!(c.handshake_timeout, Duration::from_secs(2));
        assert_eq!(c.idle_timeout, Duration::from_secs(90));
        let inbound = &c.inbound[0];
        assert_eq!(inbound.name, "db");
        assert_eq!(inbound.mode, InboundMode::Permissive);
        assert_eq!(inbound.max_connections, 3);
        let rule = inbound.authorizer();
        assert!(rule.allows(&SpiffeId::new("spiffe://example.org/a").unwrap()));
        assert!(rule.allows(&SpiffeId::new("spiffe://partner.net/x").unwrap()));
        assert!(!rule.allows(&SpiffeId::new("spiffe://example.org/b").unwrap()));
    }

    fn problems(text: &str) -> Vec<String> {
        load(text)
            .unwrap_err()
            .problems()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err = load("socket_path = \"/a.sock\"\nlisten_addr = \"x\"\n").unwrap_err();
        let p = &err.problems()[0];
        assert_eq!((p.line, p.key.as_deref()), (2, Some("listen_addr")));
        assert!(
            err.to_string()
                .starts_with("proxy.toml:2: `listen_addr`: unknown field"),
            "{err}"
        );
    }

    #[test]
    fn wrong_type_names_the_key_of_its_line() {
        let p = problems("\n\nmax_connections = \"many\"\n[[outbound]]\n");
        assert!(p[0].starts_with("line 3: `max_connections`:"), "{p:?}");
    }

    #[test]
    fn bad_values_are_all_reported_with_line_and_key() {
        let p = problems(
            r#"socket_path = "relative.sock"
handshake_timeout = "0s"
[[inbound]]
listen = "0.0.0.0:8443"
forward = "no port"
allow = ["spiffe://example.org/ok", "http://example.org/web"]
mode = "lenient"
[[outbound]]
listen = "0.0.0.0:9001"
connect = "db:3306"
"#,
        );
        let expected = [
            ("line 1: `socket_path`:", "relative.sock"),
            ("line 2: `handshake_timeout`:", "0s"),
            ("line 5: `inbound[0].forward`:", "no port"),
            ("line 6: `inbound[0].allow[1]`:", "http://example.org/web"),
            ("line 7: `inbound[0].mode`:", "lenient"),
            ("`outbound[0].listen`:", "0.0.0.0:9001"),
            ("`outbound[0].expect`:", "needs `expect`"),
        ];
        for (prefix, value) in expected {
            assert!(
                p.iter().any(|l| l.contains(prefix) && l.contains(value)),
                "no problem {prefix} ... {value} in {p:#?}"
            );
        }
    }

    #[test]
    fn missing_keys_and_duplicate_addresses_are_refused() {
        let p = problems(
            r#"[[inbound]]
listen = "127.0.0.1:8443"
[[inbound]]
listen = "127.0.0.1:8444"
forward = "127.0.0.1:80"
allow_trust_domain = "example.org"
[[outbound]]
listen = "127.0.0.1:8444"
connect = "a:1"
expect_trust_domain = "example.org"
"#,
        );
        assert!(
            p.iter()
                .any(|l| l.contains("`inbound[0].forward`: is required")),
            "{p:?}"
        );
        assert!(p.iter().any(|l| l.contains("`inbound[0].allow`")), "{p:?}");
        assert!(
            p.iter().any(|l| l.contains("`outbound[0].listen`")
                && l.contains("already used by `inbound[1].listen`")),
            "{p:?}"
        );
        assert!(problems("socket_path = \"/a\"\n")[0].contains("no [[inbound]] or [[outbound]]"));
    }

    /// The `proxy.toml: |` blocks of a manifest, dedented.
    fn embedded_proxy_configs(manifest: &str) -> Vec<String> {
        let lines: Vec<&str> = manifest.lines().collect();
        let mut blocks = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            if line.trim() != "proxy.toml: |" {
                continue;
            }
            let indent = line.len() - line.trim_start().len() + 2;
            let block: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() >= indent)
                .map(|l| l.get(indent..).unwrap_or(""))
                .collect();
            blocks.push(block.join("\n"));
        }
        blocks
    }

    #[test]
    fn deploy_manifests_carry_valid_proxy_configs() {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let mut checked = 0;
        for name in ["java-app.yaml", "node-app.yaml"] {
            let path = deploy.join(name);
            let manifest = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            for text in embedded_proxy_configs(&manifest) {
                let config = ProxyConfig::from_toml(&text, &path)
                    .unwrap_or_else(|e| panic!("proxy config in {name} is invalid:\n{e}"));
                assert!(!config.inbound.is_empty() && !config.outbound.is_empty());
                checked += 1;
            }
        }
        assert_eq!(checked, 2, "expected one proxy config per app manifest");
    }
}
