//! `wasi:io/streams`: the scratch quota on writes into scratch files, and
//! the devices' input streams.

use std::collections::HashMap;

use wasmtime::component::{HasData, Resource, ResourceTable};
use wasmtime_wasi::p2::bindings::sync::io::streams;
use wasmtime_wasi::p2::{DynPollable, StreamError, StreamResult};
use wasmtime_wasi::WasiView;

use crate::devices::Device;
use crate::log::Fact;
use crate::quota::{Quota, RealStat};
use crate::random::SeededRandom;
use crate::recorder::Recorder;
use crate::state::{RunState, ScratchStream};

use super::filesystem::again;

/// The most bytes one read of `zero` or `random` gives (a stream may give
/// fewer than asked; the guest reads again).
const MAX_DEVICE_READ: u64 = 1 << 20;

/// `len` bytes read from `device` (`zero` or `random`; `null` is at its end).
pub(super) fn device_bytes(
    device: Device,
    len: u64,
    recorder: &mut Recorder,
    seeded: &mut Option<SeededRandom>,
) -> Vec<u8> {
    let mut out = vec![0u8; len.min(MAX_DEVICE_READ) as usize];
    match device {
        Device::Null => out.clear(),
        Device::Zero => {}
        Device::Random => {
            recorder.uses(Fact::Random);
            match seeded {
                Some(rng) => rng.fill(&mut out),
                None => wasmtime_wasi::thread_rng().fill_bytes(&mut out),
            }
        }
    }
    out
}

/// `wasi:io/streams`: writes into scratch files are checked against the
/// scratch quota before they act and charged after, as preview 1's
/// `fd_write` is (files are written through streams under preview 2).
pub(super) struct Streams<'a> {
    table: &'a mut ResourceTable,
    quota: &'a mut Quota,
    scratch: &'a mut HashMap<u32, ScratchStream>,
    devices: &'a mut HashMap<u32, Device>,
    recorder: &'a mut Recorder,
    seeded: &'a mut Option<SeededRandom>,
}

impl HasData for Streams<'static> {
    type Data<'a> = Streams<'a>;
}

pub(super) fn streams_of(st: &mut RunState) -> Streams<'_> {
    Streams {
        table: st.wasi.ctx().table,
        quota: &mut st.quota,
        scratch: &mut st.p2.scratch_streams,
        devices: &mut st.p2.device_streams,
        recorder: &mut st.recorder,
        seeded: &mut st.random,
    }
}

impl Streams<'_> {
    /// Refuses `len` more bytes through `stream` past the quota, as a full
    /// disk does (`ENOSPC`); `Ok` with where they end otherwise.
    fn check(
        &mut self,
        stream: &Resource<streams::OutputStream>,
        len: u64,
    ) -> StreamResult<Option<u64>> {
        let Some(s) = self.scratch.get(&stream.rep()) else {
            return Ok(None);
        };
        let size = self.quota.size_of(s.inode);
        let start = if s.append { size } else { s.position };
        let end = start.saturating_add(len);
        let grow = end.saturating_sub(size);
        if grow > 0 && !self.quota.fits(grow) {
            let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
            return Err(StreamError::LastOperationFailed(wasmtime::Error::new(full)));
        }
        Ok(Some(end))
    }

    /// A write of `len` bytes through `stream`: checked, made, charged.
    fn guarded(
        &mut self,
        stream: Resource<streams::OutputStream>,
        len: u64,
        write: impl FnOnce(&mut ResourceTable, Resource<streams::OutputStream>) -> StreamResult<()>,
    ) -> StreamResult<()> {
        let end = self.check(&stream, len)?;
        write(self.table, again(&stream))?;
        self.wrote(&stream, end);
        Ok(())
    }

    /// Charges what a write through `stream` ending at `end` wrote.
    fn wrote(&mut self, stream: &Resource<streams::OutputStream>, end: Option<u64>) {
        let (Some(end), Some(s)) = (end, self.scratch.get_mut(&stream.rep())) else {
            return;
        };
        s.position = end;
        let size = self.quota.size_of(s.inode).max(end);
        self.quota.update(RealStat {
            inode: s.inode,
            nlink: 1,
            size,
            is_dir: false,
        });
    }
}

impl streams::Host for Streams<'_> {
    fn convert_stream_error(&mut self, e: StreamError) -> wasmtime::Result<streams::StreamError> {
        streams::Host::convert_stream_error(self.table, e)
    }
}

impl streams::HostOutputStream for Streams<'_> {
    fn write(
        &mut self,
        stream: Resource<streams::OutputStream>,
        bytes: Vec<u8>,
    ) -> StreamResult<()> {
        self.guarded(stream, bytes.len() as u64, |t, s| {
            streams::HostOutputStream::write(t, s, bytes)
        })
    }

    fn blocking_write_and_flush(
        &mut self,
        stream: Resource<streams::OutputStream>,
        bytes: Vec<u8>,
    ) -> StreamResult<()> {
        self.guarded(stream, bytes.len() as u64, |t, s| {
            streams::HostOutputStream::blocking_write_and_flush(t, s, bytes)
        })
    }

    fn write_zeroes(
        &mut self,
        stream: Resource<streams::OutputStream>,
        len: u64,
    ) -> StreamResult<()> {
        self.guarded(stream, len, |t, s| {
            streams::HostOutputStream::write_zeroes(t, s, len)
        })
    }

    fn blocking_write_zeroes_and_flush(
        &mut self,
        stream: Resource<streams::OutputStream>,
        len: u64,
    ) -> StreamResult<()> {
        self.guarded(stream, len, |t, s| {
            streams::HostOutputStream::blocking_write_zeroes_and_flush(t, s, len)
        })
    }

    fn splice(
        &mut self,
        dst: Resource<streams::OutputStream>,
        src: Resource<streams::InputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        let end = self.check(&dst, len)?;
        let n = streams::HostOutputStream::splice(self.table, again(&dst), src, len)?;
        self.wrote(&dst, end.map(|e| e - len + n));
        Ok(n)
    }

    fn blocking_splice(
        &mut self,
        dst: Resource<streams::OutputStream>,
        src: Resource<streams::InputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        let end = self.check(&dst, len)?;
        let n = streams::HostOutputStream::blocking_splice(self.table, again(&dst), src, len)?;
        self.wrote(&dst, end.map(|e| e - len + n));
        Ok(n)
    }

    fn drop(&mut self, stream: Resource<streams::OutputStream>) -> wasmtime::Result<()> {
        self.scratch.remove(&stream.rep());
        streams::HostOutputStream::drop(self.table, stream)
    }

    fn check_write(&mut self, stream: Resource<streams::OutputStream>) -> StreamResult<u64> {
        streams::HostOutputStream::check_write(self.table, stream)
    }

    fn flush(&mut self, stream: Resource<streams::OutputStream>) -> StreamResult<()> {
        streams::HostOutputStream::flush(self.table, stream)
    }

    fn blocking_flush(&mut self, stream: Resource<streams::OutputStream>) -> StreamResult<()> {
        streams::HostOutputStream::blocking_flush(self.table, stream)
    }

    fn subscribe(
        &mut self,
        stream: Resource<streams::OutputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        streams::HostOutputStream::subscribe(self.table, stream)
    }
}

impl streams::HostInputStream for Streams<'_> {
    fn read(&mut self, stream: Resource<streams::InputStream>, len: u64) -> StreamResult<Vec<u8>> {
        match self.devices.get(&stream.rep()) {
            Some(&d) => Ok(device_bytes(d, len, self.recorder, self.seeded)),
            None => streams::HostInputStream::read(self.table, stream, len),
        }
    }

    fn blocking_read(
        &mut self,
        stream: Resource<streams::InputStream>,
        len: u64,
    ) -> StreamResult<Vec<u8>> {
        match self.devices.get(&stream.rep()) {
            Some(&d) => Ok(device_bytes(d, len, self.recorder, self.seeded)),
            None => streams::HostInputStream::blocking_read(self.table, stream, len),
        }
    }

    fn skip(&mut self, stream: Resource<streams::InputStream>, len: u64) -> StreamResult<u64> {
        match self.devices.contains_key(&stream.rep()) {
            true => Ok(len),
            false => streams::HostInputStream::skip(self.table, stream, len),
        }
    }

    fn blocking_skip(
        &mut self,
        stream: Resource<streams::InputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        match self.devices.contains_key(&stream.rep()) {
            true => Ok(len),
            false => streams::HostInputStream::blocking_skip(self.table, stream, len),
        }
    }

    fn subscribe(
        &mut self,
        stream: Resource<streams::InputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        streams::HostInputStream::subscribe(self.table, stream)
    }

    fn drop(&mut self, stream: Resource<streams::InputStream>) -> wasmtime::Result<()> {
        self.devices.remove(&stream.rep());
        streams::HostInputStream::drop(self.table, stream)
    }
}
