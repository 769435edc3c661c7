//! `go test -json` output: test2json events, one JSON object a line, with
//! Go's field names and order (Time, Action, Package, Test, Elapsed, Output).
//! As with `go test -json`, every case's output is included (it implies -v).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::{secs, Format};
use crate::event::PackageOutcome;
use crate::framework::{CaseResult, Verdict};

#[derive(Serialize)]
struct Ev<'a> {
    #[serde(rename = "Time")]
    time: String,
    #[serde(rename = "Action")]
    action: &'a str,
    #[serde(rename = "Package")]
    package: &'a str,
    #[serde(rename = "Test", skip_serializing_if = "Option::is_none")]
    test: Option<&'a str>,
    #[serde(rename = "Elapsed", skip_serializing_if = "Option::is_none")]
    elapsed: Option<f64>,
    #[serde(rename = "Output", skip_serializing_if = "Option::is_none")]
    output: Option<String>,
    #[serde(rename = "OutputType", skip_serializing_if = "Option::is_none")]
    output_type: Option<&'a str>,
}

#[derive(Default)]
pub struct JsonFormat {
    /// Packages whose `start` event was written.
    started: std::collections::HashSet<String>,
}

fn line(
    at: SystemTime,
    action: &str,
    pkg: &str,
    test: Option<&str>,
    elapsed: Option<f64>,
    output: Option<String>,
) -> String {
    let ev = Ev {
        time: rfc3339(at),
        action,
        package: pkg,
        test,
        elapsed,
        output,
        output_type: None,
    };
    let mut s = serde_json::to_string(&ev).expect("events serialize");
    s.push('\n');
    s
}

/// Go's float seconds, rounded to the millisecond as test2json prints them.
fn elapsed(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

impl JsonFormat {
    /// A case whose harness printed test2json output itself (Go, run with
    /// `-test.v=test2json`): its events as `go test -json` gives them, with
    /// cachet's reasons after, and a `fail` of cachet's where the harness
    /// never reported the case (one the sandbox stopped).
    fn framed(&mut self, pkg: &str, r: &CaseResult, at: SystemTime) -> String {
        let begun = at.checked_sub(r.elapsed).unwrap_or(at);
        let mut s = self.start(pkg, begun);
        if r.in_module_output && r.reason.is_none() {
            return s; // its events are in another case's output
        }
        let events = crate::framework::test2json::convert(&r.output, false);
        let reported = events.iter().any(|e| {
            e.test.as_deref() == Some(r.name.as_str())
                && matches!(e.action, "pass" | "fail" | "skip")
        });
        if events.is_empty() {
            s += &line(begun, "run", pkg, Some(&r.name), None, None);
        }
        for e in &events {
            let ev = Ev {
                time: rfc3339(at),
                action: e.action,
                package: pkg,
                test: e.test.as_deref(),
                elapsed: e.elapsed,
                output: e.output.clone(),
                output_type: e.output_type,
            };
            s += &serde_json::to_string(&ev).expect("events serialize");
            s.push('\n');
        }
        let t = Some(r.name.as_str());
        for l in super::text::stop_lines(r, "    ").lines() {
            s += &line(at, "output", pkg, t, None, Some(format!("{l}\n")));
        }
        if !reported {
            let word = if r.verdict == Verdict::Fail {
                "fail"
            } else {
                "pass"
            };
            s += &line(at, word, pkg, t, Some(elapsed(r.elapsed)), None);
        }
        s
    }

    fn start(&mut self, pkg: &str, at: SystemTime) -> String {
        if self.started.insert(pkg.to_string()) {
            line(at, "start", pkg, None, None, None)
        } else {
            String::new()
        }
    }
}

impl Format for JsonFormat {
    fn package_started(&mut self, pkg: &str, at: SystemTime) -> String {
        self.start(pkg, at)
    }

    fn case(&mut self, pkg: &str, r: &CaseResult, at: SystemTime) -> String {
        let flaky: String = super::text::flaky_lines(r)
            .lines()
            .map(|l| {
                line(
                    at,
                    "output",
                    pkg,
                    Some(&r.name),
                    None,
                    Some(format!("{l}\n")),
                )
            })
            .collect();
        if r.framed() {
            return flaky + &self.framed(pkg, r, at);
        }
        let t = Some(r.name.as_str());
        let begun = at.checked_sub(r.elapsed).unwrap_or(at);
        let mut s = self.start(pkg, begun);
        s += &line(begun, "run", pkg, t, None, None);
        s += &line(
            begun,
            "output",
            pkg,
            t,
            None,
            Some(format!("=== RUN   {}\n", r.name)),
        );
        for l in r.output.lines() {
            s += &line(at, "output", pkg, t, None, Some(format!("{l}\n")));
        }
        for l in super::text::stop_lines(r, "    ").lines() {
            s += &line(at, "output", pkg, t, None, Some(format!("{l}\n")));
        }
        s += &flaky;
        let (word, action) = match r.verdict {
            Verdict::Pass => ("PASS", "pass"),
            Verdict::Fail => ("FAIL", "fail"),
            Verdict::Skip => ("SKIP", "skip"),
        };
        s += &line(
            at,
            "output",
            pkg,
            t,
            None,
            Some(format!("--- {word}: {} ({})\n", r.name, secs(r.elapsed, 2))),
        );
        s += &line(at, action, pkg, t, Some(elapsed(r.elapsed)), None);
        s
    }

    fn listed(&mut self, pkg: &str, names: &[String]) -> String {
        let at = SystemTime::now();
        let mut s = self.start(pkg, at);
        for n in names {
            s += &line(at, "output", pkg, None, None, Some(format!("{n}\n")));
        }
        s
    }

    fn package_error(&mut self, pkg: &str, message: &str, build: bool) -> String {
        let at = SystemTime::now();
        let mut s = self.start(pkg, at);
        s += &line(
            at,
            "output",
            pkg,
            None,
            None,
            Some(format!("cachet: {message}\n")),
        );
        s += &line(
            at,
            "output",
            pkg,
            None,
            None,
            Some(format!(
                "FAIL\t{pkg} [{} failed]\n",
                if build { "build" } else { "setup" }
            )),
        );
        s += &line(at, "fail", pkg, None, Some(0.0), None);
        s
    }

    fn package_finished(
        &mut self,
        pkg: &str,
        d: Duration,
        outcome: PackageOutcome,
        at: SystemTime,
    ) -> String {
        let mut s = self.start(pkg, at);
        let e = Some(elapsed(d));
        let (outputs, action): (Vec<String>, &str) = match outcome {
            PackageOutcome::Passed => (
                vec!["PASS\n".into(), format!("ok  \t{pkg}\t{}\n", secs(d, 3))],
                "pass",
            ),
            PackageOutcome::Cached => (
                vec!["PASS\n".into(), format!("ok  \t{pkg}\t(cached)\n")],
                "pass",
            ),
            PackageOutcome::Failed => (
                vec!["FAIL\n".into(), format!("FAIL\t{pkg}\t{}\n", secs(d, 3))],
                "fail",
            ),
            PackageOutcome::NoTestFiles => {
                (vec![format!("?   \t{pkg}\t[no test files]\n")], "skip")
            }
            PackageOutcome::NoTestsToRun => (
                vec![format!("ok  \t{pkg}\t{} [no tests to run]\n", secs(d, 3))],
                "pass",
            ),
            PackageOutcome::NotRun(why) => {
                (vec![format!("FAIL\t{pkg}\t[not run: {why}]\n")], "fail")
            }
        };
        for o in outputs {
            s += &line(at, "output", pkg, None, None, Some(o));
        }
        s += &line(at, action, pkg, None, e, None);
        s
    }

    fn summary(&mut self, _failed: bool) -> String {
        String::new()
    }
}

/// RFC 3339 with nanoseconds, in UTC, as Go's `time.Time` marshals.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (secs, nanos) = (d.as_secs() as i64, d.subsec_nanos());
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339() {
        let t = UNIX_EPOCH + Duration::new(1_795_000_000, 5);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40.000000005Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
    }
}
