//! `go test`'s text output, byte for byte: `ok  \tPKG\t0.012s`,
//! `ok  \tPKG\t(cached)`, `--- FAIL: NAME (0.01s)` blocks,
//! `?   \tPKG\t[no test files]`, a final `FAIL`; with `-v`, `=== RUN` and
//! `--- PASS` for every case (cached ones replay their output, as in Go).

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use super::{secs, Format};
use crate::event::PackageOutcome;
use crate::framework::OutputMode;
use crate::framework::{CaseResult, Verdict};

pub struct TextFormat {
    pub verbose: bool,
    /// Cases whose `=== RUN` and output were streamed live.
    streamed: HashSet<String>,
    /// The case whose output was printed last, while streaming: another
    /// case's output is introduced with `=== CONT`, as go test does.
    last: Option<String>,
}

impl TextFormat {
    pub fn new(verbose: bool) -> Self {
        TextFormat {
            verbose,
            streamed: HashSet::new(),
            last: None,
        }
    }

    fn switch_to(&mut self, name: &str) -> String {
        let s = match &self.last {
            Some(last) if last != name => format!("=== CONT  {name}\n"),
            _ => String::new(),
        };
        self.last = Some(name.to_string());
        s
    }

    /// A case whose harness printed its own result lines (Go): its output
    /// as it is, with cachet's reasons after it, and a `--- FAIL` line of
    /// cachet's only where the harness never printed one (a case the
    /// sandbox stopped).
    fn framed_lines(&mut self, r: &CaseResult) -> String {
        if r.in_module_output {
            // Its lines are in another case's output; only cachet's notes.
            return stop_lines(r, "    ");
        }
        let harness = r.framework.harness();
        let own_line = crate::framework::test2json::reports(&r.output, &r.name);
        let missing = if !own_line && r.verdict == Verdict::Fail {
            format!("--- FAIL: {} ({})\n", r.name, secs(r.elapsed, 2))
        } else {
            String::new()
        };
        let failed = r.verdict == Verdict::Fail;
        if self.verbose {
            let shown = if self.streamed.remove(&r.name) {
                let rest = match &r.live_rest {
                    Some(rest) => rest.clone(),
                    None => harness.render(&r.output, OutputMode::Verbose, failed),
                };
                self.switch_to(&r.name) + &rest
            } else {
                harness.render(&r.output, OutputMode::Verbose, failed)
            };
            shown + &stop_lines(r, "    ") + &missing
        } else if failed {
            missing + &harness.render(&r.output, OutputMode::Quiet, true) + &stop_lines(r, "    ")
        } else {
            r.not_saved
                .as_ref()
                .map(|n| format!("cachet: {}: {n}\n", r.name))
                .unwrap_or_default()
        }
    }

    fn case_lines(&mut self, r: &CaseResult) -> String {
        if r.framed() {
            return self.framed_lines(r);
        }
        let word = match r.verdict {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "SKIP",
        };
        let result_line = format!("--- {word}: {} ({})\n", r.name, secs(r.elapsed, 2));
        if self.verbose {
            let mut s = if self.streamed.remove(&r.name) {
                // `=== RUN` and the output shown so far are out already.
                let rest = r.live_rest.as_deref().unwrap_or(&r.output);
                self.switch_to(&r.name) + &indent(rest, "")
            } else {
                format!("=== RUN   {}\n", r.name) + &indent(&r.output, "")
            };
            s.push_str(&stop_lines(r, "    "));
            s.push_str(&result_line);
            s
        } else if r.verdict == Verdict::Fail {
            result_line + &indent(&r.output, "    ") + &stop_lines(r, "    ")
        } else {
            // A passing case prints nothing, but for a result not cached.
            r.not_saved
                .as_ref()
                .map(|n| format!("cachet: {}: {n}\n", r.name))
                .unwrap_or_default()
        }
    }
}

fn indent(text: &str, by: &str) -> String {
    text.lines()
        .map(|l| {
            if l.is_empty() {
                "\n".to_string()
            } else {
                format!("{by}{l}\n")
            }
        })
        .collect()
}

/// `--- FLAKY: name (failed 1 of 2 attempts)` and the first failure's
/// output, for a case that passed only on a retry.
pub(super) fn flaky_lines(r: &CaseResult) -> String {
    let Some(f) = &r.flaky else {
        return String::new();
    };
    format!(
        "--- FLAKY: {} (failed {} of {} attempts; the first failure:)\n{}",
        r.name,
        f.failed,
        f.attempts,
        indent(&f.first_failure, "    ")
    )
}

/// `*** Test killed: ran too long (10m0s).`, the sandbox's reasons, and
/// why a passing result was not cached.
pub(super) fn stop_lines(r: &CaseResult, by: &str) -> String {
    let mut s = String::new();
    if let Some(limit) = r.timed_out {
        s.push_str(&format!(
            "*** Test killed: ran too long ({}).\n",
            cachet_runtime::duration_string(limit)
        ));
    }
    for note in r.reason.iter().chain(&r.not_saved) {
        // Later lines of a note (a trap's frames) stay under its first.
        let note = note.replace('\n', &format!("\n{by}"));
        s.push_str(&format!("{by}cachet: {note}\n"));
    }
    s
}

impl Format for TextFormat {
    fn case_started(&mut self, _pkg: &str, name: &str, framed: bool) -> String {
        self.streamed.insert(name.to_string());
        self.last = Some(name.to_string());
        // A harness that frames its own output prints its own `=== RUN`.
        if framed {
            String::new()
        } else {
            format!("=== RUN   {name}\n")
        }
    }

    fn case_output(&mut self, _pkg: &str, name: &str, text: &str) -> String {
        self.switch_to(name) + text
    }

    fn case(&mut self, pkg: &str, r: &CaseResult, _at: SystemTime) -> String {
        let explain = r
            .explain
            .as_ref()
            .map(|why| format!("cachet: explain: {pkg}: {} ran: {why}\n", r.name));
        explain.unwrap_or_default() + &self.case_lines(r) + &flaky_lines(r)
    }

    fn listed(&mut self, _pkg: &str, names: &[String]) -> String {
        names.iter().map(|n| format!("{n}\n")).collect()
    }

    fn package_error(&mut self, pkg: &str, _message: &str, build: bool) -> String {
        let what = if build { "build" } else { "setup" };
        format!("FAIL\t{pkg} [{what} failed]\n")
    }

    fn package_finished(
        &mut self,
        pkg: &str,
        elapsed: Duration,
        outcome: PackageOutcome,
        _at: SystemTime,
    ) -> String {
        let pass = if self.verbose { "PASS\n" } else { "" };
        match outcome {
            PackageOutcome::Passed => format!("{pass}ok  \t{pkg}\t{}\n", secs(elapsed, 3)),
            PackageOutcome::Cached => format!("{pass}ok  \t{pkg}\t(cached)\n"),
            PackageOutcome::Failed => format!("FAIL\nFAIL\t{pkg}\t{}\n", secs(elapsed, 3)),
            PackageOutcome::NoTestFiles => format!("?   \t{pkg}\t[no test files]\n"),
            PackageOutcome::NoTestsToRun => {
                format!("ok  \t{pkg}\t{} [no tests to run]\n", secs(elapsed, 3))
            }
            PackageOutcome::NotRun(why) => format!("FAIL\t{pkg}\t[not run: {why}]\n"),
        }
    }

    fn summary(&mut self, failed: bool) -> String {
        if failed {
            "FAIL\n".to_string()
        } else {
            String::new()
        }
    }
}
