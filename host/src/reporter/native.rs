//! `cachet exec`'s reporter: prints a test invocation's cases as the test
//! binary would have printed them itself, in the order it runs them, each
//! as soon as it and every case before it are done. The format is the
//! harness's (`framework::Native`); the order, counts and exit status are
//! here.

use std::collections::HashMap;
use std::time::Instant;

use crate::event::{Event, PackageOutcome};
use crate::framework::invocation::NativeSummary;
use crate::framework::{CaseResult, Verdict};
use crate::framework::{Invocation, Native};

pub struct Printer {
    native: &'static dyn Native,
    inv: Invocation,
    order: Vec<String>,
    listed: usize,
    done: HashMap<String, CaseResult>,
    next: usize,
    started: Instant,
    failures: Vec<(String, String)>,
    /// `[passed, failed, skipped]`.
    counts: [usize; 3],
    setup_error: bool,
    interrupted: bool,
    no_tests: bool,
    /// Cases served from the cache, of those finished.
    pub cached: usize,
    pub finished: usize,
}

impl Printer {
    pub fn new(native: &'static dyn Native, inv: Invocation) -> Self {
        Printer {
            native,
            inv,
            order: Vec::new(),
            listed: 0,
            done: HashMap::new(),
            next: 0,
            started: Instant::now(),
            failures: Vec::new(),
            counts: [0; 3],
            setup_error: false,
            interrupted: false,
            no_tests: false,
            cached: 0,
            finished: 0,
        }
    }

    /// What to print now on stdout (setup errors and warnings go to stderr).
    pub fn event(&mut self, event: Event) -> String {
        match event {
            Event::Planned { cases, listed, .. } => {
                self.order = cases;
                self.listed = listed;
                self.native.banner(self.order.len())
            }
            Event::CaseFinished { result, .. } => {
                self.finished += 1;
                self.cached += usize::from(result.cached);
                self.done.insert(result.name.clone(), result);
                let mut text = String::new();
                while let Some(r) = self.order.get(self.next).and_then(|n| self.done.remove(n)) {
                    self.next += 1;
                    text.push_str(&self.case(&r));
                }
                text
            }
            Event::PackageError { message, .. } => {
                eprintln!("cachet exec: {message}");
                self.setup_error = true;
                String::new()
            }
            Event::Warning { message } => {
                eprintln!("cachet exec: warning: {message}");
                String::new()
            }
            Event::Interrupted { .. } => {
                self.interrupted = true;
                String::new()
            }
            Event::PackageFinished { outcome, .. } => {
                self.no_tests = matches!(
                    outcome,
                    PackageOutcome::NoTestsToRun | PackageOutcome::NoTestFiles
                );
                String::new()
            }
            _ => String::new(),
        }
    }

    /// One case, as the binary prints it.
    fn case(&mut self, r: &CaseResult) -> String {
        self.counts[r.verdict.slot()] += 1;
        let mut notes = String::new();
        if let Some(reason) = &r.reason {
            if !r.output.is_empty() && !r.output.ends_with('\n') {
                notes.push('\n');
            }
            notes.push_str(&format!("cachet: {reason}\n"));
        } else if let Some(limit) = r.timed_out {
            notes.push_str(&format!(
                "panic: test timed out after {}\n",
                cachet_runtime::duration_string(limit)
            ));
        }
        if r.verdict == Verdict::Fail {
            self.failures
                .push((r.name.clone(), format!("{}{notes}", r.output)));
        }
        self.native
            .case(r, &notes, &self.inv, self.next, self.order.len())
    }

    /// The closing lines and the exit status.
    pub fn finish(&mut self) -> (String, u8) {
        let failed = self.counts[1] > 0;
        let code = if self.interrupted {
            crate::exit::INTERRUPTED
        } else if self.setup_error {
            crate::exit::SETUP_ERROR
        } else if failed {
            self.native.failure_status()
        } else {
            crate::exit::PASSED
        };
        if self.setup_error && self.order.is_empty() {
            return (String::new(), code);
        }
        let text = self.native.finish(&NativeSummary {
            inv: &self.inv,
            counts: self.counts,
            failures: &self.failures,
            planned: self.order.len(),
            listed: self.listed,
            no_tests: self.no_tests,
            failed_run: failed || code != crate::exit::PASSED,
            elapsed: self.started.elapsed(),
        });
        (text, code)
    }
}
