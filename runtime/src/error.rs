//! Errors of the runtime: setting it up, loading a module, setting up a run.
//! A failing test is not among them: that is a [`crate::Status`].

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("failed to set up the wasmtime engine: {0}")]
    Engine(String),
}

/// Why a module cannot be loaded; each reads as one line with its fix.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "not a WebAssembly module (no `\\0asm` header); pass a .wasm file built for wasm32-wasip1"
    )]
    NotWasm,
    #[error("is a WebAssembly component, not a core module; build it for wasm32-wasip1 (WASI preview 1), not wasip2")]
    Component,
    #[error(
        "invalid WebAssembly module: {0}; rebuild it (a truncated or corrupt file fails this way)"
    )]
    Compile(String),
    #[error(
        "{0}; cachet provides only WASI preview 1 (`wasi_snapshot_preview1`) and `cachet` imports"
    )]
    Link(String),
    #[error("compile limit: {0}; the module is too large or built to exhaust the compiler (raise --compile-timeout or --compile-memory if it is genuine)")]
    CompileLimit(String),
}

/// Why the compile child failed: it prints this one line on stderr, and
/// the parent reports it as the module's [`LoadError`].
#[derive(Debug, thiserror::Error)]
pub enum CompileChildError {
    #[error("bad key {0:?}")]
    Key(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Compile(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why a run could not be set up (the module never started).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot create a scratch directory in {base}: {source}")]
    Scratch {
        base: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot mount {host} as `{name}`: {reason}")]
    Mount {
        name: String,
        host: PathBuf,
        reason: String,
    },
    #[error("mount `{0}` is given twice; each mount needs its own name")]
    DuplicateMount(String),
    #[error("internal error in cachet while running the module: {0}; please report it")]
    Internal(String),
}
