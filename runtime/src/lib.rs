//! `cachet-runtime`: runs WASI test binaries in wasmtime (preview 1 core
//! modules and preview 2 components), inside a deny-by-default sandbox, and
//! records every input they observe.
//!
//! ```text
//! Policy ──► Runtime::run(&Module, &Policy) ──► RunOutcome { status, output, elapsed, log }
//!               │ engine.rs     one engine, epoch ticker, pooling, compiled-module cache
//!               │ code.rs       a core module or a component: compile, serialize, link
//!               │ run.rs        WASI context, store limits, classification of the end
//!               │ intercept.rs  linker wrappers around the stock p1 functions
//!               │ preview2/     the same around wasmtime-wasi's p2 hosts
//!               │ recorder.rs   fd -> logical path, one entry per (op, path), virtual metadata
//!               └ observe.rs    observations through cap-std; reobserve() for the cache
//! ```
//!
//! The runtime knows nothing of caching, the CLI or reports, and exposes no
//! wasmtime types. Design note: `docs/design/sandbox.md`.

mod abi;
mod apart;
mod clock;
mod code;
mod devices;
mod dirents;
mod engine;
mod error;
mod guest_thread;
mod intercept;
pub mod log;
mod observe;
mod outcome;
mod output;
mod policy;
mod preview2;
mod quota;
mod random;
mod recorder;
mod run;
mod scratch;
mod server;
mod spec;
mod state;

#[path = "../../guest-shim/src/abi.rs"]
pub mod guest_abi;

pub use abi::Wasi;
pub use apart::{serve, NotApart};
pub use clock::{HERMETIC_EPOCH_NS, HERMETIC_TICK_NS};
pub use devices::DEVICE_FILES;
pub use engine::{
    check_header, compile_child, data_contains, trim_compiled, CompileGuard, CompiledStore,
    Compiler, LoadStats, Module, ModuleDigest, Runtime, RuntimeConfig, SharedCompiled, Tier,
    DEFAULT_COMPILE_MEMORY, DEFAULT_COMPILE_TIMEOUT, MAX_WASM_STACK, TICK, WASMTIME_VERSION,
};
pub use error::{CompileChildError, LoadError, RunError, RuntimeError};
pub use log::{Entry, InputLog, InputsDigest, Observation, ReadOp, Sha256Digest};
pub use observe::{
    first_change, reobserve, virtual_ino, Change, DigestMemo, FileId, MountMode, SharedMemo, World,
    VIRTUAL_TIME_NS,
};
pub use outcome::{size_string, RunOutcome, Status};
pub use output::{KEPT_HEAD, KEPT_TAIL};
pub use policy::{
    Mount, OutputTee, Policy, DEFAULT_MEMORY_LIMIT, DEFAULT_OPEN_FILES, DEFAULT_OUTPUT_LIMIT,
    DEFAULT_SCRATCH_LIMIT, DEFAULT_SEED, DEFAULT_TIMEOUT, SCRATCH_GUEST_PATH, SCRATCH_MOUNT_NAME,
};
pub use quota::INODE_CHARGE;
pub use scratch::remove_tree;
pub use server::RunGuard;
pub use spec::{MountSpec, OutcomeSpec, PolicySpec};

/// Formats a duration as Go does (`10m0s`, `1.5s`, `250ms`), for messages
/// that users of `go test` read every day.
pub fn duration_string(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return format!("{}µs", d.as_micros());
    }
    if d < std::time::Duration::from_secs(1) {
        return format!("{ms}ms");
    }
    let total = d.as_secs_f64();
    let (h, m) = ((total / 3600.0) as u64, ((total % 3600.0) / 60.0) as u64);
    let s = total - (h * 3600 + m * 60) as f64;
    let secs = if s.fract() == 0.0 {
        format!("{}s", s as u64)
    } else {
        format!("{}s", trim(s))
    };
    match (h, m) {
        (0, 0) => secs,
        (0, m) => format!("{m}m{secs}"),
        (h, m) => format!("{h}h{m}m{secs}"),
    }
}

fn trim(s: f64) -> String {
    let t = format!("{s:.3}");
    t.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn durations_read_like_go() {
        assert_eq!(super::duration_string(Duration::from_secs(600)), "10m0s");
        assert_eq!(super::duration_string(Duration::from_millis(1500)), "1.5s");
        assert_eq!(super::duration_string(Duration::from_millis(250)), "250ms");
        assert_eq!(super::duration_string(Duration::from_secs(3661)), "1h1m1s");
    }
}
