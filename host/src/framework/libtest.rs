//! Rust's libtest harness, as `cargo test --target wasm32-wasip1` builds it:
//! `--list --format terse` lists cases, `--exact NAME` runs one, and each
//! case's output is framed by `test NAME ... ` and its verdict word.
//! Panics abort on wasm32-wasip1, so a case run alone is one instance.

use cachet_runtime::RunOutcome;

use super::invocation::{Invocation, Native, NativeSummary};
use super::{args, contains, generic_case_result, stop_reason, CaseOutput, Framework, Harness};
use super::{CaseResult, Verdict};

pub struct Libtest;

/// Why a `#[should_panic]` test of a module built without
/// `-Zpanic-abort-tests` is skipped, and how to get it run.
pub(super) const SHOULD_PANIC_SKIPPED: &str = "a #[should_panic] test: libtest skips these on wasm unless the test binary is built with -Zpanic-abort-tests (cachet builds the cargo packages it runs so; for a prebuilt module, build it with RUSTC_BOOTSTRAP=1 RUSTFLAGS=-Zpanic-abort-tests cargo test --no-run --target wasm32-wasip1)";

impl Harness for Libtest {
    fn name(&self) -> &'static str {
        "libtest"
    }

    /// libtest binaries carry its option names.
    fn detect(&self, module: &[u8]) -> bool {
        contains(module, b"RUST_TEST_THREADS") && contains(module, b"--format")
    }

    fn list_args(&self) -> Option<Vec<String>> {
        Some(args(&["--list", "--format", "terse"]))
    }

    /// `#[ignore]` tests, as nextest lists them.
    fn ignored_list_args(&self) -> Option<Vec<String>> {
        Some(args(&["--list", "--format", "terse", "--ignored"]))
    }

    /// `NAME: test` lines; benchmarks are left out.
    fn parse_list(&self, output: &str) -> Vec<String> {
        output
            .lines()
            .filter_map(|l| l.strip_suffix(": test"))
            .map(str::to_string)
            .collect()
    }

    /// `--nocapture`: a panic aborts the instance on wasm32-wasip1, and a
    /// captured panic message would die with it; `--test-threads=1`: WASI
    /// p1 has no threads.
    fn case_args(&self, cases: &[String]) -> Vec<String> {
        let mut a = args(&["--exact", "--nocapture", "--test-threads=1"]);
        a.extend(cases.iter().cloned());
        a
    }

    fn stream_head(&self, case: &str) -> Option<String> {
        Some(format!("test {case} ... "))
    }

    fn case_output(&self, case: &str, raw: &str) -> CaseOutput {
        let skipped = raw.contains("test result: ok. 0 passed; 0 failed; 1 ignored");
        let head = format!("test {case} ... ");
        let mut body = match raw.find(&head) {
            Some(i) => &raw[i + head.len()..],
            None => raw
                .trim_start_matches('\n')
                .strip_prefix("running 1 test\n")
                .unwrap_or(raw),
        };
        if let Some(i) = body.rfind("\ntest result: ") {
            body = &body[..i];
        }
        let body = body.trim_end_matches('\n');
        let body = ["ok", "FAILED"]
            .iter()
            .find_map(|v| body.strip_suffix(v))
            .unwrap_or(body);
        let body = if skipped {
            ""
        } else {
            body.trim_end_matches('\n')
        };
        CaseOutput {
            body: body.to_string(),
            skipped,
        }
    }

    /// `#[ignore]` tests are never run, so a case libtest skips is a
    /// `#[should_panic]` test, which libtest skips on wasm in this mode.
    fn case_result(&self, name: &str, outcome: &RunOutcome, raw: &str) -> CaseResult {
        let mut r = generic_case_result(
            Framework::Libtest,
            self.case_output(name, raw),
            name,
            outcome,
            raw,
        );
        if r.verdict == Verdict::Skip {
            r.reason = Some(SHOULD_PANIC_SKIPPED.to_string());
        }
        r
    }

    /// A case that started but has no verdict failed (the instance trapped
    /// in it); cases after it never ran.
    fn module_results(&self, cases: &[String], outcome: &RunOutcome, raw: &str) -> Vec<CaseResult> {
        let trapped = !outcome.status.passed();
        let split = split_module_output(raw, trapped);
        let (timed_out, reason) = stop_reason(&outcome.status, raw);
        let n = split.len();
        let mut results: Vec<CaseResult> = split
            .into_iter()
            .enumerate()
            .map(|(i, (name, verdict, output))| {
                let last = i + 1 == n && trapped;
                // One instance ran them all; per-case times are not known.
                let elapsed = if n == 1 {
                    outcome.elapsed
                } else {
                    std::time::Duration::ZERO
                };
                CaseResult {
                    timed_out: if last { timed_out } else { None },
                    reason: if last { reason.clone() } else { None },
                    ..CaseResult::new(&name, Framework::Libtest, verdict, elapsed, output)
                }
            })
            .collect();
        if trapped && results.is_empty() {
            let name = cases.first().cloned().unwrap_or_default();
            let out = CaseOutput {
                body: raw.to_string(),
                skipped: false,
            };
            results.push(generic_case_result(
                Framework::Libtest,
                out,
                &name,
                outcome,
                raw,
            ));
        }
        results
    }

    /// What cargo's runner passes by default, and the arguments that only
    /// choose cases (`NAME`, `--exact`) or shape the output (`-q`).
    fn invocation(&self, args: &[String]) -> Option<Invocation> {
        let mut inv = Invocation::default();
        let mut filters = Vec::new();
        let mut exact = false;
        let mut iter = args.iter();
        while let Some(a) = iter.next() {
            match a.as_str() {
                "--exact" => exact = true,
                "-q" | "--quiet" => inv.quiet = true,
                "--test-threads" => {
                    iter.next()?.parse::<usize>().ok()?;
                }
                a if a.starts_with("--test-threads=") => {}
                a if a.starts_with('-') => return None,
                a => filters.push(regex::escape(a)),
            }
        }
        if !filters.is_empty() {
            let alternatives = filters.join("|");
            let pattern = if exact {
                format!("^(?:{alternatives})$")
            } else {
                alternatives
            };
            inv.run = Some(regex::Regex::new(&pattern).ok()?);
        }
        Some(inv)
    }

    fn native(&self) -> Option<&'static dyn Native> {
        Some(&LibtestNative)
    }
}

/// Splits the output of several cases run in one instance into each case's
/// verdict and output.
fn split_module_output(raw: &str, trapped: bool) -> Vec<(String, Verdict, String)> {
    let mut out: Vec<(String, Option<Verdict>, String)> = Vec::new();
    for line in raw.split_inclusive('\n') {
        if let Some(rest) = line.strip_prefix("test ") {
            if let Some((name, tail)) = rest.split_once(" ... ") {
                out.push((name.to_string(), None, String::new()));
                verdict_line(&mut out, tail);
                continue;
            }
        }
        if line.starts_with("test result: ")
            || line == "running 1 test\n"
            || line.starts_with("running ") && line.ends_with(" tests\n")
        {
            continue;
        }
        verdict_line(&mut out, line);
    }
    let n = out.len();
    out.into_iter()
        .enumerate()
        .map(|(i, (name, v, body))| {
            let v = v.unwrap_or(if trapped && i + 1 == n {
                Verdict::Fail
            } else {
                Verdict::Pass
            });
            (name, v, body.trim_end_matches('\n').to_string())
        })
        .collect()
}

fn verdict_line(out: &mut [(String, Option<Verdict>, String)], text: &str) {
    let Some(last) = out.last_mut() else { return };
    if last.1.is_some() {
        return;
    }
    let t = text.trim_end_matches('\n');
    let verdict = if t.ends_with("ok") && (t == "ok" || !t.ends_with(" ok")) {
        Some((Verdict::Pass, t.len() - 2))
    } else if t.ends_with("FAILED") {
        Some((Verdict::Fail, t.len() - 6))
    } else if t == "ignored" || t.starts_with("ignored, ") {
        Some((Verdict::Skip, 0))
    } else {
        None
    };
    match verdict {
        Some((v, body_end)) if text.ends_with('\n') => {
            last.2.push_str(&t[..body_end]);
            last.1 = Some(v);
        }
        _ => last.2.push_str(text),
    }
}

/// libtest's own report: `running N tests`, a line (or a mark with `-q`)
/// per case, the failures' output, `test result: ...`; exit 101 on failure.
pub(super) struct LibtestNative;

impl Native for LibtestNative {
    fn banner(&self, planned: usize) -> String {
        let s = if planned == 1 { "" } else { "s" };
        format!("\nrunning {planned} test{s}\n")
    }

    fn case(
        &self,
        r: &CaseResult,
        _notes: &str,
        inv: &Invocation,
        done: usize,
        total: usize,
    ) -> String {
        let slot = r.verdict.slot();
        if inv.quiet {
            let mark = [".", "F", "i"][slot];
            if done.is_multiple_of(88) && done < total {
                format!("{mark} {done}/{total}\n")
            } else {
                mark.to_string()
            }
        } else {
            let word = ["ok", "FAILED", "ignored"][slot];
            format!("test {} ... {word}\n", r.name)
        }
    }

    fn finish(&self, s: &NativeSummary) -> String {
        let mut t = String::new();
        if s.no_tests {
            t.push_str("\nrunning 0 tests\n");
        }
        if s.inv.quiet && s.planned > 0 {
            t.push('\n');
        }
        if s.failed_run {
            t.push_str("\nfailures:\n");
            let stdouts: String = s
                .failures
                .iter()
                .filter(|(_, body)| !body.is_empty())
                .map(|(name, body)| format!("---- {name} stdout ----\n{body}\n"))
                .collect();
            if !stdouts.is_empty() {
                t.push('\n');
                t.push_str(&stdouts);
            }
            t.push_str("\nfailures:\n");
            let mut names: Vec<&str> = s.failures.iter().map(|(n, _)| n.as_str()).collect();
            names.sort();
            for n in names {
                t.push_str(&format!("    {n}\n"));
            }
        }
        let [passed, failed, ignored] = s.counts;
        t.push_str(&format!(
            "\ntest result: {}. {passed} passed; {failed} failed; {ignored} ignored; 0 measured; {} filtered out; finished in {:.2}s\n\n",
            if s.failed_run { "FAILED" } else { "ok" },
            s.listed.saturating_sub(s.planned),
            s.elapsed.as_secs_f64(),
        ));
        t
    }

    fn failure_status(&self) -> u8 {
        101
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(a: &[&str]) -> Vec<String> {
        args(a)
    }

    #[test]
    fn case_output_is_unframed() {
        let pass = "\nrunning 1 test\ntest a::b ... hello\nok\n\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 3 filtered out; finished in 0.00s\n\n";
        assert_eq!(
            Libtest.case_output("a::b", pass),
            CaseOutput {
                body: "hello".into(),
                skipped: false
            }
        );
        let panic =
            "\nrunning 1 test\ntest a::c ... thread 'main' panicked at src/lib.rs:3:5:\nboom\n";
        assert_eq!(
            Libtest.case_output("a::c", panic).body,
            "thread 'main' panicked at src/lib.rs:3:5:\nboom"
        );
        let ignored = "\nrunning 1 test\ntest a::d ... ignored\n\ntest result: ok. 0 passed; 0 failed; 1 ignored; 0 measured; 3 filtered out; finished in 0.00s\n\n";
        assert!(Libtest.case_output("a::d", ignored).skipped);
    }

    #[test]
    fn list_output() {
        let out = "a::one: test\na::two: test\nb::bench: bench\n";
        assert_eq!(Libtest.parse_list(out), ["a::one", "a::two"]);
    }

    #[test]
    fn module_output_is_split_per_case() {
        let raw = "\nrunning 3 tests\ntest a ... ok\ntest b ... printed\nok\ntest c ... thread 'main' panicked at x:\nboom\n";
        assert_eq!(
            split_module_output(raw, true),
            [
                ("a".to_string(), Verdict::Pass, String::new()),
                ("b".to_string(), Verdict::Pass, "printed".to_string()),
                (
                    "c".to_string(),
                    Verdict::Fail,
                    "thread 'main' panicked at x:\nboom".to_string()
                ),
            ]
        );
    }

    #[test]
    fn cargo_test_invocations() {
        let none = Libtest.invocation(&[]).unwrap();
        assert!(none.run.is_none() && !none.quiet);
        let filtered = Libtest
            .invocation(&strings(&["a::b", "c.d", "-q"]))
            .unwrap();
        let re = filtered.run.unwrap();
        assert!(re.is_match("x::a::b::y") && re.is_match("c.d") && !re.is_match("cxd"));
        assert!(filtered.quiet);
        let exact = Libtest.invocation(&strings(&["--exact", "a"])).unwrap();
        assert!(exact.run.as_ref().unwrap().is_match("a") && !exact.run.unwrap().is_match("ab"));
        for uncached in ["--nocapture", "--ignored", "--include-ignored", "--list"] {
            assert!(
                Libtest.invocation(&strings(&[uncached])).is_none(),
                "{uncached}"
            );
        }
    }
}
