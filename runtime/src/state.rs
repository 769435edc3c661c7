//! The store's data of one run: the stock WASI context, the recorder, the
//! limits and clocks. Its own file so that the engine (whose linker and
//! `InstancePre`s are typed by it), the interceptors and the run can each
//! name it without naming one another.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use wasmtime::ResourceLimiter;
use wasmtime_wasi::p1::WasiP1Ctx;

use crate::clock::{GuestClock, Interrupt, Stop};
use crate::quota::Quota;
use crate::random::SeededRandom;
use crate::recorder::Recorder;

/// The store's data: the stock WASI context, the recorder, the limits.
pub(crate) struct RunState {
    pub wasi: WasiP1Ctx,
    pub recorder: Recorder,
    pub limiter: Limiter,
    pub quota: Quota,
    /// Fds opened with `O_APPEND` (their writes go to the end).
    pub appending: HashSet<u32>,
    pub clock: GuestClock,
    pub random: Option<SeededRandom>,
    pub interrupt: Arc<Interrupt>,
    /// When the run's time is up; `None` without a limit.
    pub deadline: Option<Instant>,
    /// Set when the host stopped the guest (deadline, Ctrl-C).
    pub stop: Option<Stop>,
    /// Set when a run on Winch stopped to start over on Cranelift's code.
    pub tier_up: bool,
    /// The hostcall fuel of the current call (see `intercept.rs`).
    pub fuel: usize,
    /// The listing a guest is reading with `fd_readdir`, in cachet's order:
    /// read at cookie 0, served from here for the calls that go on (one
    /// read of the directory per listing, and one consistent snapshot).
    pub listing: Option<(i32, Vec<crate::dirents::Dirent>)>,
    /// The mount holding the devices (`Policy::devices`), and the fds open
    /// on one (`devices.rs`).
    pub device_mount: Option<usize>,
    pub devices: HashMap<u32, crate::devices::Device>,
}

/// Enforces the policy's memory and table limits, and remembers a refusal so
/// the failure it causes is reported as the limit, not as a bare trap.
pub(crate) struct Limiter {
    pub memory: u64,
    pub table: u32,
    pub memory_refused: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = desired as u64 <= self.memory;
        self.memory_refused |= !ok;
        Ok(ok)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.table as usize)
    }

    fn instances(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        // Rust and Go binaries have one; reference-types modules may have a few.
        16
    }
}
