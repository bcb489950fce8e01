//! The Workload API server: a tonic service over any [`Provider`], served on a Unix socket.
//!
//! What the server guarantees on the wire, whatever the provider does:
//!
//! - every stream message is a complete snapshot, sent as soon as the provider yields it;
//! - `FetchX509SVID` never sends an empty `svids` list (`PermissionDenied`, "no identity
//!   issued", instead) and hints are unique and at most 1024 bytes (later duplicates dropped);
//! - no bundle map carries an empty value, and an empty bundle map is never sent;
//! - `FetchJWTSVID` needs a non-empty audience; `ValidateJWTSVID` a non-empty audience and token;
//! - validated claims always include `sub`, `aud` (as a list) and `exp`;
//! - streams never end with OK: the end of a provider stream and server shutdown both end
//!   them with `Unavailable`, so clients reconnect.
//!
//! Connections go through [`PeerStream`] (peer credentials and a pidfd taken at accept time)
//! and [`AuthorityRewriter`] (so Java and gRPC-core clients are understood), and requests
//! through [`SecurityHeaderLayer`].

use std::{
    collections::{BTreeMap, HashSet},
    future::Future,
    io,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{UnixListener, UnixStream},
    sync::watch,
};
use tonic::{transport::server::Connected, Request, Response, Status};

use crate::{
    authority::{AuthorityRewriter, Limits},
    header::SecurityHeaderLayer,
    proto::{
        self,
        spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer},
    },
    provider::{
        Caller, JwtBundles, JwtSvid, Provider, ProviderError, ProviderStream, ValidatedJwt,
        X509Bundles, X509Context,
    },
    streaming::StreamingLayer,
};

/// Longest hint the server forwards (SPIFFE Workload API standard).
pub const MAX_HINT_LEN: usize = 1024;

/// How long shutdown waits for connections to close after streams have been ended.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why serving stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The socket could not be created at `path`.
    #[error("cannot bind workload api socket `{path}`: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Something other than a socket already exists at `path`.
    #[error("`{path}` exists and is not a socket")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The reflection service could not be built from the embedded descriptor set.
    #[error("cannot build the reflection service: {0}")]
    Reflection(String),
}

/// A configurable Workload API server.
///
/// ```no_run
/// # async fn run<P: workload_api::Provider>(provider: std::sync::Arc<P>) -> Result<(), workload_api::server::ServeError> {
/// let listener = tokio::net::UnixListener::bind("/tmp/agent/api.sock").unwrap();
/// workload_api::server::WorkloadApiServer::new(provider)
///     .serve(listener, async { let _ = tokio::signal::ctrl_c().await; })
///     .await
/// # }
/// ```
pub struct WorkloadApiServer<P> {
    provider: Arc<P>,
    limits: Limits,
    shutdown_grace: Duration,
}

impl<P: Provider> WorkloadApiServer<P> {
    /// A server answering from `provider`, with default limits and shutdown grace.
    pub fn new(provider: Arc<P>) -> Self {
        Self {
            provider,
            limits: Limits::default(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }

    /// Sets the header-block limits of the `:authority` adapter.
    #[must_use]
    pub fn authority_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets how long shutdown waits for connections to close once streams have ended.
    #[must_use]
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Serves on an already bound listener until `shutdown` completes.
    ///
    /// On shutdown, open streams end with `Unavailable` ("server shutting down"), new
    /// connections are refused, and the call returns once every connection has closed or the
    /// grace period has passed. The socket file is left in place: whoever bound it removes it.
    ///
    /// # Errors
    ///
    /// [`ServeError::Reflection`] when the reflection service cannot be built.
    pub async fn serve<F>(self, listener: UnixListener, shutdown: F) -> Result<(), ServeError>
    where
        F: Future<Output = ()> + Send,
    {
        let (stop_tx, stop_rx) = watch::channel(false);
        let service = Arc::new(WorkloadApiService {
            provider: self.provider,
            stop: stop_rx.clone(),
        });
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| ServeError::Reflection(e.to_string()))?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| ServeError::Reflection(e.to_string()))?;

        let routes =
            tonic::service::Routes::new(SpiffeWorkloadApiServer::from_arc(Arc::clone(&service)))
                .add_service(reflection_v1)
                .add_service(reflection_v1alpha);
        let stack = tower::ServiceBuilder::new()
            .layer(SecurityHeaderLayer)
            .layer(StreamingLayer::new(service))
            .service(routes);

        // Every connection task holds a receiver of `open`; once the accept loop has stopped,
        // `open_tx.closed()` completes when the last connection has ended.
        let (open_tx, open_rx) = watch::channel(());
        let limits = self.limits;
        {
            let mut shutdown = std::pin::pin!(shutdown);
            loop {
                let io = tokio::select! {
                    () = &mut shutdown => break,
                    io = accept(&listener, limits) => io,
                };
                serve_connection(io, stack.clone(), stop_rx.clone(), open_rx.clone());
            }
        }
        // New connections are refused from here on.
        drop(listener);
        drop(open_rx);
        drop(stack);
        tracing::info!("workload api shutting down");
        // Streams see this first and end with Unavailable, which lets every connection close
        // gracefully.
        let _ = stop_tx.send(true);

        let grace = self.shutdown_grace;
        tokio::select! {
            () = open_tx.closed() => Ok(()),
            () = tokio::time::sleep(grace) => {
                tracing::warn!(grace_ms = grace.as_millis(), "connections still open after shutdown grace; leaving them");
                Ok(())
            }
        }
    }

    /// Binds a Unix socket at `path` and serves on it until `shutdown` completes, then removes
    /// the socket file.
    ///
    /// A stale socket file at `path` is replaced; anything else there is an error. The socket
    /// gets the permissions of the process umask; the parent directory must exist.
    ///
    /// # Errors
    ///
    /// [`ServeError::NotASocket`], [`ServeError::Bind`], or any error of [`Self::serve`].
    pub async fn serve_path<F>(self, path: &Path, shutdown: F) -> Result<(), ServeError>
    where
        F: Future<Output = ()> + Send,
    {
        let listener = bind_unix(path)?;
        tracing::info!(path = %path.display(), "workload api listening");
        let result = self.serve(listener, shutdown).await;
        if let Err(error) = std::fs::remove_file(path) {
            tracing::warn!(path = %path.display(), %error, "cannot remove workload api socket");
        }
        result
    }
}

/// Serves `provider` on a Unix socket at `path` until `shutdown` completes. Shorthand for
/// [`WorkloadApiServer::serve_path`] with defaults.
///
/// # Errors
///
/// See [`WorkloadApiServer::serve_path`].
pub async fn serve_unix<P, F>(path: &Path, provider: Arc<P>, shutdown: F) -> Result<(), ServeError>
where
    P: Provider,
    F: Future<Output = ()> + Send,
{
    WorkloadApiServer::new(provider)
        .serve_path(path, shutdown)
        .await
}

/// Binds a Unix listener at `path`, replacing a stale socket file.
///
/// # Errors
///
/// [`ServeError::NotASocket`] when a non-socket file is in the way, [`ServeError::Bind`] when
/// binding fails.
pub fn bind_unix(path: &Path) -> Result<UnixListener, ServeError> {
    use std::os::unix::fs::FileTypeExt;

    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|source| ServeError::Bind {
                path: path.to_owned(),
                source,
            })?;
        }
        Ok(_) => {
            return Err(ServeError::NotASocket {
                path: path.to_owned(),
            })
        }
        Err(_) => {}
    }
    UnixListener::bind(path).map_err(|source| ServeError::Bind {
        path: path.to_owned(),
        source,
    })
}

/// The next accepted connection with its credentials, wrapped in the `:authority` adapter.
///
/// Accept errors (a full file table, say) are logged and retried after a short pause rather
/// than spinning.
async fn accept(listener: &UnixListener, limits: Limits) -> AuthorityRewriter<PeerStream> {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => match PeerStream::new(stream) {
                Ok(peer) => {
                    tracing::debug!(
                        pid = peer.caller.pid(),
                        uid = peer.caller.uid(),
                        "workload api connection accepted"
                    );
                    return AuthorityRewriter::with_limits(peer, limits);
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot read peer credentials; dropping connection");
                }
            },
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serves HTTP/2 on one accepted connection in a task of its own.
///
/// hyper's HTTP/2 connection is driven directly rather than through tonic's server, whose
/// per-connection task also carries HTTP/1 version detection and connection-age timers the
/// Workload API does not use; with a thousand idle streams on a node, each connection's task
/// is resident memory for as long as the workload runs. The caller read at accept time is
/// attached to every request, as tonic does with [`Connected::connect_info`].
fn serve_connection<S>(
    io: AuthorityRewriter<PeerStream>,
    service: S,
    mut stop: watch::Receiver<bool>,
    open: watch::Receiver<()>,
) where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    use tower::ServiceExt as _;

    let caller = io.connect_info();
    let service = service.map_request(move |request: http::Request<hyper::body::Incoming>| {
        let mut request = request.map(tonic::body::Body::new);
        request.extensions_mut().insert(caller.clone());
        request
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        // gRPC has no use for a `date` header; hyper's changes every second, and each new
        // value would take a slot in the connection's HPACK table.
        .auto_date_header(false);
    // Made here and used in place through `&mut` below: moved into a local of the task, it
    // would be stored twice in the task's memory.
    let mut connection =
        builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::spawn(async move {
        let result = tokio::select! {
            result = &mut connection => result,
            () = async { drop(stop.wait_for(|stop| *stop).await) } => {
                Pin::new(&mut connection).graceful_shutdown();
                (&mut connection).await
            }
        };
        if let Err(error) = result {
            tracing::debug!(%error, "workload api connection ended with an error");
        }
        drop(open);
    });
}

/// An accepted Unix stream and the [`Caller`] read from it at accept time.
///
/// Its [`Connected`] impl makes the [`Caller`] available to handlers as a request extension.
#[derive(Debug)]
pub struct PeerStream {
    stream: UnixStream,
    caller: Caller,
}

impl PeerStream {
    /// Reads the peer credentials of `stream` and opens a pidfd for the peer.
    ///
    /// # Errors
    ///
    /// The I/O error of reading `SO_PEERCRED`.
    pub fn new(stream: UnixStream) -> io::Result<Self> {
        let caller = Caller::from_unix_stream(&stream)?;
        Ok(Self { stream, caller })
    }

    /// The caller read at accept time.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }
}

impl Connected for PeerStream {
    type ConnectInfo = Caller;

    fn connect_info(&self) -> Caller {
        self.caller.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

// === impl WorkloadApiService ===

/// The generated `SpiffeWorkloadApi` trait implemented over a [`Provider`]. The streaming
/// methods are answered by [`StreamingLayer`] in front of it, which opens their streams with
/// the same `open_*` functions.
pub(crate) struct WorkloadApiService<P> {
    provider: Arc<P>,
    stop: watch::Receiver<bool>,
}

pub(crate) type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl<P: Provider> SpiffeWorkloadApi for WorkloadApiService<P> {
    type FetchX509SVIDStream = ResponseStream<proto::X509svidResponse>;
    type FetchX509BundlesStream = ResponseStream<proto::X509BundlesResponse>;
    type FetchJWTBundlesStream = ResponseStream<proto::JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<proto::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let caller = caller_of(request.extensions(), "FetchX509SVID")?;
        Ok(Response::new(self.open_x509_svid(&caller).await?))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<proto::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let caller = caller_of(request.extensions(), "FetchX509Bundles")?;
        Ok(Response::new(self.open_x509_bundles(&caller).await?))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<proto::JwtsvidRequest>,
    ) -> Result<Response<proto::JwtsvidResponse>, Status> {
        let caller = caller_of(request.extensions(), "FetchJWTSVID")?;
        let proto::JwtsvidRequest {
            audience,
            spiffe_id,
        } = request.into_inner();
        if audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument("audience contains an empty value"));
        }
        let spiffe_id = (!spiffe_id.is_empty()).then_some(spiffe_id);

        let svids = self
            .provider
            .fetch_jwt_svids(&caller, audience, spiffe_id)
            .await?;
        Ok(Response::new(jwt_svid_response(svids)?))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<proto::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let caller = caller_of(request.extensions(), "FetchJWTBundles")?;
        Ok(Response::new(self.open_jwt_bundles(&caller).await?))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<proto::ValidateJwtsvidRequest>,
    ) -> Result<Response<proto::ValidateJwtsvidResponse>, Status> {
        let caller = caller_of(request.extensions(), "ValidateJWTSVID")?;
        let proto::ValidateJwtsvidRequest { audience, svid } = request.into_inner();
        if audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }

        let validated = self
            .provider
            .validate_jwt_svid(&caller, &audience, &svid)
            .await?;
        Ok(Response::new(validate_response(validated)?))
    }
}

impl<P: Provider> WorkloadApiService<P> {
    /// The `FetchX509SVID` stream of `caller`.
    pub(crate) async fn open_x509_svid(
        &self,
        caller: &Caller,
    ) -> Result<ResponseStream<proto::X509svidResponse>, Status> {
        let stream = self.provider.watch_x509_context(caller).await?;
        Ok(self.forward(stream, x509_svid_response))
    }

    /// The `FetchX509Bundles` stream of `caller`.
    pub(crate) async fn open_x509_bundles(
        &self,
        caller: &Caller,
    ) -> Result<ResponseStream<proto::X509BundlesResponse>, Status> {
        let stream = self.provider.watch_x509_bundles(caller).await?;
        Ok(self.forward(stream, x509_bundles_response))
    }

    /// The `FetchJWTBundles` stream of `caller`.
    pub(crate) async fn open_jwt_bundles(
        &self,
        caller: &Caller,
    ) -> Result<ResponseStream<proto::JwtBundlesResponse>, Status> {
        let stream = self.provider.watch_jwt_bundles(caller).await?;
        Ok(self.forward(stream, jwt_bundles_response))
    }
}

impl<P> WorkloadApiService<P> {
    /// Turns a provider stream into a response stream that never ends with OK.
    fn forward<T, R>(
        &self,
        stream: ProviderStream<T>,
        convert: fn(T) -> Result<R, Status>,
    ) -> ResponseStream<R>
    where
        T: Send + 'static,
        R: Send + 'static,
    {
        let state = Some((stream, self.stop.clone()));
        Box::pin(futures::stream::unfold(state, move |state| async move {
            let (mut stream, mut stop) = state?;
            let item = tokio::select! {
                // Prefer ending on shutdown over sending one more update.
                biased;
                _ = stop.wait_for(|stop| *stop) => {
                    return Some((Err(Status::unavailable("server shutting down")), None));
                }
                item = stream.next() => item,
            };
            match item.map(|item| item.map_err(Status::from).and_then(convert)) {
                Some(Ok(message)) => Some((Ok(message), Some((stream, stop)))),
                Some(Err(status)) => Some((Err(status), None)),
                None => Some((Err(Status::unavailable("identity stream ended")), None)),
            }
        }))
    }
}

/// The caller the accept loop attached to the connection.
pub(crate) fn caller_of(
    extensions: &http::Extensions,
    method: &'static str,
) -> Result<Caller, Status> {
    let caller = extensions.get::<Caller>().cloned().ok_or_else(|| {
        Status::unavailable("caller credentials are not available on this connection")
    })?;
    tracing::debug!(
        method,
        pid = caller.pid(),
        uid = caller.uid(),
        "workload api call"
    );
    Ok(caller)
}

// === conversions to wire messages ===

fn x509_svid_response(context: X509Context) -> Result<proto::X509svidResponse, Status> {
    let mut hints = HashSet::new();
    let mut svids = Vec::with_capacity(context.svids.len());
    for svid in context.svids {
        if svid.spiffe_id.is_empty()
            || svid.cert_chain.is_empty()
            || svid.private_key.is_empty()
            || svid.bundle.is_empty()
        {
            return Err(Status::internal(format!(
                "x509-svid `{}` has an empty field",
                svid.spiffe_id
            )));
        }
        if !accept_hint(&mut hints, &svid.hint, &svid.spiffe_id) {
            continue;
        }
        svids.push(proto::X509svid {
            spiffe_id: svid.spiffe_id,
            x509_svid: svid.cert_chain,
            x509_svid_key: svid.private_key,
            bundle: svid.bundle,
            hint: svid.hint,
        });
    }
    if svids.is_empty() {
        return Err(ProviderError::NoIdentity.into());
    }
    Ok(proto::X509svidResponse {
        svids,
        crl: Vec::new(),
        federated_bundles: non_empty_bundles(context.federated_bundles),
    })
}

fn x509_bundles_response(bundles: X509Bundles) -> Result<proto::X509BundlesResponse, Status> {
    let bundles = non_empty_bundles(bundles.bundles);
    if bundles.is_empty() {
        return Err(Status::unavailable("no x509 bundle available"));
    }
    Ok(proto::X509BundlesResponse {
        crl: Vec::new(),
        bundles,
    })
}

fn jwt_bundles_response(bundles: JwtBundles) -> Result<proto::JwtBundlesResponse, Status> {
    let bundles = non_empty_bundles(bundles.bundles);
    if bundles.is_empty() {
        return Err(Status::unavailable("no jwt bundle available"));
    }
    Ok(proto::JwtBundlesResponse { bundles })
}

fn jwt_svid_response(svids: Vec<JwtSvid>) -> Result<proto::JwtsvidResponse, Status> {
    let mut hints = HashSet::new();
    let mut out = Vec::with_capacity(svids.len());
    for svid in svids {
        if svid.spiffe_id.is_empty() || svid.token.is_empty() {
            return Err(Status::internal(format!(
                "jwt-svid `{}` has an empty field",
                svid.spiffe_id
            )));
        }
        if !accept_hint(&mut hints, &svid.hint, &svid.spiffe_id) {
            continue;
        }
        out.push(proto::Jwtsvid {
            spiffe_id: svid.spiffe_id,
            svid: svid.token,
            hint: svid.hint,
        });
    }
    if out.is_empty() {
        return Err(ProviderError::NoIdentity.into());
    }
    Ok(proto::JwtsvidResponse { svids: out })
}

fn validate_response(validated: ValidatedJwt) -> Result<proto::ValidateJwtsvidResponse, Status> {
    let mut claims = validated.claims;
    let missing =
        |claim: &str| Status::internal(format!("validated token lacks a usable `{claim}` claim"));

    if !claims.get("sub").is_some_and(serde_json::Value::is_string) {
        return Err(missing("sub"));
    }
    if !claims.get("exp").is_some_and(serde_json::Value::is_number) {
        return Err(missing("exp"));
    }
    // Clients expect a list even for a single audience.
    let audience = match claims.remove("aud") {
        Some(serde_json::Value::String(aud)) => vec![serde_json::Value::String(aud)],
        Some(serde_json::Value::Array(list))
            if !list.is_empty() && list.iter().all(serde_json::Value::is_string) =>
        {
            list
        }
        _ => return Err(missing("aud")),
    };
    claims.insert("aud".to_owned(), serde_json::Value::Array(audience));

    Ok(proto::ValidateJwtsvidResponse {
        spiffe_id: validated.spiffe_id,
        claims: Some(json_object_to_struct(claims)),
    })
}

/// Accepts a hint unless it is too long or repeats an earlier non-empty hint.
fn accept_hint(seen: &mut HashSet<String>, hint: &str, spiffe_id: &str) -> bool {
    if hint.len() > MAX_HINT_LEN {
        tracing::warn!(
            spiffe_id,
            hint_len = hint.len(),
            "dropping svid whose hint is too long"
        );
        return false;
    }
    if !hint.is_empty() && !seen.insert(hint.to_owned()) {
        tracing::warn!(spiffe_id, hint, "dropping svid with a duplicate hint");
        return false;
    }
    true
}

fn non_empty_bundles(bundles: BTreeMap<String, Bytes>) -> std::collections::HashMap<String, Bytes> {
    bundles
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .collect()
}

fn json_object_to_struct(
    object: serde_json::Map<String, serde_json::Value>,
) -> prost_types::Struct {
    prost_types::Struct {
        fields: object
            .into_iter()
            .map(|(key, value)| (key, json_to_value(value)))
            .collect(),
    }
}

fn json_to_value(value: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;

    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        // google.protobuf.Value holds every number as a double.
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(object) => Kind::StructValue(json_object_to_struct(object)),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::X509Svid;

    fn svid(id: &str, hint: &str) -> X509Svid {
        X509Svid {
            spiffe_id: id.to_owned(),
            cert_chain: Bytes::from_static(&[1]),
            private_key: Bytes::from_static(&[2]),
            bundle: Bytes::from_static(&[3]),
            hint: hint.to_owned(),
        }
    }

    #[test]
    fn empty_svid_list_is_permission_denied() {
        let status = x509_svid_response(X509Context::default()).unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert_eq!(status.message(), "no identity issued");
    }

    #[test]
    fn duplicate_and_oversized_hints_are_dropped_and_empty_bundles_omitted() {
        let context = X509Context {
            svids: vec![
                svid("spiffe://td/a", "web"),
                svid("spiffe://td/b", "web"),
                svid("spiffe://td/c", &"h".repeat(MAX_HINT_LEN + 1)),
                svid("spiffe://td/d", ""),
                svid("spiffe://td/e", ""),
            ],
            federated_bundles: BTreeMap::from([
                ("spiffe://other".to_owned(), Bytes::from_static(&[9])),
                ("spiffe://empty".to_owned(), Bytes::new()),
            ]),
        };
        let response = x509_svid_response(context).unwrap();
        let ids: Vec<_> = response
            .svids
            .iter()
            .map(|s| s.spiffe_id.as_str())
            .collect();
        assert_eq!(ids, ["spiffe://td/a", "spiffe://td/d", "spiffe://td/e"]);
        assert_eq!(response.federated_bundles.len(), 1);
        assert!(response.federated_bundles.contains_key("spiffe://other"));
    }

    #[test]
    fn svid_with_empty_bundle_is_refused() {
        let mut bad = svid("spiffe://td/a", "");
        bad.bundle.clear();
        let status = x509_svid_response(X509Context {
            svids: vec![bad],
            federated_bundles: BTreeMap::new(),
        })
        .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Internal);
    }

    #[test]
    fn bundle_map_without_values_is_never_sent() {
        let bundles = X509Bundles {
            bundles: BTreeMap::from([("spiffe://td".to_owned(), Bytes::new())]),
        };
        assert_eq!(
            x509_bundles_response(bundles).unwrap_err().code(),
            tonic::Code::Unavailable
        );
        assert!(jwt_bundles_response(JwtBundles::default()).is_err());
    }

    #[test]
    fn claims_carry_sub_aud_list_and_exp() {
        let claims =
            serde_json::json!({"sub": "spiffe://td/a", "aud": "x", "exp": 1_700_000_000, "iat": 1});
        let response = validate_response(ValidatedJwt {
            spiffe_id: "spiffe://td/a".to_owned(),
            claims: claims.as_object().unwrap().clone(),
        })
        .unwrap();
        let fields = response.claims.unwrap().fields;
        use prost_types::value::Kind;
        assert!(matches!(&fields["sub"].kind, Some(Kind::StringValue(s)) if s == "spiffe://td/a"));
        assert!(matches!(&fields["exp"].kind, Some(Kind::NumberValue(n)) if *n == 1_700_000_000.0));
        match &fields["aud"].kind {
            Some(Kind::ListValue(list)) => {
                assert!(matches!(&list.values[0].kind, Some(Kind::StringValue(s)) if s == "x"));
            }
            other => panic!("aud is not a list: {other:?}"),
        }
    }

    #[test]
    fn claims_without_exp_are_refused() {
        let claims = serde_json::json!({"sub": "spiffe://td/a", "aud": ["x"]});
        let status = validate_response(ValidatedJwt {
            spiffe_id: "spiffe://td/a".to_owned(),
            claims: claims.as_object().unwrap().clone(),
        })
        .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Internal);
    }
}
