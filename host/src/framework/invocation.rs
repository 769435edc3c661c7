//! Direct test invocations (`cachet exec`): the arguments `go test -exec`
//! or cargo's runner pass to a test binary, when they ask only for what
//! cachet can serve per case (which cases, how to show them), and how the
//! binary would have printed such a run ([`Native`]). Each harness parses
//! its own arguments and prints its own format; `reporter/native.rs`
//! orders the cases and counts.

use std::time::Duration;

use regex::Regex;

use super::CaseResult;
use super::OutputMode;

/// A plain test invocation: the cases it selects, and the flags that only
/// shape the output or the run's limits.
#[derive(Clone, Debug)]
pub struct Invocation {
    pub run: Option<Regex>,
    pub mode: OutputMode,
    pub short: bool,
    pub parallel: Option<usize>,
    pub failfast: bool,
    /// Go's `-test.timeout`, applied to each case.
    pub timeout: Option<Duration>,
    /// libtest's `--quiet`.
    pub quiet: bool,
}

impl Default for Invocation {
    fn default() -> Self {
        Invocation {
            run: None,
            mode: OutputMode::Quiet,
            short: false,
            parallel: None,
            failfast: false,
            timeout: None,
            quiet: false,
        }
    }
}

/// What a run's closing lines need to know.
pub struct NativeSummary<'a> {
    pub inv: &'a Invocation,
    /// `[passed, failed, skipped]`.
    pub counts: [usize; 3],
    /// Failed cases with what the binary would have printed of them.
    pub failures: &'a [(String, String)],
    pub planned: usize,
    pub listed: usize,
    pub no_tests: bool,
    /// Something failed (a case, or the setup).
    pub failed_run: bool,
    pub elapsed: Duration,
}

/// How a test binary prints a run of its own.
pub trait Native: Sync {
    /// Printed once the cases are known.
    fn banner(&self, _planned: usize) -> String {
        String::new()
    }
    /// One finished case (`notes`: cachet's reasons, to show after its
    /// output), the `done`-th of `total`.
    fn case(
        &self,
        r: &CaseResult,
        notes: &str,
        inv: &Invocation,
        done: usize,
        total: usize,
    ) -> String;
    /// The closing lines.
    fn finish(&self, summary: &NativeSummary) -> String;
    /// The exit status when a case failed.
    fn failure_status(&self) -> u8 {
        crate::exit::TESTS_FAILED
    }
}
