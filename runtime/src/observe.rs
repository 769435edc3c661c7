//! Observations: what a path or variable looks like to a guest, computed by the
//! host through cap-std, confined to the mount, with the sandbox's virtualized
//! metadata. The recorder calls this during a run; [`reobserve`] calls the very
//! same code to re-evaluate a stored log, so a cache lookup sees the world
//! exactly as a new run would.
//!
//! Paths keep their `..` components: cap-std resolves `link/..` through the
//! link, as the guest's call did, so a lexically "cleaned" path could name a
//! different file. Only `.` and empty components are dropped.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::OnceLock;

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use sha2::{Digest as _, Sha256};

use crate::log::{Entry, ErrorKind, FileKind, InputLog, Observation, ReadOp, Sha256Digest};

/// Whether the guest may change a mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum MountMode {
    /// Reads are recorded as inputs; metadata is virtualized; writes are denied.
    ReadOnly,
    /// Reads are recorded as inputs, writes are allowed, metadata is real.
    ReadWrite,
}

/// Timestamp every file on a read-only mount reports: 2001-09-09T01:46:40Z.
/// Fixed so that a guest cannot observe mtimes, which are then not inputs and a
/// fresh clone still hits the cache. Not 0, which some tools treat as "unset".
pub const VIRTUAL_TIME_NS: u64 = 1_000_000_000 * 1_000_000_000;

/// Inode number a read-only path reports: derived from its logical path, so it
/// is stable across machines and checkouts.
pub fn virtual_ino(logical_path: &str) -> u64 {
    let d = Sha256::digest(logical_path.as_bytes());
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes")) | 1
}

/// Device number a read-only mount reports, derived from its logical name.
pub fn virtual_dev(mount_name: &str) -> u64 {
    virtual_ino(&format!("dev:{mount_name}"))
}

/// A file's identity as `stat` gives it; any write changes `ctime` at least.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl FileId {
    /// The identity `stat` gave as `m`.
    pub fn of(m: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        FileId {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        }
    }
}

/// Remembers content digests by [`FileId`], so an unchanged file costs an
/// `fstat` instead of a read. An implementation must never return a digest
/// for a file that may have changed since it was recorded (the host's memo
/// applies the racy-file rule).
pub trait DigestMemo: Send + Sync {
    fn get(&self, id: &FileId) -> Option<Sha256Digest>;
    fn put(&self, id: FileId, digest: Sha256Digest);
}

/// A shared [`DigestMemo`].
#[derive(Clone)]
pub struct SharedMemo(pub std::sync::Arc<dyn DigestMemo>);

impl fmt::Debug for SharedMemo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedMemo")
    }
}

struct WorldMount {
    name: String,
    host: PathBuf,
    mode: MountMode,
    dir: OnceLock<Option<Dir>>,
}

/// The mounts (by logical name) and environment that observations are made in.
pub struct World {
    mounts: Vec<WorldMount>,
    env: BTreeMap<String, String>,
    memo: Option<SharedMemo>,
}

impl fmt::Debug for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("World")
            .field(
                "mounts",
                &self
                    .mounts
                    .iter()
                    .map(|m| (&m.name, &m.host, m.mode))
                    .collect::<Vec<_>>(),
            )
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl World {
    pub fn new(
        mounts: impl IntoIterator<Item = (String, PathBuf, MountMode)>,
        env: BTreeMap<String, String>,
    ) -> Self {
        World {
            mounts: mounts
                .into_iter()
                .map(|(name, host, mode)| WorldMount {
                    name,
                    host,
                    mode,
                    dir: OnceLock::new(),
                })
                .collect(),
            env,
            memo: None,
        }
    }

    /// Uses `memo` for file contents.
    pub fn with_memo(mut self, memo: Option<SharedMemo>) -> Self {
        self.memo = memo;
        self
    }

    pub(crate) fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    pub(crate) fn mount_index(&self, name: &str) -> Option<usize> {
        self.mounts.iter().position(|m| m.name == name)
    }

    pub(crate) fn mount_name(&self, index: usize) -> &str {
        &self.mounts[index].name
    }

    pub(crate) fn mount_mode(&self, index: usize) -> MountMode {
        self.mounts[index].mode
    }

    /// Real metadata of `rel` in mount `index`, not following a final
    /// symlink: for the scratch quota of preview 2 runs, whose stat has no
    /// inode.
    pub(crate) fn real_stat(&self, index: usize, rel: &str) -> Option<crate::quota::RealStat> {
        use cap_std::fs::MetadataExt;
        let dir = self.dir(index)?;
        let m = if rel.is_empty() {
            dir.dir_metadata().ok()?
        } else {
            dir.symlink_metadata(rel).ok()?
        };
        Some(crate::quota::RealStat {
            inode: (m.dev(), m.ino()),
            nlink: m.nlink(),
            size: m.len(),
            is_dir: m.is_dir(),
        })
    }

    fn dir(&self, index: usize) -> Option<&Dir> {
        let m = &self.mounts[index];
        m.dir
            .get_or_init(|| Dir::open_ambient_dir(&m.host, ambient_authority()).ok())
            .as_ref()
    }

    /// Observes `op` on `path` (`mount-name/relative/path`).
    pub fn observe(&self, op: ReadOp, path: &str) -> Observation {
        let (name, rel) = path.split_once('/').unwrap_or((path, ""));
        match self.mount_index(name) {
            Some(i) => self.observe_in(i, op, rel),
            None => Observation::NotFound,
        }
    }

    /// Observes `op` on `rel` inside mount `index`.
    pub(crate) fn observe_in(&self, index: usize, op: ReadOp, rel: &str) -> Observation {
        self.observe_identified(index, op, rel).0
    }

    /// Observes `op` on `rel` inside mount `index`, with the identity of
    /// what it looked at, taken before looking: a change made after that
    /// (and perhaps undone) shows in the identity at the end of the run.
    pub(crate) fn observe_identified(
        &self,
        index: usize,
        op: ReadOp,
        rel: &str,
    ) -> (Observation, Option<FileId>) {
        let Some(dir) = self.dir(index) else {
            return (Observation::NotFound, None);
        };
        let rel = if rel.is_empty() { "." } else { rel };
        // Metadata is real on read-write mounts: its mtime is observable.
        let mtime = self.mounts[index].mode == MountMode::ReadWrite;
        let memo = self.memo.as_ref().map(|m| &*m.0);
        let id = identify(dir, op, rel);
        let result = match op {
            ReadOp::Open => open(dir, rel, true, memo, mtime),
            ReadOp::OpenNoFollow => open(dir, rel, false, memo, mtime),
            ReadOp::Stat => dir.metadata(rel).map(|m| meta(&m, mtime)),
            ReadOp::Lstat => dir.symlink_metadata(rel).map(|m| meta(&m, mtime)),
            ReadOp::Readdir => listing(dir, rel),
            ReadOp::Readlink => dir
                .read_link(rel)
                .map(|t| Observation::Target(t.into_os_string().into_encoded_bytes())),
        };
        (result.unwrap_or_else(|e| from_io_error(op, &e)), id)
    }

    /// The identity of what `op` on `rel` looks at now (see
    /// [`World::observe_identified`]).
    pub(crate) fn identity(&self, index: usize, op: ReadOp, rel: &str) -> Option<FileId> {
        let dir = self.dir(index)?;
        identify(dir, op, if rel.is_empty() { "." } else { rel })
    }

    /// The observation an `environ` entry records: every variable, sorted.
    pub fn environ_observation(&self) -> Observation {
        let mut h = Sha256::new();
        for (k, v) in &self.env {
            h.update(k.as_bytes());
            h.update(b"=");
            h.update(v.as_bytes());
            h.update(b"\0");
        }
        Observation::Digest(Sha256Digest(h.finalize().into()))
    }

    /// The observation an `env NAME` entry records.
    pub fn env_observation(&self, name: &str) -> Observation {
        match self.env.get(name) {
            Some(v) => Observation::Digest(Sha256Digest::of(v.as_bytes())),
            None => Observation::Unset,
        }
    }

    /// The same entry, observed in this world now.
    pub fn reobserve_entry(&self, entry: &Entry) -> Entry {
        match entry {
            Entry::Environ(_) => Entry::Environ(self.environ_observation()),
            Entry::Env { name, .. } => Entry::Env {
                name: name.clone(),
                observation: self.env_observation(name),
            },
            Entry::Read { op, path, .. } => Entry::Read {
                op: *op,
                path: path.clone(),
                observation: self.observe(*op, path),
            },
            Entry::Denied { .. } | Entry::Uses(_) => entry.clone(),
        }
    }
}

/// Re-observes every entry of `log` in `world`: the log a run would record now
/// if it made the same calls. Its [`InputLog::inputs_digest`] equals the
/// recorded log's exactly when no observation changed.
pub fn reobserve(log: &InputLog, world: &World) -> InputLog {
    InputLog {
        entries: log
            .entries
            .iter()
            .map(|e| world.reobserve_entry(e))
            .collect(),
    }
}

/// The first observation that differs between a recorded log and its
/// re-observation, for `--explain` and for "changed during run".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// `open pkg/testdata/a.txt`
    pub subject: String,
    pub was: Observation,
    pub now: Observation,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Observation::*;
        let what = match (&self.was, &self.now) {
            (NotFound, _) => "now exists",
            (_, NotFound) => "removed",
            (Unset, _) => "now set",
            (_, Unset) => "now unset",
            (Digest(_), Digest(_)) if self.subject.starts_with("readdir") => "listing changed",
            (Digest(_), Digest(_)) if self.subject.starts_with("env") => "value changed",
            (Digest(_), Digest(_)) => "content changed",
            (Meta { kind: a, .. }, Meta { kind: b, .. }) if a != b => "type changed",
            (Meta { size: a, .. }, Meta { size: b, .. }) if a != b => "size changed",
            (Meta { .. }, Meta { .. }) => "modified",
            (Target(_), Target(_)) => "target changed",
            _ => "changed",
        };
        write!(
            f,
            "{}: {what} (was {}, now {})",
            self.subject, self.was, self.now
        )
    }
}

/// Compares a recorded log with its re-observation entry by entry.
pub fn first_change(recorded: &InputLog, now: &InputLog) -> Option<Change> {
    recorded
        .entries
        .iter()
        .zip(&now.entries)
        .find_map(|(a, b)| {
            let (was, now) = (a.observation()?, b.observation()?);
            (was != now).then(|| Change {
                subject: a.subject(),
                was: was.clone(),
                now: now.clone(),
            })
        })
}

/// Whether `op` follows a final symlink.
fn follows(op: ReadOp) -> bool {
    matches!(op, ReadOp::Open | ReadOp::Stat | ReadOp::Readdir)
}

fn identify(dir: &Dir, op: ReadOp, rel: &str) -> Option<FileId> {
    let m = if follows(op) {
        dir.metadata(rel)
    } else {
        dir.symlink_metadata(rel)
    };
    m.ok().map(|m| id_of(&m))
}

fn id_of(m: &cap_std::fs::Metadata) -> FileId {
    use cap_std::fs::MetadataExt;
    let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
    FileId {
        dev: m.dev(),
        ino: m.ino(),
        size: m.len(),
        mtime_ns: ns(m.mtime(), m.mtime_nsec()),
        ctime_ns: ns(m.ctime(), m.ctime_nsec()),
    }
}

fn open(
    dir: &Dir,
    rel: &str,
    follow: bool,
    memo: Option<&dyn DigestMemo>,
    mtime: bool,
) -> io::Result<Observation> {
    let m = if follow {
        dir.metadata(rel)?
    } else {
        dir.symlink_metadata(rel)?
    };
    if m.is_symlink() {
        return Ok(Observation::Error(ErrorKind::Loop));
    }
    if !m.is_file() {
        // Directories record their kind only (their listing is `readdir`'s);
        // special files are never opened (the sandbox refuses them: an open
        // could block, a read could give anything), so their kind is all a
        // guest can learn.
        return Ok(meta(&m, mtime));
    }
    let mut file = dir.open(rel)?.into_std();
    let id = memo.and_then(|_| file_id(&file));
    if let (Some(memo), Some(id)) = (memo, &id) {
        if let Some(d) = memo.get(id) {
            return Ok(Observation::Digest(d));
        }
    }
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let digest = Sha256Digest(h.finalize().into());
    // Recorded only if the file did not change while it was read.
    if let (Some(memo), Some(id)) = (memo, id) {
        if file_id(&file) == Some(id) {
            memo.put(id, digest);
        }
    }
    Ok(Observation::Digest(digest))
}

fn file_id(file: &std::fs::File) -> Option<FileId> {
    file.metadata().ok().map(|m| FileId::of(&m))
}

fn kind_of(t: cap_std::fs::FileType) -> FileKind {
    use cap_std::fs::FileTypeExt;
    if t.is_dir() {
        FileKind::Dir
    } else if t.is_file() {
        FileKind::File
    } else if t.is_symlink() {
        FileKind::Symlink
    } else if t.is_char_device() {
        FileKind::CharDevice
    } else if t.is_block_device() {
        FileKind::BlockDevice
    } else if t.is_fifo() {
        FileKind::Fifo
    } else if t.is_socket() {
        FileKind::Socket
    } else {
        FileKind::Other
    }
}

/// Kind and size, as the guest sees them; with `mtime`, the modification
/// time too (read-write mounts, where it is real).
fn meta(m: &cap_std::fs::Metadata, mtime: bool) -> Observation {
    let kind = kind_of(m.file_type());
    let size = if kind == FileKind::Dir { 0 } else { m.len() };
    Observation::Meta {
        kind,
        size,
        mtime: mtime.then(|| id_of(m).mtime_ns),
    }
}

fn listing(dir: &Dir, rel: &str) -> io::Result<Observation> {
    let mut entries = Vec::new();
    for entry in dir.read_dir(rel)? {
        let entry = entry?;
        let kind = kind_of(entry.file_type()?);
        entries.push((entry.file_name().into_encoded_bytes(), kind));
    }
    entries.sort();
    let mut h = Sha256::new();
    for (name, kind) in entries {
        h.update(&name);
        h.update([0, kind as u8]);
    }
    Ok(Observation::Digest(Sha256Digest(h.finalize().into())))
}

fn from_io_error(op: ReadOp, e: &io::Error) -> Observation {
    match e.kind() {
        io::ErrorKind::NotFound => Observation::NotFound,
        // cap-std reports a path that leads outside the mount as PermissionDenied
        // without an OS error code; a real EACCES carries one.
        io::ErrorKind::PermissionDenied if e.raw_os_error().is_none() => Observation::Escapes,
        io::ErrorKind::PermissionDenied => Observation::Error(ErrorKind::Access),
        io::ErrorKind::NotADirectory => Observation::Error(ErrorKind::NotDir),
        io::ErrorKind::InvalidInput if op == ReadOp::Readlink => {
            Observation::Error(ErrorKind::NotLink)
        }
        _ if e.raw_os_error() == Some(libc_eloop()) => Observation::Error(ErrorKind::Loop),
        _ => Observation::Error(ErrorKind::Io),
    }
}

const fn libc_eloop() -> i32 {
    // ELOOP on Linux and the BSDs.
    if cfg!(any(
        target_os = "macos",
        target_os = "freebsd",
        target_os = "netbsd",
        target_os = "openbsd"
    )) {
        62
    } else {
        40
    }
}

/// Drops `.` and empty components, keeping `..` (see the module documentation).
/// `None` when the path is absolute or climbs above the mount from its start:
/// those escape in every world, so they are facts, not observations.
///
/// `base` is a path this function made (or empty): its components are
/// never empty or `.`, and the first is never `..`. Only `path` is split,
/// so a guest walking down a deep tree fd by fd pays for the copy of its
/// base, not for re-reading every component of it on each call.
pub(crate) fn join(base: &str, path: &str) -> Option<String> {
    if path.starts_with('/') {
        return None;
    }
    let mut out = String::with_capacity(base.len() + 1 + path.len());
    out.push_str(base);
    for c in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
        if out.is_empty() {
            if c == ".." {
                return None;
            }
        } else {
            out.push('/');
        }
        out.push_str(c);
    }
    Some(out)
}

/// `mount-name/rel`, or `mount-name` for the mount's root.
pub(crate) fn logical(mount: &str, rel: &str) -> String {
    if rel.is_empty() {
        mount.to_string()
    } else {
        format!("{mount}/{rel}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_keeps_dotdot_and_rejects_leading_escape() {
        assert_eq!(
            join("", "testdata/./a.txt").as_deref(),
            Some("testdata/a.txt")
        );
        assert_eq!(join("sub", "../a.txt").as_deref(), Some("sub/../a.txt"));
        assert_eq!(join("", "../secret").as_deref(), None);
        assert_eq!(join("", "/etc/passwd").as_deref(), None);
        assert_eq!(join("", ".").as_deref(), Some(""));
        assert_eq!(join("a/b", "c/./d//").as_deref(), Some("a/b/c/d"));
        assert_eq!(join("a", "").as_deref(), Some("a"));
        assert_eq!(join("a", "../..").as_deref(), Some("a/../.."));
    }

    #[test]
    fn virtual_ids_are_stable_and_distinct() {
        assert_eq!(virtual_ino("pkg/a"), virtual_ino("pkg/a"));
        assert_ne!(virtual_ino("pkg/a"), virtual_ino("pkg/b"));
        assert_ne!(virtual_dev("pkg"), virtual_ino("pkg"));
    }

    #[test]
    fn observations_and_changes() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("d")).unwrap();
        std::fs::write(tmp.path().join("d/a.txt"), "hello").unwrap();
        let world = World::new(
            [(
                "pkg".to_string(),
                tmp.path().to_path_buf(),
                MountMode::ReadOnly,
            )],
            BTreeMap::new(),
        );
        let content = world.observe(ReadOp::Open, "pkg/d/a.txt");
        assert_eq!(content, Observation::Digest(Sha256Digest::of(b"hello")));
        assert_eq!(world.observe(ReadOp::Open, "pkg/d"), Observation::DIR);
        assert_eq!(world.observe(ReadOp::Stat, "pkg/d"), Observation::DIR);
        assert_eq!(
            world.observe(ReadOp::Stat, "pkg/d/a.txt"),
            Observation::Meta {
                kind: FileKind::File,
                size: 5,
                mtime: None,
            }
        );
        assert_eq!(
            world.observe(ReadOp::Open, "pkg/nope"),
            Observation::NotFound
        );
        assert_eq!(
            world.observe(ReadOp::Open, "pkg/d/a.txt/x"),
            Observation::Error(ErrorKind::NotDir)
        );
        assert_eq!(
            world.observe(ReadOp::Readlink, "pkg/d/a.txt"),
            Observation::Error(ErrorKind::NotLink)
        );
        assert_eq!(
            world.observe(ReadOp::Open, "other/x"),
            Observation::NotFound
        );

        let log = InputLog {
            entries: vec![
                Entry::Env {
                    name: "X".into(),
                    observation: Observation::Unset,
                },
                Entry::Read {
                    op: ReadOp::Open,
                    path: "pkg/d/a.txt".into(),
                    observation: content,
                },
                Entry::Read {
                    op: ReadOp::Readdir,
                    path: "pkg/d".into(),
                    observation: world.observe(ReadOp::Readdir, "pkg/d"),
                },
            ],
        };
        assert_eq!(reobserve(&log, &world), log);
        std::fs::write(tmp.path().join("d/a.txt"), "jello").unwrap();
        let now = reobserve(&log, &world);
        assert_ne!(now.inputs_digest(), log.inputs_digest());
        let change = first_change(&log, &now).unwrap();
        assert!(
            change
                .to_string()
                .starts_with("open pkg/d/a.txt: content changed"),
            "{change}"
        );
        std::fs::write(tmp.path().join("d/new.txt"), "").unwrap();
        std::fs::write(tmp.path().join("d/a.txt"), "hello").unwrap();
        let change = first_change(&log, &reobserve(&log, &world)).unwrap();
        assert_eq!(change.subject, "readdir pkg/d");
    }
}
