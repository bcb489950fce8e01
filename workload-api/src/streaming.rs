//! The three streaming methods (`FetchX509SVID`, `FetchX509Bundles`, `FetchJWTBundles`),
//! served with a response body that gives every message a buffer of its own.
//!
//! Why not tonic's generated handler: tonic encodes a stream's messages into one `BytesMut`
//! per stream and hands h2 a slice split off it. That slice and the rest of the buffer share
//! one allocation, so after h2 has written the message the stream's buffer still holds it, a
//! full snapshot (about 2 KiB: certificate, key and bundle), for as long as the stream stays
//! open, which is hours. With a thousand open streams that is about 2 MiB that no one reads.
//! Here each message is encoded into a vector of exactly its framed size; h2 drops it once
//! written, and an idle stream holds no message at all.
//!
//! Everything else follows tonic: the request message is read with tonic's decoder
//! ([`Streaming`]), statuses before the first message are trailers-only responses
//! ([`Status::into_http`]), and a stream ends with its status in the trailers. The generated
//! handlers stay in place for every other method; this layer sits in front of them.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{BufMut, Bytes};
use futures::future::{BoxFuture, Either};
use http::{header::CONTENT_TYPE, HeaderMap, HeaderValue};
use http_body::Frame;
use prost::Message;
use tonic::{body::Body, codec::Streaming, Status};
use tower::{Layer, Service};

use crate::{
    codec, proto,
    server::{ResponseStream, WorkloadApiService},
    Provider,
};

/// gRPC's message prefix: a compression flag and a 32-bit big-endian length.
const PREFIX_LEN: usize = 5;

/// The streaming methods this layer answers, by request path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    X509Svid,
    X509Bundles,
    JwtBundles,
}

impl Method {
    fn of(path: &str) -> Option<Self> {
        match path {
            "/SpiffeWorkloadAPI/FetchX509SVID" => Some(Self::X509Svid),
            "/SpiffeWorkloadAPI/FetchX509Bundles" => Some(Self::X509Bundles),
            "/SpiffeWorkloadAPI/FetchJWTBundles" => Some(Self::JwtBundles),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::X509Svid => "FetchX509SVID",
            Self::X509Bundles => "FetchX509Bundles",
            Self::JwtBundles => "FetchJWTBundles",
        }
    }
}

/// Puts [`StreamingMethods`] in front of the generated service.
pub(crate) struct StreamingLayer<P> {
    service: Arc<WorkloadApiService<P>>,
}

impl<P> StreamingLayer<P> {
    pub(crate) fn new(service: Arc<WorkloadApiService<P>>) -> Self {
        Self { service }
    }
}

impl<P> Clone for StreamingLayer<P> {
    fn clone(&self) -> Self {
        Self {
            service: Arc::clone(&self.service),
        }
    }
}

impl<S, P> Layer<S> for StreamingLayer<P> {
    type Service = StreamingMethods<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        StreamingMethods {
            inner,
            service: Arc::clone(&self.service),
        }
    }
}

/// Answers the streaming methods itself and passes every other request to `inner`.
pub(crate) struct StreamingMethods<S, P> {
    inner: S,
    service: Arc<WorkloadApiService<P>>,
}

impl<S: Clone, P> Clone for StreamingMethods<S, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            service: Arc::clone(&self.service),
        }
    }
}

impl<S, P> Service<http::Request<Body>> for StreamingMethods<S, P>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    P: Provider,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Either<BoxFuture<'static, Result<Self::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let Some(method) = Method::of(request.uri().path()) else {
            return Either::Right(self.inner.call(request));
        };
        let service = Arc::clone(&self.service);
        Either::Left(Box::pin(async move {
            Ok(respond(&service, method, request)
                .await
                .unwrap_or_else(Status::into_http))
        }))
    }
}

/// Reads the request, opens the provider's stream and starts the response.
async fn respond<P: Provider>(
    service: &WorkloadApiService<P>,
    method: Method,
    request: http::Request<Body>,
) -> Result<http::Response<Body>, Status> {
    refuse_compression(request.headers())?;
    let (parts, body) = request.into_parts();
    let caller = || crate::server::caller_of(&parts.extensions, method.name());
    match method {
        Method::X509Svid => {
            read_request::<proto::X509svidRequest>(body).await?;
            Ok(stream_response(service.open_x509_svid(&caller()?).await?))
        }
        Method::X509Bundles => {
            read_request::<proto::X509BundlesRequest>(body).await?;
            Ok(stream_response(
                service.open_x509_bundles(&caller()?).await?,
            ))
        }
        Method::JwtBundles => {
            read_request::<proto::JwtBundlesRequest>(body).await?;
            Ok(stream_response(service.open_jwt_bundles(&caller()?).await?))
        }
    }
}

/// The server enables no compression, so a compressed request is refused as tonic refuses it.
fn refuse_compression(headers: &HeaderMap) -> Result<(), Status> {
    match headers.get("grpc-encoding") {
        None => Ok(()),
        Some(value) if value == "identity" => Ok(()),
        Some(value) => Err(Status::unimplemented(format!(
            "Content is compressed with `{}` which isn't supported",
            String::from_utf8_lossy(value.as_bytes())
        ))),
    }
}

/// Reads the one request message of a server-streaming call.
async fn read_request<M: Message + Default + Send + 'static>(body: Body) -> Result<M, Status> {
    let mut messages = Streaming::new_request(codec::decoder::<M>(), body, None, None);
    messages
        .message()
        .await?
        .ok_or_else(|| Status::internal("Missing request message."))
}

/// A gRPC response whose body carries `stream`'s messages.
fn stream_response<M: Message + 'static>(stream: ResponseStream<M>) -> http::Response<Body> {
    let mut response = http::Response::new(Body::new(MessageBody {
        stream: Some(stream),
    }));
    response.headers_mut().insert(
        CONTENT_TYPE,
        unindexed(HeaderValue::from_static("application/grpc")),
    );
    response
}

/// `value`, marked so that h2's HPACK encoder sends it as a literal instead of adding it to
/// the connection's dynamic table. An entry there costs a few hundred bytes per connection
/// for as long as the connection lives, to save a dozen bytes on a response sent once per
/// stream over a local socket.
fn unindexed(mut value: HeaderValue) -> HeaderValue {
    value.set_sensitive(true);
    value
}

/// The body of a streaming response: one data frame per message, each in a buffer of its
/// own, then the trailers with the status that ended the stream.
struct MessageBody<M> {
    /// `None` once the trailers are sent.
    stream: Option<ResponseStream<M>>,
}

impl<M: Message> http_body::Body for MessageBody<M> {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let Some(stream) = this.stream.as_mut() else {
            return Poll::Ready(None);
        };
        let status = match std::task::ready!(stream.as_mut().poll_next(cx)) {
            Some(Ok(message)) => match encode(&message) {
                Ok(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Err(status) => status,
            },
            Some(Err(status)) => status,
            // The service's streams end with a status of their own; this is a safety net.
            None => Status::unavailable("identity stream ended"),
        };
        this.stream = None;
        Poll::Ready(Some(Ok(Frame::trailers(trailers(&status)))))
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_none()
    }
}

/// `message` with its gRPC prefix, in a buffer of exactly that size.
fn encode<M: Message>(message: &M) -> Result<Bytes, Status> {
    let len = message.encoded_len();
    let prefix = u32::try_from(len).map_err(|_| {
        Status::resource_exhausted(format!("message of {len} bytes exceeds the gRPC limit"))
    })?;
    let mut buf = Vec::with_capacity(PREFIX_LEN + len);
    buf.put_u8(0);
    buf.put_u32(prefix);
    message
        .encode(&mut buf)
        .map_err(|error| Status::internal(format!("cannot encode message: {error}")))?;
    Ok(Bytes::from(buf))
}

/// The trailers that carry `status`.
fn trailers(status: &Status) -> HeaderMap {
    let mut map = HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        // Only metadata that is not a valid header fails; the code alone still gets through.
        map.clear();
        map.insert("grpc-status", HeaderValue::from(i32::from(status.code())));
    }
    for value in map.values_mut() {
        value.set_sensitive(true);
    }
    map
}

#[cfg(test)]
mod tests {
    use bytes::Buf;
    use futures::StreamExt;
    use http_body::Body as _;

    use super::*;

    fn response(id: &str) -> proto::X509svidResponse {
        proto::X509svidResponse {
            svids: vec![proto::X509svid {
                spiffe_id: id.to_owned(),
                x509_svid: vec![0x30; 700].into(),
                x509_svid_key: vec![0x02; 138].into(),
                bundle: vec![0x31; 500].into(),
                hint: String::new(),
            }],
            ..Default::default()
        }
    }

    /// Every frame of `body`, in order.
    async fn frames<M: Message>(mut body: MessageBody<M>) -> Vec<Frame<Bytes>> {
        let mut out = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            out.push(frame.unwrap());
        }
        assert!(body.is_end_stream());
        out
    }

    #[tokio::test]
    async fn each_message_is_one_exactly_sized_frame_then_the_status_in_trailers() {
        let sent = vec![response("spiffe://td/a"), response("spiffe://td/b")];
        let items = sent
            .clone()
            .into_iter()
            .map(Ok)
            .chain([Err(Status::unavailable("server shutting down"))]);
        let body = MessageBody {
            stream: Some(futures::stream::iter(items).boxed()),
        };

        let frames = frames(body).await;

        assert_eq!(frames.len(), 3);
        for (frame, want) in frames.iter().zip(&sent) {
            let mut data = frame.data_ref().expect("a data frame").clone();
            // No spare capacity: the frame is its own allocation, freed once written.
            assert_eq!(data.len(), PREFIX_LEN + want.encoded_len());
            assert_eq!(data.get_u8(), 0);
            assert_eq!(data.get_u32() as usize, want.encoded_len());
            assert_eq!(&proto::X509svidResponse::decode(data).unwrap(), want);
        }
        let trailers = frames[2].trailers_ref().expect("trailers");
        assert_eq!(trailers["grpc-status"], "14");
        assert_eq!(trailers["grpc-message"], "server%20shutting%20down");
        // Kept out of the connection's HPACK table.
        assert!(trailers.values().all(HeaderValue::is_sensitive));
    }

    #[tokio::test]
    async fn a_stream_that_just_ends_is_unavailable_not_ok() {
        let body = MessageBody::<proto::X509svidResponse> {
            stream: Some(futures::stream::empty().boxed()),
        };
        let frames = frames(body).await;
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].trailers_ref().unwrap()["grpc-status"], "14");
    }

    #[test]
    fn only_the_streaming_methods_are_taken() {
        assert_eq!(
            Method::of("/SpiffeWorkloadAPI/FetchX509SVID"),
            Some(Method::X509Svid)
        );
        assert_eq!(Method::of("/SpiffeWorkloadAPI/FetchJWTSVID"), None);
        assert_eq!(Method::of("/SpiffeWorkloadAPI/ValidateJWTSVID"), None);
        assert_eq!(
            Method::of("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            None
        );
    }

    #[test]
    fn compressed_requests_are_unimplemented() {
        let mut headers = HeaderMap::new();
        assert!(refuse_compression(&headers).is_ok());
        headers.insert("grpc-encoding", HeaderValue::from_static("identity"));
        assert!(refuse_compression(&headers).is_ok());
        headers.insert("grpc-encoding", HeaderValue::from_static("gzip"));
        assert_eq!(
            refuse_compression(&headers).unwrap_err().code(),
            tonic::Code::Unimplemented
        );
    }
}
