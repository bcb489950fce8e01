//! Cost of the `:authority` adapter on the header blocks of a grpc-java client.
//!
//! Run with `cargo bench -p workload-api --bench authority`.
//!
//! The adapter is driven through its public API over an in-memory reader that releases one
//! segment of client bytes per step, so each measurement covers exactly one header block going
//! through the rewrite path: read, HPACK decode, `:authority` check, re-encode, framing.

use std::cell::Cell;
use std::hint::black_box;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use tokio::io::{AsyncRead, ReadBuf};
use workload_api::authority::AuthorityRewriter;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The first request of a grpc-java client on a fresh connection: `:method` and `:scheme` from
/// the static table, every other field a literal with incremental indexing (static name index
/// where one exists), every string Huffman-coded where that is shorter.
const FIRST_BLOCK: &str = "41966134d6c52544eb0e62d4962bb63a0c4607599741c9d744996375669652f23d9\
    d6838e4875e463095249ff1b03fbb8e4bff83865f8b1d75d0620d263d4c4d656440027465864d833505b11f7a9\
    09acac8b741f71ad51529f4c05771e5c3408e9acac8b0c842d6958b510f21aa9b839bd9ab408df07b3ad071c8b\
    a2b34b295731f834d9697";

/// The same request again on that connection: nothing but table references.
const SECOND_BLOCK: &str = "c4c38386c2c1c0bfbe";

/// What both blocks decode to.
const HEADERS: &[(&str, &str)] = &[
    (":authority", "/tmp/mesh-agent/public/api.sock"),
    (":path", "/SpiffeWorkloadAPI/FetchX509SVID"),
    (":method", "POST"),
    (":scheme", "http"),
    ("content-type", "application/grpc"),
    ("te", "trailers"),
    ("user-agent", "grpc-java-netty/1.68.1"),
    ("grpc-accept-encoding", "gzip"),
    ("workload.spiffe.io", "true"),
];

/// Client bytes handed out one segment per read, and only once the bench opens the gate for it;
/// until then a read is pending, as on a socket with nothing to read.
struct Gated {
    segments: Vec<Vec<u8>>,
    next: usize,
    open: Rc<Cell<usize>>,
}

impl AsyncRead for Gated {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let next = self.next;
        if next >= self.open.get() || next >= self.segments.len() {
            return Poll::Pending;
        }
        // Segments are far smaller than the adapter's read buffer.
        buf.put_slice(&self.segments[next]);
        self.next += 1;
        Poll::Ready(Ok(()))
    }
}

/// An adapter over `segments` with the first `open` segments already read through it.
fn connection(segments: &[Vec<u8>], open: usize) -> (AuthorityRewriter<Gated>, Rc<Cell<usize>>) {
    let gate = Rc::new(Cell::new(open));
    let mut adapter = AuthorityRewriter::new(Gated {
        segments: segments.to_vec(),
        next: 0,
        open: Rc::clone(&gate),
    });
    drain(&mut adapter);
    (adapter, gate)
}

/// Reads from the adapter until it would block; returns what it produced.
fn drain(adapter: &mut AuthorityRewriter<Gated>) -> Vec<u8> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    let mut chunk = [0u8; 16_384];
    loop {
        let mut buf = ReadBuf::new(&mut chunk);
        match Pin::new(&mut *adapter).poll_read(&mut cx, &mut buf) {
            Poll::Ready(Ok(())) if !buf.filled().is_empty() => out.extend_from_slice(buf.filled()),
            Poll::Ready(Ok(())) | Poll::Pending => return out,
            Poll::Ready(Err(error)) => panic!("in-memory read failed: {error}"),
        }
    }
}

fn frame(frame_type: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("small payload");
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend([frame_type, flags]);
    out.extend(stream_id.to_be_bytes());
    out.extend(payload);
    out
}

fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).expect("ascii"), 16).expect("hex"))
        .collect()
}

/// Preface and SETTINGS, then the two HEADERS frames (END_HEADERS set).
fn segments() -> Vec<Vec<u8>> {
    let mut start = PREFACE.to_vec();
    start.extend(frame(0x4, 0, 0, &[]));
    vec![
        start,
        frame(0x1, 0x4, 1, &hex(FIRST_BLOCK)),
        frame(0x1, 0x4, 3, &hex(SECOND_BLOCK)),
    ]
}

/// Checks once that the inputs are what they claim and that the adapter rewrites them.
fn check(segments: &[Vec<u8>]) {
    let expected: Vec<(Vec<u8>, Vec<u8>)> = HEADERS
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
    let mut client_table = loona_hpack::Decoder::new();
    for block in [FIRST_BLOCK, SECOND_BLOCK] {
        assert_eq!(
            client_table.decode(&hex(block)).expect("valid hpack"),
            expected
        );
    }

    let (mut adapter, gate) = connection(segments, 1);
    gate.set(3);
    let out = drain(&mut adapter);
    assert_eq!(adapter.rewritten_count(), 2);
    let mut h2_table = loona_hpack::Decoder::new();
    let mut rest = &out[..];
    while !rest.is_empty() {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        let list = h2_table.decode(&rest[9..9 + len]).expect("valid output");
        assert!(list.contains(&(b":authority".to_vec(), b"localhost".to_vec())));
        rest = &rest[9 + len..];
    }
}

fn rewrite(c: &mut Criterion) {
    let segments = segments();
    check(&segments);

    c.bench_function("grpc_java_first_block", |b| {
        b.iter_batched_ref(
            || connection(&segments, 1),
            |(adapter, gate)| {
                gate.set(2);
                black_box(drain(adapter))
            },
            BatchSize::SmallInput,
        )
    });
    c.bench_function("grpc_java_second_block", |b| {
        b.iter_batched_ref(
            || connection(&segments, 2),
            |(adapter, gate)| {
                gate.set(3);
                black_box(drain(adapter))
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, rewrite);
criterion_main!(benches);
