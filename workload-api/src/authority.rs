//! An IO adapter that makes the HTTP/2 `:authority` of Java and gRPC-core clients acceptable to
//! h2.
//!
//! Over a Unix socket, grpc-java (hence java-spiffe) and gRPC core (hence py-spiffe and grpcio)
//! send the socket path, or a percent-encoding of it, as `:authority`: `/run/agent/api.sock` or
//! `run%2Fagent%2Fapi.sock`. The `h2` crate under tonic rejects such a value as a malformed
//! authority and resets the stream with `PROTOCOL_ERROR`, so every call of these clients fails.
//!
//! [`AuthorityRewriter`] sits between the accepted socket and h2. On the read side it follows the
//! HTTP/2 framing after the client connection preface, decodes every header block (HEADERS plus
//! CONTINUATION frames) with the crate's own HPACK decoder, which tracks the client's dynamic
//! table, replaces an `:authority` that [`http::uri::Authority`] rejects with `localhost`, and
//! re-encodes every block without dynamic-table indexing. h2's own dynamic table therefore stays empty and always
//! agrees with the blocks it receives; every other frame passes through byte for byte. The write
//! side is untouched.
//!
//! A stream that does not begin with the HTTP/2 preface is passed through unchanged.

use std::{
    io,
    pin::Pin,
    str::FromStr,
    task::{Context, Poll},
};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

use crate::hpack::{self, HpackError};

/// The HTTP/2 client connection preface (RFC 9113, section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const FRAME_HEADER_LEN: usize = 9;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_PING: u8 = 0x6;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
const PRIORITY_LEN: usize = 5;

/// Largest frame payload we emit: the initial SETTINGS_MAX_FRAME_SIZE, which every peer accepts.
const MAX_OUTPUT_FRAME: usize = 16_384;

/// The dynamic table size h2 advertises (the HTTP/2 default); clients may not exceed it.
const MAX_DYNAMIC_TABLE_SIZE: usize = 4_096;

/// What replaces an `:authority` that h2 would reject.
const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";

/// Bounds on the work one header block may cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest compressed header block (HEADERS plus CONTINUATION payloads), in bytes.
    pub max_block_size: usize,
    /// Largest decoded header list, counted as in SETTINGS_MAX_HEADER_LIST_SIZE (name + value +
    /// 32 bytes per field). Protects against HPACK bombs: a field that would exceed it is refused
    /// before its strings are copied or decoded.
    pub max_decoded_size: usize,
}

impl Default for Limits {
    /// 64 KiB for both: four times the 16 KiB header list that hyper's HTTP/2 server accepts by
    /// default, so that h2 rather than this adapter refuses oversized requests it would refuse
    /// anyway.
    fn default() -> Self {
        Self {
            max_block_size: 64 * 1024,
            max_decoded_size: 64 * 1024,
        }
    }
}

/// Wraps an accepted connection and normalizes the `:authority` of incoming HTTP/2 requests.
///
/// See the module documentation. When the client breaks HTTP/2 framing or HPACK (or exceeds
/// [`Limits`]), the adapter hands h2 a frame sequence that h2 itself rejects as a connection
/// error (a header block interrupted by a PING), so the client receives a GOAWAY with
/// `PROTOCOL_ERROR`; after it, reads report end of file.
#[derive(Debug)]
pub struct AuthorityRewriter<T> {
    inner: T,
    rewriter: Rewriter,
    /// Processed bytes waiting to be read by h2.
    ready: BytesMut,
    /// The inner stream reached end of file.
    eof: bool,
}

impl<T> AuthorityRewriter<T> {
    /// Wraps `inner` with the default [`Limits`].
    pub fn new(inner: T) -> Self {
        Self::with_limits(inner, Limits::default())
    }

    /// Wraps `inner` with explicit limits.
    pub fn with_limits(inner: T, limits: Limits) -> Self {
        Self {
            inner,
            rewriter: Rewriter::new(limits),
            ready: BytesMut::new(),
            eof: false,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// How many `:authority` values this connection has had replaced so far.
    pub fn rewritten_count(&self) -> u64 {
        self.rewriter.rewritten
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for AuthorityRewriter<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                if this.ready.is_empty() {
                    // Connections mostly sit idle on an open stream: keep no buffer meanwhile.
                    this.ready = BytesMut::new();
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }

            // Not HTTP/2 after all: stop buffering and read straight through.
            if this.rewriter.is_passthrough() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }

            let mut chunk = [0u8; 8192];
            let mut chunk_buf = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut chunk_buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Ready(Ok(())) => {}
            }
            let filled = chunk_buf.filled();
            if filled.is_empty() {
                // Hand over whatever is left unparsed; h2 reports the truncated frame.
                this.rewriter.finish(&mut this.ready);
                this.eof = true;
                continue;
            }
            if let Err(error) = this.rewriter.push(filled, &mut this.ready) {
                tracing::debug!(%error, "closing http/2 connection the adapter cannot follow");
                write_connection_error(&mut this.ready);
                this.eof = true;
            }
            this.rewriter.release_idle_input();
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for AuthorityRewriter<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: Connected> Connected for AuthorityRewriter<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Why a connection's byte stream could not be rewritten. Every case is a connection error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RewriteError {
    /// A frame of type `frame_type` arrived while a header block on stream `stream_id` still
    /// waited for CONTINUATION frames.
    #[error("frame of type {frame_type:#x} on stream {frame_stream} interrupts the header block of stream {stream_id}")]
    InterruptedHeaderBlock {
        /// The stream whose header block is incomplete.
        stream_id: u32,
        /// The type of the interrupting frame.
        frame_type: u8,
        /// The stream of the interrupting frame.
        frame_stream: u32,
    },
    /// A header block is larger than [`Limits::max_block_size`].
    #[error("header block of {size} bytes exceeds the limit of {limit} bytes")]
    BlockTooLarge {
        /// Size reached so far.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A decoded header list is larger than [`Limits::max_decoded_size`].
    #[error("decoded header list exceeds the limit of {limit} bytes")]
    DecodedTooLarge {
        /// The limit.
        limit: usize,
    },
    /// A HEADERS frame's padding or priority fields do not fit in its payload.
    #[error("malformed HEADERS frame of {len} bytes on stream {stream_id}")]
    MalformedHeaders {
        /// The stream of the frame.
        stream_id: u32,
        /// The payload length.
        len: usize,
    },
    /// The header block is not valid HPACK.
    #[error("invalid HPACK header block on stream {stream_id}: {reason}")]
    Hpack {
        /// The stream of the block.
        stream_id: u32,
        /// What the decoder reported.
        reason: String,
    },
}

/// The sans-IO core: consumes client bytes, produces bytes for h2.
struct Rewriter {
    limits: Limits,
    state: State,
    /// Input not yet turned into output.
    input: BytesMut,
    /// A header block waiting for its CONTINUATION frames.
    block: Option<PendingBlock>,
    decoder: hpack::Decoder,
    rewritten: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Matching the connection preface.
    Preface,
    /// Not HTTP/2 with prior knowledge: everything passes through.
    Passthrough,
    /// At a frame boundary.
    FrameStart,
    /// Copying the rest of a frame that needs no rewriting.
    Copying { remaining: usize },
}

struct PendingBlock {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; PRIORITY_LEN]>,
    fragment: Vec<u8>,
}

impl std::fmt::Debug for Rewriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewriter")
            .field("state", &self.state)
            .field("buffered", &self.input.len())
            .field("rewritten", &self.rewritten)
            .finish_non_exhaustive()
    }
}

impl Rewriter {
    fn new(limits: Limits) -> Self {
        Self {
            limits,
            state: State::Preface,
            input: BytesMut::new(),
            block: None,
            decoder: hpack::Decoder::new(MAX_DYNAMIC_TABLE_SIZE),
            rewritten: 0,
        }
    }

    /// Frees the input buffer once everything in it has been processed.
    fn release_idle_input(&mut self) {
        if self.input.is_empty() && self.input.capacity() > 0 {
            self.input = BytesMut::new();
        }
    }

    fn is_passthrough(&self) -> bool {
        self.state == State::Passthrough && self.input.is_empty()
    }

    /// Flushes unparsed input at end of stream.
    fn finish(&mut self, out: &mut BytesMut) {
        out.extend_from_slice(&self.input);
        self.input.clear();
    }

    /// Consumes `data` and appends whatever can be forwarded to `out`.
    fn push(&mut self, data: &[u8], out: &mut BytesMut) -> Result<(), RewriteError> {
        self.input.extend_from_slice(data);
        loop {
            match self.state {
                State::Passthrough => {
                    out.extend_from_slice(&self.input);
                    self.input.clear();
                    return Ok(());
                }
                State::Preface => {
                    let n = self.input.len().min(PREFACE.len());
                    if self.input[..n] != PREFACE[..n] {
                        self.state = State::Passthrough;
                    } else if n == PREFACE.len() {
                        out.extend_from_slice(&self.input.split_to(n));
                        self.state = State::FrameStart;
                    } else {
                        return Ok(());
                    }
                }
                State::Copying { remaining } => {
                    if self.input.is_empty() {
                        return Ok(());
                    }
                    let n = remaining.min(self.input.len());
                    out.extend_from_slice(&self.input.split_to(n));
                    self.state = if n == remaining {
                        State::FrameStart
                    } else {
                        State::Copying {
                            remaining: remaining - n,
                        }
                    };
                }
                State::FrameStart => {
                    if !self.frame(out)? {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Handles the frame at the start of the input. Returns false when more input is needed.
    fn frame(&mut self, out: &mut BytesMut) -> Result<bool, RewriteError> {
        if self.input.len() < FRAME_HEADER_LEN {
            return Ok(false);
        }
        let header = &self.input[..FRAME_HEADER_LEN];
        let len =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let frame_type = header[3];
        let flags = header[4];
        let stream_id =
            u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;

        if let Some(block) = &self.block {
            if frame_type != FRAME_CONTINUATION || stream_id != block.stream_id {
                return Err(RewriteError::InterruptedHeaderBlock {
                    stream_id: block.stream_id,
                    frame_type,
                    frame_stream: stream_id,
                });
            }
        } else if frame_type != FRAME_HEADERS {
            // Everything else, including a stray CONTINUATION that h2 will reject itself.
            out.extend_from_slice(&self.input.split_to(FRAME_HEADER_LEN));
            self.state = State::Copying { remaining: len };
            return Ok(true);
        }

        let so_far = self.block.as_ref().map_or(0, |b| b.fragment.len());
        if so_far + len > self.limits.max_block_size {
            return Err(RewriteError::BlockTooLarge {
                size: so_far + len,
                limit: self.limits.max_block_size,
            });
        }
        if self.input.len() < FRAME_HEADER_LEN + len {
            return Ok(false);
        }
        self.input.advance(FRAME_HEADER_LEN);
        let payload = self.input.split_to(len);

        match self.block.as_mut() {
            Some(block) => block.fragment.extend_from_slice(&payload),
            None => self.block = Some(start_block(stream_id, flags, &payload)?),
        }
        if flags & FLAG_END_HEADERS != 0 {
            // The `Some` was established above.
            if let Some(block) = self.block.take() {
                self.emit_block(block, out)?;
            }
        }
        Ok(true)
    }

    /// Decodes a complete header block, fixes `:authority`, and writes it as HEADERS plus
    /// CONTINUATION frames without dynamic-table references.
    fn emit_block(&mut self, block: PendingBlock, out: &mut BytesMut) -> Result<(), RewriteError> {
        let limit = self.limits.max_decoded_size;
        let mut rewritten = false;
        let mut encoded = Vec::with_capacity(block.fragment.len() + 16);

        self.decoder
            .decode(&block.fragment, limit, |name, value| {
                if name == b":authority" && !is_acceptable_authority(value) {
                    rewritten = true;
                    encode_field(&mut encoded, name, REPLACEMENT_AUTHORITY);
                } else {
                    encode_field(&mut encoded, name, value);
                }
            })
            .map_err(|error| match error {
                HpackError::DecodedTooLarge { .. } => RewriteError::DecodedTooLarge { limit },
                error => RewriteError::Hpack {
                    stream_id: block.stream_id,
                    reason: error.to_string(),
                },
            })?;
        if rewritten {
            self.rewritten += 1;
            tracing::trace!(
                stream_id = block.stream_id,
                "replaced unparsable :authority"
            );
        }

        write_header_frames(out, &block, &encoded);
        Ok(())
    }
}

fn start_block(stream_id: u32, flags: u8, payload: &[u8]) -> Result<PendingBlock, RewriteError> {
    let malformed = || RewriteError::MalformedHeaders {
        stream_id,
        len: payload.len(),
    };
    let mut body = payload;
    if flags & FLAG_PADDED != 0 {
        let (&pad, rest) = body.split_first().ok_or_else(malformed)?;
        let keep = rest
            .len()
            .checked_sub(usize::from(pad))
            .ok_or_else(malformed)?;
        body = &rest[..keep];
    }
    let priority = if flags & FLAG_PRIORITY != 0 {
        if body.len() < PRIORITY_LEN {
            return Err(malformed());
        }
        let (fields, rest) = body.split_at(PRIORITY_LEN);
        body = rest;
        let mut priority = [0u8; PRIORITY_LEN];
        priority.copy_from_slice(fields);
        Some(priority)
    } else {
        None
    };
    Ok(PendingBlock {
        stream_id,
        end_stream: flags & FLAG_END_STREAM != 0,
        priority,
        fragment: body.to_vec(),
    })
}

/// The same check h2 applies to `:authority`.
fn is_acceptable_authority(value: &[u8]) -> bool {
    std::str::from_utf8(value).is_ok_and(|s| http::uri::Authority::from_str(s).is_ok())
}

/// Writes `block` as one HEADERS frame and as many CONTINUATION frames as needed, each payload
/// at most [`MAX_OUTPUT_FRAME`] bytes, without padding.
fn write_header_frames(out: &mut BytesMut, block: &PendingBlock, encoded: &[u8]) {
    let priority_len = if block.priority.is_some() {
        PRIORITY_LEN
    } else {
        0
    };
    let first_len = encoded.len().min(MAX_OUTPUT_FRAME - priority_len);
    let (first, mut rest) = encoded.split_at(first_len);

    let mut flags = 0;
    if block.end_stream {
        flags |= FLAG_END_STREAM;
    }
    if block.priority.is_some() {
        flags |= FLAG_PRIORITY;
    }
    if rest.is_empty() {
        flags |= FLAG_END_HEADERS;
    }
    write_frame_header(
        out,
        priority_len + first.len(),
        FRAME_HEADERS,
        flags,
        block.stream_id,
    );
    if let Some(priority) = &block.priority {
        out.extend_from_slice(priority);
    }
    out.extend_from_slice(first);

    while !rest.is_empty() {
        let n = rest.len().min(MAX_OUTPUT_FRAME);
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        let flags = if rest.is_empty() { FLAG_END_HEADERS } else { 0 };
        write_frame_header(out, chunk.len(), FRAME_CONTINUATION, flags, block.stream_id);
        out.extend_from_slice(chunk);
    }
}

/// Frames that make h2 fail the connection with `PROTOCOL_ERROR` and send GOAWAY: a header
/// block left open and then interrupted by another frame (RFC 9113, section 6.10).
fn write_connection_error(out: &mut BytesMut) {
    write_frame_header(out, 0, FRAME_HEADERS, 0, 1);
    write_frame_header(out, 8, FRAME_PING, 0, 0);
    out.put_u64(0);
}

fn write_frame_header(out: &mut BytesMut, len: usize, frame_type: u8, flags: u8, stream_id: u32) {
    // Payloads here never exceed MAX_OUTPUT_FRAME, so the length fits in 24 bits.
    let len = u32::try_from(len).unwrap_or(u32::MAX) & 0x00ff_ffff;
    out.put_slice(&len.to_be_bytes()[1..]);
    out.put_u8(frame_type);
    out.put_u8(flags);
    out.put_u32(stream_id & 0x7fff_ffff);
}

/// An HPACK static-table index, its name, and the value it carries if the value matters.
type StaticField = (usize, &'static [u8], Option<&'static [u8]>);

/// Static-table entries (RFC 7541, appendix A) used to keep the re-encoded blocks small: the
/// fields every gRPC request carries. Any other field is written with a literal name.
const STATIC_FIELDS: &[StaticField] = &[
    (1, b":authority", None),
    (2, b":method", Some(b"GET")),
    (3, b":method", Some(b"POST")),
    (4, b":path", Some(b"/")),
    (6, b":scheme", Some(b"http")),
    (7, b":scheme", Some(b"https")),
    (31, b"content-type", None),
    (58, b"user-agent", None),
];

/// Appends one field as an indexed static entry or a literal without indexing (RFC 7541,
/// sections 6.1 and 6.2.2), never touching the dynamic table.
fn encode_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    let mut name_index = None;
    for &(index, static_name, static_value) in STATIC_FIELDS {
        if static_name != name {
            continue;
        }
        if static_value == Some(value) {
            encode_integer(out, index, 7, 0x80);
            return;
        }
        name_index.get_or_insert(index);
    }
    match name_index {
        Some(index) => encode_integer(out, index, 4, 0x00),
        None => {
            out.push(0x00);
            encode_string(out, name);
        }
    }
    encode_string(out, value);
}

fn encode_string(out: &mut Vec<u8>, s: &[u8]) {
    // Not Huffman-coded: high bit clear.
    encode_integer(out, s.len(), 7, 0x00);
    out.extend_from_slice(s);
}

/// HPACK integer representation (RFC 7541, section 5.1).
fn encode_integer(out: &mut Vec<u8>, mut value: usize, prefix_bits: u8, first_byte_flags: u8) {
    let max_prefix = (1usize << prefix_bits) - 1;
    if value < max_prefix {
        // Fits in the prefix: value < 2^prefix_bits <= 128.
        out.push(first_byte_flags | value as u8);
        return;
    }
    out.push(first_byte_flags | max_prefix as u8);
    value -= max_prefix;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const AUTHORITY: &[u8] = b"run%2Fagent%2Fapi.sock";

    type HeaderList = Vec<(Vec<u8>, Vec<u8>)>;
    type FrameSummary = (u8, u8, u32, usize);

    fn frame(frame_type: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        write_frame_header(&mut out, payload.len(), frame_type, flags, stream_id);
        out.extend_from_slice(payload);
        out.to_vec()
    }

    fn settings() -> Vec<u8> {
        frame(0x4, 0, 0, &[])
    }

    fn request_headers(authority: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        vec![
            (b":method".to_vec(), b"POST".to_vec()),
            (b":scheme".to_vec(), b"http".to_vec()),
            (
                b":path".to_vec(),
                b"/SpiffeWorkloadAPI/FetchX509SVID".to_vec(),
            ),
            (b":authority".to_vec(), authority.to_vec()),
            (b"content-type".to_vec(), b"application/grpc".to_vec()),
            (b"te".to_vec(), b"trailers".to_vec()),
            (b"workload.spiffe.io".to_vec(), b"true".to_vec()),
        ]
    }

    fn encode(encoder: &mut loona_hpack::Encoder<'_>, headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        encoder.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])))
    }

    /// Parses the rewriter's output back into header lists, the way h2 would: a fresh decoder
    /// that must never need a dynamic-table entry.
    fn parse_output(mut bytes: &[u8]) -> (Vec<HeaderList>, Vec<FrameSummary>) {
        assert!(bytes.starts_with(PREFACE));
        bytes = &bytes[PREFACE.len()..];
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_table_size(0);
        let mut lists = Vec::new();
        let mut frames = Vec::new();
        let mut block = Vec::new();
        while !bytes.is_empty() {
            let len =
                usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
            let (ty, flags) = (bytes[3], bytes[4]);
            let sid = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
            let payload = &bytes[9..9 + len];
            frames.push((ty, flags, sid, len));
            if ty == FRAME_HEADERS || ty == FRAME_CONTINUATION {
                assert!(len <= MAX_OUTPUT_FRAME);
                assert_eq!(flags & FLAG_PADDED, 0);
                let body = if ty == FRAME_HEADERS && flags & FLAG_PRIORITY != 0 {
                    &payload[5..]
                } else {
                    payload
                };
                block.extend_from_slice(body);
                if flags & FLAG_END_HEADERS != 0 {
                    lists.push(
                        decoder
                            .decode(&block)
                            .expect("output needs no dynamic table"),
                    );
                    block.clear();
                }
            }
            bytes = &bytes[9 + len..];
        }
        (lists, frames)
    }

    fn run(input: &[u8], chunk: usize) -> Result<Vec<u8>, RewriteError> {
        let mut rewriter = Rewriter::new(Limits::default());
        let mut out = BytesMut::new();
        for piece in input.chunks(chunk.max(1)) {
            rewriter.push(piece, &mut out)?;
        }
        rewriter.finish(&mut out);
        Ok(out.to_vec())
    }

    fn authority_of(list: &[(Vec<u8>, Vec<u8>)]) -> &[u8] {
        &list.iter().find(|(n, _)| n == b":authority").unwrap().1
    }

    #[test]
    fn socket_path_authority_is_replaced_even_when_referenced_from_dynamic_table() {
        // Like gRPC core: every field a literal with incremental indexing, then a second
        // request made only of references to the dynamic table.
        let headers = request_headers(AUTHORITY);
        let mut first = Vec::new();
        for (name, value) in &headers {
            first.push(0x40);
            encode_string(&mut first, name);
            encode_string(&mut first, value);
        }
        let second: Vec<u8> = (0..headers.len())
            .map(|i| 0x80 | u8::try_from(62 + headers.len() - 1 - i).unwrap())
            .collect();
        let mut input = PREFACE.to_vec();
        input.extend(settings());
        input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &first));
        input.extend(frame(0x0, 0x1, 1, b"\0\0\0\0\0"));
        input.extend(frame(
            FRAME_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            3,
            &second,
        ));

        for chunk in [1, 2, 7, 9, 10, 64, 4096] {
            let out = run(&input, chunk).unwrap();
            let (lists, frames) = parse_output(&out);
            assert_eq!(lists.len(), 2);
            for list in &lists {
                assert_eq!(authority_of(list), b"localhost");
                assert_eq!(list.len(), 7);
                assert!(list.contains(&(b"te".to_vec(), b"trailers".to_vec())));
            }
            // DATA passes through unchanged; END_STREAM kept on the second HEADERS.
            assert_eq!(frames[0], (0x4, 0, 0, 0));
            assert_eq!(frames[2], (0x0, 0x1, 1, 5));
            assert_eq!(frames[3].1, FLAG_END_HEADERS | FLAG_END_STREAM);
        }
    }

    #[test]
    fn valid_authority_is_kept() {
        let mut encoder = loona_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        let block = encode(&mut encoder, &request_headers(b"localhost:8080"));
        input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &block));
        let (lists, _) = parse_output(&run(&input, 4096).unwrap());
        assert_eq!(authority_of(&lists[0]), b"localhost:8080");
        assert_eq!(lists[0], request_headers(b"localhost:8080"));
    }

    #[test]
    fn raw_absolute_path_authority_is_replaced() {
        let mut encoder = loona_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        let block = encode(&mut encoder, &request_headers(b"/var/run/x.sock"));
        input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &block));
        let (lists, _) = parse_output(&run(&input, 3).unwrap());
        assert_eq!(authority_of(&lists[0]), b"localhost");
    }

    #[test]
    fn continuation_padding_and_priority_are_handled() {
        let mut encoder = loona_hpack::Encoder::new();
        let block = encode(&mut encoder, &request_headers(AUTHORITY));
        let (a, b) = block.split_at(10);
        let (b, c) = b.split_at(5);
        let mut headers_payload = vec![3u8]; // pad length
        headers_payload.extend([0x80, 0, 0, 0, 16]); // priority: exclusive, dep 0, weight 16
        headers_payload.extend(a);
        headers_payload.extend([0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            FRAME_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY,
            5,
            &headers_payload,
        ));
        input.extend(frame(FRAME_CONTINUATION, 0, 5, b));
        input.extend(frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 5, c));

        let out = run(&input, 5).unwrap();
        let (lists, frames) = parse_output(&out);
        assert_eq!(authority_of(&lists[0]), b"localhost");
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].1, FLAG_PRIORITY | FLAG_END_HEADERS);
        let payload_start = PREFACE.len() + 9;
        assert_eq!(&out[payload_start..payload_start + 5], &[0x80, 0, 0, 0, 16]);
    }

    #[test]
    fn frame_between_headers_and_continuation_is_an_error() {
        let mut encoder = loona_hpack::Encoder::new();
        let block = encode(&mut encoder, &request_headers(AUTHORITY));
        let mut input = PREFACE.to_vec();
        input.extend(frame(FRAME_HEADERS, 0, 1, &block[..4]));
        input.extend(settings());
        assert!(matches!(
            run(&input, 4096),
            Err(RewriteError::InterruptedHeaderBlock {
                stream_id: 1,
                frame_type: 4,
                ..
            })
        ));

        let mut input = PREFACE.to_vec();
        input.extend(frame(FRAME_HEADERS, 0, 1, &block[..4]));
        input.extend(frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 3, &block[4..]));
        assert!(run(&input, 4096).is_err());
    }

    #[test]
    fn large_block_is_split_into_frames_of_at_most_16384_bytes() {
        let mut headers = request_headers(AUTHORITY);
        for i in 0..5 {
            headers.push((format!("x-big-{i}").into_bytes(), vec![b'a'; 9000]));
        }
        let mut encoder = loona_hpack::Encoder::new();
        let block = encode(&mut encoder, &headers);
        let mut input = PREFACE.to_vec();
        for (i, chunk) in block.chunks(16_000).enumerate() {
            let ty = if i == 0 {
                FRAME_HEADERS
            } else {
                FRAME_CONTINUATION
            };
            let last = (i + 1) * 16_000 >= block.len();
            input.extend(frame(ty, if last { FLAG_END_HEADERS } else { 0 }, 1, chunk));
        }
        let out = run(&input, 1000).unwrap();
        let (lists, frames) = parse_output(&out);
        assert!(frames.len() >= 3);
        assert_eq!(lists[0].len(), headers.len());
        assert_eq!(authority_of(&lists[0]), b"localhost");
    }

    #[test]
    fn hpack_bomb_is_rejected() {
        // One big entry in the table, then thousands of references to it.
        let mut block = Vec::new();
        block.push(0x40);
        encode_string(&mut block, b"x-bomb");
        encode_string(&mut block, &[b'b'; 3000]);
        block.extend(std::iter::repeat_n(0xbe, 100)); // index 62: the entry just added
        let mut input = PREFACE.to_vec();
        input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &block));
        assert!(matches!(
            run(&input, 4096),
            Err(RewriteError::DecodedTooLarge { .. })
        ));
    }

    #[test]
    fn oversized_block_is_rejected_before_buffering_it() {
        let mut input = PREFACE.to_vec();
        let mut header = BytesMut::new();
        write_frame_header(&mut header, 0xff_ffff, FRAME_HEADERS, 0, 1);
        input.extend(header);
        assert!(matches!(
            run(&input, 4096),
            Err(RewriteError::BlockTooLarge { .. })
        ));
    }

    #[test]
    fn invalid_hpack_is_an_error() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &[0x80]));
        assert!(matches!(run(&input, 4096), Err(RewriteError::Hpack { .. })));
    }

    #[test]
    fn dynamic_table_size_update_is_consumed() {
        let mut encoder = loona_hpack::Encoder::new();
        let mut block = vec![0x20]; // size update to 0
        block.extend(encode(&mut encoder, &request_headers(AUTHORITY)));
        let mut input = PREFACE.to_vec();
        input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &block));
        let out = run(&input, 4096).unwrap();
        let (lists, _) = parse_output(&out);
        assert_eq!(authority_of(&lists[0]), b"localhost");
        let payload = &out[PREFACE.len() + 9..];
        assert_ne!(payload[0] & 0xe0, 0x20, "size update must not reach h2");
    }

    #[test]
    fn non_http2_input_passes_through_untouched() {
        let input = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        assert_eq!(run(&input, 3).unwrap(), input);
        let input = b"PRI * HTTP/1.1 garbage".to_vec();
        assert_eq!(run(&input, 1).unwrap(), input);
    }

    #[test]
    fn static_fields_match_the_hpack_static_table() {
        let mut decoder = loona_hpack::Decoder::new();
        for &(index, name, value) in STATIC_FIELDS {
            let mut block = Vec::new();
            encode_integer(&mut block, index, 7, 0x80);
            let decoded = decoder.decode(&block).unwrap();
            assert_eq!(decoded[0].0, name);
            if let Some(value) = value {
                assert_eq!(decoded[0].1, value);
            }
        }
    }

    #[tokio::test]
    async fn adapter_rewrites_over_a_real_stream_and_forwards_writes() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let (client, server) = tokio::io::duplex(64);
        let mut server = AuthorityRewriter::new(server);
        let mut encoder = loona_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            FRAME_HEADERS,
            FLAG_END_HEADERS,
            1,
            &encode(&mut encoder, &request_headers(AUTHORITY)),
        ));
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let writer = tokio::spawn(async move {
            client_write.write_all(&input).await.unwrap();
            client_write.shutdown().await.unwrap();
        });
        let mut out = Vec::new();
        server.read_to_end(&mut out).await.unwrap();
        writer.await.unwrap();
        let (lists, _) = parse_output(&out);
        assert_eq!(authority_of(&lists[0]), b"localhost");
        assert_eq!(server.rewritten_count(), 1);

        server.write_all(b"reply").await.unwrap();
        let mut reply = [0u8; 5];
        client_read.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"reply");
    }

    #[tokio::test]
    async fn adapter_turns_broken_hpack_into_frames_h2_rejects_then_eof() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let (mut client, server) = tokio::io::duplex(1024);
        let mut server = AuthorityRewriter::new(server);
        let mut input = PREFACE.to_vec();
        input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &[0x80]));
        client.write_all(&input).await.unwrap();

        let mut out = Vec::new();
        server.read_to_end(&mut out).await.unwrap();
        let mut expected = PREFACE.to_vec();
        expected.extend(frame(FRAME_HEADERS, 0, 1, &[]));
        expected.extend(frame(FRAME_PING, 0, 0, &[0; 8]));
        assert_eq!(out, expected);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048), chunk in 1usize..64) {
            let _ = run(&data, chunk);
            let mut with_preface = PREFACE.to_vec();
            with_preface.extend(&data);
            let _ = run(&with_preface, chunk);
        }

        #[test]
        fn arbitrary_header_block_never_panics(block in proptest::collection::vec(any::<u8>(), 0..512), flags in any::<u8>()) {
            let mut input = PREFACE.to_vec();
            input.extend(frame(FRAME_HEADERS, flags, 1, &block));
            input.extend(frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 1, &block));
            let _ = run(&input, 7);
        }

        #[test]
        fn any_header_list_survives_the_round_trip(
            values in proptest::collection::vec(("[a-z-]{1,12}", "[ -~]{0,40}"), 0..12),
            authority in "[ -~]{0,40}",
            chunk in 1usize..200,
        ) {
            let mut headers = request_headers(authority.as_bytes());
            headers.extend(values.iter().map(|(n, v)| (n.clone().into_bytes(), v.clone().into_bytes())));
            let mut encoder = loona_hpack::Encoder::new();
            let mut input = PREFACE.to_vec();
            for stream in [1u32, 3] {
                input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, stream, &encode(&mut encoder, &headers)));
            }
            let (lists, _) = parse_output(&run(&input, chunk).unwrap());
            let expected_authority: &[u8] = if is_acceptable_authority(authority.as_bytes()) { authority.as_bytes() } else { b"localhost" };
            for list in lists {
                for (got, want) in list.iter().zip(&headers) {
                    if want.0 == b":authority" {
                        prop_assert_eq!(&got.1[..], expected_authority);
                    } else {
                        prop_assert_eq!(got, want);
                    }
                }
            }
        }
    }
}
