//! Test frameworks: how to list a module's cases, run one case, and read what
//! it printed. `libtest` is Rust's harness (`cargo test --target
//! wasm32-wasip1`); `go` is Go's `testing` (`GOOS=wasip1 go test -c`, see
//! `go/harness.rs`); `plain` is any WASI command, one case, exit 0 passes.

use sha2::Digest as _;

use crate::event::Verdict;

/// A module's test framework.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Framework {
    Libtest,
    Go,
    Plain,
}

/// How the user asked to see output. Go's harness prints differently in
/// each (so it is part of a Go case's cache key); libtest does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputMode {
    Quiet,
    /// `-v`
    Verbose,
    /// `--json`
    Json,
}

/// What a run asks of the harness beyond which cases to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunFlags {
    pub mode: OutputMode,
    /// `--short`: Go's `-test.short`.
    pub short: bool,
    /// `--parallel N`: Go's `-test.parallel`, for `t.Parallel` subtests.
    pub parallel: Option<usize>,
}

/// What one case's output says beyond its exit status.
#[derive(Debug, PartialEq, Eq)]
pub struct CaseOutput {
    /// The case's own output, with the harness's framing lines removed.
    pub body: String,
    /// The harness reported the case as ignored.
    pub skipped: bool,
}

impl Framework {
    /// Guesses from the module's bytes: libtest binaries carry its option
    /// names, Go test binaries the `testing` package's flags and runner.
    pub fn detect(module: &[u8]) -> Framework {
        if contains(module, b"RUST_TEST_THREADS") && contains(module, b"--format") {
            Framework::Libtest
        } else if contains(module, b"test.paniconexit0") && contains(module, b"testing.tRunner") {
            Framework::Go
        } else {
            Framework::Plain
        }
    }

    /// The framework of [`Framework::name`].
    pub fn from_name(name: &str) -> Option<Framework> {
        [Framework::Libtest, Framework::Go, Framework::Plain]
            .into_iter()
            .find(|f| f.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Framework::Libtest => "libtest",
            Framework::Go => "go",
            Framework::Plain => "plain",
        }
    }

    /// Arguments that make the module print its cases, if it can.
    pub fn list_args(self) -> Option<Vec<String>> {
        match self {
            Framework::Libtest => Some(args(&["--list", "--format", "terse"])),
            Framework::Go => Some(args(&["-test.list", "."])),
            Framework::Plain => None,
        }
    }

    /// Case names from the list output (libtest: `NAME: test` lines; Go:
    /// tests, examples and fuzz targets; benchmarks skipped).
    pub fn parse_list(self, output: &str) -> Vec<String> {
        match self {
            Framework::Go => crate::go::harness::parse_list(output),
            _ => output
                .lines()
                .filter_map(|l| l.strip_suffix(": test"))
                .map(str::to_string)
                .collect(),
        }
    }

    /// Whether the harness prints its own per-case result lines (Go's
    /// `--- FAIL: Name (0.00s)`), so its output is shown as it is.
    pub fn frames_itself(self) -> bool {
        self == Framework::Go
    }

    /// The flags of `run` that change what a case does or prints, beyond
    /// which cases run: part of its cache key (with the user's arguments).
    pub fn key_args(self, flags: &RunFlags, user: &[String]) -> Vec<String> {
        let mut a = match self {
            Framework::Go => go_flags(flags),
            _ => Vec::new(),
        };
        a.extend(user.iter().cloned());
        a
    }

    /// Arguments that run exactly these cases in one instance. `--nocapture`:
    /// a panic aborts the instance on wasm32-wasip1, and a captured panic
    /// message would die with it; `--test-threads=1`: WASI p1 has no threads.
    pub fn run_args(self, cases: &[String], flags: &RunFlags, user: &[String]) -> Vec<String> {
        let mut a = match self {
            Framework::Libtest => {
                let mut a = args(&["--exact", "--nocapture", "--test-threads=1"]);
                a.extend(cases.iter().cloned());
                a
            }
            Framework::Go => crate::go::harness::run_args(cases, flags.mode, &go_flags(flags)),
            Framework::Plain => Vec::new(),
        };
        a.extend(user.iter().cloned());
        a
    }

    /// Strips libtest's framing from one case's output (Go's: only its
    /// final `PASS`/`FAIL` line; it prints its own result lines).
    pub fn case_output(self, case: &str, raw: &str) -> CaseOutput {
        match self {
            Framework::Plain => {
                return CaseOutput {
                    body: raw.to_string(),
                    skipped: false,
                }
            }
            Framework::Go => {
                return CaseOutput {
                    body: crate::go::harness::body(raw),
                    skipped: crate::go::harness::result_of(raw, case) == Some(Verdict::Skip),
                }
            }
            Framework::Libtest => {}
        }
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

    /// Splits the output of a module that ran several cases in one instance
    /// into each case's verdict and output. A case that started but has no
    /// verdict failed (the instance trapped in it); cases after it never ran.
    pub fn split_module_output(self, raw: &str, trapped: bool) -> Vec<(String, Verdict, String)> {
        let mut out: Vec<(String, Option<Verdict>, String)> = Vec::new();
        for line in raw.split_inclusive('\n') {
            if let Some(rest) = line.strip_prefix("test ") {
                if let Some((name, tail)) = rest.split_once(" ... ") {
                    out.push((name.to_string(), None, String::new()));
                    self.verdict_line(&mut out, tail);
                    continue;
                }
            }
            if line.starts_with("test result: ")
                || line == "running 1 test\n"
                || line.starts_with("running ") && line.ends_with(" tests\n")
            {
                continue;
            }
            self.verdict_line(&mut out, line);
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

    fn verdict_line(self, out: &mut [(String, Option<Verdict>, String)], text: &str) {
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
}

/// Lines held while streaming: libtest ends a case with the line that carries
/// `ok` (after any unterminated output), a blank line, `test result: ...` and
/// a blank line, so the last four complete lines (and any partial one) may
/// still be framing.
const HOLD_LINES: usize = 5;

/// A line longer than this without a newline is taken as a line of its
/// own, so a guest writing no newlines cannot grow the held text without end.
const MAX_PARTIAL: usize = 1 << 20;

/// A case's output as it is written: the harness's framing removed, shown
/// live (`-v`), and digested whole for `--verify` (the output kept in memory
/// and in the cache may be only its head and tail). Complete lines wait in a
/// queue until [`HOLD_LINES`]` - 1` newer ones have arrived, so framing can
/// still be removed from both ends. Each byte is looked at a bounded number
/// of times however long the output grows, and what passed is not kept:
/// memory stays bounded by the held lines.
pub struct CaseStream {
    framework: Framework,
    case: String,
    head: String,
    partial: Vec<u8>,
    held: std::collections::VecDeque<String>,
    /// The harness's opening framing has been passed.
    started: bool,
    /// Whether `push` returns what to show.
    live: bool,
    digest: sha2::Sha256,
}

/// What remains when a case's stream ends.
pub struct StreamEnd {
    /// The part of the body not shown yet, or `None` when nothing of the
    /// body was shown (its opening framing never passed).
    pub rest: Option<String>,
    /// The sha256 of the whole body.
    pub digest: cachet_runtime::Sha256Digest,
}

impl CaseStream {
    pub fn new(framework: Framework, case: &str, live: bool) -> Self {
        CaseStream {
            framework,
            case: case.to_string(),
            head: format!("test {case} ... "),
            partial: Vec::new(),
            held: std::collections::VecDeque::new(),
            // Only libtest's body starts after a head of its own.
            started: framework != Framework::Libtest,
            live,
            digest: sha2::Sha256::new(),
        }
    }

    /// Takes newly written bytes; returns the text that is now safe to show
    /// (nothing when not live).
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.partial.extend_from_slice(bytes);
        let mut out = String::new();
        let mut start = 0;
        loop {
            let end = match memchr::memchr(b'\n', &self.partial[start..]) {
                Some(n) => start + n + 1,
                None if self.partial.len() - start > MAX_PARTIAL => start + MAX_PARTIAL,
                None => break,
            };
            let line = String::from_utf8_lossy(&self.partial[start..end]).into_owned();
            start = end;
            self.held.push_back(line);
            while self.held.len() >= HOLD_LINES {
                let line = self.held.pop_front().expect("held is not empty");
                let shown = self.unframe(line);
                self.digest.update(shown.as_bytes());
                if self.live {
                    out.push_str(&shown);
                }
            }
        }
        self.partial.drain(..start);
        out
    }

    /// A line leaving the queue, without the harness's opening framing.
    fn unframe(&mut self, line: String) -> String {
        if self.started {
            return line;
        }
        match line.find(&self.head) {
            Some(i) => {
                self.started = true;
                line[i + self.head.len()..].to_string()
            }
            None => String::new(),
        }
    }

    /// After the case ended: the held lines without the closing framing.
    pub fn finish(&mut self) -> StreamEnd {
        // The body starts after the head; other harnesses have none.
        let mut raw = match (self.framework, self.started) {
            (Framework::Libtest, true) => self.head.clone(),
            _ => String::new(),
        };
        raw.extend(self.held.iter().map(String::as_str));
        raw.push_str(&String::from_utf8_lossy(&self.partial));
        let rest = self.framework.case_output(&self.case, &raw).body;
        let mut digest = self.digest.clone();
        digest.update(rest.as_bytes());
        StreamEnd {
            rest: self.started.then_some(rest),
            digest: cachet_runtime::Sha256Digest(digest.finalize().into()),
        }
    }
}

/// Go's flags for `--short` and `--parallel`, and the output mode's.
fn go_flags(flags: &RunFlags) -> Vec<String> {
    let mut a: Vec<String> = crate::go::harness::mode_flag(flags.mode)
        .into_iter()
        .collect();
    if flags.short {
        a.push("-test.short".into());
    }
    if let Some(n) = flags.parallel {
        a.push(format!("-test.parallel={n}"));
    }
    a
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_case_output_is_unframed() {
        let pass = "\nrunning 1 test\ntest a::b ... hello\nok\n\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 3 filtered out; finished in 0.00s\n\n";
        assert_eq!(
            Framework::Libtest.case_output("a::b", pass),
            CaseOutput {
                body: "hello\n".trim_end().into(),
                skipped: false
            }
        );
        let panic =
            "\nrunning 1 test\ntest a::c ... thread 'main' panicked at src/lib.rs:3:5:\nboom\n";
        assert_eq!(
            Framework::Libtest.case_output("a::c", panic).body,
            "thread 'main' panicked at src/lib.rs:3:5:\nboom"
        );
        let ignored = "\nrunning 1 test\ntest a::d ... ignored\n\ntest result: ok. 0 passed; 0 failed; 1 ignored; 0 measured; 3 filtered out; finished in 0.00s\n\n";
        assert!(Framework::Libtest.case_output("a::d", ignored).skipped);
    }

    #[test]
    fn list_output() {
        let out = "a::one: test\na::two: test\nb::bench: bench\n";
        assert_eq!(Framework::Libtest.parse_list(out), ["a::one", "a::two"]);
    }

    #[test]
    fn module_output_is_split_per_case() {
        let raw = "\nrunning 3 tests\ntest a ... ok\ntest b ... printed\nok\ntest c ... thread 'main' panicked at x:\nboom\n";
        let got = Framework::Libtest.split_module_output(raw, true);
        assert_eq!(
            got,
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
    fn live_output_holds_back_the_closing_lines() {
        let stream = |raw: &str| {
            let mut live = CaseStream::new(Framework::Libtest, "a::b", true);
            let shown: String = raw.as_bytes().chunks(3).map(|c| live.push(c)).collect();
            let body = Framework::Libtest.case_output("a::b", raw).body;
            let rest = live.finish().rest.unwrap();
            assert_eq!(
                format!("{shown}{rest}").trim_end(),
                body,
                "shown + rest = body"
            );
            (shown, body, rest)
        };
        let closing = "\n\ntest result: ok. 1 passed; 0 failed\n\n";
        // Output ending in a newline: `ok` gets a line of its own.
        let (shown, body, rest) = stream(&format!(
            "\nrunning 1 test\ntest a::b ... one\ntwo\nthree\nok{closing}"
        ));
        assert_eq!(
            (shown.as_str(), body.as_str(), rest.as_str()),
            ("one\ntwo\nthree\n", "one\ntwo\nthree", "")
        );
        // Output without a final newline: `ok` is glued to its last line, which
        // must be held back until the case ends.
        let (shown, body, rest) = stream(&format!(
            "\nrunning 1 test\ntest a::b ... one\nlastok{closing}"
        ));
        assert_eq!(
            (shown.as_str(), body.as_str(), rest.as_str()),
            ("one\n", "one\nlast", "last")
        );
    }

    #[test]
    fn live_output_is_linear_in_the_output() {
        // 50,000 writes of one line each: a filter that re-scanned all output
        // on every write (as the first version did) would take minutes here.
        let mut live = CaseStream::new(Framework::Libtest, "t", true);
        let mut shown = live.push(b"\nrunning 1 test\ntest t ... ");
        for i in 0..50_000 {
            shown.push_str(&live.push(format!("line {i}\n").as_bytes()));
        }
        assert!(shown.starts_with("line 0\nline 1\n"));
        assert!(
            shown.ends_with("line 49995\n"),
            "the last four lines are held"
        );
    }

    #[test]
    fn the_body_digest_ignores_framing_and_chunking() {
        let digest = |raw: &str, chunk: usize| {
            let mut s = CaseStream::new(Framework::Libtest, "t", false);
            for c in raw.as_bytes().chunks(chunk) {
                assert_eq!(s.push(c), "", "not live: nothing to show");
            }
            s.finish().digest
        };
        let run = |secs: &str| {
            format!("\nrunning 1 test\ntest t ... a\nb\nc\nd\ne\nok\n\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in {secs}s\n\n")
        };
        assert_eq!(digest(&run("0.00"), 3), digest(&run("1.25"), 1000));
        assert_ne!(
            digest(&run("0.00"), 7),
            digest(&run("0.00").replace("c\n", "C\n"), 7)
        );
        // A line without newlines is cut, so memory stays bounded.
        let mut s = CaseStream::new(Framework::Plain, "t", false);
        s.push(&vec![b'x'; 3 * MAX_PARTIAL]);
        assert!(s.partial.len() <= MAX_PARTIAL);
    }

    #[test]
    fn detection() {
        assert_eq!(
            Framework::detect(b"\0asm...RUST_TEST_THREADS...--format..."),
            Framework::Libtest
        );
        assert_eq!(Framework::detect(b"\0asm plain"), Framework::Plain);
    }
}
