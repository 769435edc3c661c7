//! The guest's stdout and stderr, merged into one capped stream.
//!
//! Both streams write to the same buffer under one lock, so their bytes
//! interleave in the order the guest wrote them. Past the cap the rest of the
//! write is dropped, the sink remembers it overflowed, and the write traps: the
//! guest stops at once instead of flooding on, and the host stays well.
//!
//! Memory is bounded separately from the cap: a run keeps the first
//! [`KEPT_HEAD`] and the last [`KEPT_TAIL`] bytes, with a notice of what was
//! left out between them. Eight cases writing the 256 MiB cap at once took
//! cachet past 3 GiB of RSS when all of it was kept (issue 7); the tee (live
//! `-v` output) still sees every byte as it is written.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

use crate::policy::OutputTee;

/// The error a write past the cap traps with.
#[derive(Debug, thiserror::Error)]
#[error("output exceeded the limit of {limit} bytes")]
pub(crate) struct OutputOverflow {
    pub limit: usize,
}

/// Output kept from the start of a run.
pub const KEPT_HEAD: usize = 4 << 20;
/// Output kept from the end of a run.
pub const KEPT_TAIL: usize = 4 << 20;

#[derive(Default)]
struct Buffer {
    head: Vec<u8>,
    /// The last bytes past the head, as a ring of [`KEPT_TAIL`] bytes once full.
    tail: Vec<u8>,
    /// Where the next byte goes in a full `tail`.
    tail_at: usize,
    /// Every byte written, kept or not.
    total: usize,
    overflowed: bool,
}

impl Buffer {
    fn push(&mut self, mut data: &[u8]) {
        self.total += data.len();
        let room = KEPT_HEAD - self.head.len();
        if room > 0 {
            let n = room.min(data.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        if data.len() >= KEPT_TAIL {
            self.tail.clear();
            self.tail.extend_from_slice(&data[data.len() - KEPT_TAIL..]);
            self.tail_at = 0;
            return;
        }
        let grow = (KEPT_TAIL - self.tail.len()).min(data.len());
        self.tail.extend_from_slice(&data[..grow]);
        let mut rest = &data[grow..];
        while !rest.is_empty() {
            let n = (KEPT_TAIL - self.tail_at).min(rest.len());
            self.tail[self.tail_at..self.tail_at + n].copy_from_slice(&rest[..n]);
            self.tail_at = (self.tail_at + n) % KEPT_TAIL;
            rest = &rest[n..];
        }
    }

    /// Head, a notice for what was left out, tail.
    fn take(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.head);
        let kept = out.len() + self.tail.len();
        if self.total > kept {
            out.extend_from_slice(
                format!(
                    "\n[cachet: {} bytes of output not kept here]\n",
                    self.total - kept
                )
                .as_bytes(),
            );
        }
        let tail = std::mem::take(&mut self.tail);
        out.extend_from_slice(&tail[self.tail_at..]);
        out.extend_from_slice(&tail[..self.tail_at]);
        self.tail_at = 0;
        self.total = 0;
        out
    }
}

/// A handle to the shared buffer; clones write to the same place.
#[derive(Clone)]
pub(crate) struct OutputSink {
    limit: usize,
    buffer: Arc<Mutex<Buffer>>,
    tee: Option<OutputTee>,
}

impl OutputSink {
    pub fn new(limit: usize, tee: Option<OutputTee>) -> Self {
        OutputSink {
            limit,
            buffer: Arc::default(),
            tee,
        }
    }

    fn tee(&self, data: &[u8]) {
        if let (Some(tee), false) = (&self.tee, data.is_empty()) {
            (tee.0)(data);
        }
    }

    fn append(&self, data: &[u8]) -> Result<(), OutputOverflow> {
        let mut b = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        if b.overflowed {
            return Err(OutputOverflow { limit: self.limit });
        }
        let room = self.limit - b.total;
        if data.len() > room {
            b.push(&data[..room]);
            b.overflowed = true;
            drop(b);
            self.tee(&data[..room]);
            return Err(OutputOverflow { limit: self.limit });
        }
        b.push(data);
        drop(b);
        self.tee(data);
        Ok(())
    }

    pub fn overflowed(&self) -> bool {
        self.buffer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .overflowed
    }

    /// The output kept: all of it up to [`KEPT_HEAD`] + [`KEPT_TAIL`] bytes.
    pub fn take(&self) -> Vec<u8> {
        self.buffer.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl IsTerminal for OutputSink {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for OutputSink {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

/// The largest write the guest is offered at once: WASI p1 writes in 4 KiB
/// chunks anyway; the cap is enforced per byte in `append`.
const WRITE_PERMIT: usize = 1 << 20;

#[wasmtime_wasi::async_trait]
impl Pollable for OutputSink {
    async fn ready(&mut self) {}
}

impl OutputStream for OutputSink {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes).map_err(|e| StreamError::Trap(e.into()))
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        if self.overflowed() {
            return Err(StreamError::Trap(
                OutputOverflow { limit: self.limit }.into(),
            ));
        }
        Ok(WRITE_PERMIT)
    }
}

impl tokio::io::AsyncWrite for OutputSink {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(match self.append(buf) {
            Ok(()) => Ok(buf.len()),
            Err(e) => Err(std::io::Error::other(e)),
        })
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_remembers_overflow() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let tee = OutputTee(Arc::new(move |d: &[u8]| {
            seen2.lock().unwrap().extend_from_slice(d)
        }));
        let sink = OutputSink::new(8, Some(tee));
        let mut other = sink.clone();
        sink.append(b"abc").unwrap();
        other.write(Bytes::from_static(b"def")).unwrap();
        assert!(sink.append(b"ghij").is_err());
        assert!(sink.overflowed());
        assert!(other.check_write().is_err());
        assert_eq!(sink.take(), b"abcdefgh");
        assert_eq!(
            *seen.lock().unwrap(),
            b"abcdefgh",
            "the tee sees what is kept, in order"
        );
    }

    #[test]
    fn keeps_head_and_tail_of_long_output() {
        let sink = OutputSink::new(usize::MAX, None);
        let total = KEPT_HEAD + KEPT_TAIL + 3 * 1000 + 7;
        let byte = |i: usize| (i % 251) as u8;
        let all: Vec<u8> = (0..total).map(byte).collect();
        for chunk in all.chunks(1000) {
            sink.append(chunk).unwrap();
        }
        let kept = sink.take();
        assert!(kept.starts_with(&all[..KEPT_HEAD]));
        assert!(kept.ends_with(&all[total - KEPT_TAIL..]));
        let notice = &kept[KEPT_HEAD..kept.len() - KEPT_TAIL];
        assert_eq!(
            notice,
            b"\n[cachet: 3007 bytes of output not kept here]\n".as_slice()
        );
        sink.append(b"short").unwrap();
        assert_eq!(sink.take(), b"short", "taking resets the buffer");
    }
}
