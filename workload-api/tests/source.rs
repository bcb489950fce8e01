//! The live X509 source against the real server over a Unix socket, with a fake provider that
//! hands out certificates made at test time.

use std::{
    collections::{BTreeMap, VecDeque},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime},
};

use futures::StreamExt;
use mesh_core::{
    ca::{SvidRequest, X509Issuer},
    tls::{Authorizer, SpiffeTls, SvidSource},
    KeyPair, KeyType, SpiffeId, TrustDomain,
};
use rustls::{ClientConnection, ServerConnection};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::{
    sync::{oneshot, watch},
    task::JoinHandle,
};
use tokio_stream::wrappers::WatchStream;
use workload_api::{
    server::bind_unix,
    source::{SourceError, X509Source},
    Caller, Endpoint, JwtBundles, JwtSvid, Provider, ProviderError, ProviderStream, ValidatedJwt,
    WorkloadApiServer, X509Bundles, X509Context, X509Svid,
};

const TTL: Duration = Duration::from_secs(3600);
const WAIT: Duration = Duration::from_secs(10);
const FAST: Duration = Duration::from_millis(20);

// === certificates ===

struct Authority {
    issuer: X509Issuer,
}

impl Authority {
    fn new(td: &str) -> Self {
        let td = TrustDomain::new(td).unwrap();
        let key = KeyPair::generate(KeyType::EcP256).unwrap();
        Self {
            issuer: X509Issuer::self_signed(&td, key, SystemTime::now(), TTL).unwrap(),
        }
    }

    fn context(&self, id: &str) -> X509Context {
        let request = SvidRequest::new(SpiffeId::new(id).unwrap(), TTL);
        let svid = self
            .issuer
            .issue_with_new_key(&request, KeyType::EcP256, SystemTime::now())
            .unwrap();
        X509Context {
            svids: vec![X509Svid {
                spiffe_id: id.to_owned(),
                cert_chain: svid.chain_der().into(),
                private_key: svid.private_key_pkcs8_der().to_vec().into(),
                bundle: self.issuer.root().to_vec().into(),
                hint: String::new(),
            }],
            federated_bundles: BTreeMap::new(),
        }
    }
}

/// The leaf certificate a context carries (the first DER certificate of the chain).
fn leaf_of(context: &X509Context) -> CertificateDer<'static> {
    mesh_core::x509::split_concatenated_der(&context.svids[0].cert_chain).unwrap()[0].clone()
}

// === fake provider ===

struct FakeProvider {
    x509: watch::Sender<X509Context>,
    /// Errors answered to the next calls of `FetchX509SVID`, in order.
    refusals: Mutex<VecDeque<ProviderError>>,
    calls: AtomicUsize,
}

impl FakeProvider {
    fn new(first: X509Context) -> Arc<Self> {
        Arc::new(Self {
            x509: watch::Sender::new(first),
            refusals: Mutex::new(VecDeque::new()),
            calls: AtomicUsize::new(0),
        })
    }

    fn refusing(
        first: X509Context,
        refusals: impl IntoIterator<Item = ProviderError>,
    ) -> Arc<Self> {
        let provider = Self::new(first);
        provider.refusals.lock().unwrap().extend(refusals);
        provider
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[tonic::async_trait]
impl Provider for FakeProvider {
    async fn watch_x509_context(
        &self,
        _caller: &Caller,
    ) -> Result<ProviderStream<X509Context>, ProviderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(refusal) = self.refusals.lock().unwrap().pop_front() {
            return Err(refusal);
        }
        Ok(WatchStream::new(self.x509.subscribe()).map(Ok).boxed())
    }

    async fn watch_x509_bundles(
        &self,
        _caller: &Caller,
    ) -> Result<ProviderStream<X509Bundles>, ProviderError> {
        Err(ProviderError::Internal("not used".to_owned()))
    }

    async fn watch_jwt_bundles(
        &self,
        _caller: &Caller,
    ) -> Result<ProviderStream<JwtBundles>, ProviderError> {
        Err(ProviderError::Internal("not used".to_owned()))
    }

    async fn fetch_jwt_svids(
        &self,
        _caller: &Caller,
        _audience: Vec<String>,
        _spiffe_id: Option<String>,
    ) -> Result<Vec<JwtSvid>, ProviderError> {
        Err(ProviderError::Internal("not used".to_owned()))
    }

    async fn validate_jwt_svid(
        &self,
        _caller: &Caller,
        _audience: &str,
        _token: &str,
    ) -> Result<ValidatedJwt, ProviderError> {
        Err(ProviderError::Internal("not used".to_owned()))
    }
}

// === harness ===

struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), workload_api::ServeError>>,
}

impl Running {
    fn start(path: &Path, provider: Arc<FakeProvider>) -> Self {
        let listener = bind_unix(path).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            WorkloadApiServer::new(provider)
                .shutdown_grace(Duration::from_secs(1))
                .serve(listener, async move {
                    let _ = stopped.await;
                }),
        );
        Self {
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

fn socket(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

fn fast_source(path: &Path) -> X509Source {
    X509Source::builder(Endpoint::Unix(path.to_owned()))
        .backoff(FAST, FAST * 4)
        .start()
}

async fn wait_for_updates(source: &X509Source, n: u64) {
    let mut status = source.subscribe();
    tokio::time::timeout(WAIT, status.wait_for(|s| s.updates >= n))
        .await
        .expect("update in time")
        .unwrap();
}

/// Runs a TLS handshake between two in-memory connections; returns the certificates each
/// side saw from the other (client saw, server saw).
fn handshake(
    mut client: ClientConnection,
    mut server: ServerConnection,
) -> Result<(CertificateDer<'static>, CertificateDer<'static>), rustls::Error> {
    fn pump(
        from: &mut dyn FnMut(&mut Vec<u8>) -> bool,
        to: &mut dyn FnMut(&[u8]) -> Result<(), rustls::Error>,
    ) -> Result<bool, rustls::Error> {
        let mut buf = Vec::new();
        while from(&mut buf) {}
        if buf.is_empty() {
            return Ok(false);
        }
        to(&buf)?;
        Ok(true)
    }

    for _ in 0..20 {
        let c2s = pump(
            &mut |buf| client.wants_write() && client.write_tls(buf).unwrap() > 0,
            &mut |mut bytes| {
                while !bytes.is_empty() {
                    server.read_tls(&mut bytes).unwrap();
                    server.process_new_packets()?;
                }
                Ok(())
            },
        )?;
        let s2c = pump(
            &mut |buf| server.wants_write() && server.write_tls(buf).unwrap() > 0,
            &mut |mut bytes| {
                while !bytes.is_empty() {
                    client.read_tls(&mut bytes).unwrap();
                    client.process_new_packets()?;
                }
                Ok(())
            },
        )?;
        if !c2s && !s2c {
            break;
        }
    }
    assert!(!client.is_handshaking() && !server.is_handshaking());
    Ok((
        client.peer_certificates().unwrap()[0].clone(),
        server.peer_certificates().unwrap()[0].clone(),
    ))
}

// === tests ===

#[tokio::test]
async fn first_svid_and_bundles_arrive_and_wait_until_ready_returns_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket(&dir, "api.sock");
    let ours = Authority::new("example.org");
    let theirs = Authority::new("other.org");
    let mut first = ours.context("spiffe://example.org/web");
    first.federated_bundles.insert(
        "spiffe://other.org".to_owned(),
        theirs.issuer.root().to_vec().into(),
    );
    let leaf = leaf_of(&first);
    let server = Running::start(&path, FakeProvider::new(first));

    let source = fast_source(&path);
    let svid = source.wait_until_ready(WAIT).await.unwrap();

    assert_eq!(svid.spiffe_id().as_str(), "spiffe://example.org/web");
    assert_eq!(svid.leaf(), &leaf);
    assert_eq!(source.updates(), 1);
    let bundles = source.bundles();
    assert_eq!(bundles.len(), 2);
    let own = bundles
        .get(&TrustDomain::new("example.org").unwrap())
        .unwrap();
    assert_eq!(
        own.x509_authorities(),
        std::slice::from_ref(ours.issuer.root())
    );
    assert!(bundles
        .get(&TrustDomain::new("other.org").unwrap())
        .is_some());
    server.stop().await;
}

#[tokio::test]
async fn rotation_replaces_the_svid_and_counts_the_update() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket(&dir, "api.sock");
    let ours = Authority::new("example.org");
    let provider = FakeProvider::new(ours.context("spiffe://example.org/web"));
    let server = Running::start(&path, provider.clone());
    let source = fast_source(&path);
    let before = source.wait_until_ready(WAIT).await.unwrap();

    let next = ours.context("spiffe://example.org/web");
    let next_leaf = leaf_of(&next);
    provider.x509.send_replace(next);
    wait_for_updates(&source, 2).await;

    let after = source.svid().unwrap();
    assert_ne!(after.leaf(), before.leaf());
    assert_eq!(after.leaf(), &next_leaf);
    assert_eq!(provider.calls(), 1, "rotation arrives on the open stream");
    server.stop().await;
}

#[tokio::test]
async fn unusable_message_is_reported_and_the_last_svid_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket(&dir, "api.sock");
    let ours = Authority::new("example.org");
    let provider = FakeProvider::new(ours.context("spiffe://example.org/web"));
    let server = Running::start(&path, provider.clone());
    let source = fast_source(&path);
    let good = source.wait_until_ready(WAIT).await.unwrap();

    let mut broken = ours.context("spiffe://example.org/web");
    broken.svids[0].cert_chain = b"not a certificate".to_vec().into();
    provider.x509.send_replace(broken);
    let mut status = source.subscribe();
    let seen = tokio::time::timeout(WAIT, status.wait_for(|s| s.last_error.is_some()))
        .await
        .unwrap()
        .unwrap()
        .clone();

    assert!(
        seen.last_error.as_deref().unwrap().contains("not usable"),
        "{seen:?}"
    );
    assert_eq!(seen.updates, 1);
    assert_eq!(source.svid().unwrap().leaf(), good.leaf());
    server.stop().await;
}

#[tokio::test]
async fn no_identity_is_retried_until_one_is_issued() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket(&dir, "api.sock");
    let ours = Authority::new("example.org");
    let provider = FakeProvider::refusing(
        ours.context("spiffe://example.org/late"),
        [ProviderError::NoIdentity, ProviderError::NoIdentity],
    );
    let server = Running::start(&path, provider.clone());

    let source = fast_source(&path);
    let svid = source.wait_until_ready(WAIT).await.unwrap();

    assert_eq!(svid.spiffe_id().as_str(), "spiffe://example.org/late");
    assert_eq!(provider.calls(), 3);
    server.stop().await;
}

#[tokio::test]
async fn invalid_argument_stops_the_source_without_retrying() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket(&dir, "api.sock");
    let ours = Authority::new("example.org");
    let provider = FakeProvider::refusing(
        ours.context("spiffe://example.org/web"),
        [ProviderError::InvalidArgument("bad request".to_owned())],
    );
    let server = Running::start(&path, provider.clone());

    let source = fast_source(&path);
    let error = source.wait_until_ready(WAIT).await.unwrap_err();
    tokio::time::sleep(FAST * 10).await;

    assert!(
        matches!(&error, SourceError::Refused { message, .. } if message.contains("bad request")),
        "{error}"
    );
    assert_eq!(provider.calls(), 1, "no retry after InvalidArgument");
    assert!(source.svid().is_none());
    assert!(source.subscribe().borrow().stopped.is_some());
    server.stop().await;
}

#[tokio::test]
async fn wait_until_ready_times_out_naming_the_last_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket(&dir, "nobody-listens.sock");

    let source = fast_source(&path);
    let error = source
        .wait_until_ready(Duration::from_millis(300))
        .await
        .unwrap_err();

    assert!(
        matches!(&error, SourceError::Timeout { last_error, .. } if last_error.contains("cannot connect")),
        "{error}"
    );
}

#[tokio::test]
async fn source_reconnects_after_the_server_restarts_and_keeps_serving_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket(&dir, "api.sock");
    let ours = Authority::new("example.org");
    let server = Running::start(
        &path,
        FakeProvider::new(ours.context("spiffe://example.org/web")),
    );
    let source = fast_source(&path);
    let before = source.wait_until_ready(WAIT).await.unwrap();

    server.stop().await;
    let mut status = source.subscribe();
    tokio::time::timeout(WAIT, status.wait_for(|s| s.last_error.is_some()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        source.svid().unwrap().leaf(),
        before.leaf(),
        "the last svid stays while the agent is away"
    );

    let next = ours.context("spiffe://example.org/web");
    let next_leaf = leaf_of(&next);
    let server = Running::start(&path, FakeProvider::new(next));
    wait_for_updates(&source, 2).await;

    assert_eq!(source.svid().unwrap().leaf(), &next_leaf);
    server.stop().await;
}

#[tokio::test]
async fn tls_configs_over_the_source_present_the_svid_in_force_at_each_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let ours = Authority::new("example.org");
    let server_provider = FakeProvider::new(ours.context("spiffe://example.org/server"));
    let client_provider = FakeProvider::new(ours.context("spiffe://example.org/client"));
    let server_api = Running::start(&socket(&dir, "server.sock"), server_provider.clone());
    let client_api = Running::start(&socket(&dir, "client.sock"), client_provider.clone());
    let server_source = Arc::new(fast_source(&socket(&dir, "server.sock")));
    let client_source = Arc::new(fast_source(&socket(&dir, "client.sock")));
    server_source.wait_until_ready(WAIT).await.unwrap();
    client_source.wait_until_ready(WAIT).await.unwrap();

    let id = |s: &str| SpiffeId::new(s).unwrap();
    let server_config = Arc::new(
        SpiffeTls::new(server_source.clone())
            .server_config(Authorizer::exact(id("spiffe://example.org/client")))
            .unwrap(),
    );
    let client_config = Arc::new(
        SpiffeTls::new(client_source.clone())
            .client_config(Authorizer::exact(id("spiffe://example.org/server")))
            .unwrap(),
    );
    let connect = || {
        let name = ServerName::try_from("localhost").unwrap();
        handshake(
            ClientConnection::new(client_config.clone(), name).unwrap(),
            ServerConnection::new(server_config.clone()).unwrap(),
        )
    };

    let (server_leaf, client_leaf) = connect().unwrap();
    assert_eq!(&server_leaf, server_source.svid().unwrap().leaf());
    assert_eq!(&client_leaf, client_source.svid().unwrap().leaf());

    // Rotate the server's SVID: the same config presents the new one on the next handshake.
    let rotated = ours.context("spiffe://example.org/server");
    let rotated_leaf = leaf_of(&rotated);
    server_provider.x509.send_replace(rotated);
    wait_for_updates(&server_source, 2).await;
    let (server_leaf, _) = connect().unwrap();
    assert_eq!(server_leaf, rotated_leaf);

    // A server under another ID is refused by the client's rule.
    server_provider
        .x509
        .send_replace(ours.context("spiffe://example.org/impostor"));
    wait_for_updates(&server_source, 3).await;
    let error = connect().unwrap_err();
    assert!(error.to_string().contains("impostor"), "{error}");

    server_api.stop().await;
    client_api.stop().await;
}
