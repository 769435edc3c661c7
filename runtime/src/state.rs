//! The store's data of one run: the stock WASI context, the recorder, the
//! limits and clocks. Its own file so that the engine (whose linker and
//! `InstancePre`s are typed by it), the interceptors and the run can each
//! name it without naming one another.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use wasmtime::ResourceLimiter;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::sync::filesystem::types::DirectoryEntry;
use wasmtime_wasi::{WasiCtxView, WasiView};

use crate::clock::{GuestClock, Interrupt, Stop};
use crate::devices::Device;
use crate::quota::{Inode, Quota};
use crate::random::SeededRandom;
use crate::recorder::Recorder;

/// The store's data: the stock WASI context, the recorder, the limits.
/// One for both ABIs: a preview 1 context holds the preview 2 one that
/// components use ([`WasiView`]).
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
    /// What the preview 2 hosts keep (`preview2/`).
    pub p2: Preview2State,
    /// Preview 2: where the guest called `exit` with failure.
    pub exit_trace: Option<wasmtime::WasmBacktrace>,
}

impl WasiView for RunState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        self.wasi.ctx()
    }
}

/// What a preview 2 run keeps besides the recorder and the quota.
#[derive(Default)]
pub(crate) struct Preview2State {
    /// The mount of each preopen, in the order the guest gets them.
    pub preopen_mounts: Vec<usize>,
    /// The listings being read, in cachet's order, by their stream.
    pub listings: HashMap<u32, VecDeque<DirectoryEntry>>,
    /// The names each directory descriptor has listed: their identities
    /// (`metadata-hash-at`) on a read-only mount follow from the listing.
    pub listed: HashMap<i32, std::collections::HashSet<String>>,
    /// Output streams writing to scratch files, by their stream.
    pub scratch_streams: HashMap<u32, ScratchStream>,
    /// Input streams reading `zero` or `random` (`devices.rs`).
    pub device_streams: HashMap<u32, Device>,
}

impl Preview2State {
    pub fn new(preopen_mounts: Vec<usize>) -> Self {
        Preview2State {
            preopen_mounts,
            ..Default::default()
        }
    }
}

/// An output stream into a scratch file: where its next write lands.
pub(crate) struct ScratchStream {
    pub inode: Inode,
    pub position: u64,
    pub append: bool,
}

/// Enforces the policy's memory and table limits, and remembers a refusal so
/// the failure it causes is reported as the limit, not as a bare trap.
pub(crate) struct Limiter {
    pub memory: u64,
    pub table: u32,
    pub memory_refused: bool,
    /// Core instances and memories: one for a module; a component has a
    /// few (its code, the WASI adapter, glue: see [`Limiter::new`]).
    pub instances: usize,
    pub memories: usize,
}

impl Limiter {
    pub fn new(memory: u64, table: u32, wasi: crate::abi::Wasi) -> Self {
        // Rust's wasm32-wasip2 test binaries have 4 core instances and 2
        // memories; the margin is for other toolchains' glue.
        let (instances, memories) = match wasi {
            crate::abi::Wasi::P1 => (1, 1),
            crate::abi::Wasi::P2 => (32, 8),
        };
        Limiter {
            memory,
            table,
            memory_refused: false,
            instances,
            memories,
        }
    }
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
        self.instances
    }

    fn memories(&self) -> usize {
        self.memories
    }

    fn tables(&self) -> usize {
        // Rust and Go binaries have one; reference-types modules may have a few.
        16
    }
}
