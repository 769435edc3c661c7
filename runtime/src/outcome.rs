//! What a run returns: plain data, no wasmtime types. A failing test is a
//! `Status`, not an error; `RunError` is kept for runs that could not be set up.

use std::fmt;
use std::time::Duration;

use crate::log::InputLog;
use crate::observe::Change;

/// How a run ended. Every limit has its own variant with a one-line reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// The guest exited (returned from `_start`: 0, or called `proc_exit`).
    Exited(i32),
    /// The guest trapped: a Rust panic, `unreachable`, a stack overflow.
    Trapped(String),
    /// The run was stopped after its time limit.
    Timeout(Duration),
    /// Linear memory growth past the limit was refused and the guest failed.
    MemoryLimit(u64),
    /// The guest wrote more output than the cap; the output is truncated there.
    OutputOverflow(usize),
    /// The module could not run as a WASI command (no `_start`, failed to
    /// instantiate).
    Invalid(String),
}

impl Status {
    pub fn passed(&self) -> bool {
        *self == Status::Exited(0)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Exited(code) => write!(f, "exit status {code}"),
            Status::Trapped(msg) => write!(f, "trapped: {msg}"),
            Status::Timeout(d) => write!(
                f,
                "ran too long: stopped after {}",
                crate::duration_string(*d)
            ),
            Status::MemoryLimit(limit) => write!(
                f,
                "memory limit: tried to grow linear memory past {} MiB",
                limit >> 20
            ),
            Status::OutputOverflow(limit) => write!(
                f,
                "output limit: wrote more than {} KiB of output",
                limit >> 10
            ),
            Status::Invalid(msg) => write!(f, "cannot run module: {msg}"),
        }
    }
}

/// Everything a run produced.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    pub status: Status,
    /// stdout and stderr, merged in write order, at most the policy's cap.
    pub output: Vec<u8>,
    pub elapsed: Duration,
    pub log: InputLog,
    /// Set when an input observed during the run was different by its end:
    /// the result must not be cached.
    pub changed_during_run: Option<Change>,
}
