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
        "not a WebAssembly module (no `\\0asm` header); pass a .wasm file built for wasm32-wasip1 or wasm32-wasip2"
    )]
    NotWasm,
    #[error(
        "invalid WebAssembly module: {0}; rebuild it (a truncated or corrupt file fails this way)"
    )]
    Compile(String),
    #[error(
        "{0}; cachet provides only WASI preview 1 (`wasi_snapshot_preview1` and `cachet` imports to a core module) and WASI 0.2 (`wasi:cli`, `wasi:filesystem`, `wasi:io`, `wasi:clocks`, `wasi:random` to a component)"
    )]
    Link(String),
    #[error("{0}: the component is not a WASI command (it exports no `wasi:cli/run`); build it as a test binary, not a library")]
    NotCommand(String),
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

/// The first line of a wasmtime error with its causes: one line for a
/// user, as every error here reads.
pub(crate) fn first_line(e: &wasmtime::Error) -> String {
    let text = format!("{e:#}");
    text.lines().next().unwrap_or("").to_string()
}
