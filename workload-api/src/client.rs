//! A small Workload API client for the agent's CLI and for tests.
//!
//! It adds the security header to every call and returns this crate's own types. It does not
//! verify certificates or tokens: it reports what the server sent.

use std::{collections::BTreeMap, io};

use futures::{stream::BoxStream, StreamExt};
use hyper_util::rt::TokioIo;
use tonic::{
    metadata::MetadataValue,
    transport::{Channel, Uri},
    Request, Streaming,
};

use crate::{
    endpoint::Endpoint,
    header::{SECURITY_HEADER, SECURITY_HEADER_VALUE},
    proto::{self, spiffe_workload_api_client::SpiffeWorkloadApiClient},
    provider::{JwtBundles, JwtSvid, ValidatedJwt, X509Bundles, X509Context, X509Svid},
};

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No connection could be made to `endpoint`.
    #[error("cannot connect to workload api at `{endpoint}`: {source}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// The transport error.
        source: tonic::transport::Error,
    },
    /// The server answered with an error status.
    #[error("workload api call failed: {0}")]
    Status(#[from] tonic::Status),
    /// A stream ended before its first message.
    #[error("workload api stream ended without a message")]
    StreamEnded,
}

impl ClientError {
    /// The gRPC status code, when the server answered with one.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Self::Status(status) => Some(status.code()),
            _ => None,
        }
    }
}

/// A connected Workload API client.
#[derive(Clone, Debug)]
pub struct WorkloadApiClient {
    inner: SpiffeWorkloadApiClient<Channel>,
}

impl WorkloadApiClient {
    /// Connects to `endpoint` (Unix socket or TCP).
    ///
    /// # Errors
    ///
    /// [`ClientError::Connect`] when the connection cannot be made.
    pub async fn connect(endpoint: &Endpoint) -> Result<Self, ClientError> {
        let connect_error = |source| ClientError::Connect {
            endpoint: endpoint.to_string(),
            source,
        };
        let channel = match endpoint {
            Endpoint::Unix(path) => {
                let path = path.clone();
                // The URI is required by the API but unused: the connector ignores it.
                tonic::transport::Endpoint::from_static("http://localhost")
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            let stream = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, io::Error>(TokioIo::new(stream))
                        }
                    }))
                    .await
                    .map_err(connect_error)?
            }
            Endpoint::Tcp(addr) => {
                tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                    .map_err(connect_error)?
                    .connect()
                    .await
                    .map_err(connect_error)?
            }
        };
        Ok(Self::from_channel(channel))
    }

    /// Wraps an already connected channel; the security header is still added per call.
    pub fn from_channel(channel: Channel) -> Self {
        Self {
            inner: SpiffeWorkloadApiClient::new(channel),
        }
    }

    /// The first message of `FetchX509SVID`: the caller's current SVIDs and federated bundles.
    ///
    /// # Errors
    ///
    /// [`ClientError::Status`] with the server's status, [`ClientError::StreamEnded`].
    pub async fn fetch_x509_context(&mut self) -> Result<X509Context, ClientError> {
        first(self.watch_x509_context().await?).await
    }

    /// Every message of `FetchX509SVID`, as they arrive.
    ///
    /// # Errors
    ///
    /// [`ClientError::Status`] when the call is refused; later errors arrive in the stream.
    pub async fn watch_x509_context(
        &mut self,
    ) -> Result<BoxStream<'static, Result<X509Context, ClientError>>, ClientError> {
        let stream = self
            .inner
            .fetch_x509svid(request(proto::X509svidRequest {}))
            .await?
            .into_inner();
        Ok(map_stream(stream, x509_context))
    }

    /// The first message of `FetchX509Bundles`.
    ///
    /// # Errors
    ///
    /// [`ClientError::Status`] with the server's status, [`ClientError::StreamEnded`].
    pub async fn fetch_x509_bundles(&mut self) -> Result<X509Bundles, ClientError> {
        first(self.watch_x509_bundles().await?).await
    }

    /// Every message of `FetchX509Bundles`.
    ///
    /// # Errors
    ///
    /// [`ClientError::Status`] when the call is refused; later errors arrive in the stream.
    pub async fn watch_x509_bundles(
        &mut self,
    ) -> Result<BoxStream<'static, Result<X509Bundles, ClientError>>, ClientError> {
        let stream = self
            .inner
            .fetch_x509_bundles(request(proto::X509BundlesRequest {}))
            .await?
            .into_inner();
        Ok(map_stream(stream, |r: proto::X509BundlesResponse| {
            X509Bundles {
                bundles: r.bundles.into_iter().collect(),
            }
        }))
    }

    /// The first message of `FetchJWTBundles`.
    ///
    /// # Errors
    ///
    /// [`ClientError::Status`] with the server's status, [`ClientError::StreamEnded`].
    pub async fn fetch_jwt_bundles(&mut self) -> Result<JwtBundles, ClientError> {
        first(self.watch_jwt_bundles().await?).await
    }

    /// Every message of `FetchJWTBundles`.
    ///
    /// # Errors
    ///
    /// [`ClientError::Status`] when the call is refused; later errors arrive in the stream.
    pub async fn watch_jwt_bundles(
        &mut self,
    ) -> Result<BoxStream<'static, Result<JwtBundles, ClientError>>, ClientError> {
        let stream = self
            .inner
            .fetch_jwt_bundles(request(proto::JwtBundlesRequest {}))
            .await?
            .into_inner();
        Ok(map_stream(stream, |r: proto::JwtBundlesResponse| {
            JwtBundles {
                bundles: r.bundles.into_iter().collect(),
            }
        }))
    }

    /// Mints JWT-SVIDs for `audience`; `spiffe_id` of `None` asks for every identity.
    ///
    /// # Errors
    ///
    /// [`ClientError::Status`] with the server's status.
    pub async fn fetch_jwt_svids(
        &mut self,
        audience: &[String],
        spiffe_id: Option<&str>,
    ) -> Result<Vec<JwtSvid>, ClientError> {
        let response = self
            .inner
            .fetch_jwtsvid(request(proto::JwtsvidRequest {
                audience: audience.to_vec(),
                spiffe_id: spiffe_id.unwrap_or_default().to_owned(),
            }))
            .await?
            .into_inner();
        Ok(response
            .svids
            .into_iter()
            .map(|s| JwtSvid {
                spiffe_id: s.spiffe_id,
                token: s.svid,
                hint: s.hint,
            })
            .collect())
    }

    /// Asks the server to validate `token` for `audience`.
    ///
    /// # Errors
    ///
    /// [`ClientError::Status`] with the server's status (`InvalidArgument` for a bad token).
    pub async fn validate_jwt_svid(
        &mut self,
        audience: &str,
        token: &str,
    ) -> Result<ValidatedJwt, ClientError> {
        let response = self
            .inner
            .validate_jwtsvid(request(proto::ValidateJwtsvidRequest {
                audience: audience.to_owned(),
                svid: token.to_owned(),
            }))
            .await?
            .into_inner();
        Ok(ValidatedJwt {
            spiffe_id: response.spiffe_id,
            claims: response.claims.map(struct_to_json).unwrap_or_default(),
        })
    }
}

/// Wraps a message with the security header.
fn request<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        SECURITY_HEADER,
        MetadataValue::from_static(SECURITY_HEADER_VALUE),
    );
    request
}

fn map_stream<M, T>(
    stream: Streaming<M>,
    convert: fn(M) -> T,
) -> BoxStream<'static, Result<T, ClientError>>
where
    M: Send + 'static,
    T: Send + 'static,
{
    stream
        .map(move |item| item.map(convert).map_err(ClientError::from))
        .boxed()
}

async fn first<T>(
    mut stream: BoxStream<'static, Result<T, ClientError>>,
) -> Result<T, ClientError> {
    stream.next().await.unwrap_or(Err(ClientError::StreamEnded))
}

fn x509_context(response: proto::X509svidResponse) -> X509Context {
    X509Context {
        svids: response
            .svids
            .into_iter()
            .map(|s| X509Svid {
                spiffe_id: s.spiffe_id,
                cert_chain: s.x509_svid,
                private_key: s.x509_svid_key,
                bundle: s.bundle,
                hint: s.hint,
            })
            .collect(),
        federated_bundles: response
            .federated_bundles
            .into_iter()
            .collect::<BTreeMap<_, _>>(),
    }
}

fn struct_to_json(s: prost_types::Struct) -> serde_json::Map<String, serde_json::Value> {
    s.fields
        .into_iter()
        .map(|(key, value)| (key, value_to_json(value)))
        .collect()
}

fn value_to_json(value: prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;

    match value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(b),
        Some(Kind::NumberValue(n)) => number_to_json(n),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s),
        Some(Kind::ListValue(list)) => {
            serde_json::Value::Array(list.values.into_iter().map(value_to_json).collect())
        }
        Some(Kind::StructValue(s)) => serde_json::Value::Object(struct_to_json(s)),
    }
}

/// Whole numbers (timestamps) come back as integers, as they were in the token.
fn number_to_json(n: f64) -> serde_json::Value {
    const MAX_EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if n.fract() == 0.0 && n.abs() <= MAX_EXACT {
        // Exact: a whole number within 2^53 converts to i64 without loss.
        #[allow(clippy::cast_possible_truncation)]
        return serde_json::Value::from(n as i64);
    }
    serde_json::Number::from_f64(n).map_or(serde_json::Value::Null, serde_json::Value::Number)
}
