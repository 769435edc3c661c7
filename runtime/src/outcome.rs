//! What a run returns: plain data, no wasmtime types. A failing test is a
//! `Status`, not an error; `RunError` is kept for runs that could not be set up.

use std::fmt;
use std::time::Duration;

use crate::log::InputLog;

/// How a run ended. Every limit has its own variant with a one-line reason.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Status {
    /// The guest exited (returned from `_start`: 0, or called `proc_exit`).
    Exited(i32),
    /// The guest trapped (a Rust panic, `unreachable`, an out-of-bounds
    /// access): the cause, and the innermost wasm frames, named where the
    /// module has a name section.
    Trapped {
        message: String,
        frames: Vec<String>,
        /// A frame of the stack (not only the innermost shown) is Rust's
        /// `catch_unwind`: the program meant to catch a panic, which aborts
        /// on wasm32-wasip1 instead.
        catch_unwind: bool,
    },
    /// The guest's wasm stack passed its limit (deep or endless recursion).
    StackOverflow { limit: usize, frames: Vec<String> },
    /// The run was stopped after its time limit.
    Timeout(Duration),
    /// The host stopped the run (Ctrl-C).
    Interrupted,
    /// Linear memory growth past the limit was refused and the guest failed.
    MemoryLimit(u64),
    /// The guest wrote more output than the cap; the output is truncated there.
    OutputOverflow(usize),
    /// A write to the scratch dir was refused (ENOSPC) at its quota and the
    /// guest then failed.
    ScratchLimit(u64),
    /// An open was refused (EMFILE) at the open-files limit and the guest
    /// then failed.
    OpenFilesLimit(u32),
    /// The module could not run as a WASI command (no `_start`, failed to
    /// instantiate).
    Invalid(String),
}

impl Status {
    pub fn passed(&self) -> bool {
        *self == Status::Exited(0)
    }

    /// The wasm frames of a trap or stack overflow, innermost first.
    pub fn frames(&self) -> &[String] {
        match self {
            Status::Trapped { frames, .. } | Status::StackOverflow { frames, .. } => frames,
            _ => &[],
        }
    }
}

/// `512 MiB`, `1 GiB`, `64 KiB`, `100 bytes`: a limit as users give it.
pub fn size_string(bytes: u64) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Exited(code) => write!(f, "exit status {code}"),
            Status::Trapped { message, .. } => write!(f, "trapped: {message}"),
            Status::StackOverflow { limit, .. } => write!(
                f,
                "stack overflow: the wasm stack passed its limit of {} (deep or endless recursion)",
                size_string(*limit as u64)
            ),
            Status::Timeout(d) => write!(
                f,
                "ran too long: stopped after {}",
                crate::duration_string(*d)
            ),
            Status::Interrupted => f.write_str("interrupted"),
            Status::MemoryLimit(limit) => write!(
                f,
                "memory limit: tried to grow linear memory past {}",
                size_string(*limit)
            ),
            Status::OutputOverflow(limit) => write!(
                f,
                "output limit: wrote more than {} of output",
                size_string(*limit as u64)
            ),
            Status::ScratchLimit(limit) => write!(
                f,
                "scratch limit: /tmp would have held more than {} (writes failed with ENOSPC)",
                size_string(*limit)
            ),
            Status::OpenFilesLimit(limit) => write!(
                f,
                "open files limit: tried to hold more than {limit} files open (opens failed with EMFILE; with `quota` under WASI preview 2, which has no EMFILE)"
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
    /// Set when an input observed during the run was different by its end
    /// (or changed and changed back, or the run changed a read-write mount
    /// and did not put it back): the result must not be cached.
    pub changed_during_run: Option<String>,
    /// The run's scratch dir could not be removed (a warning for the host).
    pub cleanup_error: Option<String>,
    /// The scratch file the policy asked to collect, if the guest wrote it
    /// (at most 16 MiB of it).
    pub collected: Option<Vec<u8>>,
    /// The compiler whose code ran it to its end.
    pub compiler: crate::engine::Compiler,
    /// It started on Winch and started over on Cranelift's code, when that
    /// was ready (`elapsed` and everything else are of the second start).
    pub restarted: bool,
    /// The WASI version of what ran: under preview 2 an exit status says
    /// only success (0) or failure (1).
    pub wasi: crate::abi::Wasi,
    /// Preview 2: the innermost frames (demangled) of the guest's call to
    /// `exit` with failure, which carries no code: who called it.
    pub exit_frames: Vec<String>,
}
