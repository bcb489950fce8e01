//! Copying bytes both ways between two streams, with half-close and an idle timeout.
//!
//! When one side ends its stream (EOF, or a TLS `close_notify`), the write side of the other is
//! shut down (a TCP FIN, or `close_notify` then FIN) and the opposite direction keeps flowing
//! until it ends too. Both directions run in one task without splitting the streams, so a TLS
//! stream needs no lock. The idle timer only counts time in which neither direction moved a
//! byte.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Size of each direction's buffer; larger than a TLS record so one read can take several.
const BUFFER_SIZE: usize = 32 * 1024;

/// How a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// Both directions reached their end and were shut down.
    Closed,
    /// No byte moved for the idle timeout.
    Idle,
    /// Reading or writing failed (a reset, a TLS error); the connection is dropped.
    Failed(io::Error),
}

/// What a relay carried and how it ended.
#[derive(Debug)]
pub struct RelayReport {
    /// Bytes read from the first stream and written to the second.
    pub a_to_b: u64,
    /// Bytes read from the second stream and written to the first.
    pub b_to_a: u64,
    /// How it ended.
    pub end: RelayEnd,
}

/// Copies `a` to `b` and `b` to `a` until both directions have ended, a side fails, or nothing
/// moved for `idle`.
pub async fn relay<A, B>(a: &mut A, b: &mut B, idle: Duration) -> RelayReport
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut ab = Pipe::new();
    let mut ba = Pipe::new();
    let mut last_activity = Instant::now();
    let mut timer: Pin<Box<Sleep>> = Box::pin(tokio::time::sleep(idle));

    let end = poll_fn(|cx| {
        let mut moved = false;
        if !ab.done {
            if let Poll::Ready(Err(e)) = ab.poll_copy(cx, &mut *a, &mut *b, &mut moved) {
                return Poll::Ready(RelayEnd::Failed(e));
            }
        }
        if !ba.done {
            if let Poll::Ready(Err(e)) = ba.poll_copy(cx, &mut *b, &mut *a, &mut moved) {
                return Poll::Ready(RelayEnd::Failed(e));
            }
        }
        if ab.done && ba.done {
            return Poll::Ready(RelayEnd::Closed);
        }

        // The timer is re-armed only when it fires, so busy connections do not touch the
        // timer wheel on every read.
        if moved {
            last_activity = Instant::now();
        }
        while timer.as_mut().poll(cx).is_ready() {
            let deadline = last_activity + idle;
            if deadline <= Instant::now() {
                return Poll::Ready(RelayEnd::Idle);
            }
            timer.as_mut().reset(deadline);
        }
        Poll::Pending
    })
    .await;

    RelayReport {
        a_to_b: ab.bytes,
        b_to_a: ba.bytes,
        end,
    }
}

/// One direction: a buffer between a reader and a writer.
struct Pipe {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    read_done: bool,
    need_flush: bool,
    done: bool,
    bytes: u64,
}

impl Pipe {
    fn new() -> Self {
        Self {
            buf: vec![0; BUFFER_SIZE].into_boxed_slice(),
            start: 0,
            end: 0,
            read_done: false,
            need_flush: false,
            done: false,
            bytes: 0,
        }
    }

    /// Moves bytes until the reader or writer is not ready; `Ready(Ok)` once the reader ended
    /// and the writer was shut down.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        moved: &mut bool,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            if self.start == self.end && !self.read_done {
                let mut read_buf = ReadBuf::new(&mut self.buf);
                match Pin::new(&mut *reader).poll_read(cx, &mut read_buf) {
                    Poll::Pending => {
                        // Nothing more to read now: push out what was written.
                        if self.need_flush {
                            ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Ok(())) => {
                        let n = read_buf.filled().len();
                        if n == 0 {
                            self.read_done = true;
                        } else {
                            self.start = 0;
                            self.end = n;
                            *moved = true;
                        }
                    }
                    // A peer that closes TCP without a TLS close_notify ends its direction like
                    // a plain EOF: the application protocol above frames its own messages.
                    Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        self.read_done = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                }
            }

            while self.start < self.end {
                let n =
                    ready!(Pin::new(&mut *writer).poll_write(cx, &self.buf[self.start..self.end]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.start += n;
                self.bytes += n as u64;
                self.need_flush = true;
                *moved = true;
            }

            if self.read_done {
                // Shutting down flushes first, then ends the write side only.
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn each_direction_ends_on_its_own_and_the_other_keeps_flowing() {
        let (mut client, mut proxy_a) = tokio::io::duplex(1024);
        let (mut proxy_b, mut server) = tokio::io::duplex(1024);
        let relay = tokio::spawn(async move {
            relay(&mut proxy_a, &mut proxy_b, Duration::from_secs(30)).await
        });

        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request");

        // The server answers after the client's half-close.
        let reader = tokio::spawn(async move {
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let big = vec![7u8; 100_000];
        server.write_all(&big).await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(reader.await.unwrap(), big);

        let report = relay.await.unwrap();
        assert!(matches!(report.end, RelayEnd::Closed), "{report:?}");
        assert_eq!((report.a_to_b, report.b_to_a), (7, 100_000));
    }

    #[tokio::test]
    async fn idle_timer_counts_only_time_without_traffic() {
        let (mut client, mut proxy_a) = tokio::io::duplex(1024);
        let (mut proxy_b, mut server) = tokio::io::duplex(1024);
        let idle = Duration::from_millis(400);
        let relay = tokio::spawn(async move { relay(&mut proxy_a, &mut proxy_b, idle).await });

        // Traffic every 250 ms keeps a 400 ms idle timer from firing.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            client.write_all(b"x").await.unwrap();
            let mut one = [0u8; 1];
            server.read_exact(&mut one).await.unwrap();
        }
        assert!(!relay.is_finished());

        let started = Instant::now();
        let report = relay.await.unwrap();
        assert!(matches!(report.end, RelayEnd::Idle), "{report:?}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited <= Duration::from_secs(2),
            "{waited:?}"
        );
        assert_eq!(report.a_to_b, 5);
    }
}
