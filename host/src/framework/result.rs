//! What a harness judges a case: its verdict, its output, and why the
//! sandbox stopped it. The scheduler sends these to the reporters as events.

use std::time::Duration;

use super::Framework;

/// How one case ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    Skip,
}

impl Verdict {
    /// Its index in `[pass, fail, skip]` counters.
    pub fn slot(self) -> usize {
        match self {
            Verdict::Pass => 0,
            Verdict::Fail => 1,
            Verdict::Skip => 2,
        }
    }
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
    /// The harness that ran it: one that prints its own result lines (Go's
    /// `--- FAIL: Name (0.01s)`) renders its output for each mode itself.
    pub framework: Framework,
    /// Run in one instance with other cases whose output (shown with the
    /// first of them) covers this one: nothing of its own to show.
    pub in_module_output: bool,
    /// The result came from the cache.
    pub cached: bool,
    /// Skipped without running: its harness listed it as ignored. Like a
    /// cached result, it leaves a package `(cached)`.
    pub ignored: bool,
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

impl CaseResult {
    /// A result with nothing but the essentials set.
    pub fn new(
        name: &str,
        framework: Framework,
        verdict: Verdict,
        elapsed: Duration,
        output: String,
    ) -> Self {
        CaseResult {
            name: name.to_string(),
            verdict,
            elapsed,
            output,
            live_rest: None,
            output_digest: None,
            framework,
            in_module_output: false,
            cached: false,
            ignored: false,
            explain: None,
            not_saved: None,
            flaky: None,
            timed_out: None,
            reason: None,
        }
    }

    /// A case that could not start: its setup failed with `error`.
    pub fn failed_setup(name: &str, framework: Framework, error: &str) -> Self {
        CaseResult {
            reason: Some(format!("cannot set up the run: {error}")),
            ..CaseResult::new(
                name,
                framework,
                Verdict::Fail,
                Duration::ZERO,
                String::new(),
            )
        }
    }

    /// Whether its output carries the harness's own result lines.
    pub fn framed(&self) -> bool {
        self.framework.harness().frames_itself()
    }
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
