//! What the scheduler tells the reporter. Plain data; the reporter never
//! calls back into the scheduler.

use std::time::{Duration, SystemTime};

use crate::framework::CaseResult;

// One per case, moved once through a channel: boxing the case result
// would add an allocation per case for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Event {
    /// The package's first case is starting.
    PackageStarted { pkg: usize, at: SystemTime },
    /// Something the user should know that fails nothing (a damaged cache
    /// entry that was ignored).
    Warning { message: String },
    /// A package could not be set up (`build`: its build failed); nothing
    /// of it runs.
    PackageError {
        pkg: usize,
        message: String,
        build: bool,
    },
    /// A case is starting; sent only when output streams live.
    CaseStarted {
        pkg: usize,
        name: String,
        /// The harness prints its own `=== RUN` line (Go).
        framed: bool,
    },
    /// Part of a running case's output, framing removed; live streaming only.
    CaseOutput {
        pkg: usize,
        name: String,
        text: String,
    },
    CaseFinished {
        pkg: usize,
        result: CaseResult,
        at: SystemTime,
    },
    /// Ctrl-C or SIGTERM: running cases are being stopped, no new one starts.
    Interrupted {
        /// Wasm runs without time checks (`--timeout 0`): a case stops at
        /// its next host call, not inside a loop.
        at_host_calls: bool,
    },
    /// The cases that will be reported, in order (with `--count`, each
    /// round in turn), out of `listed` the modules have.
    Planned {
        pkg: usize,
        cases: Vec<String>,
        listed: usize,
    },
    /// `--list`: the matching case names.
    Listed { pkg: usize, names: Vec<String> },
    /// Every job of the package is done.
    PackageFinished {
        pkg: usize,
        elapsed: Duration,
        outcome: PackageOutcome,
        at: SystemTime,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackageOutcome {
    Passed,
    /// Passed, every case from the cache.
    Cached,
    Failed,
    /// No module in the package.
    NoTestFiles,
    /// Modules, but no case selected.
    NoTestsToRun,
    /// None of its cases started, for this reason (`--failfast` stopped at
    /// an earlier failure; interrupted).
    NotRun(&'static str),
}
