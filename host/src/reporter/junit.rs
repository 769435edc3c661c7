//! `--junit FILE`: the run as JUnit XML, in the dialect of the schema CI
//! tools validate against (Jenkins' `junit-10.xsd`, Surefire's with flaky
//! reruns; pytest checks its own reports with it). A `testsuite` per
//! package, a `testcase` per case with its time, output, failure or skip;
//! a package that could not be set up is one `error` case. A case from the
//! cache says so in its `system-out` (`cachet: cached`), and each suite
//! counts them in a `cachet.cached` property; a flaky case passes with a
//! `flakyFailure` for its failed attempts.
//!
//! Written by hand: quick-junit (nextest's writer) always writes a
//! `disabled` attribute that this schema rejects.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::event::Event;
use crate::framework::{CaseResult, Verdict};

pub struct Junit {
    names: Vec<String>,
    suites: Vec<Option<Suite>>,
    started: SystemTime,
}

#[derive(Default)]
struct Suite {
    cases: Vec<CaseResult>,
    elapsed: Duration,
    error: Option<String>,
}

impl Junit {
    pub fn new(names: Vec<String>) -> Self {
        let n = names.len();
        Junit {
            names,
            suites: (0..n).map(|_| None).collect(),
            started: SystemTime::now(),
        }
    }

    pub fn event(&mut self, event: &Event) {
        match event {
            Event::CaseFinished { pkg, result, .. } => {
                self.suites[*pkg]
                    .get_or_insert_with(Suite::default)
                    .cases
                    .push(result.clone());
            }
            Event::PackageError { pkg, message, .. } => {
                self.suites[*pkg].get_or_insert_with(Suite::default).error = Some(message.clone());
            }
            Event::PackageFinished { pkg, elapsed, .. } => {
                self.suites[*pkg].get_or_insert_with(Suite::default).elapsed = *elapsed;
            }
            _ => {}
        }
    }

    /// The report as XML.
    pub fn render(&self) -> String {
        let mut body = String::new();
        let (mut tests, mut failures, mut errors, mut time) = (0, 0, 0, Duration::ZERO);
        for (name, suite) in self.names.iter().zip(&self.suites) {
            let Some(s) = suite else { continue };
            let failed = s
                .cases
                .iter()
                .filter(|c| c.verdict == Verdict::Fail)
                .count();
            let skipped = s
                .cases
                .iter()
                .filter(|c| c.verdict == Verdict::Skip)
                .count();
            let errored = usize::from(s.error.is_some());
            let cached = s.cases.iter().filter(|c| c.cached).count();
            let n = s.cases.len() + errored;
            tests += n;
            failures += failed;
            errors += errored;
            time += s.elapsed;
            let _ = write!(
                body,
                "  <testsuite name=\"{}\" tests=\"{n}\" failures=\"{failed}\" errors=\"{errored}\" skipped=\"{skipped}\" time=\"{}\" timestamp=\"{}\">\n    <properties>\n      <property name=\"cachet.cached\" value=\"{cached}\"/>\n    </properties>\n",
                attr(name),
                secs(s.elapsed),
                timestamp(self.started),
            );
            if let Some(e) = &s.error {
                let _ = writeln!(
                    body,
                    "    <testcase name=\"(setup)\" classname=\"{}\" time=\"0.000\">\n      <error type=\"setup\" message=\"{}\"/>\n    </testcase>",
                    attr(name),
                    attr(e)
                );
            }
            for c in &s.cases {
                body.push_str(&case(name, c));
            }
            body.push_str("  </testsuite>\n");
        }
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"cachet\" tests=\"{tests}\" failures=\"{failures}\" errors=\"{errors}\" time=\"{}\">\n{body}</testsuites>\n",
            secs(time)
        )
    }

    /// Writes the report; an error is one line for the user.
    pub fn write(&self, path: &Path) -> Result<(), JunitError> {
        let error = |e| JunitError {
            path: path.display().to_string(),
            error: e,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(error)?;
        }
        std::fs::write(path, self.render()).map_err(error)
    }
}

/// The report could not be written.
#[derive(Debug, thiserror::Error)]
#[error("--junit {path}: {error}")]
pub struct JunitError {
    path: String,
    error: std::io::Error,
}

fn case(package: &str, r: &CaseResult) -> String {
    let mut notes = super::text::stop_lines(r, "");
    if r.cached {
        notes.push_str("cachet: cached\n");
    }
    let mut s = format!(
        "    <testcase name=\"{}\" classname=\"{}\" time=\"{}\">\n",
        attr(&r.name),
        attr(package),
        secs(r.elapsed)
    );
    match r.verdict {
        Verdict::Pass => {}
        Verdict::Skip => s.push_str("      <skipped/>\n"),
        Verdict::Fail => {
            let message = notes
                .lines()
                .next()
                .map(|l| l.trim_start_matches("cachet: ").to_string())
                .unwrap_or_else(|| "failed".into());
            let _ = writeln!(
                s,
                "      <failure type=\"failure\" message=\"{}\">{}</failure>",
                attr(&message),
                text(&r.output)
            );
        }
    }
    if let Some(f) = &r.flaky {
        let _ = writeln!(
            s,
            "      <flakyFailure type=\"failure\" message=\"failed {} of {} attempts\"><system-out>{}</system-out></flakyFailure>",
            f.failed,
            f.attempts,
            text(&f.first_failure)
        );
    }
    let out = format!(
        "{}{}{notes}",
        r.output,
        if r.output.is_empty() || r.output.ends_with('\n') {
            ""
        } else {
            "\n"
        }
    );
    if !out.is_empty() {
        let _ = writeln!(s, "      <system-out>{}</system-out>", text(&out));
    }
    s.push_str("    </testcase>\n");
    s
}

/// Seconds with three decimals, as the schema's time pattern wants.
fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

/// `2026-11-23T15:04:05` (UTC), the form Surefire writes.
fn timestamp(t: SystemTime) -> String {
    let full = super::json::rfc3339(t);
    full[..19].to_string()
}

/// Text content: escaped, and characters XML 1.0 cannot carry (control
/// characters but tab, newline and carriage return) written as `\u{..}`.
fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// An attribute value: text, with quotes and line breaks escaped too.
fn attr(s: &str) -> String {
    text(s)
        .replace('"', "&quot;")
        .replace('\n', "&#10;")
        .replace('\r', "&#13;")
        .replace('\t', "&#9;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_times() {
        assert_eq!(text("a<b>&\u{1}c"), "a&lt;b&gt;&amp;\\u{1}c");
        assert_eq!(attr("say \"hi\"\nnow"), "say &quot;hi&quot;&#10;now");
        assert_eq!(secs(Duration::from_millis(1234)), "1.234");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_446_245);
        assert_eq!(timestamp(t), "2026-11-23T15:04:05");
        assert_eq!(timestamp(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00");
    }
}
