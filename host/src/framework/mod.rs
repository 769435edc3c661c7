//! Test frameworks (harnesses): everything cachet knows about one kind of
//! test binary lives in that harness's file, behind [`Harness`]:
//!
//! - `libtest.rs`: Rust's harness (`cargo test --target wasm32-wasip1`);
//! - `libtest_child.rs`: the same harness built with `-Zpanic-abort-tests`,
//!   run in libtest's own child mode, one test per instance (how
//!   `#[should_panic]` tests run on wasm);
//! - `go.rs`: Go's `testing` (`GOOS=wasip1 go test -c`), with its output
//!   rendering (`go_output.rs`), `go test -json` events (`test2json.rs`)
//!   and precise environment reads from its test log (`testlog.rs`);
//! - `plain.rs`: any WASI command, one case, exit 0 passes.
//!
//! A harness says how to detect a module, list its cases, which arguments
//! run one case (and which of them belong in its cache key), how a case's
//! output and outcome become results, how its cases are cut into instances,
//! how its own output is shown in each output mode, and (for `cachet
//! exec`) which direct invocations it recognises and how it prints them.
//! Adding a framework is a new file and one arm in [`Framework::harness`].

mod go;
mod go_output;
pub mod invocation;
mod libtest;
mod libtest_child;
mod plain;
mod result;
mod stream;
pub mod test2json;
mod testlog;

use std::time::Duration;

use cachet_runtime::{Policy, RunOutcome, Status, World};

pub use go::GO_INIT_PER_CASE;
pub use invocation::{Invocation, Native};
pub use result::{CaseResult, Flaky, Verdict};
pub use stream::{CaseStream, StreamEnd};

/// A module's test framework: the name of a [`Harness`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Framework {
    Libtest,
    LibtestChild,
    Go,
    Plain,
}

impl Framework {
    /// Every framework, in the order detection tries them.
    pub const ALL: [Framework; 4] = [
        Framework::LibtestChild,
        Framework::Libtest,
        Framework::Go,
        Framework::Plain,
    ];

    /// The harness that knows this framework.
    pub fn harness(self) -> &'static dyn Harness {
        match self {
            Framework::Libtest => &libtest::Libtest,
            Framework::LibtestChild => &libtest_child::LibtestChild,
            Framework::Go => &go::Go,
            Framework::Plain => &plain::Plain,
        }
    }

    /// Guesses from the module's bytes; `plain` when no harness claims it.
    pub fn detect(module: &[u8]) -> Framework {
        Self::ALL
            .into_iter()
            .find(|f| f.harness().detect(module))
            .unwrap_or(Framework::Plain)
    }

    /// The framework of a module said to be `forced` (by `--framework` or
    /// its package's kind) that detection found to be `detected`: libtest
    /// built for its child mode runs only in that mode.
    pub fn chosen(forced: Option<Framework>, detected: Framework) -> Framework {
        match (forced, detected) {
            (Some(Framework::Libtest), Framework::LibtestChild) | (None, _) => detected,
            (Some(f), _) => f,
        }
    }

    /// The framework of [`Framework::name`].
    pub fn from_name(name: &str) -> Option<Framework> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    pub fn name(self) -> &'static str {
        self.harness().name()
    }

    /// Whether every run of this framework's modules (its listings too)
    /// goes apart, to a run server on Cranelift's code without epoch checks
    /// (`job::run_local`): Go's test binaries, megabytes of tight loops that
    /// the checks slow by up to a third, whose stock runner compiles none
    /// and kills the process at its time limit. libtest's runs stay here: a
    /// trivial case costs microseconds, less than a hand-off to a child.
    pub fn serves_apart(self) -> bool {
        self == Framework::Go
    }
}

/// How the user asked to see output. Every harness runs a case the same
/// way in every mode (cachet renders each mode from one stored result), so
/// switching modes never reruns anything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutputMode {
    #[default]
    Quiet,
    /// `-v`
    Verbose,
    /// `--json`
    Json,
}

/// What a run asks of the harness beyond which cases run: each changes
/// what a case does, so it is part of the case's cache key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunFlags {
    /// `--short`: Go's `-test.short`.
    pub short: bool,
    /// `--parallel N`: Go's `-test.parallel`, for `t.Parallel` subtests.
    pub parallel: Option<usize>,
}

/// What one case's output says beyond its exit status.
#[derive(Debug, PartialEq, Eq)]
pub struct CaseOutput {
    /// The case's own output, with the harness's framing removed.
    pub body: String,
    /// The harness reported the case as ignored.
    pub skipped: bool,
}

/// Turns a harness's own output into what a mode shows, as it arrives.
pub trait Render: Send {
    /// Takes whole lines (the last may lack its newline); returns what to show.
    fn push(&mut self, text: &str) -> String;
    /// What is left to show at the end.
    fn finish(&mut self) -> String {
        String::new()
    }
}

/// Shows text as it is.
pub struct AsIs;

impl Render for AsIs {
    fn push(&mut self, text: &str) -> String {
        text.to_string()
    }
}

/// One kind of test binary. Defaults fit a harness that cannot list cases
/// and prints nothing of its own.
pub trait Harness: Sync {
    fn name(&self) -> &'static str;

    /// Whether the module's bytes are this harness's.
    fn detect(&self, module: &[u8]) -> bool;

    /// Arguments that make the module print its cases, if it can.
    fn list_args(&self) -> Option<Vec<String>> {
        None
    }

    /// Case names from the list output.
    fn parse_list(&self, _output: &str) -> Vec<String> {
        Vec::new()
    }

    /// Arguments that make the module print only the cases it would skip
    /// without running them (libtest's `#[ignore]`), if it can: those are
    /// reported skipped and never run.
    fn ignored_list_args(&self) -> Option<Vec<String>> {
        None
    }

    /// Environment variables that, with [`Harness::case_args`], run exactly
    /// these cases (libtest's child mode names its one test here).
    fn case_env(&self, _cases: &[String]) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Whether an instance can run only one case, whatever `--isolate`
    /// says (libtest's child mode runs one test and exits).
    fn one_case_per_instance(&self) -> bool {
        false
    }

    /// The arguments `flags` add to every run (before the user's): part of
    /// each case's cache key.
    fn flag_args(&self, _flags: &RunFlags) -> Vec<String> {
        Vec::new()
    }

    /// Arguments that run exactly these cases in one instance (the
    /// [`Harness::flag_args`] and the user's follow).
    fn case_args(&self, _cases: &[String]) -> Vec<String> {
        Vec::new()
    }

    /// What a run needs of the sandbox beyond the package's policy.
    fn prepare(&self, _policy: &mut Policy) {}

    /// Makes a run's input log more precise from what the harness said of
    /// it (Go's test log); `world` re-observes.
    fn refine(&self, _outcome: &mut RunOutcome, _world: &World) {}

    /// Why `selected` cases of a module should share one instance by
    /// default, given what one instance costs before its first case
    /// (`init`, measured by the listing run); `None`: one per case.
    fn shared_instance(&self, _selected: usize, _init: Duration) -> Option<String> {
        None
    }

    /// Whether the harness prints its own per-case result lines (Go's
    /// `--- FAIL: Name (0.00s)`), so that its output is rendered by
    /// [`Harness::render`] rather than framed by the reporter.
    fn frames_itself(&self) -> bool {
        false
    }

    /// The text before a case's own output when it runs alone (libtest's
    /// `test NAME ... `), if the harness prints one.
    fn stream_head(&self, _case: &str) -> Option<String> {
        None
    }

    /// One case's output without the harness's framing.
    fn case_output(&self, _case: &str, raw: &str) -> CaseOutput {
        CaseOutput {
            body: raw.to_string(),
            skipped: false,
        }
    }

    /// The result of a case that ran alone.
    fn case_result(&self, name: &str, outcome: &RunOutcome, raw: &str) -> CaseResult {
        let framework = Framework::from_name(self.name()).expect("a known harness");
        generic_case_result(framework, self.case_output(name, raw), name, outcome, raw)
    }

    /// The results of cases that ran in one instance.
    fn module_results(&self, cases: &[String], outcome: &RunOutcome, raw: &str) -> Vec<CaseResult> {
        cases
            .first()
            .map(|c| vec![self.case_result(c, outcome, raw)])
            .unwrap_or_default()
    }

    /// Of `cases`, which ran in one instance, those the instance never
    /// started because it stopped in another case: they run again in a
    /// fresh instance, so a crash in one case never decides another's
    /// verdict.
    fn not_started(&self, _cases: &[String], _outcome: &RunOutcome, _raw: &str) -> Vec<String> {
        Vec::new()
    }

    /// A case's stored output as `mode` shows it (`failed`: the case
    /// failed). Only for harnesses that frame themselves.
    fn render(&self, output: &str, _mode: OutputMode, _failed: bool) -> String {
        output.to_string()
    }

    /// Renders a case's output for `-v` as it streams.
    fn live(&self) -> Box<dyn Render> {
        Box::new(AsIs)
    }

    /// The direct test invocation `args` is (what `go test -exec` or
    /// cargo's runner pass), if it is a plain one cachet can run per case.
    fn invocation(&self, _args: &[String]) -> Option<Invocation> {
        None
    }

    /// How the binary prints a run itself, for `cachet exec`'s per-case runs.
    fn native(&self) -> Option<&'static dyn Native> {
        None
    }
}

/// A case's result from its unframed output and its outcome: exit 0
/// passes (or skips, as the harness said), anything else fails.
pub(crate) fn generic_case_result(
    framework: Framework,
    out: CaseOutput,
    name: &str,
    outcome: &RunOutcome,
    raw: &str,
) -> CaseResult {
    let verdict = match (outcome.status.passed(), out.skipped) {
        (true, true) => Verdict::Skip,
        (true, false) => Verdict::Pass,
        (false, _) => Verdict::Fail,
    };
    let (timed_out, reason) = stop_reason(&outcome.status, raw);
    CaseResult {
        timed_out,
        reason,
        ..CaseResult::new(name, framework, verdict, outcome.elapsed, out.body)
    }
}

/// The sandbox's reason for a stop the test itself did not report: one
/// line, then the innermost wasm frames of a trap.
pub(crate) fn stop_reason(status: &Status, output: &str) -> (Option<Duration>, Option<String>) {
    match status {
        Status::Exited(0) => (None, None),
        Status::Timeout(limit) => (Some(*limit), None),
        // A Rust panic already printed its message; the trap adds nothing.
        Status::Trapped { .. } if output.contains("panicked at") => (None, None),
        other => {
            let mut reason = other.to_string();
            for frame in other.frames() {
                reason.push_str("\n    at ");
                reason.push_str(frame);
            }
            (None, Some(reason))
        }
    }
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_and_names() {
        assert_eq!(
            Framework::detect(b"\0asm...RUST_TEST_THREADS...--format..."),
            Framework::Libtest
        );
        assert_eq!(
            Framework::detect(b"\0asm test.paniconexit0 testing.tRunner"),
            Framework::Go
        );
        assert_eq!(Framework::detect(b"\0asm plain"), Framework::Plain);
        for f in Framework::ALL {
            assert_eq!(Framework::from_name(f.name()), Some(f));
        }
    }
}
