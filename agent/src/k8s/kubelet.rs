//! A client of the kubelet's pod list: `GET https://<node>:10250/pods`.
//!
//! The kubelet authenticates the agent by its service account token (sent as a bearer token and
//! checked with a TokenReview) and authorizes it by RBAC on `nodes/proxy`. The token is read
//! from its file before every request, so a rotated projected token is used as soon as the
//! kubelet writes it. The kubelet's serving certificate is verified against a CA file (the
//! service account's `ca.crt` by default, which signs kubelet certificates only when the
//! cluster issues them, e.g. with `serverTLSBootstrap`); the CA file is read again when its
//! content changes. Verification can be turned off explicitly, and plain `http://` reaches the
//! read-only port, to which no token is sent.
//!
//! Pod lists are cached briefly: many callers attested at once share one request. A container
//! that is not in the list may have just started, before the kubelet reported it, so the list
//! is fetched again a bounded number of times before giving up.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::header::{ACCEPT, AUTHORIZATION, HOST};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::pods::{PodContainer, PodList};

/// The kubelet's authenticated HTTPS port.
pub const KUBELET_PORT: u16 = 10250;
/// The kubelet's read-only HTTP port, where enabled.
pub const KUBELET_READ_ONLY_PORT: u16 = 10255;
/// Where Kubernetes mounts a pod's service account token.
pub const DEFAULT_TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// Where Kubernetes mounts the cluster's CA certificate.
pub const DEFAULT_CA_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// Environment variable naming the kubelet's host, e.g. set from the downward API's
/// `status.hostIP`; it takes precedence over [`NODE_NAME_ENV`].
pub const KUBELET_HOST_ENV: &str = "KUBELET_HOST";
/// Environment variable holding the node's name (downward API `spec.nodeName`), used as the
/// kubelet's host when [`KUBELET_HOST_ENV`] is not set.
pub const NODE_NAME_ENV: &str = "NODE_NAME";

/// Largest pod list accepted: a node at the default limit of 110 pods serves well under this.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// Bytes of an error response quoted in [`KubeletError::Status`].
const MAX_QUOTED_BYTES: usize = 300;

/// Why the kubelet could not be asked, or did not know the container.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubeletError {
    /// The service account token file could not be read.
    #[error("cannot read the service account token `{}`: {source}", path.display())]
    Token {
        /// The token file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The service account token file is empty.
    #[error("the service account token `{}` is empty", path.display())]
    EmptyToken {
        /// The token file.
        path: PathBuf,
    },
    /// The CA file could not be read or holds no usable certificate.
    #[error("cannot use `{}` as the kubelet's CA: {reason}", path.display())]
    Ca {
        /// The CA file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// TLS could not be set up.
    #[error("cannot set up tls for the kubelet: {0}")]
    TlsSetup(String),
    /// The kubelet's URL cannot be used for TLS.
    #[error("kubelet url `{url}` has no host name usable for TLS")]
    ServerName {
        /// The URL.
        url: KubeletUrl,
    },
    /// No TCP connection could be opened.
    #[error("cannot connect to the kubelet at {url}: {source}")]
    Connect {
        /// The URL.
        url: KubeletUrl,
        /// The error.
        source: std::io::Error,
    },
    /// The TLS handshake failed, e.g. because the kubelet's certificate is not signed by the CA.
    #[error("tls handshake with the kubelet at {url} failed: {source}")]
    Tls {
        /// The URL.
        url: KubeletUrl,
        /// The error.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("http request to the kubelet at {url} failed: {reason}")]
    Http {
        /// The URL.
        url: KubeletUrl,
        /// What failed.
        reason: String,
    },
    /// No answer in time.
    #[error("the kubelet at {url} did not answer within {after:?}")]
    Timeout {
        /// The URL.
        url: KubeletUrl,
        /// The time allowed.
        after: Duration,
    },
    /// The kubelet answered with another status than 200, e.g. 401 for a token it does not
    /// accept or 403 when RBAC does not allow `nodes/proxy`.
    #[error("the kubelet at {url} answered {status} to GET /pods: {body}")]
    Status {
        /// The URL.
        url: KubeletUrl,
        /// The HTTP status.
        status: StatusCode,
        /// The start of the response body.
        body: String,
    },
    /// The answer is not a pod list.
    #[error(
        "the kubelet at {url} answered GET /pods with something that is not a pod list: {source}"
    )]
    Decode {
        /// The URL.
        url: KubeletUrl,
        /// The error.
        source: serde_json::Error,
    },
    /// A fetch failed moments ago; callers that waited for it share its failure rather than
    /// each waiting for one of their own.
    #[error("the kubelet at {url} could not be asked moments ago: {reason}")]
    RecentFailure {
        /// The URL.
        url: KubeletUrl,
        /// The failure.
        reason: String,
    },
    /// The container is not in the kubelet's pod list, even after fetching it again.
    #[error(
        "container `{container_id}` of pod `{pod_uid}` is not in the kubelet's pod list \
         after {attempts} attempts"
    )]
    ContainerNotFound {
        /// The container ID.
        container_id: String,
        /// The pod UID.
        pod_uid: String,
        /// How many pod lists were looked at.
        attempts: u32,
    },
}

/// Where the kubelet is: `https://HOST:PORT` or `http://HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletUrl {
    https: bool,
    /// The host, without the brackets of an IPv6 address.
    host: String,
    port: u16,
}

impl KubeletUrl {
    /// `https://127.0.0.1:10250`: the kubelet as seen from a pod on the host network.
    pub fn localhost() -> Self {
        Self {
            https: true,
            host: "127.0.0.1".to_owned(),
            port: KUBELET_PORT,
        }
    }

    /// The kubelet at `https://<host>:10250`, where the host is the value of
    /// [`KUBELET_HOST_ENV`], else of [`NODE_NAME_ENV`], else `127.0.0.1`. `lookup` maps a
    /// variable's name to its value.
    ///
    /// # Errors
    ///
    /// A message naming the variable if its value is not a host.
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        for var in [KUBELET_HOST_ENV, NODE_NAME_ENV] {
            let Some(host) = lookup(var).filter(|h| !h.is_empty()) else {
                continue;
            };
            let host = match host.parse::<Ipv6Addr>() {
                Ok(v6) => format!("[{v6}]"),
                Err(_) => host,
            };
            return format!("https://{host}:{KUBELET_PORT}")
                .parse()
                .map_err(|e| format!("environment variable {var}: {e}"));
        }
        Ok(Self::localhost())
    }

    /// Whether the URL is `https://`.
    pub fn is_https(&self) -> bool {
        self.https
    }

    /// The host, without brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `HOST:PORT`, with brackets around an IPv6 address: the `Host` header.
    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for KubeletUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.authority())
    }
}

impl FromStr for KubeletUrl {
    type Err = String;

    /// Parses `https://HOST[:PORT]` or `http://HOST[:PORT]`; the port defaults to 10250 for
    /// https and 10255 for http. A path other than `/`, a query or user information is refused.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("kubelet url `{s}` {why}");
        let uri: http::Uri = s
            .parse()
            .map_err(|_| bad("is not a URL such as https://10.0.0.5:10250"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("must start with https:// or http://")),
        };
        let authority = uri.authority().ok_or_else(|| bad("has no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("must not contain user information"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad("must have no path or query; /pods is added"));
        }
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(bad("has no host"));
        }
        let port = authority.port_u16().unwrap_or(if https {
            KUBELET_PORT
        } else {
            KUBELET_READ_ONLY_PORT
        });
        Ok(Self {
            https,
            host: host.to_owned(),
            port,
        })
    }
}

impl serde::Serialize for KubeletUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// How to reach the kubelet, and how patiently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletOptions {
    /// Where the kubelet is.
    pub url: KubeletUrl,
    /// The service account token file, read before every request over https.
    pub token_path: PathBuf,
    /// PEM CA certificates that sign the kubelet's serving certificate.
    pub ca_path: PathBuf,
    /// Accept any kubelet certificate. Anyone who can intercept the connection then sees the
    /// token and can answer with any pod list.
    pub skip_verification: bool,
    /// How long a fetched pod list answers lookups.
    pub cache_for: Duration,
    /// Pause before fetching again when a container is not in the list.
    pub retry_interval: Duration,
    /// Pod lists looked at for one container before giving up, at least 1.
    pub max_attempts: u32,
    /// Time allowed for one request, connection included.
    pub timeout: Duration,
}

impl KubeletOptions {
    /// Options for `url` with the service account's token and CA, a 1 s cache, up to 20 lists
    /// 250 ms apart (about 5 s) for a container the kubelet does not know yet, and 5 s per
    /// request.
    pub fn new(url: KubeletUrl) -> Self {
        Self {
            url,
            token_path: PathBuf::from(DEFAULT_TOKEN_PATH),
            ca_path: PathBuf::from(DEFAULT_CA_PATH),
            skip_verification: false,
            cache_for: Duration::from_secs(1),
            retry_interval: Duration::from_millis(250),
            max_attempts: 20,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Fetches and caches the kubelet's pod list; keep one per agent.
#[derive(Debug)]
pub struct KubeletClient {
    options: KubeletOptions,
    tls: Tls,
    cache: tokio::sync::Mutex<Cache>,
    fetches: AtomicU64,
}

#[derive(Debug, Default)]
struct Cache {
    /// The last pod list fetched.
    fetched: Option<Fetched>,
    /// When the last fetch failed, and why, if it failed after `fetched` was fetched.
    failed: Option<(Instant, String)>,
}

#[derive(Debug)]
enum Tls {
    /// Plain HTTP.
    None,
    /// Verify against the CA file; the config is rebuilt when the file's content changes.
    Ca(Mutex<(Vec<u8>, Arc<ClientConfig>)>),
    /// Accept any certificate.
    Unverified(Arc<ClientConfig>),
}

#[derive(Debug)]
struct Fetched {
    pods: Arc<PodList>,
    at: Instant,
    number: u64,
}

impl KubeletClient {
    /// A client with `options`. The CA file is read now, so a missing or bad one is reported
    /// at start; the token is read at each request.
    ///
    /// # Errors
    ///
    /// [`KubeletError::Ca`] if the CA file cannot be used.
    pub fn new(options: KubeletOptions) -> Result<Self, KubeletError> {
        let tls = if !options.url.is_https() {
            tracing::info!(
                url = %options.url,
                "kubelet reached over plain http: no certificate is checked and no token is sent"
            );
            Tls::None
        } else if options.skip_verification {
            tracing::warn!(
                url = %options.url,
                "kubelet certificate verification is off (skip_kubelet_verification): anyone \
                 who can intercept the connection sees the agent's token and can forge pod lists"
            );
            Tls::Unverified(unverified_config()?)
        } else {
            let pem = std::fs::read(&options.ca_path).map_err(|e| KubeletError::Ca {
                path: options.ca_path.clone(),
                reason: e.to_string(),
            })?;
            let config = verified_config(&pem, &options.ca_path)?;
            Tls::Ca(Mutex::new((pem, config)))
        };
        Ok(Self {
            options,
            tls,
            cache: tokio::sync::Mutex::new(Cache::default()),
            fetches: AtomicU64::new(0),
        })
    }

    /// The options the client was made with.
    pub fn options(&self) -> &KubeletOptions {
        &self.options
    }

    /// Pod lists fetched so far; for tests and metrics.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// The kubelet's pod list, from the cache if it is recent.
    ///
    /// # Errors
    ///
    /// Any [`KubeletError`] but [`KubeletError::ContainerNotFound`].
    pub async fn pods(&self) -> Result<Arc<PodList>, KubeletError> {
        Ok(self.pod_list(None).await?.0)
    }

    /// The container `container_id` of pod `pod_uid`. If the pod list lacks it, newer lists
    /// are fetched, up to [`KubeletOptions::max_attempts`] lists in all.
    ///
    /// # Errors
    ///
    /// [`KubeletError::ContainerNotFound`] naming the container if no list has it, or the
    /// error that stopped a fetch.
    pub async fn find(
        &self,
        pod_uid: &str,
        container_id: &str,
    ) -> Result<PodContainer, KubeletError> {
        let attempts = self.options.max_attempts.max(1);
        let mut seen = None;
        for attempt in 1..=attempts {
            let (pods, number) = self.pod_list(seen).await?;
            if let Some(found) = pods.find(pod_uid, container_id) {
                return Ok(found);
            }
            seen = Some(number);
            if attempt < attempts {
                tracing::debug!(
                    container_id,
                    pod_uid,
                    attempt,
                    "container not in the kubelet's pod list yet; asking again"
                );
                tokio::time::sleep(self.options.retry_interval).await;
            }
        }
        Err(KubeletError::ContainerNotFound {
            container_id: container_id.to_owned(),
            pod_uid: pod_uid.to_owned(),
            attempts,
        })
    }

    /// A pod list fetched less than `cache_for` ago and, if `newer_than` is given, after the
    /// list of that number; fetches one otherwise. One fetch runs at a time, and callers that
    /// waited for it use its result, or its failure if it failed less than `cache_for` ago.
    async fn pod_list(&self, newer_than: Option<u64>) -> Result<(Arc<PodList>, u64), KubeletError> {
        let mut cache = self.cache.lock().await;
        if let Some(f) = &cache.fetched {
            let fresh = f.at.elapsed() < self.options.cache_for;
            if fresh && newer_than.is_none_or(|n| f.number > n) {
                return Ok((Arc::clone(&f.pods), f.number));
            }
        }
        if let Some((at, reason)) = &cache.failed {
            if at.elapsed() < self.options.cache_for {
                return Err(KubeletError::RecentFailure {
                    url: self.options.url.clone(),
                    reason: reason.clone(),
                });
            }
        }
        let pods = match self.fetch().await {
            Ok(pods) => Arc::new(pods),
            Err(error) => {
                tracing::warn!(url = %self.options.url, %error, "cannot fetch the kubelet's pod list");
                cache.failed = Some((Instant::now(), error.to_string()));
                return Err(error);
            }
        };
        let number = self.fetches.fetch_add(1, Ordering::Relaxed) + 1;
        *cache = Cache {
            fetched: Some(Fetched {
                pods: Arc::clone(&pods),
                at: Instant::now(),
                number,
            }),
            failed: None,
        };
        Ok((pods, number))
    }

    async fn fetch(&self) -> Result<PodList, KubeletError> {
        let url = &self.options.url;
        let exchange = async {
            let (token, tls_config) = match &self.tls {
                Tls::None => (None, None),
                Tls::Unverified(config) => (Some(self.token().await?), Some(Arc::clone(config))),
                Tls::Ca(state) => (
                    Some(self.token().await?),
                    Some(self.ca_config(state).await?),
                ),
            };
            let tcp = TcpStream::connect((url.host(), url.port()))
                .await
                .map_err(|source| KubeletError::Connect {
                    url: url.clone(),
                    source,
                })?;
            match tls_config {
                None => get_pods(tcp, url, None).await,
                Some(config) => {
                    let name = server_name(url)?;
                    let tls = TlsConnector::from(config)
                        .connect(name, tcp)
                        .await
                        .map_err(|source| KubeletError::Tls {
                            url: url.clone(),
                            source,
                        })?;
                    get_pods(tls, url, token).await
                }
            }
        };
        tokio::time::timeout(self.options.timeout, exchange)
            .await
            .map_err(|_| KubeletError::Timeout {
                url: url.clone(),
                after: self.options.timeout,
            })?
    }

    async fn token(&self) -> Result<BearerToken, KubeletError> {
        let path = &self.options.token_path;
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|source| KubeletError::Token {
                path: path.clone(),
                source,
            })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(KubeletError::EmptyToken { path: path.clone() });
        }
        Ok(BearerToken(token.to_owned()))
    }

    /// The TLS config for the CA file's current content; `state` holds the last content read.
    async fn ca_config(
        &self,
        state: &Mutex<(Vec<u8>, Arc<ClientConfig>)>,
    ) -> Result<Arc<ClientConfig>, KubeletError> {
        let path = &self.options.ca_path;
        let pem = tokio::fs::read(path).await.map_err(|e| KubeletError::Ca {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.0 != pem {
            let config = verified_config(&pem, path)?;
            tracing::info!(ca = %path.display(), "kubelet CA file changed; using its new content");
            *state = (pem, config);
        }
        Ok(Arc::clone(&state.1))
    }
}

/// A bearer token; its `Debug` does not show it.
struct BearerToken(String);

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

fn server_name(url: &KubeletUrl) -> Result<ServerName<'static>, KubeletError> {
    match url.host().parse::<IpAddr>() {
        Ok(ip) => Ok(ServerName::IpAddress(ip.into())),
        Err(_) => ServerName::try_from(url.host().to_owned())
            .map_err(|_| KubeletError::ServerName { url: url.clone() }),
    }
}

/// One `GET /pods` over `io`.
async fn get_pods<IO>(
    io: IO,
    url: &KubeletUrl,
    token: Option<BearerToken>,
) -> Result<PodList, KubeletError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http_error = |reason: String| KubeletError::Http {
        url: url.clone(),
        reason,
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| http_error(e.to_string()))?;

    let mut request = Request::get("/pods")
        .header(HOST, url.authority())
        .header(ACCEPT, "application/json");
    if let Some(token) = token {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", token.0))
            .map_err(|_| http_error("the token has characters a header cannot carry".into()))?;
        value.set_sensitive(true);
        request = request.header(AUTHORIZATION, value);
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| http_error(e.to_string()))?;

    let exchange = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| http_error(e.to_string()))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| http_error(format!("reading the response: {e}")))?
            .to_bytes();
        Ok::<_, KubeletError>((status, body))
    };
    // The connection is driven alongside the exchange and dropped (closed) after it. A server
    // that closes the connection once it has answered (`Connection: close`) can end it before
    // the exchange has taken the response hyper already buffered, so the connection's end
    // decides nothing: the exchange, finished after the connection is dropped, does.
    tokio::pin!(exchange);
    let mut connection = Box::pin(connection);
    let connection_ended = tokio::select! {
        result = &mut exchange => Ok(result),
        result = &mut connection => Err(result),
    };
    let (status, body) = match connection_ended {
        Ok(result) => result?,
        Err(connection_result) => {
            drop(connection);
            match (exchange.await, connection_result) {
                (Ok(answer), _) => answer,
                (Err(_), Err(e)) => return Err(http_error(e.to_string())),
                (Err(e), Ok(())) => return Err(e),
            }
        }
    };

    if status != StatusCode::OK {
        let quoted = &body[..body.len().min(MAX_QUOTED_BYTES)];
        return Err(KubeletError::Status {
            url: url.clone(),
            status,
            body: String::from_utf8_lossy(quoted).trim().to_owned(),
        });
    }
    serde_json::from_slice(&body).map_err(|source| KubeletError::Decode {
        url: url.clone(),
        source,
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn verified_config(pem: &[u8], path: &Path) -> Result<Arc<ClientConfig>, KubeletError> {
    let ca_error = |reason: String| KubeletError::Ca {
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ca_error(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(ca_error("no PEM certificate in the file".to_owned()));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| ca_error(format!("unusable certificate: {e}")))?;
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| KubeletError::TlsSetup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn unverified_config() -> Result<Arc<ClientConfig>, KubeletError> {
    let provider = provider();
    let verifier = Arc::new(AnyServerCertificate {
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| KubeletError::TlsSetup(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts any server certificate, but still checks that the server holds its key, so the
/// connection is encrypted to whoever presented it.
#[derive(Debug)]
struct AnyServerCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
