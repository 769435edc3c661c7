//! What the scheduler tells the reporter. Plain data; the reporter never
//! calls back into the scheduler.

use std::time::{Duration, SystemTime};

/// How one case ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    Skip,
}

#[derive(Clone, Debug)]
pub struct CaseResult {
    pub name: String,
    pub verdict: Verdict,
    pub elapsed: Duration,
    /// The case's own output (harness framing removed).
    pub output: String,
    /// Streamed live: what of `output` was not shown yet (`None`: all of it).
    pub live_rest: Option<String>,
    /// The sha256 of the case's whole output (framing removed), when it ran.
    pub output_digest: Option<cachet_runtime::Sha256Digest>,
    /// The output carries the harness's own result lines (Go's `--- FAIL:
    /// Name (0.01s)`): it is shown as it is, not framed by the reporter.
    pub framed: bool,
    /// Run in one instance with other cases whose output (shown with the
    /// first of them) covers this one: nothing of its own to show.
    pub in_module_output: bool,
    /// The result came from the cache.
    pub cached: bool,
    /// `--explain`: why the case ran instead of hitting the cache.
    pub explain: Option<String>,
    /// Why a passing result was not saved (an input changed during the run).
    pub not_saved: Option<String>,
    /// Why the sandbox stopped it, when it was not the test's own failure:
    /// `Some(limit)` for a timeout, which Go reports in its own words.
    pub timed_out: Option<Duration>,
    /// Any other stop by the sandbox (trap, memory limit, output limit), one line.
    pub reason: Option<String>,
    /// Passed only after failing (`--retries`).
    pub flaky: Option<Flaky>,
}

/// A case that failed and then passed on a retry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flaky {
    /// Attempts that failed, out of `attempts`.
    pub failed: u32,
    pub attempts: u32,
    /// The first failing attempt's output (and the sandbox's reason).
    pub first_failure: String,
}

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
