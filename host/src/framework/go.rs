//! Go's `testing` harness as a wasip1 binary shows it (`GOOS=wasip1
//! GOARCH=wasm go test -c`). Every case runs in one canonical mode,
//! `-test.v=test2json`, the one that carries the most structure (framing
//! lines marked, error output marked, output attributed to tests): one
//! stored result then renders as `go test`, `go test -v` or `go test -json`
//! would print it (`go_output.rs`), and switching modes reruns nothing.
//! Go formats its own `--- FAIL` lines, so a case's body is its output as
//! Go printed it, minus the final `PASS`/`FAIL` line that `go test`
//! replaces with its package line.

use std::time::Duration;

use cachet_runtime::{Policy, RunOutcome, Status, World};

use super::go_output::{self, plain};
use super::invocation::{Invocation, Native, NativeSummary};
use super::{
    args, contains, stop_reason, CaseOutput, Framework, Harness, OutputMode, Render, RunFlags,
};
use super::{CaseResult, Verdict};

pub struct Go;

/// Where a Go case writes its test log (`-test.testlogfile`), in scratch.
pub const TESTLOG: &str = ".cachet-go-testlog";

/// A Go module whose instance costs this much before its first case (its
/// package init, measured by its listing run) runs its cases in one
/// instance by default: one per case would multiply that. Measured (issue
/// 9, docs/BENCHMARKS.md): the standard library's `strings` tests take
/// 116 ms per instance (128 cases: 15 s of init, against 0.25 s in one
/// instance), a small user package 2.5 ms.
pub const GO_INIT_PER_CASE: Duration = Duration::from_millis(20);

impl Harness for Go {
    fn name(&self) -> &'static str {
        "go"
    }

    /// Go test binaries carry the `testing` package's flags and runner.
    fn detect(&self, module: &[u8]) -> bool {
        contains(module, b"test.paniconexit0") && contains(module, b"testing.tRunner")
    }

    fn list_args(&self) -> Option<Vec<String>> {
        Some(args(&["-test.list", "."]))
    }

    /// Tests, examples and fuzz targets (whose seed corpus runs as a test);
    /// benchmarks do not run under `go test`.
    fn parse_list(&self, output: &str) -> Vec<String> {
        output
            .lines()
            .filter(|l| {
                ["Test", "Example", "Fuzz"].iter().any(|p| l.starts_with(p))
                    && l.chars().all(|c| c.is_alphanumeric() || c == '_')
            })
            .map(str::to_string)
            .collect()
    }

    fn flag_args(&self, flags: &RunFlags) -> Vec<String> {
        let mut a = vec![CANONICAL_MODE.to_string()];
        if flags.short {
            a.push("-test.short".into());
        }
        if let Some(n) = flags.parallel {
            a.push(format!("-test.parallel={n}"));
        }
        a
    }

    /// `-test.paniconexit0`: a test calling `os.Exit(0)` fails instead of
    /// passing and ending the run early (as `go test` passes it).
    fn case_args(&self, cases: &[String]) -> Vec<String> {
        vec![
            "-test.paniconexit0".to_string(),
            format!("-test.run=^({})$", cases.join("|")),
            format!("-test.testlogfile=/tmp/{TESTLOG}"),
        ]
    }

    fn prepare(&self, policy: &mut Policy) {
        policy.collect_scratch_file(TESTLOG);
    }

    fn refine(&self, outcome: &mut RunOutcome, world: &World) {
        super::testlog::refine(&mut outcome.log, outcome.collected.as_deref(), world);
    }

    fn shared_instance(&self, selected: usize, init: Duration) -> Option<String> {
        (selected > 1 && init >= GO_INIT_PER_CASE).then(|| {
            format!(
                "the module's init took {}",
                cachet_runtime::duration_string(init)
            )
        })
    }

    fn frames_itself(&self) -> bool {
        true
    }

    fn case_output(&self, case: &str, raw: &str) -> CaseOutput {
        CaseOutput {
            body: body(raw),
            skipped: result_of(raw, case) == Some(Verdict::Skip),
        }
    }

    fn case_result(&self, name: &str, outcome: &RunOutcome, raw: &str) -> CaseResult {
        let (verdict, harness_reason) = match outcome.status {
            Status::Exited(code) => verdict(name, code, raw),
            _ => (Verdict::Fail, None),
        };
        let (timed_out, mut reason) = stop_reason(&outcome.status, raw);
        if matches!(outcome.status, Status::Exited(1 | 2))
            && (result_of(raw, name).is_some() || raw.contains("\npanic: "))
        {
            // Go's own `--- FAIL` lines (or its panic) say it all.
            reason = None;
        }
        CaseResult {
            timed_out,
            reason: reason.or(harness_reason),
            ..CaseResult::new(name, Framework::Go, verdict, outcome.elapsed, body(raw))
        }
    }

    /// Go printed the run as one output, which is shown whole with the
    /// first case that failed (or the first case); each case's verdict
    /// comes from its result line. Cases with none did not finish when the
    /// instance crashed or was stopped.
    fn module_results(&self, cases: &[String], outcome: &RunOutcome, raw: &str) -> Vec<CaseResult> {
        let ended = matches!(outcome.status, Status::Exited(0 | 1));
        let (timed_out, reason) = stop_reason(&outcome.status, raw);
        let mut results: Vec<CaseResult> = cases
            .iter()
            .map(|name| {
                let own = result_of(raw, name);
                let verdict = match (own, ended) {
                    (Some(v), _) => v,
                    (None, true) => Verdict::Pass,
                    (None, false) => Verdict::Fail,
                };
                let mut r =
                    CaseResult::new(name, Framework::Go, verdict, Duration::ZERO, String::new());
                r.in_module_output = true;
                if own.is_none() && !ended {
                    r.timed_out = timed_out;
                    r.reason = Some(match &reason {
                        Some(why) => format!("did not finish: {why}"),
                        None => "did not finish: the instance stopped in another case".into(),
                    });
                }
                r
            })
            .collect();
        let carrier = results
            .iter()
            .position(|r| r.verdict == Verdict::Fail)
            .unwrap_or(0);
        if let Some(r) = results.get_mut(carrier) {
            r.output = body(raw);
            r.in_module_output = false;
            r.elapsed = outcome.elapsed;
        }
        results
    }

    /// Cases with no result line that were not running when the instance
    /// stopped (a panic, `os.Exit`, a limit); never after Ctrl-C.
    fn not_started(&self, cases: &[String], outcome: &RunOutcome, raw: &str) -> Vec<String> {
        if matches!(outcome.status, Status::Exited(0 | 1) | Status::Interrupted) {
            return Vec::new();
        }
        let running = go_output::in_flight(raw);
        cases
            .iter()
            .filter(|c| result_of(raw, c).is_none() && !running.contains(c))
            .cloned()
            .collect()
    }

    fn render(&self, output: &str, mode: OutputMode, failed: bool) -> String {
        match mode {
            OutputMode::Json => output.to_string(),
            OutputMode::Verbose => go_output::verbose(output),
            OutputMode::Quiet if failed => go_output::quiet(output),
            OutputMode::Quiet => String::new(),
        }
    }

    fn live(&self) -> Box<dyn Render> {
        Box::new(go_output::Verbose::default())
    }

    /// `go test`'s own arguments to the binary, and those that only choose
    /// cases or shape the output.
    fn invocation(&self, args: &[String]) -> Option<Invocation> {
        let mut inv = Invocation::default();
        for a in args {
            let flag = a.strip_prefix("--").or(a.strip_prefix('-'))?;
            let (name, value) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (flag, None),
            };
            let boolean = || match value {
                None | Some("true") => Some(true),
                Some("false") => Some(false),
                _ => None,
            };
            match name {
                "test.paniconexit0" => {
                    boolean()?;
                }
                // `go test`'s own cache reads this file after the run: never
                // written, so `go test` caches nothing and cachet's cache
                // answers instead.
                "test.testlogfile" => {}
                "test.timeout" => {
                    let d = crate::units::parse_duration(value?)?;
                    inv.timeout = (!d.is_zero()).then_some(d);
                }
                "test.v" => {
                    inv.mode = match value {
                        None | Some("true") => OutputMode::Verbose,
                        Some("test2json") => OutputMode::Json,
                        Some("false") => OutputMode::Quiet,
                        _ => return None,
                    }
                }
                "test.short" => inv.short = boolean()?,
                "test.failfast" => inv.failfast = boolean()?,
                "test.parallel" => inv.parallel = Some(value?.parse().ok()?),
                // A pattern with `/` selects subtests, which run inside their case.
                "test.run" if !value?.contains('/') => {
                    inv.run = Some(regex::Regex::new(value?).ok()?);
                }
                _ => return None,
            }
        }
        Some(inv)
    }

    fn native(&self) -> Option<&'static dyn Native> {
        Some(&GoNative)
    }
}

/// The mode every Go case runs in (see the module doc).
const CANONICAL_MODE: &str = "-test.v=test2json";

/// The result line Go printed for `name` at the top level, if it did.
pub fn result_of(raw: &str, name: &str) -> Option<Verdict> {
    raw.lines().map(plain).find_map(|l| {
        let rest = l.strip_prefix("--- ")?;
        let (word, rest) = rest.split_once(": ")?;
        let (n, _) = rest.split_once(" (")?;
        (n == name).then_some(match word {
            "PASS" => Verdict::Pass,
            "SKIP" => Verdict::Skip,
            _ => Verdict::Fail,
        })
    })
}

/// A case's verdict from its exit status and output; the reason when the
/// harness's own account is missing or contradicts the exit.
fn verdict(name: &str, exit: i32, raw: &str) -> (Verdict, Option<String>) {
    let finished = raw
        .lines()
        .rev()
        .map(plain)
        .find(|l| !l.trim().is_empty() && !l.starts_with("=== NAME"))
        .is_some_and(|l| l == "PASS");
    match exit {
        0 if finished => match result_of(raw, name) {
            Some(Verdict::Skip) => (Verdict::Skip, None),
            _ => (Verdict::Pass, None),
        },
        0 => (
            Verdict::Fail,
            Some("exited with status 0 before its tests finished (no final PASS)".into()),
        ),
        _ => (Verdict::Fail, None),
    }
}

/// The body of a case's output: all of it but the final `PASS`/`FAIL`
/// line (and the `=== NAME` line test2json mode prints before it), which
/// `go test` replaces with its package line.
pub fn body(raw: &str) -> String {
    let mut lines: Vec<&str> = raw.split_inclusive('\n').collect();
    let is = |l: &str, words: &[&str]| words.contains(&plain(l.trim_end_matches('\n')).trim_end());
    if lines.last().is_some_and(|l| is(l, &["PASS", "FAIL"])) {
        lines.pop();
        if lines.last().is_some_and(|l| is(l, &["=== NAME"])) {
            lines.pop();
        }
    }
    lines.concat()
}

/// `go test`'s binary output: each case's lines as Go prints them, then
/// `PASS` or `FAIL`; exit 1 on failure.
struct GoNative;

impl Native for GoNative {
    fn case(&self, r: &CaseResult, notes: &str, inv: &Invocation, _: usize, _: usize) -> String {
        if r.in_module_output {
            return String::new();
        }
        Go.render(&r.output, inv.mode, r.verdict == Verdict::Fail) + notes
    }

    fn finish(&self, s: &NativeSummary) -> String {
        let prefix = if s.inv.mode == OutputMode::Json {
            "\u{16}"
        } else {
            ""
        };
        let mut t = String::new();
        if s.no_tests {
            t.push_str("testing: warning: no tests to run\n");
        }
        let word = if s.failed_run { "FAIL" } else { "PASS" };
        t.push_str(&format!("{prefix}{word}\n"));
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_tests_examples_and_fuzz_targets_not_benchmarks() {
        let out = "TestA\nBenchmarkB\nExampleC\nFuzzD\nTest_e\nsome noise\n";
        assert_eq!(Go.parse_list(out), ["TestA", "ExampleC", "FuzzD", "Test_e"]);
    }

    #[test]
    fn verdicts_and_bodies() {
        let pass = "\u{16}=== NAME  \n\u{16}PASS\n";
        assert_eq!(verdict("TestA", 0, pass), (Verdict::Pass, None));
        assert_eq!(body(pass), "");
        let skip = "\u{16}=== RUN   TestA\n    a_test.go:3: later\n\u{16}--- SKIP: TestA (0.00s)\n\u{16}=== NAME  \n\u{16}PASS\n";
        assert_eq!(verdict("TestA", 0, skip).0, Verdict::Skip);
        assert_eq!(
            body(skip),
            "\u{16}=== RUN   TestA\n    a_test.go:3: later\n\u{16}--- SKIP: TestA (0.00s)\n"
        );
        let fail = "--- FAIL: TestA (0.00s)\n    a_test.go:3: boom\nFAIL\n";
        assert_eq!(verdict("TestA", 1, fail).0, Verdict::Fail);
        assert_eq!(
            body(fail),
            "--- FAIL: TestA (0.00s)\n    a_test.go:3: boom\n"
        );
        let early_exit = "\u{16}=== RUN   TestA\n";
        assert!(verdict("TestA", 0, early_exit).1.is_some());
        assert_eq!(result_of(skip, "TestA"), Some(Verdict::Skip));
    }

    #[test]
    fn go_test_invocations() {
        let inv = Go
            .invocation(&args(&[
                "-test.paniconexit0",
                "-test.timeout=10m0s",
                "-test.testlogfile=/tmp/go-build1/b001/testlog.txt",
                "-test.v=test2json",
                "-test.run=^TestA$",
                "-test.short=true",
            ]))
            .unwrap();
        assert_eq!(inv.mode, OutputMode::Json);
        assert_eq!(inv.timeout, Some(Duration::from_secs(600)));
        assert!(inv.short && inv.run.unwrap().is_match("TestA"));
        for uncached in [
            "-test.count=1",
            "-test.bench=.",
            "-test.cpuprofile=x",
            "-test.run=TestA/sub",
            "-test.run=(",
            "positional",
            "-test.v=maybe",
        ] {
            assert!(Go.invocation(&args(&[uncached])).is_none(), "{uncached}");
        }
    }

    #[test]
    fn the_mode_is_not_a_flag_of_the_key_but_short_is() {
        let quiet = Go.flag_args(&RunFlags::default());
        let short = Go.flag_args(&RunFlags {
            short: true,
            parallel: None,
        });
        assert_eq!(quiet, [CANONICAL_MODE]);
        assert_ne!(quiet, short);
    }
}
