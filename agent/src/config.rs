//! The agent's configuration: defaults, a TOML file, environment variables and flags.
//!
//! Each later layer overrides the earlier ones: built-in defaults < file < `MESH_AGENT_*`
//! environment variables < command-line flags. Every setting has the same name in all three
//! places: `trust_domain` in the file, `MESH_AGENT_TRUST_DOMAIN` in the environment,
//! `--trust-domain` on the command line. Registration entries come only from the file.
//!
//! Problems are reported all at once, each with where it came from: for the file its path,
//! line and column, for the others the variable or flag.
//!
//! # Default identity
//!
//! When the file has no `entries` key at all (or there is no file), the agent grants every
//! local user N the identity `spiffe://<trust_domain>/unix/uid/<N>`. As soon as `entries` is
//! present, even as an empty list, only the listed entries apply.
//!
//! # Kubernetes
//!
//! A `[kubernetes]` table turns on the Kubernetes attestor: callers running in a pod
//! container get `k8s:ns`, `k8s:sa`, `k8s:pod-label` and `k8s:container-name` selectors from
//! the kubelet. With the table and no `entries`, the *pod template* replaces the uid template:
//! every pod gets `spiffe://<trust_domain>/ns/<namespace>/sa/<service account>`, unless the
//! table says `pod_template = false`. Like entries, the table is read only from the file.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mesh_core::id::{SpiffeId, TrustDomain};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::k8s::kubelet::{KubeletUrl, DEFAULT_CA_PATH, DEFAULT_TOKEN_PATH};
use crate::logging::{self, LogFormat};
use crate::registration::{check_entries, Entry, EntryField, Registry};
use crate::selector::{Selector, SelectorSet};

/// Default trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "example.org";
/// Default Workload API socket.
pub const DEFAULT_SOCKET_PATH: &str = "/tmp/mesh-agent/public/api.sock";
/// Default data directory when `XDG_STATE_HOME` is not set.
pub const DEFAULT_DATA_DIR: &str = "./data";
/// Default address of the health and metrics server.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:8088";
/// Default log level.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Default X509-SVID lifetime.
pub const DEFAULT_SVID_TTL: Duration = Duration::from_secs(3600);
/// Default JWT-SVID lifetime.
pub const DEFAULT_JWT_TTL: Duration = Duration::from_secs(300);
/// Default CA certificate lifetime.
pub const DEFAULT_CA_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default largest executable the agent hashes for `unix:sha256` selectors: 64 MiB.
pub const DEFAULT_MAX_EXE_HASH_BYTES: u64 = 64 * 1024 * 1024;

/// Longest Unix socket path Linux accepts, in bytes (`sun_path` holds 108 including the NUL).
const MAX_SOCKET_PATH_LEN: usize = 107;

/// The complete, validated configuration of an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    /// The trust domain the agent issues identities in.
    pub trust_domain: TrustDomain,
    /// Path of the Workload API Unix socket; always absolute.
    pub socket_path: PathBuf,
    /// Directory for the CA's state.
    pub data_dir: PathBuf,
    /// Address of the health and metrics HTTP server.
    pub admin_addr: SocketAddr,
    /// Log line format.
    pub log_format: LogFormat,
    /// Log level or filter directive, e.g. `info` or `mesh_agent=debug,warn`.
    pub log_level: String,
    /// Default X509-SVID lifetime.
    #[serde(serialize_with = "serialize_duration")]
    pub svid_ttl: Duration,
    /// JWT-SVID lifetime.
    #[serde(serialize_with = "serialize_duration")]
    pub jwt_ttl: Duration,
    /// CA certificate lifetime.
    #[serde(serialize_with = "serialize_duration")]
    pub ca_ttl: Duration,
    /// Key algorithm of the CA and of issued SVIDs.
    pub key_type: KeyType,
    /// An existing CA to sign with instead of a generated root.
    pub upstream_ca: Option<UpstreamCa>,
    /// Executables larger than this get no `unix:sha256` selector.
    pub max_exe_hash_bytes: u64,
    /// The registration entries; `None` when the file has no `entries` key, which puts the uid
    /// template in force (see the module documentation).
    #[serde(skip)]
    pub entries: Option<Vec<Entry>>,
    /// The 1-based line in the file where each entry starts, in the order of `entries`.
    #[serde(skip)]
    pub entry_lines: Vec<usize>,
    /// The `[kubernetes]` table, if the file has one: the Kubernetes attestor is on.
    pub kubernetes: Option<KubernetesConfig>,
    /// The file this configuration was read from, if any.
    pub source: Option<PathBuf>,
}

impl Config {
    /// The registry the entries (or the pod or uid template) make.
    pub fn registry(&self) -> Registry {
        match (&self.entries, &self.kubernetes) {
            (Some(entries), _) => Registry::new(entries.clone()),
            (None, Some(k)) if k.pod_template => Registry::pod_template(self.trust_domain.clone()),
            (None, _) => Registry::uid_template(self.trust_domain.clone()),
        }
    }
}

/// The `[kubernetes]` table: how the agent asks the kubelet about callers in pods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KubernetesConfig {
    /// The kubelet, `https://HOST:PORT` (or `http://` for the read-only port); `None` means
    /// the host in `KUBELET_HOST` or `NODE_NAME` when the agent starts, else `127.0.0.1`, on
    /// port 10250.
    pub kubelet_url: Option<KubeletUrl>,
    /// The service account token sent to the kubelet, read before each request.
    pub token_path: PathBuf,
    /// PEM CA certificates that sign the kubelet's serving certificate.
    pub ca_path: PathBuf,
    /// Accept any kubelet certificate; for clusters whose kubelets serve self-signed ones.
    pub skip_kubelet_verification: bool,
    /// Whether the pod template is in force: every pod gets
    /// `spiffe://<trust_domain>/ns/<ns>/sa/<sa>`. Never true alongside entries.
    pub pod_template: bool,
}

pub use mesh_core::KeyType;

/// An existing CA (PEM certificate and key, plus optional intermediates up to the root) that
/// the agent signs with instead of generating its own root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpstreamCa {
    /// PEM certificate of the signing CA.
    pub cert: PathBuf,
    /// PEM private key of the signing CA.
    pub key: PathBuf,
    /// PEM certificates from the signing CA's issuer up to the root, if it is not the root.
    pub chain: Option<PathBuf>,
}

/// One setting that can come from the file, the environment or a flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Setting {
    /// `trust_domain`
    TrustDomain,
    /// `socket_path`
    SocketPath,
    /// `data_dir`
    DataDir,
    /// `admin_addr`
    AdminAddr,
    /// `log_format`
    LogFormat,
    /// `log_level`
    LogLevel,
    /// `svid_ttl`
    SvidTtl,
    /// `jwt_ttl`
    JwtTtl,
    /// `ca_ttl`
    CaTtl,
    /// `key_type`
    KeyType,
    /// `ca_cert`
    CaCert,
    /// `ca_key`
    CaKey,
    /// `ca_chain`
    CaChain,
    /// `max_exe_hash_bytes`
    MaxExeHashBytes,
}

impl Setting {
    /// Every setting.
    pub const ALL: [Setting; 14] = [
        Setting::TrustDomain,
        Setting::SocketPath,
        Setting::DataDir,
        Setting::AdminAddr,
        Setting::LogFormat,
        Setting::LogLevel,
        Setting::SvidTtl,
        Setting::JwtTtl,
        Setting::CaTtl,
        Setting::KeyType,
        Setting::CaCert,
        Setting::CaKey,
        Setting::CaChain,
        Setting::MaxExeHashBytes,
    ];

    /// The key in the TOML file, e.g. `trust_domain`.
    pub fn key(self) -> &'static str {
        match self {
            Self::TrustDomain => "trust_domain",
            Self::SocketPath => "socket_path",
            Self::DataDir => "data_dir",
            Self::AdminAddr => "admin_addr",
            Self::LogFormat => "log_format",
            Self::LogLevel => "log_level",
            Self::SvidTtl => "svid_ttl",
            Self::JwtTtl => "jwt_ttl",
            Self::CaTtl => "ca_ttl",
            Self::KeyType => "key_type",
            Self::CaCert => "ca_cert",
            Self::CaKey => "ca_key",
            Self::CaChain => "ca_chain",
            Self::MaxExeHashBytes => "max_exe_hash_bytes",
        }
    }

    /// The environment variable, e.g. `MESH_AGENT_TRUST_DOMAIN`.
    pub fn env_var(self) -> String {
        format!("MESH_AGENT_{}", self.key().to_ascii_uppercase())
    }

    /// The command-line flag, e.g. `--trust-domain`.
    pub fn flag(self) -> String {
        format!("--{}", self.key().replace('_', "-"))
    }
}

/// Values that override the file: either the environment or the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    from_flags: bool,
    values: BTreeMap<Setting, String>,
}

impl Overrides {
    /// Overrides read from the process environment (`MESH_AGENT_*`); empty variables count as
    /// unset.
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Overrides read through `lookup`, which maps a variable name to its value.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let values = Setting::ALL
            .into_iter()
            .filter_map(|s| {
                lookup(&s.env_var())
                    .filter(|v| !v.is_empty())
                    .map(|v| (s, v))
            })
            .collect();
        Self {
            from_flags: false,
            values,
        }
    }

    /// An empty set of command-line overrides, to fill with [`Overrides::set`].
    pub fn flags() -> Self {
        Self {
            from_flags: true,
            values: BTreeMap::new(),
        }
    }

    /// Sets `setting` to `value` if `value` is `Some`.
    pub fn set(&mut self, setting: Setting, value: Option<impl Into<String>>) -> &mut Self {
        if let Some(v) = value {
            self.values.insert(setting, v.into());
        }
        self
    }

    /// The value given for `setting`, if any.
    pub fn get(&self, setting: Setting) -> Option<&str> {
        self.values.get(&setting).map(String::as_str)
    }

    /// Whether no setting is overridden.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    fn origin(&self, setting: Setting) -> Origin {
        if self.from_flags {
            Origin::Flag(setting.flag())
        } else {
            Origin::Env(setting.env_var())
        }
    }
}

/// Command-line flags for every setting, plus `--config`; flatten it into a clap command.
///
/// Each flag is named after its setting (`--trust-domain` for `trust_domain`) and takes the
/// same text the file does; values are checked when the configuration is loaded, so a bad
/// flag is reported like any other problem.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {
    /// Config file (TOML). Without one, defaults apply and every local user N gets
    /// spiffe://TRUST_DOMAIN/unix/uid/N.
    #[arg(long, env = "MESH_AGENT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Trust domain, e.g. example.org.
    #[arg(long, value_name = "NAME")]
    pub trust_domain: Option<String>,
    /// Workload API socket path (absolute).
    #[arg(long, value_name = "PATH")]
    pub socket_path: Option<String>,
    /// Directory for the CA's state.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<String>,
    /// Address of the health and metrics server, e.g. 127.0.0.1:8088.
    #[arg(long, value_name = "ADDR")]
    pub admin_addr: Option<String>,
    /// Log format: text or json.
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Log level or filter, e.g. info or mesh_agent=debug,warn.
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// X509-SVID lifetime, e.g. 1h.
    #[arg(long, value_name = "DURATION")]
    pub svid_ttl: Option<String>,
    /// JWT-SVID lifetime, e.g. 5m.
    #[arg(long, value_name = "DURATION")]
    pub jwt_ttl: Option<String>,
    /// CA certificate lifetime, e.g. 24h.
    #[arg(long, value_name = "DURATION")]
    pub ca_ttl: Option<String>,
    /// Key type: ec-p256, ec-p384, rsa-2048, rsa-3072 or rsa-4096.
    #[arg(long, value_name = "TYPE")]
    pub key_type: Option<String>,
    /// PEM certificate of an upstream CA to sign with.
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<String>,
    /// PEM private key of the upstream CA.
    #[arg(long, value_name = "FILE")]
    pub ca_key: Option<String>,
    /// PEM chain from the upstream CA's issuer up to the root.
    #[arg(long, value_name = "FILE")]
    pub ca_chain: Option<String>,
    /// Largest executable hashed for unix:sha256 selectors, in bytes.
    #[arg(long, value_name = "BYTES")]
    pub max_exe_hash_bytes: Option<String>,
}

impl ConfigArgs {
    /// The flags as overrides.
    pub fn overrides(&self) -> Overrides {
        let mut o = Overrides::flags();
        o.set(Setting::TrustDomain, self.trust_domain.clone())
            .set(Setting::SocketPath, self.socket_path.clone())
            .set(Setting::DataDir, self.data_dir.clone())
            .set(Setting::AdminAddr, self.admin_addr.clone())
            .set(Setting::LogFormat, self.log_format.clone())
            .set(Setting::LogLevel, self.log_level.clone())
            .set(Setting::SvidTtl, self.svid_ttl.clone())
            .set(Setting::JwtTtl, self.jwt_ttl.clone())
            .set(Setting::CaTtl, self.ca_ttl.clone())
            .set(Setting::KeyType, self.key_type.clone())
            .set(Setting::CaCert, self.ca_cert.clone())
            .set(Setting::CaKey, self.ca_key.clone())
            .set(Setting::CaChain, self.ca_chain.clone())
            .set(Setting::MaxExeHashBytes, self.max_exe_hash_bytes.clone());
        o
    }

    /// A loader for the file, the process environment and these flags.
    pub fn loader(&self) -> ConfigLoader {
        ConfigLoader::new(self.config.clone(), self.overrides())
    }
}

/// Where a configuration problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A place in the configuration file (1-based line and column).
    File {
        /// The file.
        path: PathBuf,
        /// Line, from 1.
        line: usize,
        /// Column in characters, from 1.
        column: usize,
    },
    /// An environment variable.
    Env(String),
    /// A command-line flag.
    Flag(String),
    /// Several settings together, none alone at fault.
    Combination,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File { path, line, column } => {
                write!(f, "{}:{line}:{column}", path.display())
            }
            Self::Env(var) => write!(f, "environment variable {var}"),
            Self::Flag(flag) => write!(f, "flag {flag}"),
            Self::Combination => f.write_str("configuration"),
        }
    }
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where it is.
    pub origin: Origin,
    /// What is wrong, naming the bad value.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.origin, self.message)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file `{}`: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The configuration breaks one or more rules; each problem says where and what.
    #[error("{}", display_problems(.0))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// The problems, empty for [`ConfigError::Read`].
    pub fn problems(&self) -> &[Problem] {
        match self {
            Self::Invalid(p) => p,
            Self::Read { .. } => &[],
        }
    }
}

fn display_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Loads the configuration from its layers; keep it to load again on reload.
#[derive(Debug, Clone, Default)]
pub struct ConfigLoader {
    /// The TOML file, if any.
    pub path: Option<PathBuf>,
    /// Environment overrides.
    pub env: Overrides,
    /// Command-line overrides.
    pub flags: Overrides,
    /// `XDG_STATE_HOME`, which moves the default data directory to `$XDG_STATE_HOME/mesh-agent`.
    pub xdg_state_home: Option<PathBuf>,
}

impl ConfigLoader {
    /// A loader for `path` (if any) with the process environment and the given flags.
    pub fn new(path: Option<PathBuf>, flags: Overrides) -> Self {
        Self {
            path,
            env: Overrides::from_env(),
            flags,
            xdg_state_home: std::env::var_os("XDG_STATE_HOME").map(PathBuf::from),
        }
    }

    /// Reads the file (if any) and resolves every layer.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Read`] if the file cannot be read, [`ConfigError::Invalid`] listing every
    /// problem found otherwise.
    pub fn load(&self) -> Result<Config, ConfigError> {
        match &self.path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                self.load_str(&text, path)
            }
            None => self.resolve(None),
        }
    }

    /// Resolves every layer with `text` as the file's content and `path` as its name.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] listing every problem found.
    pub fn load_str(&self, text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file = SourceFile { path, text };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            ConfigError::Invalid(vec![file.problem(span, e.message().trim_end().to_owned())])
        })?;
        self.resolve(Some((file, raw)))
    }

    fn resolve(&self, file: Option<(SourceFile<'_>, RawFile)>) -> Result<Config, ConfigError> {
        let (file, raw) = match file {
            Some((f, r)) => (Some(f), r),
            None => (None, RawFile::default()),
        };
        let mut r = Resolver {
            file,
            raw: &raw,
            loader: self,
            problems: Vec::new(),
        };

        let default_td = TrustDomain::new(DEFAULT_TRUST_DOMAIN).ok();
        let trust_domain = r.pick(Setting::TrustDomain, |s| {
            TrustDomain::new(s).map_err(|e| e.to_string())
        });
        let socket_path = r.pick(Setting::SocketPath, parse_socket_path);
        let data_dir = r.pick(Setting::DataDir, parse_path);
        let admin_addr = r.pick(Setting::AdminAddr, |s| {
            s.parse::<SocketAddr>()
                .map_err(|_| format!("`{s}` is not an IP address with a port, e.g. 127.0.0.1:8088"))
        });
        let log_format = r.pick(Setting::LogFormat, |s| {
            s.parse::<LogFormat>().map_err(|e| e.to_string())
        });
        let log_level = r.pick(Setting::LogLevel, |s| {
            logging::parse_filter(s)
                .map(|_| s.to_owned())
                .map_err(|e| e.to_string())
        });
        let svid_ttl = r.pick(Setting::SvidTtl, parse_ttl);
        let jwt_ttl = r.pick(Setting::JwtTtl, parse_ttl);
        let ca_ttl = r.pick(Setting::CaTtl, parse_ttl);
        let key_type = r.pick(Setting::KeyType, |v| {
            v.parse::<KeyType>().map_err(|e| e.to_string())
        });
        let ca_cert = r.pick(Setting::CaCert, parse_existing_file);
        let ca_key = r.pick(Setting::CaKey, parse_existing_file);
        let ca_chain = r.pick(Setting::CaChain, parse_existing_file);
        let max_exe_hash_bytes = r.pick(Setting::MaxExeHashBytes, |s| {
            s.parse::<u64>()
                .map_err(|_| format!("`{s}` is not a non-negative whole number of bytes"))
        });

        let trust_domain_given = trust_domain.is_some();
        let trust_domain =
            trust_domain
                .flatten()
                .or(if trust_domain_given { None } else { default_td });
        let ca_ttl_value = ca_ttl.flatten().unwrap_or(DEFAULT_CA_TTL);

        for (setting, ttl, default) in [
            (Setting::SvidTtl, &svid_ttl, DEFAULT_SVID_TTL),
            (Setting::JwtTtl, &jwt_ttl, DEFAULT_JWT_TTL),
        ] {
            let (effective, given) = match ttl {
                Some(Some(t)) => (*t, true),
                Some(None) => continue,
                None => (default, false),
            };
            if effective > ca_ttl_value {
                let message = format!(
                    "{} {}{} is longer than ca_ttl {}",
                    setting.key(),
                    format_duration(effective),
                    if given { "" } else { " (the default)" },
                    format_duration(ca_ttl_value)
                );
                let origin = r.origin_of(if given { setting } else { Setting::CaTtl });
                r.problems.push(Problem { origin, message });
            }
        }

        let upstream_ca = match (&ca_cert, &ca_key) {
            (Some(Some(cert)), Some(Some(key))) => Some(UpstreamCa {
                cert: cert.clone(),
                key: key.clone(),
                chain: ca_chain.clone().flatten(),
            }),
            (None, None) => {
                if ca_chain.is_some() {
                    let origin = r.origin_of(Setting::CaChain);
                    r.problems.push(Problem {
                        origin,
                        message: "ca_chain is set but ca_cert and ca_key are not".to_owned(),
                    });
                }
                None
            }
            (Some(_), None) | (None, Some(_)) => {
                let (given, missing) = if ca_cert.is_some() {
                    (Setting::CaCert, "ca_key")
                } else {
                    (Setting::CaKey, "ca_cert")
                };
                let origin = r.origin_of(given);
                r.problems.push(Problem {
                    origin,
                    message: format!(
                        "{} is set but {missing} is not; an upstream CA needs both",
                        given.key()
                    ),
                });
                None
            }
            // One of them is invalid, which its own check already reported.
            _ => None,
        };

        let entries = match (&raw.entries, &trust_domain) {
            (Some(list), Some(td)) => Some(r.entries(list, td, ca_ttl_value)),
            (Some(_), None) => Some(Vec::new()),
            (None, _) => None,
        };

        let kubernetes = raw
            .kubernetes
            .as_ref()
            .map(|k| r.kubernetes(k, raw.entries.is_some()));

        if !r.problems.is_empty() {
            return Err(ConfigError::Invalid(r.problems));
        }
        let Some(trust_domain) = trust_domain else {
            // A trust domain that failed to parse was reported above, so this is unreachable
            // in practice; report it rather than panic.
            return Err(ConfigError::Invalid(vec![Problem {
                origin: Origin::Combination,
                message: "no valid trust domain".to_owned(),
            }]));
        };

        let data_dir = data_dir.flatten().unwrap_or_else(|| {
            match self.xdg_state_home.as_ref().filter(|p| p.is_absolute()) {
                Some(state) => state.join("mesh-agent"),
                None => PathBuf::from(DEFAULT_DATA_DIR),
            }
        });
        Ok(Config {
            trust_domain,
            socket_path: socket_path
                .flatten()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET_PATH)),
            data_dir,
            admin_addr: admin_addr.flatten().unwrap_or_else(default_admin_addr),
            log_format: log_format.flatten().unwrap_or_default(),
            log_level: log_level
                .flatten()
                .unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_owned()),
            svid_ttl: svid_ttl.flatten().unwrap_or(DEFAULT_SVID_TTL),
            jwt_ttl: jwt_ttl.flatten().unwrap_or(DEFAULT_JWT_TTL),
            ca_ttl: ca_ttl_value,
            key_type: key_type.flatten().unwrap_or_default(),
            upstream_ca,
            max_exe_hash_bytes: max_exe_hash_bytes
                .flatten()
                .unwrap_or(DEFAULT_MAX_EXE_HASH_BYTES),
            entry_lines: match (&raw.entries, file) {
                (Some(list), Some(f)) => lines_of(f.text, list.iter().map(|e| e.span().start)),
                _ => Vec::new(),
            },
            entries,
            kubernetes,
            source: self.path.clone(),
        })
    }
}

fn default_admin_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8088))
}

/// Parses a duration written as one or more `<number><unit>` parts, e.g. `90s`, `5m`, `1h30m`,
/// `2d`, `500ms`. Units: `ms`, `s`, `m`, `h`, `d`.
///
/// # Errors
///
/// Returns a message naming the input if it is empty, lacks a unit, has an unknown unit or
/// overflows.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("duration is empty; write e.g. `90s`, `5m` or `1h`".to_owned());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(format!(
                "duration `{input}` is not of the form `90s`, `5m`, `1h30m`"
            ));
        }
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail.len()
            - tail
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        let (unit, tail) = tail.split_at(unit_len);
        let n: u64 = number
            .parse()
            .map_err(|_| format!("duration `{input}` is too long"))?;
        let unit_ms: u64 = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => {
                return Err(format!(
                    "duration `{input}` has a number without a unit; add `s`, `m`, `h` or `d`"
                ))
            }
            other => {
                return Err(format!(
                    "duration `{input}` has unknown unit `{other}`; use ms, s, m, h or d"
                ))
            }
        };
        let ms = n
            .checked_mul(unit_ms)
            .ok_or_else(|| format!("duration `{input}` is too long"))?;
        total = total
            .checked_add(Duration::from_millis(ms))
            .ok_or_else(|| format!("duration `{input}` is too long"))?;
        rest = tail;
    }
    Ok(total)
}

/// Writes a duration the way [`parse_duration`] reads it, largest units first: `1h30m`, `90s`
/// becomes `1m30s`, zero is `0s`.
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

fn serialize_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) {
        return Err(format!("ttl `{s}` is shorter than the minimum of 1s"));
    }
    Ok(d)
}

fn parse_path(s: &str) -> Result<PathBuf, String> {
    if s.is_empty() {
        return Err("path is empty".to_owned());
    }
    Ok(PathBuf::from(s))
}

fn parse_socket_path(s: &str) -> Result<PathBuf, String> {
    if !s.starts_with('/') {
        return Err(format!(
            "socket path `{s}` is not absolute; clients name it as unix:///absolute/path"
        ));
    }
    if s.len() > MAX_SOCKET_PATH_LEN {
        return Err(format!(
            "socket path `{s}` is {} bytes long; Unix sockets allow at most {MAX_SOCKET_PATH_LEN}",
            s.len()
        ));
    }
    Ok(PathBuf::from(s))
}

fn parse_existing_file(s: &str) -> Result<PathBuf, String> {
    let path = parse_path(s)?;
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => Ok(path),
        Ok(_) => Err(format!("`{s}` is not a regular file")),
        Err(e) => Err(format!("cannot read `{s}`: {e}")),
    }
}

// === the file ===

/// The file's text and name, to turn byte offsets into lines and columns.
#[derive(Clone, Copy)]
struct SourceFile<'a> {
    path: &'a Path,
    text: &'a str,
}

impl SourceFile<'_> {
    fn problem(&self, span: Range<usize>, message: String) -> Problem {
        let (line, column) = line_column(self.text, span.start);
        Problem {
            origin: Origin::File {
                path: self.path.to_owned(),
                line,
                column,
            },
            message,
        }
    }
}

/// 1-based lines of byte offsets given in ascending order, in one pass over `text` (a file with
/// thousands of entries would make a per-entry scan from the start quadratic).
fn lines_of(text: &str, offsets: impl Iterator<Item = usize>) -> Vec<usize> {
    let bytes = text.as_bytes();
    let (mut line, mut pos) = (1, 0);
    offsets
        .map(|offset| {
            let offset = offset.min(bytes.len()).max(pos);
            line += bytes[pos..offset].iter().filter(|b| **b == b'\n').count();
            pos = offset;
            line
        })
        .collect()
}

/// 1-based line and character column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    trust_domain: Option<Spanned<String>>,
    socket_path: Option<Spanned<String>>,
    data_dir: Option<Spanned<String>>,
    admin_addr: Option<Spanned<String>>,
    log_format: Option<Spanned<String>>,
    log_level: Option<Spanned<String>>,
    svid_ttl: Option<Spanned<String>>,
    jwt_ttl: Option<Spanned<String>>,
    ca_ttl: Option<Spanned<String>>,
    key_type: Option<Spanned<String>>,
    ca_cert: Option<Spanned<String>>,
    ca_key: Option<Spanned<String>>,
    ca_chain: Option<Spanned<String>>,
    max_exe_hash_bytes: Option<Spanned<u64>>,
    kubernetes: Option<RawKubernetes>,
    entries: Option<Vec<Spanned<RawEntry>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKubernetes {
    kubelet_url: Option<Spanned<String>>,
    token_path: Option<Spanned<String>>,
    ca_path: Option<Spanned<String>>,
    skip_kubelet_verification: Option<bool>,
    pod_template: Option<Spanned<bool>>,
}

impl RawFile {
    /// The file's value for `setting` as text, with its span.
    fn get(&self, setting: Setting) -> Option<(String, Range<usize>)> {
        let s = |v: &Option<Spanned<String>>| v.as_ref().map(|v| (v.get_ref().clone(), v.span()));
        match setting {
            Setting::TrustDomain => s(&self.trust_domain),
            Setting::SocketPath => s(&self.socket_path),
            Setting::DataDir => s(&self.data_dir),
            Setting::AdminAddr => s(&self.admin_addr),
            Setting::LogFormat => s(&self.log_format),
            Setting::LogLevel => s(&self.log_level),
            Setting::SvidTtl => s(&self.svid_ttl),
            Setting::JwtTtl => s(&self.jwt_ttl),
            Setting::CaTtl => s(&self.ca_ttl),
            Setting::KeyType => s(&self.key_type),
            Setting::CaCert => s(&self.ca_cert),
            Setting::CaKey => s(&self.ca_key),
            Setting::CaChain => s(&self.ca_chain),
            Setting::MaxExeHashBytes => self
                .max_exe_hash_bytes
                .as_ref()
                .map(|v| (v.get_ref().to_string(), v.span())),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    spiffe_id: Spanned<SpiffeId>,
    selectors: Spanned<Vec<Selector>>,
    ttl: Option<Spanned<String>>,
    dns_names: Option<Spanned<Vec<String>>>,
    hint: Option<Spanned<String>>,
}

/// Resolves settings layer by layer, collecting problems.
struct Resolver<'a> {
    file: Option<SourceFile<'a>>,
    raw: &'a RawFile,
    loader: &'a ConfigLoader,
    problems: Vec<Problem>,
}

impl Resolver<'_> {
    /// The value of `setting` from the highest layer that has one: `None` if no layer does,
    /// `Some(None)` if that layer's value is invalid (and a problem was recorded).
    fn pick<T>(
        &mut self,
        setting: Setting,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<Option<T>> {
        let (value, origin) = if let Some(v) = self.loader.flags.get(setting) {
            (v.to_owned(), self.loader.flags.origin(setting))
        } else if let Some(v) = self.loader.env.get(setting) {
            (v.to_owned(), self.loader.env.origin(setting))
        } else if let (Some((v, span)), Some(file)) = (self.raw.get(setting), self.file) {
            (v, file.problem(span, String::new()).origin)
        } else {
            return None;
        };
        match parse(&value) {
            Ok(v) => Some(Some(v)),
            Err(message) => {
                self.problems.push(Problem {
                    origin,
                    message: format!("{}: {message}", setting.key()),
                });
                Some(None)
            }
        }
    }

    /// Where the value of `setting` in force came from.
    fn origin_of(&self, setting: Setting) -> Origin {
        if self.loader.flags.get(setting).is_some() {
            self.loader.flags.origin(setting)
        } else if self.loader.env.get(setting).is_some() {
            self.loader.env.origin(setting)
        } else if let (Some((_, span)), Some(file)) = (self.raw.get(setting), self.file) {
            file.problem(span, String::new()).origin
        } else {
            Origin::Combination
        }
    }

    /// The `[kubernetes]` table; `has_entries` says whether the file lists entries, which rule
    /// out the pod template.
    fn kubernetes(&mut self, raw: &RawKubernetes, has_entries: bool) -> KubernetesConfig {
        let mut config = KubernetesConfig {
            kubelet_url: None,
            token_path: PathBuf::from(DEFAULT_TOKEN_PATH),
            ca_path: PathBuf::from(DEFAULT_CA_PATH),
            skip_kubelet_verification: raw.skip_kubelet_verification.unwrap_or(false),
            pod_template: !has_entries,
        };
        let Some(file) = self.file else {
            return config;
        };
        if let Some(url) = &raw.kubelet_url {
            match url.get_ref().parse::<KubeletUrl>() {
                Ok(u) => config.kubelet_url = Some(u),
                Err(message) => self
                    .problems
                    .push(file.problem(url.span(), format!("kubernetes.kubelet_url: {message}"))),
            }
        }
        for (key, value, target) in [
            ("token_path", &raw.token_path, &mut config.token_path),
            ("ca_path", &raw.ca_path, &mut config.ca_path),
        ] {
            if let Some(v) = value {
                match parse_path(v.get_ref()) {
                    Ok(path) => *target = path,
                    Err(message) => self
                        .problems
                        .push(file.problem(v.span(), format!("kubernetes.{key}: {message}"))),
                }
            }
        }
        if let Some(template) = &raw.pod_template {
            if *template.get_ref() && has_entries {
                self.problems.push(
                    file.problem(
                        template.span(),
                        "kubernetes.pod_template = true has no effect while entries are \
                     configured; remove it or the entries"
                            .to_owned(),
                    ),
                );
            }
            config.pod_template = *template.get_ref() && !has_entries;
        }
        config
    }

    fn entries(
        &mut self,
        list: &[Spanned<RawEntry>],
        td: &TrustDomain,
        ca_ttl: Duration,
    ) -> Vec<Entry> {
        let Some(file) = self.file else {
            return Vec::new();
        };
        let mut entries = Vec::with_capacity(list.len());
        for raw in list {
            let e = raw.get_ref();
            let ttl = match &e.ttl {
                None => None,
                Some(t) => match parse_ttl(t.get_ref()) {
                    Ok(d) if d > ca_ttl => {
                        self.problems.push(file.problem(
                            t.span(),
                            format!(
                                "ttl {} is longer than ca_ttl {}",
                                format_duration(d),
                                format_duration(ca_ttl)
                            ),
                        ));
                        None
                    }
                    Ok(d) => Some(d),
                    Err(message) => {
                        self.problems.push(file.problem(t.span(), message));
                        None
                    }
                },
            };
            let selectors: SelectorSet = e.selectors.get_ref().iter().cloned().collect();
            entries.push(Entry {
                spiffe_id: e.spiffe_id.get_ref().clone(),
                selectors,
                ttl,
                dns_names: e
                    .dns_names
                    .as_ref()
                    .map(|d| d.get_ref().clone())
                    .unwrap_or_default(),
                hint: e.hint.as_ref().map(|h| h.get_ref().clone()),
            });
        }

        for p in check_entries(&entries, td) {
            let raw = list[p.index].get_ref();
            let span = match p.field {
                EntryField::SpiffeId => Some(raw.spiffe_id.span()),
                EntryField::Selectors => Some(raw.selectors.span()),
                EntryField::Ttl => raw.ttl.as_ref().map(Spanned::span),
                EntryField::DnsNames => raw.dns_names.as_ref().map(Spanned::span),
                EntryField::Hint => raw.hint.as_ref().map(Spanned::span),
                EntryField::Entry => None,
            }
            .unwrap_or_else(|| list[p.index].span());
            let mut message = p.message;
            if let Some(other) = p.related {
                let (line, _) = line_column(file.text, list[other].span().start);
                message.push_str(&format!(" (see the entry at line {line})"));
            }
            self.problems.push(file.problem(span, message));
        }
        entries
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn entry_lines_are_the_lines_where_entries_start() {
        let text = "trust_domain = \"example.org\"\n\n[[entries]]\nspiffe_id = \"spiffe://example.org/a\"\nselectors = [\"unix:uid:1\"]\n\n# comment\n[[entries]]\nspiffe_id = \"spiffe://example.org/b\"\nselectors = [\"unix:uid:2\"]\n";
        let offsets = text.match_indices("[[entries]]").map(|(i, _)| i);
        assert_eq!(lines_of(text, offsets), [3, 8]);
        let same: Vec<usize> = text
            .match_indices("[[entries]]")
            .map(|(i, _)| line_column(text, i).0)
            .collect();
        assert_eq!(same, [3, 8]);
    }
    use super::*;

    fn loader() -> ConfigLoader {
        ConfigLoader {
            path: None,
            env: Overrides::from_lookup(|_| None),
            flags: Overrides::flags(),
            xdg_state_home: None,
        }
    }

    fn load(text: &str) -> Result<Config, ConfigError> {
        loader().load_str(text, Path::new("agent.toml"))
    }

    fn problems(text: &str) -> Vec<String> {
        load(text)
            .expect_err("config should be invalid")
            .problems()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    const MINIMAL: &str = r#"
trust_domain = "example.org"
socket_path = "/tmp/mesh-agent/public/api.sock"
data_dir = "./data"

[[entries]]
spiffe_id = "spiffe://example.org/billing/api"
selectors = ["unix:uid:1000"]
"#;

    #[test]
    fn no_file_gives_working_defaults_with_uid_template() {
        let c = loader().load().unwrap();
        assert_eq!(c.trust_domain.name(), "example.org");
        assert_eq!(c.socket_path, Path::new("/tmp/mesh-agent/public/api.sock"));
        assert_eq!(c.data_dir, Path::new("./data"));
        assert_eq!(c.admin_addr.to_string(), "127.0.0.1:8088");
        assert_eq!(c.svid_ttl, Duration::from_secs(3600));
        assert_eq!(c.jwt_ttl, Duration::from_secs(300));
        assert_eq!(c.ca_ttl, Duration::from_secs(86400));
        assert_eq!(c.key_type, KeyType::EcP256);
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.entries, None);
        let reg = c.registry();
        let granted = reg.matching(&SelectorSet::from([Selector::uid(1234)]));
        assert_eq!(
            granted[0].spiffe_id.as_str(),
            "spiffe://example.org/unix/uid/1234"
        );
    }

    #[test]
    fn xdg_state_home_moves_the_default_data_dir() {
        let mut l = loader();
        l.xdg_state_home = Some(PathBuf::from("/var/lib/state"));
        assert_eq!(
            l.load().unwrap().data_dir,
            Path::new("/var/lib/state/mesh-agent")
        );
        l.xdg_state_home = Some(PathBuf::from("relative"));
        assert_eq!(l.load().unwrap().data_dir, Path::new("./data"));
    }

    #[test]
    fn minimal_file_parses_with_its_entry() {
        let c = load(MINIMAL).unwrap();
        let entries = c.entries.as_ref().unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(
            entries[0].spiffe_id.as_str(),
            "spiffe://example.org/billing/api"
        );
        assert_eq!(
            entries[0].selectors,
            SelectorSet::from([Selector::uid(1000)])
        );
        // Entries given: the template no longer applies.
        assert!(c
            .registry()
            .matching(&SelectorSet::from([Selector::uid(1)]))
            .is_empty());
    }

    #[test]
    fn empty_entries_list_grants_nothing() {
        let c = load("entries = []").unwrap();
        assert_eq!(c.entries, Some(Vec::new()));
        assert!(c
            .registry()
            .matching(&SelectorSet::from([Selector::uid(1)]))
            .is_empty());
    }

    #[test]
    fn every_setting_is_read_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("ca.pem");
        let key = dir.path().join("ca.key");
        std::fs::write(&cert, "x").unwrap();
        std::fs::write(&key, "x").unwrap();
        let text = format!(
            r#"
trust_domain = "prod.acme"
socket_path = "/run/agent.sock"
data_dir = "/var/lib/agent"
admin_addr = "0.0.0.0:9000"
log_format = "json"
log_level = "mesh_agent=debug,warn"
svid_ttl = "30m"
jwt_ttl = "90s"
ca_ttl = "2d"
key_type = "rsa-2048"
ca_cert = "{}"
ca_key = "{}"
max_exe_hash_bytes = 1024
"#,
            cert.display(),
            key.display()
        );
        let c = load(&text).unwrap();
        assert_eq!(c.trust_domain.name(), "prod.acme");
        assert_eq!(c.socket_path, Path::new("/run/agent.sock"));
        assert_eq!(c.data_dir, Path::new("/var/lib/agent"));
        assert_eq!(c.admin_addr.to_string(), "0.0.0.0:9000");
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.log_level, "mesh_agent=debug,warn");
        assert_eq!(c.svid_ttl, Duration::from_secs(1800));
        assert_eq!(c.jwt_ttl, Duration::from_secs(90));
        assert_eq!(c.ca_ttl, Duration::from_secs(2 * 86400));
        assert_eq!(c.key_type, KeyType::Rsa2048);
        assert_eq!(
            c.upstream_ca,
            Some(UpstreamCa {
                cert,
                key,
                chain: None
            })
        );
        assert_eq!(c.max_exe_hash_bytes, 1024);
    }

    #[test]
    fn env_overrides_file_and_flags_override_env() {
        let mut l = loader();
        l.env = Overrides::from_lookup(|name| match name {
            "MESH_AGENT_TRUST_DOMAIN" => Some("env.org".into()),
            "MESH_AGENT_SOCKET_PATH" => Some("/env.sock".into()),
            "MESH_AGENT_ADMIN_ADDR" => Some(String::new()),
            _ => None,
        });
        l.flags
            .set(Setting::SocketPath, Some("/flag.sock"))
            .set(Setting::DataDir, None::<String>);
        let text = "trust_domain = \"file.org\"\nadmin_addr = \"127.0.0.1:1\"\nsocket_path = \"/file.sock\"";
        let c = l.load_str(text, Path::new("a.toml")).unwrap();
        assert_eq!(c.trust_domain.name(), "env.org");
        assert_eq!(c.socket_path, Path::new("/flag.sock"));
        // An empty variable counts as unset, so the file's value stays.
        assert_eq!(c.admin_addr.to_string(), "127.0.0.1:1");
    }

    #[test]
    fn bad_env_value_names_the_variable() {
        let mut l = loader();
        l.env = Overrides::from_lookup(|n| (n == "MESH_AGENT_SVID_TTL").then(|| "ten".into()));
        let err = l.load().unwrap_err().to_string();
        assert!(
            err.starts_with("environment variable MESH_AGENT_SVID_TTL:"),
            "{err}"
        );
        assert!(err.contains("ten"), "{err}");
        let mut l = loader();
        l.flags.set(Setting::KeyType, Some("dsa"));
        let err = l.load().unwrap_err().to_string();
        assert!(
            err.starts_with("flag --key-type:") && err.contains("dsa"),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_is_reported_with_line_and_column() {
        let p = problems("trust_domain = \"example.org\"\n\nsoket_path = \"/x\"\n");
        assert_eq!(p.len(), 1);
        assert!(p[0].starts_with("agent.toml:3:1: "), "{}", p[0]);
        assert!(p[0].contains("soket_path"), "{}", p[0]);
    }

    #[test]
    fn unknown_entry_key_is_reported_at_its_line() {
        let text = format!("{MINIMAL}dns = [\"a\"]\n");
        let p = problems(&text);
        assert!(p[0].starts_with("agent.toml:9:1: "), "{}", p[0]);
        assert!(p[0].contains("dns"), "{}", p[0]);
    }

    #[test]
    fn syntax_error_is_reported_with_line() {
        let p = problems("trust_domain = \"example.org\"\nsocket_path = /x\n");
        assert!(p[0].starts_with("agent.toml:2:"), "{}", p[0]);
    }

    #[test]
    fn bad_selector_and_id_are_reported_at_their_value() {
        let text = "[[entries]]\nspiffe_id = \"spiffe://example.org/a\"\nselectors = [\"unix:uid:1\", \"unix:pid:3\"]\n";
        let p = problems(text);
        assert!(p[0].starts_with("agent.toml:3:"), "{}", p[0]);
        assert!(p[0].contains("unix:pid:3"), "{}", p[0]);
        let text =
            "[[entries]]\nspiffe_id = \"spiffe://Example.org/a\"\nselectors = [\"unix:uid:1\"]\n";
        let p = problems(text);
        assert!(p[0].starts_with("agent.toml:2:13: "), "{}", p[0]);
    }

    #[test]
    fn bad_setting_is_reported_at_its_value_and_all_problems_are_listed() {
        let text =
            "svid_ttl = \"1 hour\"\nadmin_addr = \"localhost\"\nsocket_path = \"rel.sock\"\n";
        let p = problems(text);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(
            p[0].starts_with("agent.toml:3:15: socket_path:"),
            "{}",
            p[0]
        );
        assert!(p[1].starts_with("agent.toml:2:14: admin_addr:"), "{}", p[1]);
        assert!(p[2].starts_with("agent.toml:1:12: svid_ttl:"), "{}", p[2]);
    }

    #[test]
    fn semantic_entry_errors_point_at_the_entry_lines() {
        let text = r#"trust_domain = "example.org"

[[entries]]
spiffe_id = "spiffe://example.org/a"
selectors = ["unix:uid:1"]
hint = "db"

[[entries]]
spiffe_id = "spiffe://other.org/b"
selectors = ["unix:uid:2"]

[[entries]]
spiffe_id = "spiffe://example.org/a"
selectors = ["unix:uid:1"]

[[entries]]
spiffe_id = "spiffe://example.org/c"
selectors = ["unix:gid:4"]
hint = "db"
ttl = "48h"
"#;
        let p = problems(text);
        assert_eq!(p.len(), 4, "{p:#?}");
        assert!(
            p[0].starts_with("agent.toml:20:7: ") && p[0].contains("ttl 2d"),
            "{}",
            p[0]
        );
        assert!(
            p[1].starts_with("agent.toml:9:13: ") && p[1].contains("other.org"),
            "{}",
            p[1]
        );
        assert!(
            p[2].contains("duplicate") && p[2].contains("line 3"),
            "{}",
            p[2]
        );
        assert!(p[2].starts_with("agent.toml:12:1: "), "{}", p[2]);
        assert!(
            p[3].starts_with("agent.toml:19:8: ") && p[3].contains("`db`"),
            "{}",
            p[3]
        );
    }

    #[test]
    fn entries_are_checked_against_the_overridden_trust_domain() {
        let mut l = loader();
        l.flags.set(Setting::TrustDomain, Some("other.org"));
        let err = l
            .load_str(MINIMAL, Path::new("agent.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not in the trust domain `other.org`"), "{err}");
    }

    #[test]
    fn ttls_longer_than_the_ca_are_rejected() {
        let p = problems("ca_ttl = \"1h\"\nsvid_ttl = \"2h\"\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("agent.toml:2:12: ") && p[0].contains("2h"),
            "{}",
            p[0]
        );
    }

    #[test]
    fn default_svid_ttl_longer_than_a_short_ca_ttl_is_rejected() {
        let p = problems("\nca_ttl = \"30m\"\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("agent.toml:2:10: "), "{}", p[0]);
        assert!(p[0].contains("svid_ttl 1h (the default)"), "{}", p[0]);
    }

    #[test]
    fn upstream_ca_needs_cert_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("ca.pem");
        std::fs::write(&cert, "x").unwrap();
        let p = problems(&format!("ca_cert = \"{}\"\n", cert.display()));
        assert!(p[0].contains("ca_key is not"), "{}", p[0]);
        let p = problems("ca_cert = \"/nonexistent/ca.pem\"\nca_key = \"/nonexistent/ca.key\"\n");
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("/nonexistent/ca.pem"), "{}", p[0]);
    }

    #[test]
    fn read_error_names_the_file() {
        let mut l = loader();
        l.path = Some(PathBuf::from("/nonexistent/agent.toml"));
        let err = l.load().unwrap_err().to_string();
        assert!(err.contains("/nonexistent/agent.toml"), "{err}");
    }

    #[test]
    fn durations_parse_and_format() {
        let cases = [
            ("90s", 90_000),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("1h30m", 5_400_000),
            ("2d", 172_800_000),
            ("500ms", 500),
            (" 1m1s ", 61_000),
        ];
        for (s, ms) in cases {
            assert_eq!(parse_duration(s), Ok(Duration::from_millis(ms)), "{s}");
        }
        for bad in [
            "",
            "90",
            "1 h",
            "1w",
            "h",
            "-1s",
            "1.5h",
            "99999999999999999999s",
        ] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.contains(bad.trim()) || bad.trim().is_empty(), "{err}");
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1s500ms");
    }

    #[test]
    fn example_file_parses_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/agent.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let c = loader()
            .load_str(&text, &path)
            .unwrap_or_else(|e| panic!("{e}"));
        let entries = c.entries.as_ref().unwrap();
        assert!(entries.len() >= 3, "{entries:?}");
        assert_eq!(c.trust_domain.name(), "example.org");
    }

    #[test]
    fn example_kubernetes_table_parses_once_uncommented() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/agent.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let table: String = text
            .lines()
            .skip_while(|l| *l != "# [kubernetes]")
            .take_while(|l| !l.is_empty())
            .map(|l| format!("{}\n", l.strip_prefix("# ").unwrap_or(l)))
            .collect();
        assert!(table.starts_with("[kubernetes]\n"), "{table}");
        let c = load(&table).unwrap_or_else(|e| panic!("{e}\n{table}"));
        let k = c.kubernetes.unwrap();
        assert_eq!(
            k.kubelet_url.map(|u| u.to_string()).as_deref(),
            Some("https://127.0.0.1:10250")
        );
        assert_eq!(k.token_path, Path::new(DEFAULT_TOKEN_PATH));
        assert!(k.pod_template && !k.skip_kubelet_verification);
    }

    #[test]
    fn deploy_manifest_carries_a_valid_kubernetes_config() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent.yaml");
        let manifest = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = manifest.lines().collect();
        let start = lines
            .iter()
            .position(|l| l.trim() == "agent.toml: |")
            .expect("agent.yaml has an agent.toml ConfigMap key");
        let indent = lines[start].len() - lines[start].trim_start().len() + 2;
        let text: String = lines[start + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() >= indent)
            .map(|l| format!("{}\n", l.get(indent..).unwrap_or("")))
            .collect();

        let c = load(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));

        let k = c.kubernetes.as_ref().expect("the agent attests pods");
        assert_eq!(k.kubelet_url, None, "the kubelet comes from KUBELET_HOST");
        assert!(!k.skip_kubelet_verification);
        let reg = c.registry();
        assert!(reg.needs().kubernetes);
        let proxy: SelectorSet = [
            "k8s:ns:shop",
            "k8s:sa:orders",
            "k8s:container-name:mesh-proxy",
            "k8s:pod-label:app.kubernetes.io/name:orders",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let granted = reg.matching(&proxy);
        assert_eq!(
            granted[0].spiffe_id.as_str(),
            "spiffe://example.org/ns/shop/sa/orders"
        );
        let mut app = proxy.clone();
        app.remove(&"k8s:container-name:mesh-proxy".parse().unwrap());
        app.insert("k8s:container-name:orders".parse().unwrap());
        assert!(reg.matching(&app).is_empty(), "only the proxy container");
    }

    #[test]
    fn a_kubernetes_table_without_entries_puts_the_pod_template_in_force() {
        let c = load("trust_domain = \"prod.acme\"\n[kubernetes]\n").unwrap();
        let k = c.kubernetes.as_ref().unwrap();
        assert_eq!(k.kubelet_url, None);
        assert_eq!(k.token_path, Path::new(DEFAULT_TOKEN_PATH));
        assert_eq!(k.ca_path, Path::new(DEFAULT_CA_PATH));
        assert!(!k.skip_kubelet_verification);
        assert!(k.pod_template);
        let reg = c.registry();
        assert!(reg.needs().kubernetes);
        let sels: SelectorSet = ["k8s:ns:shop", "k8s:sa:orders", "unix:uid:1000"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let granted = reg.matching(&sels);
        assert_eq!(granted.len(), 1, "the uid template is not in force too");
        assert_eq!(
            granted[0].spiffe_id.as_str(),
            "spiffe://prod.acme/ns/shop/sa/orders"
        );
    }

    #[test]
    fn every_kubernetes_key_is_read() {
        let text = r#"
[kubernetes]
kubelet_url = "https://10.20.0.11:10250"
token_path = "/run/secrets/token"
ca_path = "/etc/kubelet-ca.pem"
skip_kubelet_verification = true
pod_template = false
"#;
        let c = load(text).unwrap();
        let k = c.kubernetes.unwrap();
        assert_eq!(
            k.kubelet_url.map(|u| u.to_string()).as_deref(),
            Some("https://10.20.0.11:10250")
        );
        assert_eq!(k.token_path, Path::new("/run/secrets/token"));
        assert_eq!(k.ca_path, Path::new("/etc/kubelet-ca.pem"));
        assert!(k.skip_kubelet_verification);
        assert!(!k.pod_template);
        // Without the pod template and without entries, the uid template applies.
        let c = load("[kubernetes]\npod_template = false\n").unwrap();
        assert!(c.registry().uid_template_domain().is_some());
    }

    #[test]
    fn entries_turn_the_pod_template_off_and_may_not_ask_for_it() {
        let c = load(&format!("{MINIMAL}[kubernetes]\n")).unwrap();
        assert!(!c.kubernetes.as_ref().unwrap().pod_template);
        assert_eq!(c.registry().pod_template_domain(), None);

        let p = problems(&format!("{MINIMAL}[kubernetes]\npod_template = true\n"));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("agent.toml:10:16: "), "{}", p[0]);
        assert!(p[0].contains("pod_template"), "{}", p[0]);
    }

    #[test]
    fn bad_kubernetes_values_are_reported_at_their_line() {
        let p = problems("[kubernetes]\nkubelet_url = \"10.0.0.1:10250\"\ntoken_path = \"\"\n");
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].starts_with("agent.toml:2:15: kubernetes.kubelet_url:")
                && p[0].contains("10.0.0.1:10250"),
            "{}",
            p[0]
        );
        assert!(
            p[1].starts_with("agent.toml:3:14: kubernetes.token_path:"),
            "{}",
            p[1]
        );
        let p = problems("trust_domain = \"example.org\"\n[kubernetes]\nkubelet = \"x\"\n");
        assert!(p[0].starts_with("agent.toml:3:1: "), "{}", p[0]);
        assert!(p[0].contains("kubelet"), "{}", p[0]);
    }

    #[test]
    fn every_setting_has_a_flag_that_overrides_it() {
        use clap::Parser;

        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            config: ConfigArgs,
        }

        let mut argv = vec!["prog".to_owned()];
        for s in Setting::ALL {
            argv.push(s.flag());
            argv.push(format!("value-of-{}", s.key()));
        }
        let cli = Cli::try_parse_from(&argv).unwrap();
        let o = cli.config.overrides();
        for s in Setting::ALL {
            assert_eq!(
                o.get(s),
                Some(format!("value-of-{}", s.key()).as_str()),
                "{s:?}"
            );
        }

        let cli = Cli::try_parse_from(["prog", "--trust-domain", "flag.org"]).unwrap();
        let mut l = cli.config.loader();
        l.env = Overrides::from_lookup(|_| None);
        assert_eq!(l.load().unwrap().trust_domain.name(), "flag.org");
    }

    #[test]
    fn settings_have_matching_env_and_flag_names() {
        assert_eq!(Setting::TrustDomain.env_var(), "MESH_AGENT_TRUST_DOMAIN");
        assert_eq!(Setting::MaxExeHashBytes.flag(), "--max-exe-hash-bytes");
        assert_eq!("ec-p384".parse::<KeyType>().unwrap(), KeyType::EcP384);
        assert_eq!(KeyType::Rsa4096.to_string(), "rsa-4096");
    }
}
