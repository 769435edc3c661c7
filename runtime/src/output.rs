//! The guest's stdout and stderr, merged into one capped buffer.
//!
//! Both streams write to the same buffer under one lock, so their bytes
//! interleave in the order the guest wrote them. Past the cap the rest of the
//! write is dropped, the sink remembers it overflowed, and the write traps: the
//! guest stops at once instead of flooding on, and the host stays well.

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

#[derive(Default)]
struct Buffer {
    bytes: Vec<u8>,
    overflowed: bool,
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
        let room = self.limit - b.bytes.len();
        if data.len() > room {
            b.bytes.extend_from_slice(&data[..room]);
            b.overflowed = true;
            drop(b);
            self.tee(&data[..room]);
            return Err(OutputOverflow { limit: self.limit });
        }
        b.bytes.extend_from_slice(data);
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

    pub fn take(&self) -> Vec<u8> {
        std::mem::take(&mut self.buffer.lock().unwrap_or_else(|e| e.into_inner()).bytes)
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
}
