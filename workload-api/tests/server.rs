//! The server over a real Unix socket, with a fake provider.

use std::{
    collections::{BTreeMap, HashMap},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use prost::Message;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::UnixStream,
    sync::{oneshot, watch},
    task::JoinHandle,
};
use tokio_stream::wrappers::WatchStream;
use tonic::Code;
use workload_api::{
    proto, server::bind_unix, Caller, ClientError, Endpoint, JwtBundles, JwtSvid, Provider,
    ProviderError, ProviderStream, ValidatedJwt, WorkloadApiClient, WorkloadApiServer, X509Bundles,
    X509Context, X509Svid,
};

// === fake provider ===

struct FakeProvider {
    identity: bool,
    x509: watch::Sender<X509Context>,
    callers: Mutex<Vec<Caller>>,
}

impl FakeProvider {
    fn new(identity: bool) -> Arc<Self> {
        Arc::new(Self {
            identity,
            x509: watch::Sender::new(context("spiffe://example.org/first")),
            callers: Mutex::new(Vec::new()),
        })
    }

    fn record(&self, caller: &Caller) -> Result<(), ProviderError> {
        self.callers.lock().unwrap().push(caller.clone());
        caller.ensure_alive()?;
        if self.identity {
            Ok(())
        } else {
            Err(ProviderError::NoIdentity)
        }
    }
}

fn context(id: &str) -> X509Context {
    X509Context {
        svids: vec![X509Svid {
            spiffe_id: id.to_owned(),
            cert_chain: b"leaf-der".to_vec().into(),
            private_key: b"key-der".to_vec().into(),
            bundle: b"ca-der".to_vec().into(),
            hint: "internal".to_owned(),
        }],
        federated_bundles: BTreeMap::from([(
            "spiffe://other.org".to_owned(),
            b"o".to_vec().into(),
        )]),
    }
}

#[tonic::async_trait]
impl Provider for FakeProvider {
    async fn watch_x509_context(
        &self,
        caller: &Caller,
    ) -> Result<ProviderStream<X509Context>, ProviderError> {
        self.record(caller)?;
        Ok(WatchStream::new(self.x509.subscribe()).map(Ok).boxed())
    }

    async fn watch_x509_bundles(
        &self,
        caller: &Caller,
    ) -> Result<ProviderStream<X509Bundles>, ProviderError> {
        self.record(caller)?;
        // One snapshot, then the stream ends: the server must not end the call with OK.
        let bundles = X509Bundles {
            bundles: BTreeMap::from([("spiffe://example.org".to_owned(), b"ca".to_vec().into())]),
        };
        Ok(futures::stream::iter([Ok(bundles)]).boxed())
    }

    async fn watch_jwt_bundles(
        &self,
        caller: &Caller,
    ) -> Result<ProviderStream<JwtBundles>, ProviderError> {
        self.record(caller)?;
        let bundles = JwtBundles {
            bundles: BTreeMap::from([(
                "spiffe://example.org".to_owned(),
                br#"{"keys":[]}"#.to_vec().into(),
            )]),
        };
        Ok(futures::stream::iter([Ok(bundles)])
            .chain(futures::stream::pending())
            .boxed())
    }

    async fn fetch_jwt_svids(
        &self,
        caller: &Caller,
        audience: Vec<String>,
        spiffe_id: Option<String>,
    ) -> Result<Vec<JwtSvid>, ProviderError> {
        self.record(caller)?;
        if spiffe_id
            .as_deref()
            .is_some_and(|id| id != "spiffe://example.org/first")
        {
            return Err(ProviderError::PermissionDenied("not yours".to_owned()));
        }
        Ok(vec![JwtSvid {
            spiffe_id: "spiffe://example.org/first".to_owned(),
            token: format!("token-for-{}", audience.join(",")),
            hint: String::new(),
        }])
    }

    async fn validate_jwt_svid(
        &self,
        caller: &Caller,
        audience: &str,
        token: &str,
    ) -> Result<ValidatedJwt, ProviderError> {
        self.record(caller)?;
        if token != "good" {
            return Err(ProviderError::InvalidArgument(
                "token is not valid".to_owned(),
            ));
        }
        let claims = serde_json::json!({
            "sub": "spiffe://example.org/first",
            "aud": audience,
            "exp": 1_900_000_000_i64,
        });
        Ok(ValidatedJwt {
            spiffe_id: "spiffe://example.org/first".to_owned(),
            claims: claims.as_object().cloned().unwrap_or_default(),
        })
    }
}

// === harness ===

struct Running {
    _dir: tempfile::TempDir,
    path: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), workload_api::ServeError>>,
}

impl Running {
    async fn start(provider: Arc<FakeProvider>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let listener = bind_unix(&path).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            WorkloadApiServer::new(provider)
                .shutdown_grace(Duration::from_secs(3))
                .serve(listener, async move {
                    let _ = stopped.await;
                }),
        );
        Self {
            _dir: dir,
            path,
            stop: Some(stop),
            task,
        }
    }

    async fn client(&self) -> WorkloadApiClient {
        WorkloadApiClient::connect(&Endpoint::Unix(self.path.clone()))
            .await
            .unwrap()
    }
}

async fn channel(path: &Path) -> tonic::transport::Channel {
    let path = path.to_owned();
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let stream = UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap()
}

fn status_code(result: Result<impl std::fmt::Debug, ClientError>) -> Code {
    result.unwrap_err().code().expect("a grpc status")
}

const WAIT: Duration = Duration::from_secs(5);

// === tests ===

#[tokio::test]
async fn call_without_security_header_is_invalid_argument() {
    let provider = FakeProvider::new(true);
    let server = Running::start(provider.clone()).await;
    let mut raw = proto::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(
        channel(&server.path).await,
    );

    let status = raw
        .fetch_jwtsvid(proto::JwtsvidRequest {
            audience: vec!["a".to_owned()],
            spiffe_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("workload.spiffe.io"));

    let mut request = tonic::Request::new(proto::X509svidRequest {});
    request
        .metadata_mut()
        .insert("workload.spiffe.io", "false".parse().unwrap());
    let status = raw.fetch_x509svid(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    assert!(
        provider.callers.lock().unwrap().is_empty(),
        "rejected calls never reach the provider"
    );
}

#[tokio::test]
async fn call_with_security_header_reaches_the_provider() {
    let server = Running::start(FakeProvider::new(true)).await;
    let mut client = server.client().await;
    let svids = client
        .fetch_jwt_svids(&["a".to_owned(), "b".to_owned()], None)
        .await
        .unwrap();
    assert_eq!(svids.len(), 1);
    assert_eq!(svids[0].token, "token-for-a,b");
}

#[tokio::test]
async fn caller_without_identity_gets_permission_denied_no_identity_issued() {
    let server = Running::start(FakeProvider::new(false)).await;
    let mut client = server.client().await;
    let error = client.fetch_x509_context().await.unwrap_err();
    let ClientError::Status(status) = error else {
        panic!("expected a status, got {error:?}");
    };
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(status.message(), "no identity issued");
    assert_eq!(
        status_code(client.fetch_jwt_svids(&["a".to_owned()], None).await),
        Code::PermissionDenied
    );
}

#[tokio::test]
async fn first_message_arrives_at_once_and_updates_follow() {
    let provider = FakeProvider::new(true);
    let server = Running::start(provider.clone()).await;
    let mut client = server.client().await;

    let mut stream = tokio::time::timeout(Duration::from_secs(2), client.watch_x509_context())
        .await
        .unwrap()
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(2), stream.next())
        .await
        .expect("first message without delay")
        .unwrap()
        .unwrap();
    assert_eq!(first.svids[0].spiffe_id, "spiffe://example.org/first");
    assert_eq!(first.svids[0].private_key, &b"key-der"[..]);
    assert_eq!(first.federated_bundles["spiffe://other.org"], &b"o"[..]);

    provider
        .x509
        .send_replace(context("spiffe://example.org/second"));
    let second = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(second.svids.len(), 1, "every message is the complete state");
    assert_eq!(second.svids[0].spiffe_id, "spiffe://example.org/second");
}

#[tokio::test]
async fn shutdown_ends_open_streams_with_unavailable() {
    let mut server = Running::start(FakeProvider::new(true)).await;
    let mut client = server.client().await;
    let mut x509 = client.watch_x509_context().await.unwrap();
    let mut jwt = client.watch_jwt_bundles().await.unwrap();
    x509.next().await.unwrap().unwrap();
    jwt.next().await.unwrap().unwrap();

    server.stop.take().unwrap().send(()).unwrap();

    for next in [
        tokio::time::timeout(WAIT, x509.next())
            .await
            .unwrap()
            .map(|r| r.map(drop)),
        tokio::time::timeout(WAIT, jwt.next())
            .await
            .unwrap()
            .map(|r| r.map(drop)),
    ] {
        let error = next
            .expect("the stream ends with an error, not OK")
            .unwrap_err();
        assert_eq!(error.code(), Some(Code::Unavailable), "{error:?}");
    }
    tokio::time::timeout(WAIT, &mut server.task)
        .await
        .expect("server stops once streams have ended")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn end_of_provider_stream_is_unavailable_not_ok() {
    let server = Running::start(FakeProvider::new(true)).await;
    let mut client = server.client().await;
    let mut stream = client.watch_x509_bundles().await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.bundles["spiffe://example.org"], &b"ca"[..]);
    let end = tokio::time::timeout(WAIT, stream.next()).await.unwrap();
    assert_eq!(end.unwrap().unwrap_err().code(), Some(Code::Unavailable));
}

#[tokio::test]
async fn caller_carries_this_process_credentials() {
    let provider = FakeProvider::new(true);
    let server = Running::start(provider.clone()).await;
    server.client().await.fetch_jwt_bundles().await.unwrap();

    let callers = provider.callers.lock().unwrap().clone();
    let caller = &callers[0];
    assert_eq!(caller.pid(), i32::try_from(std::process::id()).unwrap());
    // The socket file was created by this process, so it carries our uid and gid.
    let meta = std::fs::metadata(&server.path).unwrap();
    assert_eq!(caller.uid(), meta.uid());
    assert_eq!(caller.gid(), meta.gid());
    assert!(caller.pidfd().is_some());
    caller.ensure_alive().unwrap();
}

#[tokio::test]
async fn jwt_calls_check_their_arguments() {
    let server = Running::start(FakeProvider::new(true)).await;
    let mut client = server.client().await;

    assert_eq!(
        status_code(client.fetch_jwt_svids(&[], None).await),
        Code::InvalidArgument
    );
    assert_eq!(
        status_code(client.fetch_jwt_svids(&[String::new()], None).await),
        Code::InvalidArgument
    );
    assert_eq!(
        status_code(
            client
                .fetch_jwt_svids(&["a".to_owned()], Some("spiffe://example.org/other"))
                .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        status_code(client.validate_jwt_svid("", "good").await),
        Code::InvalidArgument
    );
    assert_eq!(
        status_code(client.validate_jwt_svid("a", "").await),
        Code::InvalidArgument
    );
    assert_eq!(
        status_code(client.validate_jwt_svid("a", "bad").await),
        Code::InvalidArgument
    );

    let validated = client.validate_jwt_svid("a", "good").await.unwrap();
    assert_eq!(validated.spiffe_id, "spiffe://example.org/first");
    assert_eq!(validated.claims["sub"], "spiffe://example.org/first");
    assert_eq!(validated.claims["aud"], serde_json::json!(["a"]));
    assert_eq!(
        validated.claims["exp"],
        serde_json::json!(1_900_000_000_i64)
    );
}

#[tokio::test]
async fn reflection_answers_without_security_header() {
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };

    let server = Running::start(FakeProvider::new(true)).await;
    let mut client = ServerReflectionClient::new(channel(&server.path).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response {response:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"SpiffeWorkloadAPI"), "{names:?}");
}

// === raw HTTP/2: the :authority of Java and gRPC-core clients ===

const BAD_AUTHORITY: &[u8] = b"run%2Fagent%2Fapi.sock";

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    GrpcStatus(String),
    Reset(u32),
    GoAway(u32),
}

/// A hand-written HTTP/2 client that sends exactly the header encoding gRPC core uses: every
/// field a literal with incremental indexing, later requests as dynamic-table references.
struct RawClient {
    stream: UnixStream,
    decoder: loona_hpack::Decoder<'static>,
    input: Vec<u8>,
}

impl RawClient {
    async fn connect(path: &Path) -> Self {
        let mut stream = UnixStream::connect(path).await.unwrap();
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        stream.write_all(&frame(0x4, 0, 0, &[])).await.unwrap();
        Self {
            stream,
            decoder: loona_hpack::Decoder::new(),
            input: Vec::new(),
        }
    }

    async fn send(&mut self, stream_id: u32, block: &[u8], message: &impl Message) {
        let body = message.encode_to_vec();
        let mut data = vec![0];
        data.extend(u32::try_from(body.len()).unwrap().to_be_bytes());
        data.extend(body);
        let mut bytes = frame(0x1, 0x4, stream_id, block);
        bytes.extend(frame(0x0, 0x1, stream_id, &data));
        self.stream.write_all(&bytes).await.unwrap();
    }

    /// Reads until every stream in `streams` has a final outcome.
    async fn outcomes(&mut self, streams: &[u32]) -> HashMap<u32, Outcome> {
        let mut outcomes = HashMap::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while streams.iter().any(|s| !outcomes.contains_key(s)) {
            while self.input.len() >= 9 {
                let len = usize::from(self.input[0]) << 16
                    | usize::from(self.input[1]) << 8
                    | usize::from(self.input[2]);
                if self.input.len() < 9 + len {
                    break;
                }
                let (ty, flags) = (self.input[3], self.input[4]);
                let sid = u32::from_be_bytes(self.input[5..9].try_into().unwrap()) & 0x7fff_ffff;
                let payload: Vec<u8> = self.input[9..9 + len].to_vec();
                self.input.drain(..9 + len);
                match ty {
                    0x1 => {
                        assert_ne!(flags & 0x4, 0, "test expects unsplit header blocks");
                        let headers = self.decoder.decode(&payload).unwrap();
                        if let Some((_, v)) = headers.iter().find(|(n, _)| n == b"grpc-status") {
                            outcomes.insert(
                                sid,
                                Outcome::GrpcStatus(String::from_utf8_lossy(v).into()),
                            );
                        }
                    }
                    0x3 => {
                        let code = u32::from_be_bytes(payload[..4].try_into().unwrap());
                        outcomes.insert(sid, Outcome::Reset(code));
                    }
                    0x4 if flags & 0x1 == 0 => {
                        // The server may already have closed after a GOAWAY.
                        let _ = self.stream.write_all(&frame(0x4, 0x1, 0, &[])).await;
                    }
                    0x7 => {
                        let code = u32::from_be_bytes(payload[4..8].try_into().unwrap());
                        for s in streams {
                            outcomes.entry(*s).or_insert(Outcome::GoAway(code));
                        }
                    }
                    _ => {}
                }
            }
            if streams.iter().all(|s| outcomes.contains_key(s)) {
                break;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .expect("server answered in time")
                .unwrap();
            assert!(n > 0, "connection closed early; got {outcomes:?}");
            self.input.extend_from_slice(&chunk[..n]);
        }
        outcomes
    }
}

fn frame(ty: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(payload.len()).unwrap().to_be_bytes()[1..].to_vec();
    out.extend([ty, flags]);
    out.extend(stream_id.to_be_bytes());
    out.extend(payload);
    out
}

fn grpc_core_headers(path: &str, authority: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    vec![
        (b":scheme".to_vec(), b"http".to_vec()),
        (b":method".to_vec(), b"POST".to_vec()),
        (b":path".to_vec(), path.as_bytes().to_vec()),
        (b":authority".to_vec(), authority.to_vec()),
        (b"te".to_vec(), b"trailers".to_vec()),
        (b"content-type".to_vec(), b"application/grpc".to_vec()),
        (b"workload.spiffe.io".to_vec(), b"true".to_vec()),
    ]
}

/// Literal with incremental indexing, new name, no Huffman (RFC 7541, section 6.2.1).
fn encode_indexing(headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.push(0x40);
        for s in [name, value] {
            assert!(s.len() < 127);
            out.push(u8::try_from(s.len()).unwrap());
            out.extend(s);
        }
    }
    out
}

/// Indexed references to the entries `encode_indexing` just added (newest is index 62).
fn encode_references(count: usize) -> Vec<u8> {
    (0..count)
        .map(|i| 0x80 | u8::try_from(62 + count - 1 - i).unwrap())
        .collect()
}

fn jwt_request() -> proto::JwtsvidRequest {
    proto::JwtsvidRequest {
        audience: vec!["a".to_owned()],
        spiffe_id: String::new(),
    }
}

#[tokio::test]
async fn socket_path_authority_is_served_through_the_adapter() {
    let server = Running::start(FakeProvider::new(true)).await;
    let mut raw = RawClient::connect(&server.path).await;
    let headers = grpc_core_headers("/SpiffeWorkloadAPI/FetchJWTSVID", BAD_AUTHORITY);
    raw.send(1, &encode_indexing(&headers), &jwt_request())
        .await;
    raw.send(3, &encode_references(headers.len()), &jwt_request())
        .await;

    let outcomes = raw.outcomes(&[1, 3]).await;
    assert_eq!(outcomes[&1], Outcome::GrpcStatus("0".to_owned()));
    assert_eq!(outcomes[&3], Outcome::GrpcStatus("0".to_owned()));
}

#[tokio::test]
async fn socket_path_authority_is_reset_by_plain_tonic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .unwrap();
    let plain = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(reflection)
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );

    let mut raw = RawClient::connect(&path).await;
    let headers = grpc_core_headers(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        BAD_AUTHORITY,
    );
    raw.send(1, &encode_indexing(&headers), &jwt_request())
        .await;
    let outcomes = raw.outcomes(&[1]).await;
    assert_eq!(
        outcomes[&1],
        Outcome::Reset(1),
        "h2 resets with PROTOCOL_ERROR"
    );
    plain.abort();
}

#[tokio::test]
async fn broken_hpack_gets_goaway_protocol_error() {
    let server = Running::start(FakeProvider::new(true)).await;
    let mut raw = RawClient::connect(&server.path).await;
    // Indexed field 0 does not exist (RFC 7541, section 6.1).
    raw.send(1, &[0x80], &jwt_request()).await;
    let outcomes = raw.outcomes(&[1]).await;
    assert_eq!(outcomes[&1], Outcome::GoAway(1));
}

#[tokio::test]
async fn unknown_workload_api_method_is_unimplemented_but_still_needs_the_header() {
    let server = Running::start(FakeProvider::new(true)).await;
    let mut raw = RawClient::connect(&server.path).await;
    let mut headers = grpc_core_headers("/SpiffeWorkloadAPI/FetchWITSVID", b"localhost");
    raw.send(1, &encode_indexing(&headers), &jwt_request())
        .await;
    headers.pop();
    headers[2].1 = b"/SpiffeWorkloadAPI/FetchWITBundles".to_vec();
    raw.send(3, &encode_indexing(&headers), &jwt_request())
        .await;

    let outcomes = raw.outcomes(&[1, 3]).await;
    assert_eq!(
        outcomes[&1],
        Outcome::GrpcStatus("12".to_owned()),
        "Unimplemented"
    );
    assert_eq!(
        outcomes[&3],
        Outcome::GrpcStatus("3".to_owned()),
        "InvalidArgument"
    );
}
