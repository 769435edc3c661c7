//! Go's `testing` harness as a wasip1 binary shows it: the flags cachet
//! passes, the case names `-test.list` prints, and what one case's output
//! says (verdict, body). Go formats its own `--- FAIL` lines, so a case's
//! body is its output as Go printed it, minus the final `PASS`/`FAIL` line
//! that `go test` replaces with its package line.

use crate::event::Verdict;
use crate::framework::OutputMode;

/// Where a Go case writes its test log (`-test.testlogfile`), in scratch.
pub const TESTLOG: &str = ".cachet-go-testlog";

/// Case names from `-test.list .`: tests, examples and fuzz targets (whose
/// seed corpus runs as a test); benchmarks do not run under `go test`.
pub fn parse_list(output: &str) -> Vec<String> {
    output
        .lines()
        .filter(|l| {
            ["Test", "Example", "Fuzz"].iter().any(|p| l.starts_with(p))
                && l.chars().all(|c| c.is_alphanumeric() || c == '_')
        })
        .map(str::to_string)
        .collect()
}

/// The flags that make the binary run exactly `cases` as `go test` would,
/// in `mode`. `-test.paniconexit0`: a test calling `os.Exit(0)` fails
/// instead of passing and ending the run early (as `go test` passes it).
pub fn run_args(cases: &[String], mode: OutputMode, flags: &[String]) -> Vec<String> {
    let mut a = vec![
        "-test.paniconexit0".to_string(),
        format!("-test.run=^({})$", cases.join("|")),
        format!("-test.testlogfile=/tmp/{TESTLOG}"),
    ];
    a.extend(mode_flag(mode));
    a.extend(flags.iter().cloned());
    a
}

/// The `-test.v` flag of a mode: it changes what the binary prints, so it is
/// part of a case's cache key (as in Go's own test cache).
pub fn mode_flag(mode: OutputMode) -> Option<String> {
    match mode {
        OutputMode::Quiet => None,
        OutputMode::Verbose => Some("-test.v=true".into()),
        OutputMode::Json => Some("-test.v=test2json".into()),
    }
}

/// A line without test2json's framing marker (`^V`) and error markers.
fn plain(line: &str) -> &str {
    line.trim_start_matches('\u{16}')
}

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
pub fn verdict(name: &str, exit: Option<i32>, raw: &str) -> (Verdict, Option<String>) {
    let finished = raw
        .lines()
        .rev()
        .map(plain)
        .find(|l| !l.trim().is_empty())
        .is_some_and(|l| l == "PASS");
    match exit {
        Some(0) if finished => match result_of(raw, name) {
            Some(Verdict::Skip) => (Verdict::Skip, None),
            _ => (Verdict::Pass, None),
        },
        Some(0) => (
            Verdict::Fail,
            Some("exited with status 0 before its tests finished (no final PASS)".into()),
        ),
        _ => (Verdict::Fail, None),
    }
}

/// The body of a case's output: all of it but the final `PASS`/`FAIL`
/// line, which `go test` replaces with its package line.
pub fn body(raw: &str) -> String {
    let trimmed = raw.trim_end_matches('\n');
    match trimmed.rsplit_once('\n') {
        Some((head, last)) if matches!(plain(last), "PASS" | "FAIL") => format!("{head}\n"),
        None if matches!(plain(trimmed), "PASS" | "FAIL") => String::new(),
        _ => raw.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_tests_examples_and_fuzz_targets_not_benchmarks() {
        let out = "TestA\nBenchmarkB\nExampleC\nFuzzD\nTest_e\nsome noise\n";
        assert_eq!(parse_list(out), ["TestA", "ExampleC", "FuzzD", "Test_e"]);
    }

    #[test]
    fn verdicts_and_bodies() {
        let pass = "PASS\n";
        assert_eq!(verdict("TestA", Some(0), pass), (Verdict::Pass, None));
        assert_eq!(body(pass), "");
        let skip = "=== RUN   TestA\n    a_test.go:3: later\n--- SKIP: TestA (0.00s)\nPASS\n";
        assert_eq!(verdict("TestA", Some(0), skip).0, Verdict::Skip);
        assert_eq!(
            body(skip),
            "=== RUN   TestA\n    a_test.go:3: later\n--- SKIP: TestA (0.00s)\n"
        );
        let fail = "--- FAIL: TestA (0.00s)\n    a_test.go:3: boom\nFAIL\n";
        assert_eq!(verdict("TestA", Some(1), fail).0, Verdict::Fail);
        assert_eq!(
            body(fail),
            "--- FAIL: TestA (0.00s)\n    a_test.go:3: boom\n"
        );
        let early_exit = "=== RUN   TestA\n";
        assert!(verdict("TestA", Some(0), early_exit).1.is_some());
        let json = "\u{16}=== RUN   TestA\n\u{16}--- PASS: TestA (0.00s)\n\u{16}PASS\n";
        assert_eq!(verdict("TestA", Some(0), json).0, Verdict::Pass);
        assert_eq!(result_of(json, "TestA"), Some(Verdict::Pass));
    }
}
