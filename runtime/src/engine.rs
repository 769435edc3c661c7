//! The `Runtime`: one wasmtime engine per process and the modules loaded in it.
//!
//! - Epoch interruption: a ticker thread bumps the epoch every [`TICK`]; a
//!   store's deadline in ticks is its timeout.
//! - Pooling allocator: instance slots are reused, so a run does not map fresh
//!   memory (see docs/BENCHMARKS.md for the per-run cost).
//! - Compiled modules are kept on disk keyed by module sha256, the engine's
//!   compatibility fingerprint and the wasmtime version. Each file names its
//!   own key in a header, and a BLAKE3 trailer covers header and body: a
//!   damaged file, or one copied over another module's entry, is recompiled,
//!   never loaded (issue 7: copying module A's file over B's entry made B run
//!   A's native code when only integrity was checked).
//! - Compiling can run in a child process (`RuntimeConfig::compile`) with a
//!   time and memory limit, so a compile bomb fails its package's setup
//!   instead of taking the host down.
//! - Tiers (`Tier::Auto`): a module with no compiled code starts at once on
//!   Winch, wasmtime's baseline compiler (6-7x faster to compile, code about
//!   2x slower), while Cranelift compiles it in the background, one module
//!   at a time in a child process, from its first run on (a listing alone,
//!   `Runtime::run_alone`, does not ask for it); later runs use Cranelift's code, and a run
//!   still going on Winch when it is ready starts over on it (`run.rs`).
//!   Only Cranelift's code is kept on disk, and only for modules whose runs
//!   lasted until it was ready: a background compile still going when the
//!   runtime goes away is stopped (a module whose runs all end sooner is
//!   cheaper to compile with Winch again). A module Winch cannot compile
//!   (tail calls, exceptions, GC) goes straight to Cranelift.
//! - A run can go apart (`apart.rs`): Cranelift's code without epoch
//!   checks, kept under its own key (`Runtime::prepare_unchecked`), runs in
//!   a child process (a run server, reused) killed at the deadline.
//! - Each module's `InstancePre` (imports resolved once) is reused by every run.
//! - Guests run on threads whose stacks hold the wasm stack (`guest_thread.rs`).

use std::collections::HashMap;
use std::ffi::OsString;
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::abi::Wasi;
use crate::clock::Interrupt;
use crate::code::{Code, Linkers, Pre};
use crate::error::{first_line, CompileChildError, LoadError, RuntimeError};
use crate::guest_thread::GuestThreads;
use crate::log::Sha256Digest;
use crate::observe::{FileId, SharedMemo};
use crate::scratch::ScratchPool;
use crate::server::RunGuard;

/// The wasmtime version compiled modules on disk are keyed by; a test checks it
/// against the workspace's pin.
pub const WASMTIME_VERSION: &str = "48.0.8";

/// Epoch tick: the resolution of timeouts. 10 ms keeps the ticker's cost
/// negligible while a 10-minute default timeout is still exact to the tick.
pub const TICK: Duration = Duration::from_millis(10);

/// Wasm stack for every run. Go's wasip1 binaries need 8 MiB (Go's own runner
/// passes `-W max-wasm-stack=8388608`); wasmtime sets it per engine, not per
/// store, so it is the same for every run.
pub const MAX_WASM_STACK: usize = 8 << 20;

/// Instances alive at once: the pool's size. Runs beyond it wait for a slot
/// (wasmtime reports pool exhaustion as an error; the host's `-p` is far below).
pub const POOL_INSTANCES: u32 = 128;

/// Linear memory the pool reserves per slot: the wasm32 maximum, so the
/// policy's memory limit, not the pool, decides how far a run may grow.
const POOL_MAX_MEMORY: usize = 4 << 30;

/// Bytes of a pooled memory or table reset in place, page by page, when the
/// kernel tells which pages a run wrote: a trivial test writes ~200 KiB, a Go
/// test binary's run a few MiB.
const KEEP_RESIDENT_SCANNED: usize = 16 << 20;

/// Bytes reset in place without that knowledge: the first ones, written or
/// not.
const KEEP_RESIDENT_BLIND: usize = 64 << 10;

/// Table elements a pool slot holds; Go test binaries have tables of tens of
/// thousands of functions.
const POOL_TABLE_ELEMENTS: usize = 1 << 20;

/// A module's sha256: its identity in every cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModuleDigest(pub Sha256Digest);

impl ModuleDigest {
    /// The digest of a module's bytes.
    pub fn of(bytes: &[u8]) -> Self {
        ModuleDigest(Sha256Digest::of(bytes))
    }
}

impl std::fmt::Display for ModuleDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A compiled module, ready to instantiate.
#[derive(Clone)]
pub struct Module {
    pub(crate) inner: Arc<ModuleInner>,
}

pub(crate) struct ModuleInner {
    pub digest: ModuleDigest,
    /// The code runs start with: Cranelift's, or Winch's (`tier`).
    pub pre: Pre,
    pub tier: Compiler,
    /// Cranelift's code for a module that started on Winch, once compiled.
    pub upgraded: OnceLock<Pre>,
    /// Its Cranelift compile is queued or running.
    pub upgrading: AtomicBool,
    /// Its Cranelift compile, until a run asks for it ([`Runtime::tier_up`]).
    pub tier_up: Mutex<Option<Upgrade>>,
}

impl ModuleInner {
    /// The best code ready now, and its compiler.
    pub fn current(&self) -> (&Pre, Compiler) {
        match self.upgraded.get() {
            Some(pre) => (pre, Compiler::Cranelift),
            None => (&self.pre, self.tier),
        }
    }
}

/// Which compilers make a module's code.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Tier {
    /// Cranelift only: every module is compiled (or loaded) before it runs.
    #[default]
    Cranelift,
    /// Winch only, nothing kept on disk: for comparing tiers.
    Winch,
    /// Winch first for a module with no compiled code, Cranelift in the
    /// background; see the module docs.
    Auto,
}

impl Tier {
    pub fn parse(s: &str) -> Option<Tier> {
        match s {
            "auto" => Some(Tier::Auto),
            "cranelift" => Some(Tier::Cranelift),
            "winch" => Some(Tier::Winch),
            _ => None,
        }
    }
}

/// The compiler of a piece of code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Compiler {
    Cranelift,
    Winch,
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module")
            .field("digest", &self.inner.digest)
            .finish()
    }
}

impl Module {
    pub fn digest(&self) -> ModuleDigest {
        self.inner.digest
    }

    /// The compiler of the code runs use now.
    pub fn compiler(&self) -> Compiler {
        self.inner.current().1
    }

    /// The WASI version it targets: a core module is preview 1, a
    /// component preview 2.
    pub fn wasi(&self) -> Wasi {
        self.inner.pre.wasi()
    }
}

/// Counters of how modules were obtained, for tests and `--explain`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadStats {
    /// Compiled with cranelift.
    pub compiled: u64,
    /// Deserialized from the on-disk cache.
    pub loaded_from_disk: u64,
    /// Found already loaded in this process.
    pub reused: u64,
    /// Compiled with Winch (to start at once, or under `Tier::Winch`).
    pub winch: u64,
    /// Switched to Cranelift's code after starting on Winch.
    pub upgraded: u64,
    /// Cranelift's code from the shared store ([`CompiledStore`]).
    pub fetched: u64,
    /// Runs that went apart, to a child process ([`Runtime::run_apart`]).
    pub apart: u64,
    /// Run servers started for them (one per runner, and one more after
    /// each kill at a deadline).
    pub servers: u64,
}

/// Cranelift's compiled files shared beyond this machine (the host's remote
/// cache), by the file's key: module digest, engine fingerprint (compiler
/// settings, target CPU features) and wasmtime version, so code never
/// reaches an engine it was not made for. What `fetch` gives is used only
/// when it is a whole compiled file bound to that key (header and BLAKE3
/// trailer checked, as for a file on disk); loading it still trusts the
/// server as much as a file in the local cache: native code.
pub trait CompiledStore: Send + Sync {
    fn fetch(&self, key: &Sha256Digest) -> Option<Vec<u8>>;
    /// Shares a compiled file just made here.
    fn store(&self, key: &Sha256Digest, file: Vec<u8>);
}

/// A [`CompiledStore`] in a [`RuntimeConfig`].
#[derive(Clone)]
pub struct SharedCompiled(pub Arc<dyn CompiledStore>);

impl std::fmt::Debug for SharedCompiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedCompiled")
    }
}

/// Settings of the one engine.
#[derive(Clone, Debug, Default)]
pub struct RuntimeConfig {
    /// Where compiled files are also looked for and shared (a remote cache).
    pub shared_compiled: Option<SharedCompiled>,
    /// Where compiled modules are kept; `None` keeps them in memory only.
    pub compiled_cache: Option<PathBuf>,
    /// The wasm stack of every run; `None` is [`MAX_WASM_STACK`].
    pub max_wasm_stack: Option<usize>,
    /// Compile in a child process with limits; `None` compiles in-process.
    pub compile: Option<CompileGuard>,
    /// Compile without epoch checks, for runs without a time limit: wasm
    /// code then runs about 25% faster in tight loops (Go's `bytes` tests,
    /// measured), and a run stops for its deadline or an interrupt only at
    /// its next host call, never inside a loop of wasm code.
    pub uninterruptible: bool,
    /// Which compilers make code. `Tier::Auto` needs epoch checks (a run
    /// switches to Cranelift at an epoch tick): with `uninterruptible` it is
    /// `Tier::Cranelift`.
    pub tier: Tier,
    /// Remembers compiled files found intact (file identity -> key), so an
    /// unchanged file is not hashed again: 100 modules' checks were a tenth
    /// of an uncached run of 2,000 trivial cases. Not the memo of the runs'
    /// input digests: a key is not the file's content digest.
    pub compiled_memo: Option<SharedMemo>,
    /// Run long runs apart, in a child process whose time limit is a kill
    /// (`apart.rs`); `None` runs every run here.
    pub run_apart: Option<RunGuard>,
}

/// How to compile a module in a child process: `program args... IN OUT KEY
/// STACK MEMORY EPOCHS COMPILER` must call [`compile_child`]. The child gets `memory` bytes
/// of address space and `timeout` of wall time; past either, the module is
/// reported as a compile bomb.
#[derive(Clone, Debug)]
pub struct CompileGuard {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub timeout: Duration,
    pub memory: u64,
}

/// A compile may take this long by default. The largest test binaries seen
/// (Go's standard library, ~30 MB of wasm) compile in well under a minute on
/// two cores.
pub const DEFAULT_COMPILE_TIMEOUT: Duration = Duration::from_secs(300);

/// Address space a compile may use by default: cranelift needs a few hundred
/// MiB for the largest modules seen; the rest is margin.
pub const DEFAULT_COMPILE_MEMORY: u64 = 4 << 30;

/// What every run of every guest thread shares.
pub(crate) struct Shared {
    /// Cranelift's engine.
    pub engine: Engine,
    /// Winch's engine and linker, made when a module first needs them.
    pub winch: OnceLock<Result<(Engine, Linkers), String>>,
    /// Wasm code checks the epoch in loops (see `RuntimeConfig::uninterruptible`).
    pub epochs: bool,
    pub scratch: ScratchPool,
    pub interrupt: Arc<Interrupt>,
    pub max_wasm_stack: usize,
}

pub struct Runtime {
    pub(crate) shared: Arc<Shared>,
    pub(crate) threads: GuestThreads,
    pub(crate) compilers: Arc<Compilers>,
    tier: Tier,
    modules: Mutex<HashMap<ModuleDigest, Module>>,
    background: Background,
    stop_ticker: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
    pub(crate) run_guard: Option<RunGuard>,
    /// Idle run servers (`apart.rs`).
    pub(crate) servers: crate::server::Servers,
}

/// What compiling needs, shared with the background compiles.
pub(crate) struct Compilers {
    shared: Arc<Shared>,
    linker: Linkers,
    compiled_cache: Option<PathBuf>,
    shared_compiled: Option<SharedCompiled>,
    compiled_memo: Option<SharedMemo>,
    compile: Option<CompileGuard>,
    compiled: AtomicU64,
    fetched: AtomicU64,
    loaded_from_disk: AtomicU64,
    reused: AtomicU64,
    winch: AtomicU64,
    upgraded: AtomicU64,
    /// Set when the runtime goes away: background compiles stop.
    cancel: AtomicBool,
    /// Runs that went apart (`apart.rs`).
    pub(crate) apart: AtomicU64,
    /// Cranelift's engine without epoch checks, for the code of runs apart
    /// (`apart.rs`): its fingerprint keys that code. Made on first use.
    unchecked: OnceLock<Result<Engine, String>>,
    /// Modules whose code without epoch checks this process found intact
    /// or made: checked once, not at every run apart (a Go module's code is
    /// tens of megabytes to hash). A run apart whose child finds the file
    /// gone (trimmed) forgets it (`forget_unchecked`).
    unchecked_ready: Mutex<std::collections::HashSet<ModuleDigest>>,
}

/// Cranelift compiles of modules that started on Winch, one at a time on a
/// thread of their own (and a child process), so at most one core compiles
/// while the runs go on. At normal priority: `nice 10` left the compile
/// waiting behind the runs it was to speed up (regexp and sort, cold: 148 s
/// against 75 s; docs/BENCHMARKS.md).
#[derive(Default)]
struct Background {
    queue: Arc<(Mutex<BackgroundQueue>, Condvar)>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct BackgroundQueue {
    jobs: std::collections::VecDeque<(Upgrade, Arc<ModuleInner>)>,
    /// Jobs queued or compiling.
    pending: usize,
    closed: bool,
}

/// A module's Cranelift compile, to switch its runs to.
pub(crate) struct Upgrade {
    bytes: Arc<[u8]>,
    wasi: Wasi,
    key: Sha256Digest,
    cached: Option<PathBuf>,
}

/// The engine settings of every run, and of the compile child (which needs
/// no instance pool, and must produce code the pooled engine accepts).
fn engine_config(max_wasm_stack: usize, pooled: bool, epochs: bool, compiler: Compiler) -> Config {
    let mut wasm = Config::new();
    if compiler == Compiler::Winch {
        wasm.strategy(wasmtime::Strategy::Winch);
    }
    wasm.epoch_interruption(epochs)
        .max_wasm_stack(max_wasm_stack)
        // wasmtime requires the async stack to hold the wasm stack even
        // though runs are synchronous.
        .async_stack_size(max_wasm_stack + (1 << 20));
    if pooled {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_core_instances(POOL_INSTANCES)
            .total_memories(POOL_INSTANCES)
            .total_tables(POOL_INSTANCES)
            .max_memory_size(POOL_MAX_MEMORY)
            .table_elements(POOL_TABLE_ELEMENTS);
        // How much of a reused slot is reset with memset instead of being
        // released to the kernel (`madvise`, whose TLB shootdowns interrupt
        // every other thread). Where Linux can say which pages a run wrote
        // (PAGEMAP_SCAN, 6.7+), only those are reset, so a run that wrote
        // less than KEEP_RESIDENT_SCANNED needs no `madvise` at all. Without
        // it the first bytes are reset blindly: 1 MiB cost a 1 MiB memset per
        // run, and a 2,000-case suite took 0.75 s against 0.57 s with 64 KiB
        // (docs/BENCHMARKS.md).
        let (scan, keep) = if PoolingAllocationConfig::is_pagemap_scan_available() {
            (Enabled::Yes, KEEP_RESIDENT_SCANNED)
        } else {
            (Enabled::No, KEEP_RESIDENT_BLIND)
        };
        pool.pagemap_scan(scan)
            .linear_memory_keep_resident(keep)
            .table_keep_resident(keep);
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    wasm
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let max_wasm_stack = config.max_wasm_stack.unwrap_or(MAX_WASM_STACK);
        let epochs = !config.uninterruptible;
        let tier = match (config.tier, epochs) {
            (Tier::Auto, false) => Tier::Cranelift,
            (tier, _) => tier,
        };
        let wasm = engine_config(max_wasm_stack, true, epochs, Compiler::Cranelift);
        let engine = Engine::new(&wasm).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let linker = Linkers::new(&engine).map_err(RuntimeError::Engine)?;
        let shared = Arc::new(Shared {
            engine,
            winch: OnceLock::new(),
            epochs,
            scratch: ScratchPool::default(),
            interrupt: Arc::default(),
            max_wasm_stack,
        });

        let stop_ticker = Arc::new(AtomicBool::new(false));
        let ticker = match epochs {
            false => None,
            true => {
                let shared = shared.clone();
                let stop = stop_ticker.clone();
                let ticker = std::thread::Builder::new()
                    .name("cachet-epoch".into())
                    .spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            std::thread::sleep(TICK);
                            shared.engine.increment_epoch();
                            if let Some(Ok((winch, _))) = shared.winch.get() {
                                winch.increment_epoch();
                            }
                        }
                    })
                    .map_err(|e| {
                        RuntimeError::Engine(format!("cannot start the epoch thread: {e}"))
                    })?;
                Some(ticker)
            }
        };
        Ok(Runtime {
            shared: shared.clone(),
            threads: GuestThreads::new(max_wasm_stack)
                .map_err(|e| RuntimeError::Engine(format!("cannot start the WASI runtime: {e}")))?,
            compilers: Arc::new(Compilers {
                shared,
                linker,
                compiled_cache: config.compiled_cache,
                shared_compiled: config.shared_compiled,
                compiled_memo: config.compiled_memo,
                compile: config.compile,
                compiled: AtomicU64::new(0),
                fetched: AtomicU64::new(0),
                loaded_from_disk: AtomicU64::new(0),
                reused: AtomicU64::new(0),
                winch: AtomicU64::new(0),
                upgraded: AtomicU64::new(0),
                cancel: AtomicBool::new(false),
                apart: AtomicU64::new(0),
                unchecked: OnceLock::new(),
                unchecked_ready: Mutex::default(),
            }),
            tier,
            modules: Mutex::default(),
            background: Background::default(),
            stop_ticker,
            ticker,
            run_guard: config.run_apart,
            servers: Default::default(),
        })
    }

    /// Waits for the background compiles still queued or running, so the
    /// next run finds Cranelift's code on disk. Returns at once after an
    /// interrupt.
    pub fn finish_background(&self) {
        let (queue, wake) = &*self.background.queue;
        let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
        while q.pending > 0 && !self.interrupted() {
            q = wake
                .wait_timeout(q, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Stops every running guest (as `Status::Interrupted`) and every later
    /// run before it starts: Ctrl-C.
    pub fn interrupt(&self) {
        self.shared.interrupt.trigger();
    }

    /// Whether [`Runtime::interrupt`] was called.
    /// What [`Runtime::interrupt`] does, callable from any thread (a
    /// signal watcher) without holding the runtime.
    pub fn interrupter(&self) -> impl Fn() + Send + 'static {
        let interrupt = self.shared.interrupt.clone();
        move || interrupt.trigger()
    }

    pub fn interrupted(&self) -> bool {
        self.shared.interrupt.is_set()
    }

    #[cfg(test)]
    fn engine(&self) -> &Engine {
        &self.shared.engine
    }

    pub fn stats(&self) -> LoadStats {
        let c = &self.compilers;
        LoadStats {
            compiled: c.compiled.load(Ordering::Relaxed),
            loaded_from_disk: c.loaded_from_disk.load(Ordering::Relaxed),
            reused: c.reused.load(Ordering::Relaxed),
            winch: c.winch.load(Ordering::Relaxed),
            upgraded: c.upgraded.load(Ordering::Relaxed),
            fetched: c.fetched.load(Ordering::Relaxed),
            apart: c.apart.load(Ordering::Relaxed),
            servers: self.servers.started(),
        }
    }

    /// Where compiled modules are kept, if anywhere.
    pub(crate) fn compiled_cache(&self) -> Option<&Path> {
        self.compilers.compiled_cache.as_deref()
    }

    /// Reads and loads a module file.
    pub fn load_file(&self, path: &Path) -> Result<Module, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        self.load(&bytes)
    }

    /// Loads a module: from this process if it was loaded before, else from
    /// the on-disk cache, else by compiling (and then caching) it.
    pub fn load(&self, bytes: &[u8]) -> Result<Module, LoadError> {
        self.load_digested(bytes, ModuleDigest::of(bytes))
    }

    /// [`Runtime::load`] for a caller that already hashed `bytes`: `digest`
    /// must be `ModuleDigest::of(bytes)` (it names the module in every cache).
    pub fn load_digested(&self, bytes: &[u8], digest: ModuleDigest) -> Result<Module, LoadError> {
        self.load_tiered(bytes, digest, self.tier)
    }

    /// [`Runtime::load_digested`] for a module an earlier run met too: under
    /// `Tier::Auto` it goes straight to Cranelift, whose code is kept. A
    /// module that comes back is worth the compile: Winch's code is never
    /// kept, and a run of short cases ends before its background compile
    /// does, so each later run would compile it with Winch again (100
    /// modules of trivial tests: 5.8 s a run, against 0.5 s from the cache).
    pub fn load_again(&self, bytes: &[u8], digest: ModuleDigest) -> Result<Module, LoadError> {
        let tier = match self.tier {
            Tier::Auto => Tier::Cranelift,
            tier => tier,
        };
        self.load_tiered(bytes, digest, tier)
    }

    fn load_tiered(
        &self,
        bytes: &[u8],
        digest: ModuleDigest,
        tier: Tier,
    ) -> Result<Module, LoadError> {
        let wasi = check_header(bytes)?;
        if let Some(m) = self.loaded(&digest) {
            return Ok(m);
        }
        let c = &self.compilers;
        let key = c.cache_key(&c.shared.engine, &digest);
        let cached = c.cached_path(&key);
        let ready = match tier {
            Tier::Winch => None,
            _ => c.ready(&key, cached.as_deref()),
        };
        let (module, compiler) = match ready {
            Some(m) => (m, Compiler::Cranelift),
            None if tier == Tier::Cranelift => (
                c.cranelift(bytes, wasi, &key, cached.as_deref())?,
                Compiler::Cranelift,
            ),
            None => match c.winch(bytes, wasi, &digest) {
                Ok(m) => (m, Compiler::Winch),
                // What Winch does not support (tail calls, exceptions,
                // GC...) goes straight to Cranelift.
                Err(LoadError::Compile(_)) if tier == Tier::Auto => (
                    c.cranelift(bytes, wasi, &key, cached.as_deref())?,
                    Compiler::Cranelift,
                ),
                Err(e) => return Err(e),
            },
        };
        let (module, inner) = self.keep(digest, module, compiler)?;
        if let Some(inner) = inner.filter(|_| compiler == Compiler::Winch && tier == Tier::Auto) {
            *inner.tier_up.lock().unwrap_or_else(|e| e.into_inner()) = Some(Upgrade {
                bytes: Arc::from(bytes),
                wasi,
                key,
                cached,
            });
        }
        Ok(module)
    }

    /// The module `digest` names when its Cranelift code is at hand (loaded
    /// already, in the compiled-module cache, in the shared store), without
    /// its bytes: a caller that knows a module's digest reads and hashes
    /// the module only when this is `None`, to compile it with
    /// [`Runtime::load_digested`]. Never compiles.
    pub fn load_ready(&self, digest: ModuleDigest) -> Option<Module> {
        if let Some(m) = self.loaded(&digest) {
            return Some(m);
        }
        if self.tier == Tier::Winch {
            return None;
        }
        let c = &self.compilers;
        let key = c.cache_key(&c.shared.engine, &digest);
        let module = c.ready(&key, c.cached_path(&key).as_deref())?;
        self.keep(digest, module, Compiler::Cranelift)
            .ok()
            .map(|(m, _)| m)
    }

    /// Makes sure the compiled-module cache holds Cranelift's code for
    /// `digest` without epoch checks, for a run apart (`apart.rs`): there
    /// already, fetched from the shared store, or compiled from `bytes`
    /// (under the compile limits). Counted as any other load.
    pub(crate) fn prepare_unchecked(
        &self,
        digest: ModuleDigest,
        bytes: &dyn Fn() -> Option<Vec<u8>>,
    ) -> Result<(), LoadError> {
        let c = &self.compilers;
        let ready = || c.unchecked_ready.lock().unwrap_or_else(|e| e.into_inner());
        if ready().contains(&digest) {
            return Ok(());
        }
        self.make_unchecked(digest, bytes)?;
        ready().insert(digest);
        Ok(())
    }

    /// Forgets that `digest`'s code without epoch checks was ready: the
    /// next run apart looks again.
    pub(crate) fn forget_unchecked(&self, digest: &ModuleDigest) {
        let c = &self.compilers;
        let mut ready = c.unchecked_ready.lock().unwrap_or_else(|e| e.into_inner());
        ready.remove(digest);
    }

    /// [`Runtime::prepare_unchecked`] when this process has not yet.
    fn make_unchecked(
        &self,
        digest: ModuleDigest,
        bytes: &dyn Fn() -> Option<Vec<u8>>,
    ) -> Result<(), LoadError> {
        let c = &self.compilers;
        let engine = c
            .unchecked
            .get_or_init(|| {
                let config =
                    engine_config(c.shared.max_wasm_stack, false, false, Compiler::Cranelift);
                Engine::new(&config).map_err(|e| format!("{e:#}"))
            })
            .as_ref()
            .map_err(|e| LoadError::Compile(e.clone()))?;
        let key = c.cache_key(engine, &digest);
        let no_cache = || LoadError::Compile("no compiled-module cache".into());
        let path = c.cached_path(&key).ok_or_else(no_cache)?;
        if std::fs::File::open(&path).is_ok_and(|f| compiled_file_holds(&f, &key)) {
            touch(&path);
            c.loaded_from_disk.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if let Some(file) = c.shared_compiled.as_ref().and_then(|s| s.0.fetch(&key)) {
            if compiled_body(&file, &key).is_some() && write_atomically(&path, &file).is_ok() {
                c.fetched.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        }
        let bytes = bytes().ok_or_else(|| LoadError::Compile("cannot read the module".into()))?;
        let wasi = check_header(&bytes)?;
        match &c.compile {
            Some(guard) => {
                let (output, _) = c.compile_to_file(
                    guard,
                    &bytes,
                    &key,
                    Some(&path),
                    Compiler::Cranelift,
                    false,
                )?;
                output
                    .persist(&path)
                    .map_err(|e| LoadError::Compile(format!("{}: {}", path.display(), e.error)))?;
            }
            None => {
                let m = Code::compile(engine, &bytes, wasi)
                    .map_err(|e| LoadError::Compile(first_line(&e)))?;
                if let Some(dir) = path.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                store_compiled(&path, &key, &m)
                    .map_err(|e| LoadError::Compile(format!("{}: {e}", path.display())))?;
            }
        }
        c.compiled.fetch_add(1, Ordering::Relaxed);
        if let Some(shared) = &c.shared_compiled {
            if let Ok(file) = std::fs::read(&path) {
                shared.0.store(&key, file);
            }
        }
        Ok(())
    }

    /// Forgets every module loaded before but `digest`'s (a run server
    /// maps one module's code at a time).
    pub(crate) fn forget_others(&self, digest: &ModuleDigest) {
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        modules.retain(|d, _| d == digest);
    }

    /// A module this runtime loaded before.
    fn loaded(&self, digest: &ModuleDigest) -> Option<Module> {
        let modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        let m = modules.get(digest)?.clone();
        self.compilers.reused.fetch_add(1, Ordering::Relaxed);
        Some(m)
    }

    /// Links `module` and keeps it for later loads; the new module's inner
    /// part when it is the one kept (another caller may have loaded the
    /// same module meanwhile: one module, one upgrade).
    fn keep(
        &self,
        digest: ModuleDigest,
        module: Code,
        compiler: Compiler,
    ) -> Result<(Module, Option<Arc<ModuleInner>>), LoadError> {
        let c = &self.compilers;
        let linker = match compiler {
            Compiler::Cranelift => &c.linker,
            Compiler::Winch => &c.shared.winch_engine().map_err(LoadError::Compile)?.1,
        };
        let pre = linker.link(&module)?;
        let inner = Arc::new(ModuleInner {
            digest,
            pre,
            tier: compiler,
            upgraded: OnceLock::new(),
            upgrading: AtomicBool::new(false),
            tier_up: Mutex::new(None),
        });
        let module = Module {
            inner: inner.clone(),
        };
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = modules.get(&digest) {
            return Ok((m.clone(), None));
        }
        modules.insert(digest, module.clone());
        Ok((module, Some(inner)))
    }

    /// Waits until `module`'s runs use Cranelift's code, or its background
    /// compile ended without it, or Ctrl-C: for a run known to be long (many
    /// cases in one instance), which on Winch's code would either run at
    /// half speed or start over, while taking CPU from the compile.
    pub fn settle(&self, module: &Module) {
        self.tier_up(module);
        let inner = &module.inner;
        while inner.upgrading.load(Ordering::Acquire) && !self.interrupted() {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Queues the Cranelift compile of a module loaded on Winch, if it is
    /// not queued yet: a module's runs ask for it ([`Runtime::run`]), its
    /// loading does not. A module whose one run here is its listing (its
    /// cases then run apart, or are cached) is not worth it: the compile
    /// would take a core from the runs for code nothing runs.
    pub(crate) fn tier_up(&self, module: &Module) {
        let inner = &module.inner;
        let Some(job) = inner
            .tier_up
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        inner.upgrading.store(true, Ordering::Release);
        let (queue, wake) = &*self.background.queue;
        let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
        q.jobs.push_back((job, inner.clone()));
        q.pending += 1;
        wake.notify_all();
        drop(q);
        let mut thread = self
            .background
            .thread
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if thread.is_none() {
            let (compilers, queue) = (self.compilers.clone(), self.background.queue.clone());
            *thread = std::thread::Builder::new()
                .name("cachet-tier-up".into())
                .spawn(move || compilers.upgrade_all(&queue))
                .ok();
        }
    }
}

impl Shared {
    /// Winch's engine (the same settings but the compiler) and its linker.
    pub(crate) fn winch_engine(&self) -> Result<&(Engine, Linkers), String> {
        self.winch
            .get_or_init(|| {
                let config = engine_config(self.max_wasm_stack, true, self.epochs, Compiler::Winch);
                let engine = Engine::new(&config).map_err(|e| format!("{e:#}"))?;
                let linker = Linkers::new(&engine)?;
                Ok((engine, linker))
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

impl Compilers {
    /// The identity of a module's compiled code: the module digest, the
    /// engine's compatibility fingerprint and the wasmtime version.
    fn cache_key(&self, engine: &Engine, digest: &ModuleDigest) -> Sha256Digest {
        let mut h = ShaHasher(Sha256::new());
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut h);
        h.0.update(WASMTIME_VERSION.as_bytes());
        h.0.update(digest.0 .0);
        Sha256Digest(h.0.finalize().into())
    }

    /// Where the compiled-module cache keeps Cranelift's code for `key`.
    fn cached_path(&self, key: &Sha256Digest) -> Option<PathBuf> {
        self.compiled_cache
            .as_ref()
            .map(|dir| dir.join(format!("{}.cwasm", key.hex())))
    }

    /// Cranelift's code for `key` without compiling: from the compiled-
    /// module cache, else from the shared store.
    fn ready(&self, key: &Sha256Digest, cached: Option<&Path>) -> Option<Code> {
        if let Some(m) = cached.and_then(|p| self.load_compiled(p, key)) {
            self.loaded_from_disk.fetch_add(1, Ordering::Relaxed);
            return Some(m);
        }
        let m = self.fetch_shared(key, cached)?;
        self.fetched.fetch_add(1, Ordering::Relaxed);
        Some(m)
    }

    fn load_compiled(&self, path: &Path, key: &Sha256Digest) -> Option<Code> {
        let file = std::fs::File::open(path).ok()?;
        let meta = file.metadata().ok()?;
        let id = Some(FileId::of(&meta));
        let memo = self.compiled_memo.as_ref().map(|m| &m.0);
        let known = matches!((memo, &id), (Some(memo), Some(id)) if memo.get(id) == Some(*key));
        if !known {
            if !compiled_file_holds(&file, key) {
                return None;
            }
            if let (Some(memo), Some(id)) = (memo, id) {
                memo.put(id, *key);
            }
        }
        touch(path);
        // SAFETY: the file names this module's key (module digest, engine
        // fingerprint, wasmtime version) after its body, and the BLAKE3 over
        // both proves them as `store_compiled` wrote them. The code runs
        // from the file's pages: cachet never writes a cache file in place
        // (each is renamed into place whole), so what was checked is what
        // runs. Copying it instead cost a fifth of an uncached run of
        // 2,000 trivial cases (docs/BENCHMARKS.md).
        let body_len = meta.len().checked_sub(COMPILED_TRAILER as u64)?;
        unsafe { Code::deserialize_file(&self.shared.engine, path, file, body_len) }.ok()
    }

    /// Cranelift's code for `key` from the shared store, written to
    /// `cached` when it verifies (bound to the key, intact).
    fn fetch_shared(&self, key: &Sha256Digest, cached: Option<&Path>) -> Option<Code> {
        let file = self.shared_compiled.as_ref()?.0.fetch(key)?;
        let body = compiled_body(&file, key)?;
        // SAFETY: as in `load_compiled`: the file names this key in its
        // header and its trailer holds; the store is trusted as the local
        // cache is (see `CompiledStore`).
        let module = unsafe { Code::deserialize(&self.shared.engine, body) }.ok()?;
        if let Some(path) = cached {
            let _ = write_atomically(path, &file);
        }
        Some(module)
    }

    /// Cranelift's code for `bytes`, kept in `cached`.
    fn cranelift(
        &self,
        bytes: &[u8],
        wasi: Wasi,
        key: &Sha256Digest,
        cached: Option<&Path>,
    ) -> Result<Code, LoadError> {
        let m = match &self.compile {
            Some(guard) => self.compile_in_child(guard, bytes, key, cached, Compiler::Cranelift)?,
            None => {
                let m = Code::compile(&self.shared.engine, bytes, wasi)
                    .map_err(|e| LoadError::Compile(first_line(&e)))?;
                if let Some(path) = cached {
                    // A cache that cannot be written only costs a
                    // recompile later.
                    let _ = store_compiled(path, key, &m);
                }
                m
            }
        };
        self.compiled.fetch_add(1, Ordering::Relaxed);
        if let (Some(shared), Some(path)) = (&self.shared_compiled, cached) {
            if let Ok(file) = std::fs::read(path) {
                shared.0.store(key, file);
            }
        }
        Ok(m)
    }

    /// Winch's code for `bytes`, never kept on disk.
    fn winch(&self, bytes: &[u8], wasi: Wasi, digest: &ModuleDigest) -> Result<Code, LoadError> {
        let (engine, _) = self.shared.winch_engine().map_err(LoadError::Compile)?;
        let m = match &self.compile {
            Some(guard) => {
                let key = self.cache_key(engine, digest);
                self.compile_in_child(guard, bytes, &key, None, Compiler::Winch)?
            }
            None => Code::compile(engine, bytes, wasi)
                .map_err(|e| LoadError::Compile(first_line(&e)))?,
        };
        self.winch.fetch_add(1, Ordering::Relaxed);
        Ok(m)
    }

    /// The background thread: compiles each queued module with Cranelift
    /// and switches its runs to that code. A module Cranelift cannot
    /// compile within the limits keeps running on Winch.
    fn upgrade_all(&self, queue: &(Mutex<BackgroundQueue>, Condvar)) {
        let (queue, wake) = queue;
        loop {
            let (job, inner) = {
                let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if let Some(job) = q.jobs.pop_front() {
                        break job;
                    }
                    if q.closed {
                        return;
                    }
                    q = wake.wait(q).unwrap_or_else(|e| e.into_inner());
                }
            };
            if !self.cancel.load(Ordering::Relaxed) && !self.shared.interrupt.is_set() {
                let compiled =
                    self.cranelift(&job.bytes, job.wasi, &job.key, job.cached.as_deref());
                if let Ok(pre) = compiled.and_then(|m| self.linker.link(&m)) {
                    if inner.upgraded.set(pre).is_ok() {
                        self.upgraded.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            inner.upgrading.store(false, Ordering::Release);
            let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
            q.pending -= 1;
            wake.notify_all();
        }
    }

    /// Compiles `bytes` in a child process under `guard`'s limits, into
    /// `cached` (or a temp file), and loads the result.
    fn compile_in_child(
        &self,
        guard: &CompileGuard,
        bytes: &[u8],
        key: &Sha256Digest,
        cached: Option<&Path>,
        compiler: Compiler,
    ) -> Result<Code, LoadError> {
        let (output, written) =
            self.compile_to_file(guard, bytes, key, cached, compiler, self.shared.epochs)?;
        let body = compiled_body(&written, key).expect("checked by compile_to_file");
        let engine = match compiler {
            Compiler::Cranelift => &self.shared.engine,
            Compiler::Winch => &self.shared.winch_engine().map_err(LoadError::Compile)?.0,
        };
        // SAFETY: as in `load_compiled`: header and trailer checked, and
        // the key names the engine's fingerprint.
        let module = unsafe { Code::deserialize(engine, body) }
            .map_err(|e| LoadError::Compile(first_line(&e)))?;
        if let Some(path) = cached {
            let _ = output.persist(path);
        }
        Ok(module)
    }

    /// Compiles `bytes` in a child process under `guard`'s limits, into a
    /// temp file beside `cached` (or in the temp dir): the file, and what
    /// it holds, checked bound to `key` and intact (`compiled_body`).
    fn compile_to_file(
        &self,
        guard: &CompileGuard,
        bytes: &[u8],
        key: &Sha256Digest,
        cached: Option<&Path>,
        compiler: Compiler,
        epochs: bool,
    ) -> Result<(tempfile::NamedTempFile, Vec<u8>), LoadError> {
        let io = |what: &str, e: std::io::Error| LoadError::Compile(format!("{what}: {e}"));
        let dir = match cached.and_then(Path::parent) {
            Some(d) => {
                std::fs::create_dir_all(d)
                    .map_err(|e| io("cannot create the compiled-module cache", e))?;
                d.to_path_buf()
            }
            None => std::env::temp_dir(),
        };
        let input = tempfile::Builder::new()
            .prefix("cachet-compile-")
            .tempfile_in(&dir)
            .map_err(|e| io("cannot write the module for compiling", e))?;
        std::fs::write(input.path(), bytes)
            .map_err(|e| io("cannot write the module for compiling", e))?;
        let output = tempfile::Builder::new()
            .prefix("cachet-compiled-")
            .tempfile_in(&dir)
            .map_err(|e| io("cannot create the compiled module", e))?;
        let mut child = std::process::Command::new(&guard.program)
            .args(&guard.args)
            .arg(input.path())
            .arg(output.path())
            .arg(key.hex())
            .arg(self.shared.max_wasm_stack.to_string())
            .arg(guard.memory.to_string())
            .arg(if epochs { "1" } else { "0" })
            .arg(match compiler {
                Compiler::Cranelift => "cranelift",
                Compiler::Winch => "winch",
            })
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| io("cannot start the compiler process", e))?;
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if self.cancel.load(Ordering::Relaxed) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(LoadError::Compile("cancelled".into()));
                }
                Ok(None) if start.elapsed() >= guard.timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(LoadError::CompileLimit(format!(
                        "compiling took longer than {}",
                        crate::duration_string(guard.timeout)
                    )));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(io("cannot wait for the compiler process", e)),
            }
        };
        if !status.success() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.by_ref().take(64 << 10).read_to_string(&mut err);
            }
            let line = err.lines().next().unwrap_or("").to_string();
            return Err(if err.contains(OUT_OF_MEMORY) || line.is_empty() {
                LoadError::CompileLimit(format!(
                    "compiling needed more than {} of memory",
                    crate::outcome::size_string(guard.memory)
                ))
            } else {
                LoadError::Compile(line)
            });
        }
        let written =
            std::fs::read(output.path()).map_err(|e| io("cannot read the compiled module", e))?;
        if compiled_body(&written, key).is_none() {
            return Err(LoadError::Compile(
                "the compiler process wrote a damaged file".into(),
            ));
        }
        Ok((output, written))
    }
}

/// What Rust's allocator prints before aborting a process that ran out of
/// its address space (the compile child under its limit).
const OUT_OF_MEMORY: &str = "memory allocation of";

/// The compile child: reads the module at `input`, compiles it with the
/// engine settings of a run (stack `max_wasm_stack`) within `memory` bytes
/// of address space, and writes it to `output` bound to `key`. Called by
/// the host binary for the arguments [`CompileGuard`] describes.
pub fn compile_child(
    input: &Path,
    output: &Path,
    key_hex: &str,
    max_wasm_stack: usize,
    memory: u64,
    epochs: bool,
    winch: bool,
) -> Result<(), CompileChildError> {
    limit_address_space(memory);
    let key = Sha256Digest::parse_hex(key_hex)
        .ok_or_else(|| CompileChildError::Key(key_hex.to_string()))?;
    let bytes = std::fs::read(input).map_err(|source| CompileChildError::Read {
        path: input.to_path_buf(),
        source,
    })?;
    let compile = |e: wasmtime::Error| CompileChildError::Compile(first_line(&e));
    let compiler = if winch {
        Compiler::Winch
    } else {
        Compiler::Cranelift
    };
    let engine =
        Engine::new(&engine_config(max_wasm_stack, false, epochs, compiler)).map_err(compile)?;
    let wasi = check_header(&bytes).map_err(|e| CompileChildError::Compile(e.to_string()))?;
    let module = Code::compile(&engine, &bytes, wasi).map_err(compile)?;
    store_compiled(output, &key, &module).map_err(|source| CompileChildError::Write {
        path: output.to_path_buf(),
        source,
    })
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // A compile child still running is killed, not left behind.
        self.compilers.cancel.store(true, Ordering::Relaxed);
        self.background
            .queue
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closed = true;
        self.background.queue.1.notify_all();
        if let Some(t) = self
            .background
            .thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = t.join();
        }
        self.stop_ticker.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}

/// A used compiled file's mtime is refreshed when older than this: its last
/// use, for [`trim_compiled`].
const TOUCH_AFTER: Duration = Duration::from_secs(3600);

fn age(m: &std::fs::Metadata) -> Duration {
    m.modified()
        .ok()
        .and_then(|t| t.elapsed().ok())
        .unwrap_or_default()
}

fn touch(path: &Path) {
    if std::fs::metadata(path).is_ok_and(|m| age(&m) > TOUCH_AFTER) {
        if let Ok(f) = std::fs::File::options().append(true).open(path) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    }
}

/// Trims a compiled-module cache directory: temp files an interrupted
/// compile or write left (older than an hour), modules unused for
/// `max_age`, and the least recently used beyond `max_bytes`. Returns how
/// many files it removed.
pub fn trim_compiled(dir: &Path, max_age: Duration, max_bytes: u64) -> std::io::Result<u64> {
    let mut removed = 0;
    let mut kept = Vec::new();
    for entry in std::fs::read_dir(dir)?.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let compiled = entry.file_name().to_string_lossy().ends_with(".cwasm");
        let stale = if compiled {
            age(&meta) > max_age
        } else {
            age(&meta) > TOUCH_AFTER
        };
        if stale {
            removed += u64::from(std::fs::remove_file(entry.path()).is_ok());
        } else if compiled {
            kept.push((age(&meta), meta.len(), entry.path()));
        }
    }
    kept.sort_by_key(|k| std::cmp::Reverse(k.0));
    let mut total: u64 = kept.iter().map(|k| k.1).sum();
    for (_, len, path) in kept {
        if total <= max_bytes {
            break;
        }
        if std::fs::remove_file(path).is_ok() {
            total -= len;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Marks a compiled-module file, after its body; the key follows, then a
/// BLAKE3 of everything before it. The body comes first so the file maps
/// as it is: wasmtime runs the code from the page cache, no copy made.
const COMPILED_MAGIC: &[u8] = b"cachet-compiled v3\n";

/// Bytes after the body: magic, key, BLAKE3.
const COMPILED_TRAILER: usize = COMPILED_MAGIC.len() + 32 + 32;

/// Writes `module` to `path`: body, magic, key, BLAKE3 of all three.
fn store_compiled(path: &Path, key: &Sha256Digest, module: &Code) -> std::io::Result<()> {
    let mut bytes = module.serialize().map_err(std::io::Error::other)?;
    bytes.reserve_exact(COMPILED_TRAILER);
    bytes.extend_from_slice(COMPILED_MAGIC);
    bytes.extend_from_slice(&key.0);
    let trailer = blake3::hash(&bytes);
    bytes.extend_from_slice(trailer.as_bytes());
    write_atomically(path, &bytes)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("cache file has a parent");
    std::fs::create_dir_all(dir)?;
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::fs::write(tmp.path(), bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The body of a compiled-module file, if it is intact and bound to `key`.
fn compiled_body<'a>(bytes: &'a [u8], key: &Sha256Digest) -> Option<&'a [u8]> {
    let (body, trailer) = bytes.split_at_checked(bytes.len().checked_sub(COMPILED_TRAILER)?)?;
    let signed = &bytes[..bytes.len() - 32];
    (names_key(trailer, key)
        && blake3::hash(signed).as_bytes()[..] == trailer[COMPILED_TRAILER - 32..])
        .then_some(body)
}

/// Whether a compiled file's trailer (its last [`COMPILED_TRAILER`] bytes)
/// has the magic and names `key`; its BLAKE3 is checked by the caller.
fn names_key(trailer: &[u8], key: &Sha256Digest) -> bool {
    let magic = COMPILED_MAGIC.len();
    trailer.len() == COMPILED_TRAILER
        && &trailer[..magic] == COMPILED_MAGIC
        && trailer[magic..magic + 32] == key.0
}

/// Whether the open compiled-module file `file` is intact and bound to
/// `key`, read through a small buffer (a module's code can be tens of MB).
fn compiled_file_holds(file: &std::fs::File, key: &Sha256Digest) -> bool {
    let Some(len) = file.metadata().ok().map(|m| m.len()) else {
        return false;
    };
    thread_local! {
        static BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 256 << 10]);
    }
    BUFFER.with_borrow_mut(|buffer| holds(file, key, len, buffer))
}

/// [`compiled_file_holds`] for a file of `len` bytes, read through `buffer`.
fn holds(file: &std::fs::File, key: &Sha256Digest, len: u64, buffer: &mut [u8]) -> bool {
    use std::os::unix::fs::FileExt;
    let Some(tail_at) = len.checked_sub(COMPILED_TRAILER as u64) else {
        return false;
    };
    let mut trailer = [0u8; COMPILED_TRAILER];
    if file.read_exact_at(&mut trailer, tail_at).is_err() || !names_key(&trailer, key) {
        return false;
    }
    let signed = len - 32;
    let mut hasher = blake3::Hasher::new();
    let mut at = 0u64;
    while at < signed {
        let want = (signed - at).min(buffer.len() as u64) as usize;
        if file.read_exact_at(&mut buffer[..want], at).is_err() {
            return false;
        }
        hasher.update(&buffer[..want]);
        at += want as u64;
    }
    hasher.finalize().as_bytes()[..] == trailer[COMPILED_TRAILER - 32..]
}

/// Caps the address space of this process (the compile child).
#[cfg(unix)]
fn limit_address_space(bytes: u64) {
    let limit = libc::rlimit {
        rlim_cur: bytes as libc::rlim_t,
        rlim_max: bytes as libc::rlim_t,
    };
    // SAFETY: setrlimit reads the struct; a failure leaves the compile unlimited.
    unsafe {
        libc::setrlimit(libc::RLIMIT_AS, &limit);
    }
}

#[cfg(not(unix))]
fn limit_address_space(_bytes: u64) {}

/// Feeds `Hash` output into sha256, which is stable across processes.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

const WASM_MAGIC: &[u8; 4] = b"\0asm";
const CORE_VERSION: [u8; 4] = [1, 0, 0, 0];
const COMPONENT_VERSION: [u8; 4] = [0x0d, 0, 1, 0];

/// Tells a WASI p1 core module from a p2 component (or from something
/// else) by its header, without compiling it.
pub fn check_header(bytes: &[u8]) -> Result<Wasi, LoadError> {
    if bytes.len() < 8 || &bytes[..4] != WASM_MAGIC {
        return Err(LoadError::NotWasm);
    }
    match bytes[4..8].try_into().expect("4 bytes") {
        CORE_VERSION => Ok(Wasi::P1),
        COMPONENT_VERSION => Ok(Wasi::P2),
        other => Err(LoadError::Compile(format!(
            "unknown WebAssembly binary version {other:?}"
        ))),
    }
}

/// Whether a module's data segments (what the program can read at run time)
/// contain `needle`; custom sections such as debug info are not looked at.
/// For a component, the data of every core module in it (nested components
/// included). `false` for bytes that are not well formed.
pub fn data_contains(module: &[u8], needle: &[u8]) -> bool {
    data_contains_within(module, needle, 0)
}

/// Components nested deeper than this are not looked into (a hostile file
/// must not exhaust the host's stack).
const MAX_NESTING: usize = 16;

fn data_contains_within(module: &[u8], needle: &[u8], depth: usize) -> bool {
    const DATA_SECTION: u8 = 11;
    const CORE_MODULE_SECTION: u8 = 1;
    const COMPONENT_SECTION: u8 = 4;
    let component = module.get(4..8) == Some(&COMPONENT_VERSION[..]);
    let mut at = 8;
    while at < module.len() {
        let id = module[at];
        let Some((size, len)) = leb128_u32(&module[at + 1..]) else {
            return false;
        };
        let start = at + 1 + len;
        let Some(end) = start
            .checked_add(size as usize)
            .filter(|e| *e <= module.len())
        else {
            return false;
        };
        let section = &module[start..end];
        let found = match (component, id) {
            (false, DATA_SECTION) => memchr_find(section, needle),
            (true, CORE_MODULE_SECTION | COMPONENT_SECTION) if depth < MAX_NESTING => {
                data_contains_within(section, needle, depth + 1)
            }
            _ => false,
        };
        if found {
            return true;
        }
        at = end;
    }
    false
}

fn memchr_find(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// An unsigned LEB128 u32 and its length in bytes.
fn leb128_u32(b: &[u8]) -> Option<(u32, usize)> {
    let mut value = 0u32;
    for (i, byte) in b.iter().take(5).enumerate() {
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiled_files_are_bound_to_their_key() {
        let rt = Runtime::new(RuntimeConfig::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let module = Code::Core(wasmtime::Module::new(rt.engine(), "(module)").unwrap());
        let (a, b) = (Sha256Digest::of(b"a"), Sha256Digest::of(b"b"));
        let path = dir.path().join("a.cwasm");
        store_compiled(&path, &a, &module).unwrap();
        assert!(rt.compilers.load_compiled(&path, &a).is_some());
        assert!(
            rt.compilers.load_compiled(&path, &b).is_none(),
            "another module's file is refused"
        );
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(
            rt.compilers.load_compiled(&path, &a).is_none(),
            "a damaged file is refused"
        );
    }

    #[test]
    fn a_module_met_before_goes_straight_to_cranelift() {
        let wasm = wat::parse_str("(module (func (export \"_start\")))").unwrap();
        let digest = ModuleDigest::of(&wasm);
        let auto = || {
            Runtime::new(RuntimeConfig {
                tier: Tier::Auto,
                ..Default::default()
            })
            .unwrap()
        };
        let rt = auto();
        rt.load_digested(&wasm, digest).unwrap();
        let s = rt.stats();
        // (Cranelift may meanwhile compile it in the background.)
        assert_eq!(s.winch, 1, "first sight: Winch");
        let rt = auto();
        rt.load_again(&wasm, digest).unwrap();
        let s = rt.stats();
        assert_eq!((s.winch, s.compiled), (0, 1), "met before: Cranelift");
    }

    #[test]
    fn a_modules_cranelift_compile_waits_for_a_run_that_is_not_alone() {
        let wasm =
            wat::parse_str("(module (memory (export \"memory\") 1) (func (export \"_start\")))")
                .unwrap();
        let rt = Runtime::new(RuntimeConfig {
            tier: Tier::Auto,
            ..Default::default()
        })
        .unwrap();
        let m = rt.load(&wasm).unwrap();
        let policy = crate::Policy::new();
        assert!(rt.run_alone(&m, &policy).unwrap().status.passed());
        rt.finish_background();
        assert_eq!(
            (rt.stats().winch, rt.stats().compiled),
            (1, 0),
            "a listing alone"
        );
        assert!(rt.run(&m, &policy).unwrap().status.passed());
        rt.finish_background();
        assert_eq!(rt.stats().compiled, 1, "a run asks for Cranelift's code");
        assert_eq!(m.compiler(), Compiler::Cranelift);
    }

    #[test]
    fn code_prepared_for_a_run_apart_is_what_the_child_loads() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = wat::parse_str("(module (func (export \"_start\")))").unwrap();
        let digest = ModuleDigest::of(&wasm);
        let config = |uninterruptible| RuntimeConfig {
            compiled_cache: Some(dir.path().to_path_buf()),
            uninterruptible,
            ..Default::default()
        };
        let parent = Runtime::new(config(false)).unwrap();
        parent
            .prepare_unchecked(digest, &|| Some(wasm.clone()))
            .unwrap();
        assert_eq!(parent.stats().compiled, 1);
        parent.prepare_unchecked(digest, &|| None).unwrap();
        let (compiled, looked) = (parent.stats().compiled, parent.stats().loaded_from_disk);
        assert_eq!(
            (compiled, looked),
            (1, 0),
            "ready: neither compiled nor checked again"
        );
        // Forgotten (its child found it gone), it is looked at again.
        parent.forget_unchecked(&digest);
        parent.prepare_unchecked(digest, &|| None).unwrap();
        assert_eq!(
            parent.stats().loaded_from_disk,
            1,
            "kept: not compiled again"
        );
        let other = Runtime::new(config(false)).unwrap();
        other.prepare_unchecked(digest, &|| None).unwrap();
        assert_eq!(
            (other.stats().compiled, other.stats().loaded_from_disk),
            (0, 1),
            "another process finds it on disk"
        );
        // The child's engine is pooled, the parent keys with one that is
        // not: the same code, the same key.
        let child = Runtime::new(config(true)).unwrap();
        assert!(child.load_ready(digest).is_some());
        assert!(
            parent.load_ready(digest).is_none(),
            "code without epoch checks never reaches an engine that has them"
        );
    }

    #[test]
    fn a_compiled_file_is_checked_whatever_the_buffer_size() {
        let rt = Runtime::new(RuntimeConfig::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let module = Code::Core(
            wasmtime::Module::new(rt.engine(), "(module (func (export \"f\")))").unwrap(),
        );
        let key = Sha256Digest::of(b"k");
        let path = dir.path().join("k.cwasm");
        store_compiled(&path, &key, &module).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let len = file.metadata().unwrap().len();
        // Chunk boundaries fall everywhere, the trailer's bytes included.
        for size in [1, 7, 32, 83, 100, 4096, 1 << 20] {
            let mut buffer = vec![0; size];
            assert!(holds(&file, &key, len, &mut buffer), "buffer of {size}");
            let other = Sha256Digest::of(b"other");
            assert!(!holds(&file, &other, len, &mut buffer), "buffer of {size}");
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let magic_at = bytes.len() - COMPILED_TRAILER;
        bytes[magic_at] ^= 1;
        let resigned = blake3::hash(&bytes[..bytes.len() - 32]);
        let at = bytes.len() - 32;
        bytes[at..].copy_from_slice(resigned.as_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        assert!(
            !compiled_file_holds(&file, &key),
            "another format's file is refused"
        );
    }

    #[test]
    fn wasmtime_version_matches_the_workspace_pin() {
        let manifest = include_str!("../../Cargo.toml");
        assert!(
            manifest.contains(&format!("wasmtime = {{ version = \"={WASMTIME_VERSION}\"")),
            "update WASMTIME_VERSION with the pin"
        );
    }

    #[test]
    fn trimming_keeps_recent_modules_and_sweeps_stale_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let old = std::time::SystemTime::now() - Duration::from_secs(10 * 24 * 3600);
        for (name, len, mtime) in [
            ("a.cwasm", 100, None),
            ("b.cwasm", 100, Some(old)),
            (
                "c.cwasm",
                300,
                Some(std::time::SystemTime::now() - Duration::from_secs(60)),
            ),
            (".tmpXYZ", 10, Some(old)),
            ("cachet-compile-1", 10, None),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, vec![0u8; len]).unwrap();
            if let Some(t) = mtime {
                std::fs::File::options()
                    .append(true)
                    .open(&path)
                    .unwrap()
                    .set_modified(t)
                    .unwrap();
            }
        }
        let removed = trim_compiled(dir.path(), Duration::from_secs(5 * 24 * 3600), 350).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["a.cwasm", "cachet-compile-1"],
            "b too old, .tmp stale, c least recent"
        );
        assert_eq!(removed, 3);
    }

    #[test]
    fn only_data_segments_are_searched() {
        let m = wat::parse_str(
            r#"(module (memory 1) (data (i32.const 0) "/home/me/pkg") (@custom "debug" "/home/me/other"))"#,
        )
        .unwrap();
        assert!(data_contains(&m, b"/home/me/pkg"));
        assert!(
            !data_contains(&m, b"/home/me/other"),
            "custom sections are not data"
        );
        assert!(!data_contains(&m[..m.len() - 3], b"/home/me/other"));
        assert!(
            !data_contains(b"\0asm\x01\0\0\0\x0b\xff", b"x"),
            "truncated"
        );
    }

    #[test]
    fn a_components_core_modules_are_searched_nested_or_not() {
        let c = wat::parse_str(
            r#"(component
                 (core module (memory 1) (data (i32.const 0) "/home/me/pkg"))
                 (component (core module (memory 1) (data (i32.const 0) "/deeper"))))"#,
        )
        .unwrap();
        assert!(data_contains(&c, b"/home/me/pkg"));
        assert!(data_contains(&c, b"/deeper"));
        assert!(!data_contains(&c, b"/home/me/other"));
        // Nested past MAX_NESTING: not looked into, and no host stack spent.
        let mut deep = String::from(r#"(core module (memory 1) (data (i32.const 0) "/bottom"))"#);
        for _ in 0..MAX_NESTING + 2 {
            deep = format!("(component {deep})");
        }
        assert!(!data_contains(&wat::parse_str(&deep).unwrap(), b"/bottom"));
    }

    #[test]
    fn headers_are_checked_before_compiling() {
        assert!(matches!(
            check_header(b"hello world"),
            Err(LoadError::NotWasm)
        ));
        assert!(matches!(check_header(b"\0asm\x0d\0\x01\0"), Ok(Wasi::P2)));
        assert!(matches!(check_header(b"\0asm\x01\0\0\0"), Ok(Wasi::P1)));
    }
}
