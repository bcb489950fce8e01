//! The gRPC codec of the generated client and server: prost messages, encoded into buffers
//! sized to the message.
//!
//! tonic's stock prost codec gives every call an 8 KiB encode buffer up front, and a streaming
//! response keeps that buffer for as long as the stream is open. A Workload API stream sends a
//! message of one to a few KiB when an identity changes and then waits, often for hours; with
//! a thousand open streams the stock buffers alone hold about 8 MiB. This codec starts each
//! call with a small buffer and reserves exactly the encoded length of a message before
//! writing it, so an idle stream keeps at most one message's worth of buffer. The three
//! streaming methods of the server go further and do not use this encoder at all:
//! `streaming.rs` gives each of their messages a buffer of its own, freed once written.
//!
//! Decoding is tonic's prost decoder with the same small initial buffer: tonic reserves a
//! message's announced length before reading it, so large messages are read without repeated
//! growth, and a call that receives one small request does not allocate 8 KiB for it.

use std::marker::PhantomData;

use prost::Message;
use tonic::{
    codec::{BufferSettings, Codec, EncodeBuf, Encoder},
    Status,
};
use tonic_prost::ProstDecoder;

/// Initial encode and decode buffer of a call: enough for the small messages (requests,
/// bundles, JWT-SVIDs) without growing, and no more than that. Larger messages grow it to
/// their exact size.
const INITIAL_BUFFER: usize = 512;

/// How many encoded bytes tonic batches into one write when several messages are ready at
/// once; tonic's default.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// A prost codec whose buffers start small and grow to the message, instead of 8 KiB per call.
///
/// Named by `build.rs` as the codec of every generated method.
#[derive(Debug)]
pub struct SizedCodec<T, U> {
    _types: PhantomData<fn(T) -> U>,
}

impl<T, U> Default for SizedCodec<T, U> {
    fn default() -> Self {
        Self {
            _types: PhantomData,
        }
    }
}

impl<T, U> Codec for SizedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = SizedEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        SizedEncoder { _type: PhantomData }
    }

    fn decoder(&mut self) -> Self::Decoder {
        decoder()
    }
}

/// Encodes `T` after reserving its exact encoded length.
#[derive(Debug)]
pub struct SizedEncoder<T> {
    _type: PhantomData<fn(T)>,
}

impl<T: Message> Encoder for SizedEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // Without this the buffer would grow by doubling while prost writes, leaving up to
        // twice the message size allocated for the life of the stream.
        buf.reserve(item.encoded_len());
        item.encode(buf)
            .map_err(|error| Status::internal(format!("cannot encode message: {error}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}

fn buffer_settings() -> BufferSettings {
    BufferSettings::new(INITIAL_BUFFER, YIELD_THRESHOLD)
}

/// The decoder of every method: tonic's prost decoder with the small initial buffer. Also used
/// by the streaming handlers (`streaming.rs`), which read their requests themselves.
pub(crate) fn decoder<M: Message + Default>() -> ProstDecoder<M> {
    ProstDecoder::new(buffer_settings())
}

#[cfg(test)]
mod tests {
    use std::pin::pin;

    use bytes::{Buf, Bytes};
    use tonic::codec::{EncodeBody, SingleMessageCompressionOverride, Streaming};
    use tonic::codegen::Body;

    use super::*;
    use crate::proto;

    fn response(id: &str, key_len: usize) -> proto::X509svidResponse {
        proto::X509svidResponse {
            svids: vec![proto::X509svid {
                spiffe_id: id.to_owned(),
                x509_svid: vec![0x30; 700].into(),
                x509_svid_key: vec![0x02; key_len].into(),
                bundle: vec![0x31; 500].into(),
                hint: "web".to_owned(),
            }],
            ..Default::default()
        }
    }

    type ResponseCodec = SizedCodec<proto::X509svidResponse, proto::X509svidResponse>;

    /// The body a server sends for a stream of `messages`.
    fn encode_body(
        messages: Vec<proto::X509svidResponse>,
    ) -> impl Body<Data = Bytes, Error = tonic::Status> + Send + 'static {
        let source = tokio_stream::iter(messages.into_iter().map(Ok));
        EncodeBody::new_server(
            ResponseCodec::default().encoder(),
            source,
            None,
            SingleMessageCompressionOverride::default(),
            None,
        )
    }

    /// Encodes `messages` as a server stream would and returns the body's data bytes.
    async fn encode_stream(messages: Vec<proto::X509svidResponse>) -> Vec<u8> {
        let mut body = pin!(encode_body(messages));
        let mut data = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            if let Ok(bytes) = frame.unwrap().into_data() {
                data.extend_from_slice(&bytes);
            }
        }
        data
    }

    /// Splits gRPC length-prefixed messages and decodes each.
    fn decode_all(mut data: &[u8]) -> Vec<proto::X509svidResponse> {
        let mut out = Vec::new();
        while !data.is_empty() {
            assert_eq!(data.get_u8(), 0, "message marked compressed");
            let len = data.get_u32() as usize;
            let message = Bytes::copy_from_slice(&data[..len]);
            data.advance(len);
            out.push(proto::X509svidResponse::decode(message).unwrap());
        }
        out
    }

    #[tokio::test]
    async fn streamed_messages_decode_to_what_was_sent() {
        // The second message is far larger than the buffer the first one left behind.
        let sent = vec![
            response("spiffe://td/a", 138),
            response("spiffe://td/b", 9000),
        ];

        let received = decode_all(&encode_stream(sent.clone()).await);

        assert_eq!(received.len(), 2);
        for (got, want) in received.iter().zip(&sent) {
            assert_eq!(got.svids[0].spiffe_id, want.svids[0].spiffe_id);
            assert_eq!(got.svids[0].x509_svid, want.svids[0].x509_svid);
            assert_eq!(got.svids[0].x509_svid_key, want.svids[0].x509_svid_key);
            assert_eq!(got.svids[0].bundle, want.svids[0].bundle);
            assert_eq!(got.svids[0].hint, want.svids[0].hint);
        }
    }

    #[tokio::test]
    async fn decoder_reads_messages_far_larger_than_its_initial_buffer() {
        let sent = vec![
            response("spiffe://td/big", 200_000),
            response("spiffe://td/small", 10),
        ];
        let mut stream = Streaming::new_request(
            ResponseCodec::default().decoder(),
            encode_body(sent.clone()),
            None,
            None,
        );

        for want in &sent {
            let got = stream.message().await.unwrap().expect("a message");
            assert_eq!(got.svids[0].spiffe_id, want.svids[0].spiffe_id);
            assert_eq!(got.svids[0].x509_svid_key, want.svids[0].x509_svid_key);
        }
    }

    #[tokio::test]
    async fn empty_message_is_a_bare_header() {
        let data = encode_stream(vec![proto::X509svidResponse::default()]).await;
        assert_eq!(data, [0, 0, 0, 0, 0]);
    }
}
