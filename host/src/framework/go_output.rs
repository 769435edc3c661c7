//! Go's output in each mode, rendered from the one canonical run
//! (`-test.v=test2json`). In that mode Go marks its framing lines with
//! `^V`, wraps error output in `^O`..`^N`, prints a subtest's result as
//! soon as it ends and says with `=== NAME` whose output follows. The
//! other modes differ only in layout (Go's `testing.go`, `chattyPrinter`
//! and `flushToParent`):
//!
//! - `-v` (`-test.v=true`): the same lines unmarked, but a subtest's result
//!   goes into its parent's buffer, indented, and is printed after the
//!   parent's own result line; `=== NAME` only where a test's log output
//!   follows another test's.
//! - quiet: no `=== ` lines and no `--- PASS`/`--- SKIP`; a test's log
//!   lines (`    file.go:N: ...`) are buffered and printed after its
//!   `--- FAIL` line, a subtest's report into its parent's, indented; other
//!   output (the program's own prints) is printed as it comes. Passing
//!   cases print nothing, so only failures are rendered.
//!
//! `--json` is the canonical output itself (`test2json.rs` reads it).

use std::collections::HashMap;

use super::Render;

const FRAME: char = '\u{16}';
const ERROR_START: char = '\u{0f}';
const ERROR_END: char = '\u{0e}';

/// A line without test2json's framing marker.
pub fn plain(line: &str) -> &str {
    line.trim_start_matches(FRAME)
}

/// One line of canonical output.
enum Line<'a> {
    Run(&'a str),
    Pause(&'a str),
    Cont(&'a str),
    Name(&'a str),
    /// `--- WORD: name (…)`: the word, the test, the line unmarked.
    Result(&'a str, &'a str, &'a str),
    /// Any other framing line (`PASS`, `FAIL`, `=== ATTR ...`), unmarked.
    Frame(&'a str),
    /// Output, error markers removed; `error`: it was error output.
    Output(String, bool),
}

fn classify(line: &str) -> Line<'_> {
    let Some(frame) = line.strip_prefix(FRAME) else {
        let error = line.contains(ERROR_START) || line.contains(ERROR_END);
        return Line::Output(line.replace([ERROR_START, ERROR_END], ""), error);
    };
    let bare = frame.trim_end_matches('\n');
    let named = |prefix: &str| bare.strip_prefix(prefix).map(str::trim);
    if let Some(n) = named("=== RUN") {
        return Line::Run(n);
    }
    if let Some(n) = named("=== PAUSE") {
        return Line::Pause(n);
    }
    if let Some(n) = named("=== CONT") {
        return Line::Cont(n);
    }
    if let Some(n) = named("=== NAME") {
        return Line::Name(n);
    }
    if let Some(rest) = bare.trim_start().strip_prefix("--- ") {
        if let Some((word, rest)) = rest.split_once(": ") {
            if let Some((name, _)) = rest.rsplit_once(" (") {
                return Line::Result(word, name, frame);
            }
        }
    }
    Line::Frame(frame)
}

/// The tests that were running when the output ends: the last of `=== RUN`,
/// `=== PAUSE` and `=== CONT` said so, and no result line followed. When an
/// instance stops mid-run, these are the ones it stopped in; a paused test
/// was only waiting its turn.
pub fn in_flight(output: &str) -> Vec<String> {
    let mut running: Vec<String> = Vec::new();
    for line in output.lines() {
        match classify(line) {
            Line::Run(n) | Line::Cont(n) if !running.iter().any(|r| r == n) => {
                running.push(n.to_string());
            }
            Line::Pause(n) | Line::Result(_, n, _) => running.retain(|r| r != n),
            _ => {}
        }
    }
    running
}

/// The test whose subtest `name` is: the longest started test that is a
/// prefix of it at a `/`.
fn parent_of<'a>(name: &str, started: &'a [String]) -> Option<&'a String> {
    started
        .iter()
        .filter(|p| {
            name.len() > p.len() && name.starts_with(p.as_str()) && name[p.len()..].starts_with('/')
        })
        .max_by_key(|p| p.len())
}

fn indent(text: &str) -> String {
    text.split_inclusive('\n')
        .map(|l| {
            if l == "\n" {
                l.to_string()
            } else {
                format!("    {l}")
            }
        })
        .collect()
}

/// Where the lines after a result line go: they belong to its report.
enum Block {
    Out,
    Parent(String),
    Dropped,
}

/// `-v` rendering, line by line as the output streams.
#[derive(Default)]
pub struct Verbose {
    partial: String,
    /// The test named by the last line printed (Go's `lastName`).
    last: Option<String>,
    /// The test the canonical stream attributes output to.
    current: Option<String>,
    started: Vec<String>,
    /// Subtests' reports, waiting for their parent's result line.
    buffers: HashMap<String, String>,
    block: Option<Block>,
}

impl Verbose {
    fn line(&mut self, line: &str) -> String {
        match classify(line) {
            Line::Run(n) => {
                self.block = None;
                self.started.push(n.to_string());
                self.current = Some(n.to_string());
                self.last = Some(n.to_string());
                format!("=== RUN   {n}\n")
            }
            Line::Pause(n) => {
                self.block = None;
                self.last = Some(n.to_string());
                format!("=== PAUSE {n}\n")
            }
            Line::Cont(n) => {
                self.block = None;
                self.current = Some(n.to_string());
                self.last = Some(n.to_string());
                format!("=== CONT  {n}\n")
            }
            Line::Name(n) => {
                self.block = None;
                self.current = (!n.is_empty()).then(|| n.to_string());
                String::new()
            }
            Line::Result(_, name, text) => {
                let report = format!("{}\n", text.trim_start().trim_end_matches('\n'))
                    + &self.buffers.remove(name).unwrap_or_default();
                match parent_of(name, &self.started).cloned() {
                    Some(p) => {
                        self.buffers
                            .entry(p.clone())
                            .or_default()
                            .push_str(&indent(&report));
                        self.block = Some(Block::Parent(p));
                        String::new()
                    }
                    None => {
                        self.last = Some(name.to_string());
                        self.block = Some(Block::Out);
                        report
                    }
                }
            }
            Line::Frame(text) => {
                self.block = None;
                text.to_string()
            }
            Line::Output(text, _) => match &self.block {
                Some(Block::Out) => text,
                Some(Block::Parent(p)) => {
                    let p = p.clone();
                    self.buffers.entry(p).or_default().push_str(&indent(&text));
                    String::new()
                }
                Some(Block::Dropped) => String::new(),
                None => {
                    let mut s = String::new();
                    if let Some(cur) = &self.current {
                        match &self.last {
                            Some(last) if last != cur => s = format!("=== NAME  {cur}\n"),
                            _ => {}
                        }
                        self.last = Some(cur.clone());
                    }
                    s + &text
                }
            },
        }
    }
}

impl Render for Verbose {
    fn push(&mut self, text: &str) -> String {
        self.partial.push_str(text);
        let mut out = String::new();
        while let Some(i) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=i).collect();
            out.push_str(&self.line(&line));
        }
        out
    }

    fn finish(&mut self) -> String {
        let mut out = String::new();
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            out.push_str(&self.line(&line));
        }
        // Reports whose parent never reported (the instance stopped).
        let mut left: Vec<(String, String)> = self.buffers.drain().collect();
        left.sort();
        for (_, report) in left {
            out.push_str(&report);
        }
        out
    }
}

/// The whole output as `-v` shows it.
pub fn verbose(output: &str) -> String {
    let mut v = Verbose::default();
    v.push(output) + &v.finish()
}

/// Whether an output line is a test's log line (`t.Log`, `t.Error`):
/// indented by four, then `file.go:N: `.
fn is_log_line(text: &str) -> bool {
    let Some(rest) = text.strip_prefix("    ") else {
        return false;
    };
    let Some((file, tail)) = rest.split_once(':') else {
        return false;
    };
    let line_no = tail.split_once(": ").map(|(n, _)| n).unwrap_or("");
    !file.is_empty()
        && !file.starts_with(' ')
        && !file.contains(' ')
        && !line_no.is_empty()
        && line_no.bytes().all(|b| b.is_ascii_digit())
}

/// The whole output of a failed case as `go test` shows it without `-v`.
pub fn quiet(output: &str) -> String {
    let mut out = String::new();
    let mut current: Option<String> = None;
    let mut started: Vec<String> = Vec::new();
    let mut logs: HashMap<String, String> = HashMap::new();
    let mut block: Option<Block> = None;
    let mut in_log = false;
    for line in output.split_inclusive('\n') {
        let l = classify(line);
        if !matches!(l, Line::Output(..)) {
            in_log = false;
        }
        match l {
            Line::Run(n) => {
                block = None;
                started.push(n.to_string());
                current = Some(n.to_string());
            }
            Line::Cont(n) => {
                block = None;
                current = Some(n.to_string());
            }
            Line::Pause(_) => block = None,
            Line::Name(n) => {
                block = None;
                current = (!n.is_empty()).then(|| n.to_string());
            }
            Line::Result(word, name, text) => {
                let held = logs.remove(name).unwrap_or_default();
                if word != "FAIL" {
                    block = Some(Block::Dropped);
                    continue;
                }
                let report = format!("{}\n", text.trim_start().trim_end_matches('\n')) + &held;
                match parent_of(name, &started).cloned() {
                    Some(p) => {
                        logs.entry(p.clone())
                            .or_default()
                            .push_str(&indent(&report));
                        block = Some(Block::Parent(p));
                    }
                    None => {
                        out.push_str(&report);
                        block = Some(Block::Out);
                    }
                }
            }
            Line::Frame(text) => {
                block = None;
                out.push_str(text);
            }
            Line::Output(text, error) => match &block {
                Some(Block::Out) => out.push_str(&text),
                Some(Block::Parent(p)) => {
                    let p = p.clone();
                    logs.entry(p).or_default().push_str(&indent(&text));
                }
                Some(Block::Dropped) => {}
                None => {
                    let continued = in_log && text.starts_with("        ");
                    in_log = error || is_log_line(&text) || continued;
                    match (&current, in_log) {
                        (Some(t), true) => logs.entry(t.clone()).or_default().push_str(&text),
                        _ => out.push_str(&text),
                    }
                }
            },
        }
    }
    // Log lines of tests that never reported (the instance stopped): shown
    // rather than lost.
    let mut left: Vec<(String, String)> = logs.into_iter().collect();
    left.sort();
    for (_, text) in left {
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from Go 1.27's `fixtures/go/mixed` (`-test.v=test2json`),
    /// with what `-test.v=true` and quiet runs printed.
    const SUBTESTS: &str = "\u{16}=== RUN   TestSubtests\n\u{16}=== RUN   TestSubtests/good\n\u{16}--- PASS: TestSubtests/good (0.00s)\n\u{16}=== NAME  TestSubtests\n\u{16}=== RUN   TestSubtests/bad\n\u{0f}    mixed_test.go:30: the bad one\u{0e}\n\u{16}--- FAIL: TestSubtests/bad (0.00s)\n\u{16}=== NAME  TestSubtests\n\u{16}--- FAIL: TestSubtests (0.00s)\n";

    #[test]
    fn a_stopped_instance_was_in_the_tests_still_running() {
        assert!(in_flight(SUBTESTS).is_empty());
        let stopped = "\u{16}=== RUN   TestA\n\u{16}=== PAUSE TestA\n\u{16}=== RUN   TestB\n\u{16}=== RUN   TestB/x\n\u{16}--- FAIL: TestB/x (0.00s)\n\u{16}=== RUN   TestC\n\u{16}=== PAUSE TestC\n\u{16}=== CONT  TestC\npanic: boom\n";
        assert_eq!(in_flight(stopped), ["TestB", "TestC"]);
    }

    #[test]
    fn subtests_render_as_go_prints_them() {
        assert_eq!(
            verbose(SUBTESTS),
            "=== RUN   TestSubtests\n=== RUN   TestSubtests/good\n=== RUN   TestSubtests/bad\n    mixed_test.go:30: the bad one\n--- FAIL: TestSubtests (0.00s)\n    --- PASS: TestSubtests/good (0.00s)\n    --- FAIL: TestSubtests/bad (0.00s)\n"
        );
        assert_eq!(
            quiet(SUBTESTS),
            "--- FAIL: TestSubtests (0.00s)\n    --- FAIL: TestSubtests/bad (0.00s)\n        mixed_test.go:30: the bad one\n"
        );
    }

    #[test]
    fn logs_follow_the_fail_line_without_v() {
        let fails = "\u{16}=== RUN   TestFails\n    mixed_test.go:17: about to fail\n\u{0f}    mixed_test.go:18: wanted 4, got 3\u{0e}\n\u{16}--- FAIL: TestFails (0.00s)\n";
        assert_eq!(
            verbose(fails),
            "=== RUN   TestFails\n    mixed_test.go:17: about to fail\n    mixed_test.go:18: wanted 4, got 3\n--- FAIL: TestFails (0.00s)\n"
        );
        assert_eq!(
            quiet(fails),
            "--- FAIL: TestFails (0.00s)\n    mixed_test.go:17: about to fail\n    mixed_test.go:18: wanted 4, got 3\n"
        );
        let example = "\u{16}=== RUN   ExampleAdd_wrong\n\u{16}--- FAIL: ExampleAdd_wrong (0.00s)\ngot:\n5\nwant:\n6\n";
        assert_eq!(
            quiet(example),
            "--- FAIL: ExampleAdd_wrong (0.00s)\ngot:\n5\nwant:\n6\n"
        );
        assert_eq!(
            verbose(example),
            format!("=== RUN   ExampleAdd_wrong\n{}", quiet(example))
        );
    }

    #[test]
    fn parallel_subtests_report_after_their_parent() {
        let canonical = "\u{16}=== RUN   TestP\n\u{16}=== RUN   TestP/x\n\u{16}=== PAUSE TestP/x\n\u{16}=== NAME  TestP\n\u{16}=== RUN   TestP/y\n\u{16}=== PAUSE TestP/y\n\u{16}=== NAME  TestP\n\u{16}=== CONT  TestP/x\n\u{16}--- PASS: TestP/x (0.00s)\n\u{16}=== CONT  TestP/y\n\u{16}--- PASS: TestP/y (0.00s)\n\u{16}--- PASS: TestP (0.00s)\n";
        assert_eq!(
            verbose(canonical),
            "=== RUN   TestP\n=== RUN   TestP/x\n=== PAUSE TestP/x\n=== RUN   TestP/y\n=== PAUSE TestP/y\n=== CONT  TestP/x\n=== CONT  TestP/y\n--- PASS: TestP (0.00s)\n    --- PASS: TestP/x (0.00s)\n    --- PASS: TestP/y (0.00s)\n"
        );
        // Streamed in pieces, the same.
        let mut v = Verbose::default();
        let streamed: String = canonical
            .as_bytes()
            .chunks(7)
            .map(|c| v.push(std::str::from_utf8(c).unwrap()))
            .collect::<String>()
            + &v.finish();
        assert_eq!(streamed, verbose(canonical));
    }
}
