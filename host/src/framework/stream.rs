//! A case's output as it is written: the harness's framing removed, shown
//! live (`-v`, rendered by the harness's live renderer), and digested whole
//! for `--verify` (the output kept in memory and in the cache may be only
//! its head and tail).

use sha2::Digest as _;

use super::{Framework, Render};

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
    /// The harness's text before the case's own output, if it has one.
    head: Option<String>,
    partial: Vec<u8>,
    held: std::collections::VecDeque<String>,
    /// The harness's opening framing has been passed.
    started: bool,
    /// What `push` shows, when live.
    live: Option<Box<dyn Render>>,
    digest: sha2::Sha256,
}

/// What remains when a case's stream ends.
pub struct StreamEnd {
    /// The part of the body not shown yet (as the live renderer shows it),
    /// or `None` when nothing of the body was shown (its opening framing
    /// never passed).
    pub rest: Option<String>,
    /// The sha256 of the whole body.
    pub digest: cachet_runtime::Sha256Digest,
}

impl CaseStream {
    pub fn new(framework: Framework, case: &str, live: bool) -> Self {
        let head = framework.harness().stream_head(case);
        CaseStream {
            framework,
            case: case.to_string(),
            started: head.is_none(),
            head,
            partial: Vec::new(),
            held: std::collections::VecDeque::new(),
            live: live.then(|| framework.harness().live()),
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
                let body = self.unframe(line);
                self.digest.update(body.as_bytes());
                if let Some(live) = &mut self.live {
                    out.push_str(&live.push(&body));
                }
            }
        }
        self.partial.drain(..start);
        out
    }

    /// A line leaving the queue, without the harness's opening framing.
    fn unframe(&mut self, line: String) -> String {
        let Some(head) = self.head.as_deref().filter(|_| !self.started) else {
            return line;
        };
        match line.find(head) {
            Some(i) => {
                self.started = true;
                line[i + head.len()..].to_string()
            }
            None => String::new(),
        }
    }

    /// After the case ended: the held lines without the closing framing.
    pub fn finish(&mut self) -> StreamEnd {
        // The body starts after the head; other harnesses have none.
        let mut raw = match (&self.head, self.started) {
            (Some(head), true) => head.clone(),
            _ => String::new(),
        };
        raw.extend(self.held.iter().map(String::as_str));
        raw.push_str(&String::from_utf8_lossy(&self.partial));
        let rest = self.framework.harness().case_output(&self.case, &raw).body;
        let mut digest = self.digest.clone();
        digest.update(rest.as_bytes());
        let shown = match &mut self.live {
            Some(live) => live.push(&rest) + &live.finish(),
            None => rest,
        };
        StreamEnd {
            rest: self.started.then_some(shown),
            digest: cachet_runtime::Sha256Digest(digest.finalize().into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_output_holds_back_the_closing_lines() {
        let stream = |raw: &str| {
            let mut live = CaseStream::new(Framework::Libtest, "a::b", true);
            let shown: String = raw.as_bytes().chunks(3).map(|c| live.push(c)).collect();
            let body = Framework::Libtest.harness().case_output("a::b", raw).body;
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
}
