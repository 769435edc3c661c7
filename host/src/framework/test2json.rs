//! `go test -json` events from a Go test binary's `-test.v=test2json`
//! output, as Go's own `cmd/internal/test2json` reads it: lines marked with
//! `^V` are the harness's framing (`=== RUN`, `--- PASS`, ...), text between
//! `^O` and `^N` is error output, and `=== NAME` lines say which test the
//! following output belongs to. Subtests get events of their own.

/// Whether the output holds `name`'s own result line (`--- PASS: name (…)`).
pub fn reports(raw: &str, name: &str) -> bool {
    raw.lines()
        .any(|l| result_line(l.trim_start_matches(FRAME)).is_some_and(|(_, n, _)| n == name))
}

/// One event, without the time and package the reporter adds.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub action: &'static str,
    pub test: Option<String>,
    pub elapsed: Option<f64>,
    pub output: Option<String>,
    /// `frame` for the harness's own lines, `error` for error output.
    pub output_type: Option<&'static str>,
}

impl Event {
    fn new(action: &'static str, test: Option<&str>) -> Self {
        Event {
            action,
            test: test.map(str::to_string),
            elapsed: None,
            output: None,
            output_type: None,
        }
    }

    fn output(test: Option<&str>, text: String, kind: Option<&'static str>) -> Self {
        Event {
            output: Some(text),
            output_type: kind,
            ..Event::new("output", test)
        }
    }
}

const FRAME: char = '\u{16}';
const ERROR_START: char = '\u{0f}';
const ERROR_END: char = '\u{0e}';

/// Converts a whole output. Package-level lines (`PASS`, `FAIL`) are left
/// out when `package_lines` is false: each case of a package is a run of
/// its own, and the package's closing lines are the reporter's.
pub fn convert(raw: &str, package_lines: bool) -> Vec<Event> {
    let mut events = Vec::new();
    let mut current: Option<String> = None;
    for line in raw.split_inclusive('\n') {
        let text = if line.ends_with('\n') {
            line.to_string()
        } else {
            format!("{line}\n")
        };
        match text.strip_prefix(FRAME) {
            Some(frame) => framing(frame, &mut current, &mut events, package_lines),
            None => {
                let (text, kind) = if text.starts_with(ERROR_START) {
                    (text.replace([ERROR_START, ERROR_END], ""), Some("error"))
                } else {
                    (text, None)
                };
                events.push(Event::output(current.as_deref(), text, kind));
            }
        }
    }
    events
}

fn framing(line: &str, current: &mut Option<String>, events: &mut Vec<Event>, package_lines: bool) {
    let trimmed = line.trim_end_matches('\n');
    if let Some(name) = trimmed.strip_prefix("=== NAME") {
        let name = name.trim();
        *current = (!name.is_empty()).then(|| name.to_string());
        return;
    }
    for (prefix, action) in [
        ("=== RUN", "run"),
        ("=== PAUSE", "pause"),
        ("=== CONT", "cont"),
    ] {
        if let Some(name) = trimmed.strip_prefix(prefix) {
            let name = name.trim();
            if action == "run" {
                events.push(Event::new("run", Some(name)));
            }
            events.push(Event::output(Some(name), line.to_string(), Some("frame")));
            if action != "run" {
                events.push(Event::new(action, Some(name)));
            }
            if action != "pause" {
                *current = Some(name.to_string());
            }
            return;
        }
    }
    if let Some((action, name, elapsed)) = result_line(trimmed) {
        events.push(Event::output(Some(&name), line.to_string(), Some("frame")));
        events.push(Event {
            elapsed: Some(elapsed),
            ..Event::new(action, Some(&name))
        });
        return;
    }
    if current.is_none() && matches!(trimmed, "PASS" | "FAIL") && !package_lines {
        return;
    }
    events.push(Event::output(
        current.as_deref(),
        line.to_string(),
        Some("frame"),
    ));
}

/// `--- PASS: name (0.01s)`, possibly indented (a subtest).
fn result_line(line: &str) -> Option<(&'static str, String, f64)> {
    let rest = line.trim_start().strip_prefix("--- ")?;
    let (word, rest) = rest.split_once(": ")?;
    let action = match word {
        "PASS" => "pass",
        "FAIL" => "fail",
        "SKIP" => "skip",
        _ => return None,
    };
    let (name, time) = rest.rsplit_once(" (")?;
    let secs = time.strip_suffix("s)")?.parse().ok()?;
    Some((action, name.to_string(), secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtests_errors_and_package_lines_read_as_go_does() {
        let raw = "\u{16}=== RUN   TestSub\n\u{16}=== RUN   TestSub/a\n\u{16}--- PASS: TestSub/a (0.00s)\n\u{16}=== NAME  TestSub\n\u{16}=== RUN   TestSub/b\n\u{0f}    x_test.go:14: bad b\u{0e}\n\u{16}--- FAIL: TestSub/b (0.01s)\n\u{16}=== NAME  TestSub\n\u{16}--- FAIL: TestSub (0.01s)\n\u{16}=== NAME  \n\u{16}FAIL\n";
        let got: Vec<(String, Option<String>, Option<String>)> = convert(raw, false)
            .into_iter()
            .map(|e| (e.action.to_string(), e.test, e.output))
            .collect();
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            got,
            [
                ("run".into(), s("TestSub"), None),
                ("output".into(), s("TestSub"), s("=== RUN   TestSub\n")),
                ("run".into(), s("TestSub/a"), None),
                ("output".into(), s("TestSub/a"), s("=== RUN   TestSub/a\n")),
                (
                    "output".into(),
                    s("TestSub/a"),
                    s("--- PASS: TestSub/a (0.00s)\n")
                ),
                ("pass".into(), s("TestSub/a"), None),
                ("run".into(), s("TestSub/b"), None),
                ("output".into(), s("TestSub/b"), s("=== RUN   TestSub/b\n")),
                (
                    "output".into(),
                    s("TestSub/b"),
                    s("    x_test.go:14: bad b\n")
                ),
                (
                    "output".into(),
                    s("TestSub/b"),
                    s("--- FAIL: TestSub/b (0.01s)\n")
                ),
                ("fail".into(), s("TestSub/b"), None),
                (
                    "output".into(),
                    s("TestSub"),
                    s("--- FAIL: TestSub (0.01s)\n")
                ),
                ("fail".into(), s("TestSub"), None),
            ]
        );
        let events = convert(raw, false);
        assert_eq!(events[8].output_type, Some("error"));
        assert_eq!(events[10].elapsed, Some(0.01));
        assert_eq!(
            convert(raw, true).last().unwrap().output.as_deref(),
            Some("FAIL\n")
        );
    }
}
