//! The `Runtime`: one wasmtime engine per process and the modules loaded in it.
//!
//! - Epoch interruption: a ticker thread bumps the epoch every [`TICK`]; a
//!   store's deadline in ticks is its timeout.
//! - Pooling allocator: instance slots are reused, so a run does not map fresh
//!   memory (see docs/BENCHMARKS.md for the per-run cost).
//! - Compiled modules are kept on disk keyed by module sha256, the engine's
//!   compatibility fingerprint and the wasmtime version, and verified by a
//!   BLAKE3 trailer before they are deserialized: a damaged file is recompiled,
//!   never loaded.
//! - Each module's `InstancePre` (imports resolved once) is reused by every run.

use std::collections::HashMap;
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, PoolingAllocationConfig,
};

use crate::error::{LoadError, RuntimeError};
use crate::log::Sha256Digest;
use crate::run::RunState;

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
    pub pre: InstancePre<RunState>,
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
}

/// Settings of the one engine.
#[derive(Clone, Debug, Default)]
pub struct RuntimeConfig {
    /// Where compiled modules are kept; `None` keeps them in memory only.
    pub compiled_cache: Option<PathBuf>,
}

pub struct Runtime {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<RunState>,
    compiled_cache: Option<PathBuf>,
    modules: Mutex<HashMap<ModuleDigest, Module>>,
    compiled: AtomicU64,
    loaded_from_disk: AtomicU64,
    reused: AtomicU64,
    stop_ticker: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
    pub(crate) scratch: crate::scratch::ScratchPool,
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_core_instances(POOL_INSTANCES)
            .total_memories(POOL_INSTANCES)
            .total_tables(POOL_INSTANCES)
            .max_memory_size(POOL_MAX_MEMORY)
            .table_elements(POOL_TABLE_ELEMENTS)
            // How much of a reused slot is zeroed with memset instead of being
            // released to the kernel. 1 MiB cost a 1 MiB memset per run: a
            // 2,000-case suite took 0.75 s against 0.57 s with 64 KiB
            // (docs/BENCHMARKS.md); fresh pages fault in only when touched.
            .linear_memory_keep_resident(64 << 10)
            .table_keep_resident(1 << 16);
        let mut wasm = Config::new();
        wasm.epoch_interruption(true)
            .max_wasm_stack(MAX_WASM_STACK)
            // wasmtime requires the async stack to hold the wasm stack even
            // though runs are synchronous.
            .async_stack_size(MAX_WASM_STACK + (1 << 20))
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        crate::intercept::add_to_linker(&mut linker)
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;

        let stop_ticker = Arc::new(AtomicBool::new(false));
        let ticker = {
            let engine = engine.clone();
            let stop = stop_ticker.clone();
            std::thread::Builder::new()
                .name("cachet-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| RuntimeError::Engine(format!("cannot start the epoch thread: {e}")))?
        };
        Ok(Runtime {
            engine,
            linker,
            compiled_cache: config.compiled_cache,
            modules: Mutex::default(),
            compiled: AtomicU64::new(0),
            loaded_from_disk: AtomicU64::new(0),
            reused: AtomicU64::new(0),
            stop_ticker,
            ticker: Some(ticker),
            scratch: crate::scratch::ScratchPool::default(),
        })
    }

    pub fn stats(&self) -> LoadStats {
        LoadStats {
            compiled: self.compiled.load(Ordering::Relaxed),
            loaded_from_disk: self.loaded_from_disk.load(Ordering::Relaxed),
            reused: self.reused.load(Ordering::Relaxed),
        }
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
        check_header(bytes)?;
        if let Some(m) = self
            .modules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&digest)
        {
            self.reused.fetch_add(1, Ordering::Relaxed);
            return Ok(m.clone());
        }
        let cached = self
            .compiled_cache
            .as_ref()
            .map(|dir| dir.join(format!("{}.b3.cwasm", self.cache_key(&digest))));
        let module = match cached.as_deref().and_then(|p| self.load_compiled(p)) {
            Some(m) => {
                self.loaded_from_disk.fetch_add(1, Ordering::Relaxed);
                m
            }
            None => {
                let m = wasmtime::Module::new(&self.engine, bytes)
                    .map_err(|e| LoadError::Compile(first_line(&e)))?;
                self.compiled.fetch_add(1, Ordering::Relaxed);
                if let Some(path) = &cached {
                    // A cache that cannot be written only costs a recompile later.
                    let _ = store_compiled(path, &m);
                }
                m
            }
        };
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| LoadError::Link(first_line(&e)))?;
        let module = Module {
            inner: Arc::new(ModuleInner { digest, pre }),
        };
        self.modules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(digest, module.clone());
        Ok(module)
    }

    fn cache_key(&self, digest: &ModuleDigest) -> String {
        let mut h = ShaHasher(Sha256::new());
        std::hash::Hash::hash(&self.engine.precompile_compatibility_hash(), &mut h);
        h.0.update(WASMTIME_VERSION.as_bytes());
        h.0.update(digest.0 .0);
        Sha256Digest(h.0.finalize().into()).hex()
    }

    fn load_compiled(&self, path: &Path) -> Option<wasmtime::Module> {
        let bytes = std::fs::read(path).ok()?;
        let (body, trailer) = bytes.split_at_checked(bytes.len().checked_sub(32)?)?;
        if blake3::hash(body).as_bytes() != trailer {
            return None;
        }
        // SAFETY: the bytes were written by `store_compiled` with this engine's
        // fingerprint in the file name, and the trailer proves they are intact.
        unsafe { wasmtime::Module::deserialize(&self.engine, body) }.ok()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}

fn store_compiled(path: &Path, module: &wasmtime::Module) -> std::io::Result<()> {
    let dir = path.parent().expect("cache file has a parent");
    std::fs::create_dir_all(dir)?;
    let mut bytes = module.serialize().map_err(std::io::Error::other)?;
    let trailer = blake3::hash(&bytes);
    bytes.extend_from_slice(trailer.as_bytes());
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::fs::write(tmp.path(), &bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

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

/// Checks that `bytes` start like a WASI p1 core module (not a component,
/// not something else) without compiling them.
pub fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.len() < 8 || &bytes[..4] != WASM_MAGIC {
        return Err(LoadError::NotWasm);
    }
    match bytes[4..8].try_into().expect("4 bytes") {
        CORE_VERSION => Ok(()),
        COMPONENT_VERSION => Err(LoadError::Component),
        other => Err(LoadError::Compile(format!(
            "unknown WebAssembly binary version {other:?}"
        ))),
    }
}

pub(crate) fn first_line(e: &wasmtime::Error) -> String {
    let text = format!("{e:#}");
    text.lines().next().unwrap_or("").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wasmtime_version_matches_the_workspace_pin() {
        let manifest = include_str!("../../Cargo.toml");
        assert!(
            manifest.contains(&format!("wasmtime = {{ version = \"={WASMTIME_VERSION}\"")),
            "update WASMTIME_VERSION with the pin"
        );
    }

    #[test]
    fn headers_are_checked_before_compiling() {
        assert!(matches!(
            check_header(b"hello world"),
            Err(LoadError::NotWasm)
        ));
        assert!(matches!(
            check_header(b"\0asm\x0d\0\x01\0"),
            Err(LoadError::Component)
        ));
        assert!(check_header(b"\0asm\x01\0\0\0").is_ok());
    }
}
