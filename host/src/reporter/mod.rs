//! Reporters: Go's text format (`text.rs`) or test2json events (`json.rs`),
//! printed per package in command-line order; JUnit XML (`junit.rs`); and
//! `cachet exec`'s test binary's own format (`native.rs`). The head package prints as
//! its events arrive (so one package or `-p 1` streams); later packages
//! buffer until every package before them is done.

mod json;
pub mod junit;
pub mod native;
mod progress;
mod text;

use std::io::Write;
use std::time::{Duration, SystemTime};

use crate::event::{Event, PackageOutcome};
use crate::exit;
use crate::framework::{CaseResult, Verdict};

pub use json::JsonFormat;
pub use progress::Progress;
pub use text::TextFormat;

/// Turns events into text; the ordering is the reporter's.
pub trait Format {
    fn package_started(&mut self, _pkg: &str, _at: SystemTime) -> String {
        String::new()
    }
    /// Live streaming only: a case starts, a case wrote output.
    fn case_started(&mut self, _pkg: &str, _name: &str, _framed: bool) -> String {
        String::new()
    }
    fn case_output(&mut self, _pkg: &str, _name: &str, _text: &str) -> String {
        String::new()
    }
    fn case(&mut self, pkg: &str, result: &CaseResult, at: SystemTime) -> String;
    fn listed(&mut self, pkg: &str, names: &[String]) -> String;
    /// A package that could not be set up; `build`: its build failed.
    fn package_error(&mut self, pkg: &str, message: &str, build: bool) -> String;
    fn package_finished(
        &mut self,
        pkg: &str,
        elapsed: Duration,
        outcome: PackageOutcome,
        at: SystemTime,
    ) -> String;
    fn summary(&mut self, failed: bool) -> String;
}

pub struct Reporter {
    format: Box<dyn Format>,
    names: Vec<String>,
    buffers: Vec<String>,
    /// A package's setup error, for stderr when its output is printed.
    errors: Vec<Option<String>>,
    done: Vec<bool>,
    next: usize,
    out: Box<dyn Write>,
    progress: Progress,
    failed: bool,
    setup_error: bool,
    interrupted: bool,
    /// Flaky cases, as `package: case`.
    flaky: Vec<String>,
    fail_flaky: bool,
}

impl Reporter {
    /// With `--fail-flaky`, a flaky case makes the exit status 1.
    pub fn fail_on_flaky(mut self, yes: bool) -> Self {
        self.fail_flaky = yes;
        self
    }

    pub fn new(
        format: Box<dyn Format>,
        names: Vec<String>,
        out: Box<dyn Write>,
        progress: Progress,
    ) -> Self {
        let n = names.len();
        Reporter {
            format,
            names,
            buffers: vec![String::new(); n],
            errors: vec![None; n],
            done: vec![false; n],
            next: 0,
            out,
            progress,
            failed: false,
            setup_error: false,
            interrupted: false,
            flaky: Vec::new(),
            fail_flaky: false,
        }
    }

    pub fn event(&mut self, event: Event) {
        let (pkg, text) = match event {
            Event::Warning { message } => {
                self.progress
                    .suspend(|| eprintln!("cachet: warning: {message}"));
                return;
            }
            Event::Interrupted { at_host_calls } => {
                self.interrupted = true;
                let how = if at_host_calls {
                    " at their next host call (--timeout 0 runs wasm without time checks)"
                } else {
                    ""
                };
                self.progress.suspend(|| {
                    eprintln!("cachet: interrupted: stopping the running cases{how} (press Ctrl-C again to quit at once)")
                });
                return;
            }
            Event::PackageStarted { pkg, at } => {
                (pkg, self.format.package_started(&self.names[pkg], at))
            }
            Event::PackageError {
                pkg,
                message,
                build,
            } => {
                self.setup_error = true;
                // On stderr in package order too, with the package's output
                // (packages are prepared side by side, and fail in any order).
                self.errors[pkg] = Some(format!("cachet: {}: {message}", self.names[pkg]));
                let text = self.format.package_error(&self.names[pkg], &message, build);
                self.done[pkg] = true;
                (pkg, text)
            }
            Event::CaseStarted { pkg, name, framed } => (
                pkg,
                self.format.case_started(&self.names[pkg], &name, framed),
            ),
            Event::CaseOutput { pkg, name, text } => {
                (pkg, self.format.case_output(&self.names[pkg], &name, &text))
            }
            Event::CaseFinished { pkg, result, at } => {
                self.failed |= result.verdict == Verdict::Fail;
                if result.flaky.is_some() {
                    self.flaky
                        .push(format!("{}: {}", self.names[pkg], result.name));
                }
                self.progress.case_done(result.verdict == Verdict::Fail);
                (pkg, self.format.case(&self.names[pkg], &result, at))
            }
            Event::Listed { pkg, names } => (pkg, self.format.listed(&self.names[pkg], &names)),
            Event::Planned { .. } => return,
            Event::PackageFinished {
                pkg,
                elapsed,
                outcome,
                at,
            } => {
                self.done[pkg] = true;
                (
                    pkg,
                    self.format
                        .package_finished(&self.names[pkg], elapsed, outcome, at),
                )
            }
        };
        self.buffers[pkg].push_str(&text);
        self.flush();
    }

    fn flush(&mut self) {
        while self.next < self.buffers.len() {
            if let Some(line) = self.errors[self.next].take() {
                self.progress.suspend(|| eprintln!("{line}"));
            }
            let text = std::mem::take(&mut self.buffers[self.next]);
            if !text.is_empty() {
                let out = &mut self.out;
                self.progress.suspend(|| {
                    let _ = out.write_all(text.as_bytes());
                    let _ = out.flush();
                });
            }
            if !self.done[self.next] {
                break;
            }
            self.next += 1;
        }
    }

    /// Prints the summary and returns the exit status.
    pub fn finish(mut self) -> u8 {
        self.progress.finish();
        if !self.flaky.is_empty() {
            eprintln!(
                "cachet: {} flaky (failed, then passed on a retry): {}",
                self.flaky.len(),
                self.flaky.join(", ")
            );
        }
        let flaky_fails = self.fail_flaky && !self.flaky.is_empty();
        let summary = self
            .format
            .summary(self.failed || self.setup_error || self.interrupted || flaky_fails);
        let _ = self.out.write_all(summary.as_bytes());
        let _ = self.out.flush();
        if self.interrupted {
            exit::INTERRUPTED
        } else if self.setup_error {
            exit::SETUP_ERROR
        } else if self.failed || flaky_fails {
            exit::TESTS_FAILED
        } else {
            exit::PASSED
        }
    }
}

/// Go's `(0.01s)` and `0.012s`.
pub(crate) fn secs(d: Duration, places: usize) -> String {
    format!("{:.*}s", places, d.as_secs_f64())
}
