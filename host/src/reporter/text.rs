//! `go test`'s text output, byte for byte: `ok  \tPKG\t0.012s`,
//! `--- FAIL: NAME (0.01s)` blocks, `?   \tPKG\t[no test files]`, a final
//! `FAIL`; with `-v`, `=== RUN` and `--- PASS` for every case.

use std::time::{Duration, SystemTime};

use super::{secs, Format};
use crate::event::{CaseResult, PackageOutcome, Verdict};

pub struct TextFormat {
    pub verbose: bool,
    /// The case whose output was printed last, while streaming: another
    /// case's output is introduced with `=== CONT`, as go test does.
    last: Option<String>,
}

impl TextFormat {
    pub fn new(verbose: bool) -> Self {
        TextFormat {
            verbose,
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

/// `*** Test killed: ran too long (10m0s).` and the sandbox's reasons.
fn stop_lines(r: &CaseResult, by: &str) -> String {
    let mut s = String::new();
    if let Some(limit) = r.timed_out {
        s.push_str(&format!(
            "*** Test killed: ran too long ({}).\n",
            cachet_runtime::duration_string(limit)
        ));
    }
    if let Some(reason) = &r.reason {
        s.push_str(&format!("{by}cachet: {reason}\n"));
    }
    s
}

impl Format for TextFormat {
    fn case_started(&mut self, _pkg: &str, name: &str) -> String {
        self.last = Some(name.to_string());
        format!("=== RUN   {name}\n")
    }

    fn case_output(&mut self, _pkg: &str, name: &str, text: &str) -> String {
        self.switch_to(name) + text
    }

    fn case(&mut self, _pkg: &str, r: &CaseResult, _at: SystemTime) -> String {
        let word = match r.verdict {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "SKIP",
        };
        if self.verbose && self.last.is_some() {
            // Streamed: `=== RUN` and the shown output are out already.
            let mut s = self.switch_to(&r.name);
            s.push_str(&indent(&r.output[r.shown..], ""));
            s.push_str(&stop_lines(r, "    "));
            s.push_str(&format!(
                "--- {word}: {} ({})\n",
                r.name,
                secs(r.elapsed, 2)
            ));
            s
        } else if self.verbose {
            let mut s = format!("=== RUN   {}\n", r.name);
            s.push_str(&indent(&r.output, ""));
            s.push_str(&stop_lines(r, "    "));
            s.push_str(&format!(
                "--- {word}: {} ({})\n",
                r.name,
                secs(r.elapsed, 2)
            ));
            s
        } else if r.verdict == Verdict::Fail {
            let mut s = format!("--- FAIL: {} ({})\n", r.name, secs(r.elapsed, 2));
            s.push_str(&indent(&r.output, "    "));
            s.push_str(&stop_lines(r, "    "));
            s
        } else {
            String::new()
        }
    }

    fn listed(&mut self, _pkg: &str, names: &[String]) -> String {
        names.iter().map(|n| format!("{n}\n")).collect()
    }

    fn package_error(&mut self, pkg: &str, _message: &str) -> String {
        format!("FAIL\t{pkg} [setup failed]\n")
    }

    fn package_finished(
        &mut self,
        pkg: &str,
        elapsed: Duration,
        outcome: PackageOutcome,
        _at: SystemTime,
    ) -> String {
        match outcome {
            PackageOutcome::Passed if self.verbose => {
                format!("PASS\nok  \t{pkg}\t{}\n", secs(elapsed, 3))
            }
            PackageOutcome::Passed => format!("ok  \t{pkg}\t{}\n", secs(elapsed, 3)),
            PackageOutcome::Failed => format!("FAIL\nFAIL\t{pkg}\t{}\n", secs(elapsed, 3)),
            PackageOutcome::NoTestFiles => format!("?   \t{pkg}\t[no test files]\n"),
            PackageOutcome::NoTestsToRun => {
                format!("ok  \t{pkg}\t{} [no tests to run]\n", secs(elapsed, 3))
            }
            PackageOutcome::NotRun => {
                format!("FAIL\t{pkg}\t[not run: --failfast stopped at an earlier failure]\n")
            }
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
