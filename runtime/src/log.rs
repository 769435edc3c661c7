//! The input log: the ordered, de-duplicated list of what one run observed.
//!
//! It is the contract between the sandbox (which writes it), the cache (which
//! stores it and re-evaluates it) and people auditing a cached result (who read
//! it with `cachet inputs`). Its text form, one entry a line after a version
//! header, is specified in DESIGN.md ("Interception"); `parse(render(log)) == log`.
//!
//! Paths are `mount-name/relative/path`, percent-encoded where they hold a space,
//! `%` or a control character, so every line splits on spaces.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// First line of every rendered log; bumped when the meaning of a line changes.
pub const LOG_HEADER: &str = "cachet-input-log v2";

/// A sha256 digest, rendered `sha256:<64 hex digits>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    pub fn of(bytes: &[u8]) -> Self {
        Sha256Digest(Sha256::digest(bytes).into())
    }

    pub fn hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(DIGITS[usize::from(b >> 4)] as char);
            s.push(DIGITS[usize::from(b & 15)] as char);
        }
        s
    }

    pub fn parse_hex(hex: &str) -> Option<Self> {
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
            let s = std::str::from_utf8(chunk).ok()?;
            out[i] = u8::from_str_radix(s, 16).ok()?;
        }
        Some(Sha256Digest(out))
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", &self.hex()[..16])
    }
}

/// The digest of a log's observations as re-evaluated against the world: the
/// second half of a cache key. Equal digests mean every observation came out
/// the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InputsDigest(pub Sha256Digest);

impl fmt::Display for InputsDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What kind of file a path names, as the guest sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    /// Special files: the guest sees which kind in `stat`, and cannot open
    /// any of them (an open could block, or read what no log can digest).
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
    Other,
}

impl FileKind {
    fn as_str(self) -> &'static str {
        match self {
            FileKind::File => "file",
            FileKind::Dir => "dir",
            FileKind::Symlink => "symlink",
            FileKind::CharDevice => "chardev",
            FileKind::BlockDevice => "blockdev",
            FileKind::Fifo => "fifo",
            FileKind::Socket => "socket",
            FileKind::Other => "other",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "file" => FileKind::File,
            "dir" => FileKind::Dir,
            "symlink" => FileKind::Symlink,
            "chardev" => FileKind::CharDevice,
            "blockdev" => FileKind::BlockDevice,
            "fifo" => FileKind::Fifo,
            "socket" => FileKind::Socket,
            "other" => FileKind::Other,
            _ => return None,
        })
    }

    /// Not a file, directory or symlink: never opened by the sandbox.
    pub fn is_special(self) -> bool {
        !matches!(self, FileKind::File | FileKind::Dir | FileKind::Symlink)
    }
}

/// Why an observation failed, as far as the guest could tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    /// A path component was not a directory.
    NotDir,
    /// Too many symlinks, or a symlink where none may be followed.
    Loop,
    /// The host refused to read it (permissions).
    Access,
    /// `readlink` of something that is not a symlink.
    NotLink,
    /// Any other I/O error.
    Io,
}

impl ErrorKind {
    fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotDir => "notdir",
            ErrorKind::Loop => "loop",
            ErrorKind::Access => "access",
            ErrorKind::NotLink => "notlink",
            ErrorKind::Io => "io",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "notdir" => ErrorKind::NotDir,
            "loop" => ErrorKind::Loop,
            "access" => ErrorKind::Access,
            "notlink" => ErrorKind::NotLink,
            "io" => ErrorKind::Io,
            _ => return None,
        })
    }
}

/// The result of one observation; two runs that see equal observations for
/// every entry of a log cannot tell their worlds apart through those calls.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Observation {
    /// File contents (`open`), a sorted (name, kind) listing (`readdir`), an
    /// environment value (`env`) or the whole environment (`environ`).
    Digest(Sha256Digest),
    /// `stat`/`lstat`: virtualized kind and size. Directories always have size
    /// 0 (the real size differs between file systems and tells a test
    /// nothing), and `open` of a directory records just that: its listing is
    /// `readdir`'s observation. On read-write mounts, whose metadata the
    /// guest sees as it is, the modification time too (nanoseconds).
    Meta {
        kind: FileKind,
        size: u64,
        mtime: Option<i128>,
    },
    /// `readlink`: the link's target, byte for byte (it need not be UTF-8).
    Target(Vec<u8>),
    NotFound,
    /// `env` of a variable that is not set.
    Unset,
    Error(ErrorKind),
    /// The path leads outside its mount (through `..` or a symlink).
    Escapes,
}

impl Observation {
    /// A directory, as every observation of one reports it.
    pub const DIR: Observation = Observation::Meta {
        kind: FileKind::Dir,
        size: 0,
        mtime: None,
    };
}

/// A recorded operation whose result is an observation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ReadOp {
    /// `path_open` following symlinks.
    Open,
    /// `path_open` without following a final symlink.
    OpenNoFollow,
    /// `path_filestat_get` following symlinks, or `fd_filestat_get`.
    Stat,
    /// `path_filestat_get` without following a final symlink.
    Lstat,
    Readdir,
    Readlink,
}

impl ReadOp {
    pub fn as_str(self) -> &'static str {
        match self {
            ReadOp::Open => "open",
            ReadOp::OpenNoFollow => "open-nofollow",
            ReadOp::Stat => "stat",
            ReadOp::Lstat => "lstat",
            ReadOp::Readdir => "readdir",
            ReadOp::Readlink => "readlink",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "open" => ReadOp::Open,
            "open-nofollow" => ReadOp::OpenNoFollow,
            "stat" => ReadOp::Stat,
            "lstat" => ReadOp::Lstat,
            "readdir" => ReadOp::Readdir,
            "readlink" => ReadOp::Readlink,
            _ => return None,
        })
    }
}

/// An operation the sandbox refused: a fact for audits, not an input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DeniedOp {
    /// Reading a path that leads outside its mount.
    Open,
    Stat,
    Readdir,
    Readlink,
    /// Opening for writing, creating or truncating on a read-only mount.
    Write,
    Mkdir,
    Rmdir,
    Unlink,
    Rename,
    Symlink,
    Link,
    SetTimes,
}

impl DeniedOp {
    pub fn as_str(self) -> &'static str {
        match self {
            DeniedOp::Open => "open",
            DeniedOp::Stat => "stat",
            DeniedOp::Readdir => "readdir",
            DeniedOp::Readlink => "readlink",
            DeniedOp::Write => "write",
            DeniedOp::Mkdir => "mkdir",
            DeniedOp::Rmdir => "rmdir",
            DeniedOp::Unlink => "unlink",
            DeniedOp::Rename => "rename",
            DeniedOp::Symlink => "symlink",
            DeniedOp::Link => "link",
            DeniedOp::SetTimes => "settimes",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "open" => DeniedOp::Open,
            "stat" => DeniedOp::Stat,
            "readdir" => DeniedOp::Readdir,
            "readlink" => DeniedOp::Readlink,
            "write" => DeniedOp::Write,
            "mkdir" => DeniedOp::Mkdir,
            "rmdir" => DeniedOp::Rmdir,
            "unlink" => DeniedOp::Unlink,
            "rename" => DeniedOp::Rename,
            "symlink" => DeniedOp::Symlink,
            "link" => DeniedOp::Link,
            "settimes" => DeniedOp::SetTimes,
            _ => return None,
        })
    }
}

/// A source of nondeterminism the guest used: a fact, not an input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Fact {
    Clock,
    Random,
}

impl Fact {
    fn as_str(self) -> &'static str {
        match self {
            Fact::Clock => "clock",
            Fact::Random => "random",
        }
    }
}

/// One line of the log.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Entry {
    /// The guest read the whole environment.
    Environ(Observation),
    /// The guest read one variable through `cachet.getenv`.
    Env {
        name: String,
        observation: Observation,
    },
    /// A file system observation; `path` is `mount-name/relative/path`.
    Read {
        op: ReadOp,
        path: String,
        observation: Observation,
    },
    Denied {
        op: DeniedOp,
        path: String,
    },
    Uses(Fact),
}

/// Identifies an entry for de-duplication: each (op, path) is logged once.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum EntryKey {
    Environ,
    Env(String),
    Read(ReadOp, String),
    Denied(DeniedOp, String),
    Uses(Fact),
}

impl Entry {
    pub(crate) fn key(&self) -> EntryKey {
        match self {
            Entry::Environ(_) => EntryKey::Environ,
            Entry::Env { name, .. } => EntryKey::Env(name.clone()),
            Entry::Read { op, path, .. } => EntryKey::Read(*op, path.clone()),
            Entry::Denied { op, path } => EntryKey::Denied(*op, path.clone()),
            Entry::Uses(f) => EntryKey::Uses(*f),
        }
    }

    /// The observation this entry records, if it is an input at all.
    pub fn observation(&self) -> Option<&Observation> {
        match self {
            Entry::Environ(o)
            | Entry::Env { observation: o, .. }
            | Entry::Read { observation: o, .. } => Some(o),
            Entry::Denied { .. } | Entry::Uses(_) => None,
        }
    }

    /// The line without its observation: `open pkg/a.txt`, `env HOME`.
    pub fn subject(&self) -> String {
        match self {
            Entry::Environ(_) => "environ".to_string(),
            Entry::Env { name, .. } => format!("env {}", encode(name)),
            Entry::Read { op, path, .. } => format!("{} {}", op.as_str(), encode(path)),
            Entry::Denied { op, path } => format!("denied {} {}", op.as_str(), encode(path)),
            Entry::Uses(f) => format!("uses {}", f.as_str()),
        }
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.subject())?;
        if let Some(o) = self.observation() {
            write!(f, " {o}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Observation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Observation::Digest(d) => write!(f, "{d}"),
            Observation::Meta {
                kind: FileKind::Dir,
                mtime: None,
                ..
            } => f.write_str("dir"),
            Observation::Meta {
                kind: FileKind::Dir,
                mtime: Some(t),
                ..
            } => write!(f, "dir mtime={t}"),
            Observation::Meta {
                kind,
                size,
                mtime: None,
            } => write!(f, "{} size={size}", kind.as_str()),
            Observation::Meta {
                kind,
                size,
                mtime: Some(t),
            } => write!(f, "{} size={size} mtime={t}", kind.as_str()),
            Observation::Target(t) => write!(f, "target={}", encode_bytes(t)),
            Observation::NotFound => f.write_str("notfound"),
            Observation::Unset => f.write_str("unset"),
            Observation::Error(e) => write!(f, "error:{}", e.as_str()),
            Observation::Escapes => f.write_str("escapes"),
        }
    }
}

/// The ordered observations of one run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputLog {
    pub entries: Vec<Entry>,
}

/// Why a rendered log could not be read back.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LogParseError {
    #[error("input log does not start with `{LOG_HEADER}` (found {found:?}); it was written by another cachet version")]
    Header { found: String },
    #[error("input log line {line}: {reason}: {text:?}")]
    Line {
        line: usize,
        reason: &'static str,
        text: String,
    },
}

impl InputLog {
    /// The text form: the header, then one entry a line.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(64 * (self.entries.len() + 1));
        out.push_str(LOG_HEADER);
        out.push('\n');
        for e in &self.entries {
            out.push_str(&e.to_string());
            out.push('\n');
        }
        out
    }

    /// Reads the text form back.
    pub fn parse(text: &str) -> Result<Self, LogParseError> {
        let mut lines = text.lines();
        let header = lines.next().unwrap_or("");
        if header != LOG_HEADER {
            return Err(LogParseError::Header {
                found: header.to_string(),
            });
        }
        let entries = lines
            .enumerate()
            .map(|(i, line)| {
                parse_entry(line).map_err(|reason| LogParseError::Line {
                    line: i + 2,
                    reason,
                    text: line.to_string(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(InputLog { entries })
    }

    /// The digest of every observation in order: what the cache compares.
    pub fn inputs_digest(&self) -> InputsDigest {
        let mut h = Sha256::new();
        for e in &self.entries {
            if e.observation().is_some() {
                h.update(e.to_string().as_bytes());
                h.update(b"\n");
            }
        }
        InputsDigest(Sha256Digest(h.finalize().into()))
    }
}

fn parse_entry(line: &str) -> Result<Entry, &'static str> {
    let mut words = line.split(' ');
    let op = words.next().ok_or("empty line")?;
    let rest: Vec<&str> = words.collect();
    let need = |n: usize| {
        if rest.len() == n {
            Ok(())
        } else {
            Err("wrong number of fields")
        }
    };
    Ok(match op {
        "environ" => {
            need(1)?;
            Entry::Environ(parse_observation(&rest)?)
        }
        "env" => {
            need(2)?;
            Entry::Env {
                name: decode(rest[0])?,
                observation: parse_observation(&rest[1..])?,
            }
        }
        "denied" => {
            need(2)?;
            Entry::Denied {
                op: DeniedOp::parse(rest[0]).ok_or("unknown denied operation")?,
                path: decode(rest[1])?,
            }
        }
        "uses" => {
            need(1)?;
            Entry::Uses(match rest[0] {
                "clock" => Fact::Clock,
                "random" => Fact::Random,
                _ => return Err("unknown fact"),
            })
        }
        other => {
            let op = ReadOp::parse(other).ok_or("unknown operation")?;
            if rest.len() < 2 {
                return Err("wrong number of fields");
            }
            Entry::Read {
                op,
                path: decode(rest[0])?,
                observation: parse_observation(&rest[1..])?,
            }
        }
    })
}

fn parse_observation(words: &[&str]) -> Result<Observation, &'static str> {
    let first = *words.first().ok_or("missing observation")?;
    let single = |o: Observation| {
        if words.len() == 1 {
            Ok(o)
        } else {
            Err("trailing fields")
        }
    };
    if let Some(hex) = first.strip_prefix("sha256:") {
        return single(Observation::Digest(
            Sha256Digest::parse_hex(hex).ok_or("bad digest")?,
        ));
    }
    if let Some(t) = first.strip_prefix("target=") {
        return single(Observation::Target(decode_bytes(t)?));
    }
    if let Some(e) = first.strip_prefix("error:") {
        return single(Observation::Error(
            ErrorKind::parse(e).ok_or("unknown error kind")?,
        ));
    }
    let mtime = |w: Option<&&str>| -> Result<Option<i128>, &'static str> {
        w.map(|w| {
            w.strip_prefix("mtime=")
                .and_then(|t| t.parse().ok())
                .ok_or("bad mtime")
        })
        .transpose()
    };
    match first {
        "dir" if words.len() == 1 => Ok(Observation::DIR),
        "dir" if words.len() == 2 => Ok(Observation::Meta {
            kind: FileKind::Dir,
            size: 0,
            mtime: mtime(words.get(1))?,
        }),
        "dir" => Err("trailing fields"),
        "notfound" => single(Observation::NotFound),
        "unset" => single(Observation::Unset),
        "escapes" => single(Observation::Escapes),
        kind => {
            let kind = FileKind::parse(kind).ok_or("unknown observation")?;
            let size = words
                .get(1)
                .and_then(|w| w.strip_prefix("size="))
                .ok_or("missing size")?;
            let size = size.parse().map_err(|_| "bad size")?;
            if words.len() > 3 {
                return Err("trailing fields");
            }
            let mtime = mtime(words.get(2))?;
            if kind == FileKind::Dir && (size != 0 || mtime.is_none()) {
                // `dir` and `dir mtime=` are the forms of a directory.
                return Err("unknown observation");
            }
            Ok(Observation::Meta { kind, size, mtime })
        }
    }
}

/// Percent-encodes what would break a line apart: space, `%`, control characters.
pub(crate) fn encode(s: &str) -> String {
    if !s
        .bytes()
        .any(|b| b == b' ' || b == b'%' || b < 0x20 || b == 0x7f)
    {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            ' ' | '%' | '\u{0}'..='\u{1f}' | '\u{7f}' => {
                out.push_str(&format!("%{:02X}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes bytes that need not be UTF-8: valid UTF-8 as [`encode`]
/// does, every other byte as `%XX`.
pub(crate) fn encode_bytes(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len());
    for chunk in b.utf8_chunks() {
        out.push_str(&encode(chunk.valid()));
        for byte in chunk.invalid() {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn decode(s: &str) -> Result<String, &'static str> {
    String::from_utf8(decode_bytes(s)?).map_err(|_| "bad escape")
}

fn decode_bytes(s: &str) -> Result<Vec<u8>, &'static str> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or("bad escape")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| "bad escape")?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> InputLog {
        let d = Sha256Digest::of(b"x");
        InputLog {
            entries: vec![
                Entry::Environ(Observation::Digest(d)),
                Entry::Env {
                    name: "GREETING".into(),
                    observation: Observation::Unset,
                },
                Entry::Env {
                    name: "HOME".into(),
                    observation: Observation::Digest(d),
                },
                Entry::Read {
                    op: ReadOp::Open,
                    path: "pkg/testdata/a b%.txt".into(),
                    observation: Observation::Digest(d),
                },
                Entry::Read {
                    op: ReadOp::Open,
                    path: "pkg/testdata".into(),
                    observation: Observation::DIR,
                },
                Entry::Read {
                    op: ReadOp::OpenNoFollow,
                    path: "pkg/x".into(),
                    observation: Observation::Error(ErrorKind::Loop),
                },
                Entry::Read {
                    op: ReadOp::Open,
                    path: "pkg/absent".into(),
                    observation: Observation::NotFound,
                },
                Entry::Read {
                    op: ReadOp::Stat,
                    path: "pkg/big.bin".into(),
                    observation: Observation::Meta {
                        kind: FileKind::File,
                        size: 1048576,
                        mtime: None,
                    },
                },
                Entry::Read {
                    op: ReadOp::Lstat,
                    path: "pkg/d".into(),
                    observation: Observation::DIR,
                },
                Entry::Read {
                    op: ReadOp::Lstat,
                    path: "pkg/l".into(),
                    observation: Observation::Meta {
                        kind: FileKind::Symlink,
                        size: 7,
                        mtime: None,
                    },
                },
                Entry::Read {
                    op: ReadOp::Readdir,
                    path: "pkg".into(),
                    observation: Observation::Digest(d),
                },
                Entry::Read {
                    op: ReadOp::Readlink,
                    path: "pkg/l".into(),
                    observation: Observation::Target(b"../x y\n".to_vec()),
                },
                Entry::Read {
                    op: ReadOp::Readlink,
                    path: "pkg/bin".into(),
                    observation: Observation::Target(b"caf\xc3\xa9\xff%".to_vec()),
                },
                Entry::Read {
                    op: ReadOp::Stat,
                    path: "data/f".into(),
                    observation: Observation::Meta {
                        kind: FileKind::File,
                        size: 3,
                        mtime: Some(1_700_000_000_123_456_789),
                    },
                },
                Entry::Read {
                    op: ReadOp::Lstat,
                    path: "data".into(),
                    observation: Observation::Meta {
                        kind: FileKind::Dir,
                        size: 0,
                        mtime: Some(-5),
                    },
                },
                Entry::Read {
                    op: ReadOp::Open,
                    path: "pkg/link-out".into(),
                    observation: Observation::Escapes,
                },
                Entry::Denied {
                    op: DeniedOp::Open,
                    path: "pkg/../secret.txt".into(),
                },
                Entry::Denied {
                    op: DeniedOp::Write,
                    path: "pkg/out.txt".into(),
                },
                Entry::Uses(Fact::Clock),
                Entry::Uses(Fact::Random),
            ],
        }
    }

    #[test]
    fn parse_of_render_is_identity() {
        let log = sample();
        let text = log.render();
        assert_eq!(InputLog::parse(&text).unwrap(), log);
        assert!(
            text.contains("open pkg/testdata/a%20b%25.txt sha256:"),
            "{text}"
        );
        assert!(
            text.contains("readlink pkg/l target=../x%20y%0A\n"),
            "{text}"
        );
        assert!(text.contains("stat pkg/big.bin file size=1048576\n"));
        assert!(text.contains("lstat pkg/d dir\n"));
        assert!(
            text.contains("readlink pkg/bin target=café%FF%25\n"),
            "non-UTF-8 targets are exact: {text}"
        );
        assert!(text.contains("stat data/f file size=3 mtime=1700000000123456789\n"));
        assert!(text.contains("lstat data dir mtime=-5\n"));
    }

    #[test]
    fn serde_round_trip() {
        let log = sample();
        let json = serde_json::to_string(&log).unwrap();
        assert_eq!(serde_json::from_str::<InputLog>(&json).unwrap(), log);
    }

    #[test]
    fn wrong_header_and_bad_lines_are_errors() {
        assert!(matches!(
            InputLog::parse("cachet-input-log v0\n"),
            Err(LogParseError::Header { .. })
        ));
        for bad in [
            "bogus pkg/a notfound",
            "open pkg/a",
            "open pkg/a sha256:12",
            "env X",
            "stat pkg/a file size=x",
            "uses nothing",
            "open pkg/%zz notfound",
            "stat pkg/d dir size=0",
            "stat pkg/f file size=1 mtime=x",
            "stat pkg/f file size=1 mtime=1 extra",
        ] {
            let text = format!("{LOG_HEADER}\n{bad}\n");
            assert!(
                matches!(
                    InputLog::parse(&text),
                    Err(LogParseError::Line { line: 2, .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn digest_covers_observations_only() {
        let mut a = sample();
        let base = a.inputs_digest();
        a.entries.push(Entry::Uses(Fact::Clock));
        assert_eq!(a.inputs_digest(), base, "facts are not inputs");
        if let Entry::Read { observation, .. } = &mut a.entries[6] {
            *observation = Observation::Digest(Sha256Digest::of(b"now here"));
        }
        assert_ne!(a.inputs_digest(), base);
    }
}
