//! `wasi:random`: `uses random`, and the seeded generator under
//! `--hermetic`.

use wasmtime::component::HasData;
use wasmtime_wasi::p2::bindings::random::{insecure, insecure_seed, random};
use wasmtime_wasi::random::{WasiRandomCtx, WasiRandomView};

use crate::log::Fact;
use crate::random::SeededRandom;
use crate::recorder::Recorder;
use crate::state::RunState;

/// The most bytes one `get-random-bytes` call may ask for under
/// `--hermetic` (the stock host's own cap applies otherwise).
const MAX_RANDOM_BYTES: u64 = 64 << 20;

/// `wasi:random`: `uses random`, and the seeded generator under
/// `--hermetic`.
pub(super) struct Random<'a> {
    ctx: &'a mut WasiRandomCtx,
    recorder: &'a mut Recorder,
    seeded: &'a mut Option<SeededRandom>,
}

impl HasData for Random<'static> {
    type Data<'a> = Random<'a>;
}

pub(super) fn randomness(st: &mut RunState) -> Random<'_> {
    Random {
        ctx: st.wasi.random(),
        recorder: &mut st.recorder,
        seeded: &mut st.random,
    }
}

impl Random<'_> {
    /// Seeded bytes, or `None` without `--hermetic`.
    fn seeded(&mut self, len: u64) -> Option<wasmtime::Result<Vec<u8>>> {
        self.recorder.uses(Fact::Random);
        let rng = self.seeded.as_mut()?;
        if len > MAX_RANDOM_BYTES {
            return Some(Err(wasmtime::format_err!(
                "requested {len} random bytes, more than the {MAX_RANDOM_BYTES} allowed"
            )));
        }
        let mut out = vec![0u8; len as usize];
        rng.fill(&mut out);
        Some(Ok(out))
    }

    fn seeded_u64(&mut self) -> Option<u64> {
        let bytes = self.seeded(8)?.ok()?;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    }
}

impl random::Host for Random<'_> {
    fn get_random_bytes(&mut self, len: u64) -> wasmtime::Result<Vec<u8>> {
        match self.seeded(len) {
            Some(bytes) => bytes,
            None => random::Host::get_random_bytes(self.ctx, len),
        }
    }

    fn get_random_u64(&mut self) -> wasmtime::Result<u64> {
        match self.seeded_u64() {
            Some(n) => Ok(n),
            None => random::Host::get_random_u64(self.ctx),
        }
    }
}

impl insecure::Host for Random<'_> {
    fn get_insecure_random_bytes(&mut self, len: u64) -> wasmtime::Result<Vec<u8>> {
        match self.seeded(len) {
            Some(bytes) => bytes,
            None => insecure::Host::get_insecure_random_bytes(self.ctx, len),
        }
    }

    fn get_insecure_random_u64(&mut self) -> wasmtime::Result<u64> {
        match self.seeded_u64() {
            Some(n) => Ok(n),
            None => insecure::Host::get_insecure_random_u64(self.ctx),
        }
    }
}

impl insecure_seed::Host for Random<'_> {
    fn insecure_seed(&mut self) -> wasmtime::Result<(u64, u64)> {
        match (self.seeded_u64(), self.seeded_u64()) {
            (Some(a), Some(b)) => Ok((a, b)),
            _ => insecure_seed::Host::insecure_seed(self.ctx),
        }
    }
}
