//! A tonic gRPC service and client over mutual TLS on SPIFFE identities.
//!
//! Both ends build their rustls configs with [`mesh_core::tls::SpiffeTls`] over a live
//! [`MemorySource`]: filled from the agent's Workload API ([`watch_workload_api`]) in a real
//! deployment, or from an in-process CA ([`Demo`]) for a self-contained run. The server learns
//! the caller's SPIFFE ID from the handshake and answers with it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use hyper_util::rt::TokioIo;
use mesh_core::bundle::{Bundle, BundleSet};
use mesh_core::ca::{Ca, CaConfig, SvidRequest};
use mesh_core::clock::SystemClock;
use mesh_core::tls::{peer_spiffe_id, Authorizer, MemorySource, SpiffeTls};
use mesh_core::x509::{split_concatenated_der, X509Svid};
use mesh_core::{KeyType, SpiffeId, TrustDomain};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status};

/// The generated gRPC code of `proto/greeter.proto`.
pub mod proto {
    tonic::include_proto!("mesh.example");
}

use proto::greeter_client::GreeterClient;
use proto::greeter_server::{Greeter, GreeterServer};
use proto::{HelloReply, HelloRequest};

/// The SPIFFE ID the server's handshake verified, put into each request's extensions.
#[derive(Debug, Clone)]
pub struct PeerId(pub Option<SpiffeId>);

/// A server-side TLS connection that tells tonic who the peer is.
struct TlsConnection(tokio_rustls::server::TlsStream<TcpStream>);

impl Connected for TlsConnection {
    type ConnectInfo = PeerId;

    fn connect_info(&self) -> PeerId {
        PeerId(peer_spiffe_id(
            self.0.get_ref().1.peer_certificates().unwrap_or_default(),
        ))
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The service: greets the caller by name and by SPIFFE ID.
#[derive(Debug, Default)]
pub struct GreeterService;

#[tonic::async_trait]
impl Greeter for GreeterService {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let client_id = request
            .extensions()
            .get::<PeerId>()
            .and_then(|p| p.0.clone())
            .ok_or_else(|| Status::unauthenticated("no verified client identity"))?;
        let name = &request.get_ref().name;
        Ok(Response::new(HelloReply {
            message: format!("hello {name}"),
            client_id: client_id.to_string(),
        }))
    }
}

/// Serves the Greeter on `listener` over mTLS, letting in the clients `allow` names, until
/// `shutdown` completes. Failed handshakes are logged and do not stop the server.
///
/// # Errors
///
/// If the TLS config cannot be built or the gRPC server fails.
pub async fn serve(
    listener: TcpListener,
    tls: &SpiffeTls,
    allow: Authorizer,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let mut config = tls.server_config(allow)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));

    // Handshakes run in their own tasks so a slow or refused client holds up nobody.
    let (tx, rx) = tokio::sync::mpsc::channel::<TlsConnection>(64);
    let accept = tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let handshake =
                    tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await;
                match handshake {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(TlsConnection(tls)).await;
                    }
                    Ok(Err(error)) => tracing::warn!(%peer, %error, "tls handshake failed"),
                    Err(_) => tracing::warn!(%peer, "tls handshake timed out"),
                }
            });
        }
    });
    let incoming = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, io::Error>);
    let result = tonic::transport::Server::builder()
        .add_service(GreeterServer::new(GreeterService))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    accept.abort();
    result.context("grpc server failed")
}

/// Connects a Greeter client to `addr` over mTLS, requiring a server `expect` allows.
///
/// # Errors
///
/// If the TLS config cannot be built or the connection (TCP, TLS or HTTP/2) fails.
pub async fn connect(
    addr: SocketAddr,
    tls: &SpiffeTls,
    expect: Authorizer,
) -> anyhow::Result<GreeterClient<tonic::transport::Channel>> {
    let mut config = tls.client_config(expect)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = TlsConnector::from(Arc::new(config));
    // The URI only satisfies tonic; the connector decides where to go.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_with_connector(tower::service_fn(move |_| {
            let connector = connector.clone();
            async move {
                let tcp = TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                let name = ServerName::IpAddress(addr.ip().into());
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .with_context(|| format!("cannot connect to {addr} over mtls"))?;
    Ok(GreeterClient::new(channel))
}

/// Fills a [`MemorySource`] from the Workload API at `endpoint` and keeps it current in a
/// background task. Returns once the first SVID is in.
///
/// # Errors
///
/// If the Workload API cannot be reached or sends no usable SVID within 30 s.
pub async fn watch_workload_api(
    endpoint: workload_api::Endpoint,
) -> anyhow::Result<Arc<MemorySource>> {
    let source = Arc::new(MemorySource::new());
    let mut client = workload_api::WorkloadApiClient::connect(&endpoint).await?;
    let mut stream = client.watch_x509_context().await?;
    let first = tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .context("no x509 context from the workload api within 30s")?
        .context("workload api stream ended")??;
    apply(&source, &first)?;
    let updating = Arc::clone(&source);
    tokio::spawn(async move {
        while let Some(update) = stream.next().await {
            match update
                .map_err(anyhow::Error::from)
                .and_then(|c| apply(&updating, &c))
            {
                Ok(()) => tracing::info!("svid updated from the workload api"),
                Err(error) => tracing::warn!(%error, "workload api update not applied"),
            }
        }
        tracing::warn!("workload api stream ended; keeping the last svid");
    });
    Ok(source)
}

fn apply(source: &MemorySource, context: &workload_api::X509Context) -> anyhow::Result<()> {
    let svid = context
        .svids
        .first()
        .context("no svid in the x509 context")?;
    let svid = X509Svid::from_der(&svid.cert_chain, &svid.private_key)?;
    let own = svid.spiffe_id().trust_domain().clone();
    let mut bundles = BundleSet::new();
    for (td, der) in &context.federated_bundles {
        let mut bundle = Bundle::new(TrustDomain::new(td)?);
        bundle.set_x509_authorities(split_concatenated_der(der)?);
        bundles.insert(bundle);
    }
    let mut bundle = Bundle::new(own);
    bundle.set_x509_authorities(split_concatenated_der(&context.svids[0].bundle)?);
    bundles.insert(bundle);
    source.set(svid, bundles);
    Ok(())
}

/// A self-contained setup: an in-process CA in a temporary directory issuing SVIDs.
pub struct Demo {
    _dir: tempfile::TempDir,
    ca: Ca,
}

impl Demo {
    /// Opens a CA for `example.org`.
    ///
    /// # Errors
    ///
    /// If the CA cannot be created.
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::TempDir::new()?;
        let config = CaConfig::new(TrustDomain::new("example.org")?, dir.path());
        let ca = Ca::open(config, Arc::new(SystemClock))?;
        Ok(Self { _dir: dir, ca })
    }

    /// A source holding a fresh SVID for `id` and the CA's bundle.
    ///
    /// # Errors
    ///
    /// If `id` is not in `example.org` or issuing fails.
    pub fn identity(&self, id: &SpiffeId) -> anyhow::Result<Arc<MemorySource>> {
        let source = Arc::new(MemorySource::new());
        let request = SvidRequest::new(id.clone(), Duration::from_secs(3600));
        source.renew_from_ca(&self.ca, &request, KeyType::EcP256)?;
        Ok(source)
    }
}
