//! The recorder: per-run state behind the interception wrappers. It maps guest
//! file descriptors to logical paths, turns each intercepted call into at most
//! one log entry per (op, path), and rewrites the metadata a guest reads from
//! read-only mounts to its virtualized form.
//!
//! It knows nothing of wasmtime: the wrappers in `intercept.rs` hand it guest
//! memory as a byte slice after the stock WASI call has run.

use std::collections::{HashMap, HashSet};

use crate::dirents::DIRENT_SIZE;
use crate::log::{DeniedOp, Entry, EntryKey, Fact, FileKind, InputLog, Observation, ReadOp};
use crate::observe::MountMode;
use crate::observe::{
    first_change, join, logical, reobserve, virtual_dev, virtual_ino, FileId, World,
    VIRTUAL_TIME_NS,
};

/// What a guest fd refers to.
#[derive(Clone, Debug)]
struct FdPath {
    mount: usize,
    rel: String,
}

/// Where an (fd, path) pair leads.
enum Target {
    /// Not a file-system fd we track (stdio), or a path that is not UTF-8.
    Untracked,
    /// Above the mount root from the start: an escape in every world.
    Escape(String),
    Path {
        mount: usize,
        rel: String,
    },
}

pub(crate) struct Recorder {
    world: World,
    scratch: Option<usize>,
    fds: HashMap<u32, FdPath>,
    /// Each logged (op, path) and its index in the log.
    seen: HashMap<EntryKey, usize>,
    log: InputLog,
    /// What each logged file-system observation looked at, identified when
    /// it looked: (entry index, mount, path, op, identity).
    identities: Vec<(usize, usize, String, ReadOp, FileId)>,
    /// Paths on read-write mounts this run changed (with everything below
    /// them): what it observes there afterwards is its own output.
    dirty: HashSet<(usize, String)>,
    /// Directories on read-write mounts whose listing this run changed.
    listing_dirty: HashSet<(usize, String)>,
    /// Why the result cannot be cached, when re-observing could not tell.
    uncacheable: Option<String>,
}

/// `filestat` layout (WASI p1): dev, ino, filetype (u8, padded), nlink, size,
/// atim, mtim, ctim; 64 bytes.
const FILESTAT_SIZE: usize = 64;
const FILETYPE_DIRECTORY: u8 = 3;

/// The right that makes an open a write (WASI p1 `rights` bit fd_write): the
/// one wasmtime-wasi opens for writing on. Go asks for fd_allocate and
/// fd_filestat_set_size on plain reads, and those opens succeed read-only on
/// a read-only mount; taking them for writes left Go's reads unrecorded
/// (issue 9).
const WRITE_RIGHTS: i64 = 1 << 6;
/// `oflags`: creat, excl, trunc.
const MUTATING_OFLAGS: i32 = 1 | 4 | 8;
/// WASI errno `acces`.
const ERRNO_ACCES: u16 = 2;
/// `lookupflags`: symlink_follow.
const SYMLINK_FOLLOW: i32 = 1;

impl Recorder {
    pub fn new(world: World, scratch: Option<usize>) -> Self {
        Recorder {
            world,
            scratch,
            fds: HashMap::new(),
            seen: HashMap::new(),
            log: InputLog::default(),
            identities: Vec::new(),
            dirty: HashSet::new(),
            listing_dirty: HashSet::new(),
            uncacheable: None,
        }
    }

    /// At the end of the run: the log, and why its result must not be
    /// cached, if it must not: an input read during the run is different by
    /// its end (re-observed), or was changed and changed back (its identity
    /// differs), or the run changed a read-write mount and did not leave it
    /// as it found it, or could not tell.
    pub fn finish(self) -> (InputLog, Option<String>) {
        let changed = self.uncacheable.clone().or_else(|| {
            first_change(&self.log, &reobserve(&self.log, &self.world))
                .map(|c| format!("{c} during the run"))
                .or_else(|| self.identity_change())
        });
        (self.log, changed)
    }

    /// The first observed object (not changed by the run itself) whose
    /// identity (dev, inode, size, mtime, ctime) differs now.
    fn identity_change(&self) -> Option<String> {
        self.identities
            .iter()
            .filter(|(_, mount, rel, _, _)| !self.is_dirty(*mount, rel))
            .find(|(_, mount, rel, op, id)| self.world.identity(*mount, *op, rel) != Some(*id))
            .map(|(i, ..)| {
                format!(
                    "{}: changed during the run and changed back",
                    self.log.entries[*i].subject()
                )
            })
    }

    /// Whether `rel` or a directory above it was changed by this run.
    fn is_dirty(&self, mount: usize, rel: &str) -> bool {
        if self.dirty.is_empty() {
            return false;
        }
        let mut end = 0;
        loop {
            let next = rel[end..].find('/').map(|i| end + i).unwrap_or(rel.len());
            if self.dirty.contains(&(mount, rel[..next].to_string())) {
                return true;
            }
            if next == rel.len() {
                return false;
            }
            end = next + 1;
        }
    }

    pub fn add_preopen(&mut self, fd: u32, mount: usize) {
        self.fds.insert(
            fd,
            FdPath {
                mount,
                rel: String::new(),
            },
        );
    }

    fn push(&mut self, entry: Entry) {
        if let std::collections::hash_map::Entry::Vacant(v) = self.seen.entry(entry.key()) {
            v.insert(self.log.entries.len());
            self.log.entries.push(entry);
        }
    }

    fn resolve(&self, fd: i32, path: Option<&str>) -> Target {
        let (Some(base), Some(path)) = (self.fds.get(&(fd as u32)), path) else {
            return Target::Untracked;
        };
        match join(&base.rel, path) {
            Some(rel) => Target::Path {
                mount: base.mount,
                rel,
            },
            None => {
                let raw = if base.rel.is_empty() {
                    path.to_string()
                } else {
                    format!("{}/{path}", base.rel)
                };
                Target::Escape(logical(self.world.mount_name(base.mount), &raw))
            }
        }
    }

    /// Observes and logs `op` on `rel`, returning the observation (the first
    /// one made of it in this run). `None` for the run's own outputs, which
    /// are never inputs: anything in scratch, and what the run changed on a
    /// read-write mount (the first change logged what it found there).
    fn observe(&mut self, op: ReadOp, mount: usize, rel: &str) -> Option<Observation> {
        if Some(mount) == self.scratch {
            return None;
        }
        let path = logical(self.world.mount_name(mount), rel);
        let key = EntryKey::Read(op, path.clone());
        if let Some(&i) = self.seen.get(&key) {
            return self.log.entries[i].observation().cloned();
        }
        if self.is_dirty(mount, rel) {
            return None;
        }
        if op == ReadOp::Readdir && self.listing_dirty.contains(&(mount, rel.to_string())) {
            // The listing mixes what was there with what the run made; the
            // part that was there is not known any more.
            self.uncacheable.get_or_insert_with(|| {
                format!("readdir {path}: listed after the run had changed it")
            });
            return None;
        }
        let (observation, id) = self.world.observe_identified(mount, op, rel);
        if let Some(id) = id {
            let index = self.log.entries.len();
            self.identities
                .push((index, mount, rel.to_string(), op, id));
        }
        self.push(Entry::Read {
            op,
            path,
            observation: observation.clone(),
        });
        Some(observation)
    }

    /// A read of `path` relative to `fd` (stat, readlink).
    pub fn read(&mut self, op: ReadOp, denied: DeniedOp, fd: i32, path: Option<&str>) {
        match self.resolve(fd, path) {
            Target::Path { mount, rel } => {
                self.observe(op, mount, &rel);
            }
            Target::Escape(path) => self.push(Entry::Denied { op: denied, path }),
            Target::Untracked => {}
        }
    }

    /// `path_filestat_get`.
    pub fn stat(&mut self, fd: i32, lookup: i32, path: Option<&str>) {
        let op = if lookup & SYMLINK_FOLLOW != 0 {
            ReadOp::Stat
        } else {
            ReadOp::Lstat
        };
        self.read(op, DeniedOp::Stat, fd, path);
    }

    /// `path_open`, before the call: logs what it observes (or the refusal)
    /// and returns the errno to fail it with when the sandbox refuses it: a
    /// special file (device, fifo, socket) is never opened, since an open
    /// could block the host thread and a read could give anything.
    pub fn before_open(&mut self, fd: i32, call: OpenCall, path: Option<&str>) -> Result<(), u16> {
        let writes = call.oflags & MUTATING_OFLAGS != 0 || call.rights & WRITE_RIGHTS != 0;
        match self.resolve(fd, path) {
            Target::Escape(path) => {
                let op = if writes {
                    DeniedOp::Write
                } else {
                    DeniedOp::Open
                };
                self.push(Entry::Denied { op, path });
                Ok(())
            }
            Target::Path { mount, rel }
                if writes && self.world.mount_mode(mount) == MountMode::ReadOnly =>
            {
                // The stock call refuses it.
                let path = logical(self.world.mount_name(mount), &rel);
                self.push(Entry::Denied {
                    op: DeniedOp::Write,
                    path,
                });
                Ok(())
            }
            Target::Path { mount, rel } => {
                let op = if call.lookup & SYMLINK_FOLLOW != 0 {
                    ReadOp::Open
                } else {
                    ReadOp::OpenNoFollow
                };
                let special = match self.observe(op, mount, &rel) {
                    Some(Observation::Meta { kind, .. }) => kind.is_special(),
                    Some(_) => false,
                    // Scratch: the guest cannot make special files there.
                    None => false,
                };
                if special {
                    Err(ERRNO_ACCES)
                } else {
                    Ok(())
                }
            }
            Target::Untracked => Ok(()),
        }
    }

    /// `path_open`, after the call; `opened` is the new fd when it succeeded.
    /// A path opened to write is the run's own from then on.
    pub fn after_open(&mut self, fd: i32, call: OpenCall, path: Option<&str>, opened: Option<u32>) {
        if opened.is_some()
            && (call.oflags & MUTATING_OFLAGS != 0 || call.rights & WRITE_RIGHTS != 0)
        {
            self.mutated(fd, path);
        }
        if let Some(new_fd) = opened {
            match self.resolve(fd, path) {
                Target::Path { mount, rel } => self.fds.insert(new_fd, FdPath { mount, rel }),
                Target::Untracked | Target::Escape(_) => self.fds.remove(&new_fd),
            };
        }
    }

    /// The mount `fd` (+ `path`) lies in, when it is a tracked path.
    pub fn mount_of(&self, fd: i32, path: Option<&str>) -> Option<usize> {
        match self.resolve(fd, path) {
            Target::Path { mount, .. } => Some(mount),
            _ => None,
        }
    }

    /// The path `fd` + `path` leads to on `mount`, if it leads there (an fd
    /// on another mount is told at once, without joining its path).
    pub fn path_on(&self, fd: i32, path: Option<&str>, mount: usize) -> Option<String> {
        if self.fds.get(&(fd as u32))?.mount != mount {
            return None;
        }
        match self.resolve(fd, path) {
            Target::Path { rel, .. } => Some(rel),
            Target::Untracked | Target::Escape(_) => None,
        }
    }

    /// Real metadata of `fd` + `path` when it lies in the run's scratch
    /// dir (preview 2 runs, whose stat has no inode; see `quota.rs`).
    pub fn scratch_stat(&self, fd: i32, path: Option<&str>) -> Option<crate::quota::RealStat> {
        let rel = match path {
            Some(p) => match self.resolve(fd, Some(p)) {
                Target::Path { mount, rel } if self.is_scratch(mount) => rel,
                _ => return None,
            },
            None => {
                let base = self.fds.get(&(fd as u32))?;
                if !self.is_scratch(base.mount) {
                    return None;
                }
                base.rel.clone()
            }
        };
        self.world.real_stat(self.scratch?, &rel)
    }

    /// The virtual (device, inode) of `fd` + `path` when it lies on a
    /// read-only mount, whose metadata the guest sees virtualized.
    pub fn virtual_ids(&self, fd: i32, path: Option<&str>) -> Option<(u64, u64)> {
        let (mount, logical) = self.read_only_logical(fd, path)?;
        Some((
            virtual_dev(self.world.mount_name(mount)),
            virtual_ino(&logical),
        ))
    }

    /// Whether `mount` is the run's scratch dir.
    pub fn is_scratch(&self, mount: usize) -> bool {
        Some(mount) == self.scratch
    }

    /// `path_symlink` on a writable mount: a target that is absolute or
    /// climbs above the mount from the link's directory would leave a link
    /// to the host's files behind (one resolved to `/etc/passwd`, issue 7).
    /// Refused with a `denied symlink` fact; `true` when refused.
    pub fn symlink_escapes(&mut self, fd: i32, link: Option<&str>, target: Option<&str>) -> bool {
        let Target::Path { mount, rel } = self.resolve(fd, link) else {
            return false;
        };
        if self.world.mount_mode(mount) == MountMode::ReadOnly {
            return false; // the stock call refuses it
        }
        let parent = rel.rsplit_once('/').map_or("", |(p, _)| p);
        let inside = target.is_some_and(|t| !t.starts_with('/') && lexically_inside(parent, t));
        if !inside {
            let path = logical(self.world.mount_name(mount), &rel);
            self.push(Entry::Denied {
                op: DeniedOp::Symlink,
                path,
            });
        }
        !inside
    }

    /// A call that would change the file system at `path` (mkdir, unlink,
    /// rename, ...), before it acts: a `denied` fact on read-only mounts and
    /// escapes; on read-write mounts, what its outcome depends on there
    /// (`pre`), as an observation of the world before the run changed it.
    pub fn before_mutation(
        &mut self,
        op: DeniedOp,
        fd: i32,
        path: Option<&str>,
        pre: Precondition,
    ) {
        let (mount, rel) = match self.resolve(fd, path) {
            Target::Escape(path) => return self.push(Entry::Denied { op, path }),
            Target::Path { mount, rel } if self.world.mount_mode(mount) == MountMode::ReadOnly => {
                let path = logical(self.world.mount_name(mount), &rel);
                return self.push(Entry::Denied { op, path });
            }
            Target::Path { mount, rel } if !self.is_scratch(mount) => (mount, rel),
            _ => return,
        };
        let kind = match self.observe(ReadOp::Lstat, mount, &rel) {
            Some(Observation::Meta { kind, .. }) => Some(kind),
            _ => None,
        };
        match (pre, kind) {
            (Precondition::Presence, Some(FileKind::Dir)) if op == DeniedOp::Rename => {
                // Replaced only when empty.
                self.observe(ReadOp::Readdir, mount, &rel);
            }
            (Precondition::Presence, _) => {}
            (Precondition::Empty, _) => {
                self.observe(ReadOp::Readdir, mount, &rel);
            }
            (Precondition::Content { .. }, Some(FileKind::Dir)) => {
                let path = logical(self.world.mount_name(mount), &rel);
                self.uncacheable.get_or_insert_with(|| {
                    format!(
                        "{} {path}: moved a directory, whose contents are not observed",
                        op.as_str()
                    )
                });
            }
            (Precondition::Content { .. }, Some(FileKind::Symlink)) => {
                self.observe(ReadOp::Readlink, mount, &rel);
            }
            (Precondition::Content { follow }, _) => {
                let op = if follow {
                    ReadOp::Open
                } else {
                    ReadOp::OpenNoFollow
                };
                self.observe(op, mount, &rel);
            }
        }
    }

    /// A mutating call on `path` succeeded: on a read-write mount, the path
    /// (and what is below it) is the run's own from now on, and so is its
    /// directory's listing.
    pub fn mutated(&mut self, fd: i32, path: Option<&str>) {
        if let Target::Path { mount, rel } = self.resolve(fd, path) {
            if self.world.mount_mode(mount) == MountMode::ReadWrite && !self.is_scratch(mount) {
                let parent = rel.rsplit_once('/').map_or("", |(p, _)| p).to_string();
                self.listing_dirty.insert((mount, parent));
                self.dirty.insert((mount, rel));
            }
        }
    }

    fn fd_path(&self, fd: i32) -> Option<(usize, String)> {
        self.fds.get(&(fd as u32)).map(|p| (p.mount, p.rel.clone()))
    }

    /// `fd_filestat_get`, after the call: records a stat of the fd's path.
    pub fn fd_stat(&mut self, fd: i32) {
        if let Some((mount, rel)) = self.fd_path(fd) {
            self.observe(ReadOp::Stat, mount, &rel);
        }
    }

    /// `fd_readdir`, after the call: records the fd's listing.
    pub fn fd_readdir(&mut self, fd: i32) {
        if let Some((mount, rel)) = self.fd_path(fd) {
            self.observe(ReadOp::Readdir, mount, &rel);
        }
    }

    pub fn closed(&mut self, fd: i32) {
        self.fds.remove(&(fd as u32));
    }

    pub fn renumbered(&mut self, from: i32, to: i32) {
        match self.fds.remove(&(from as u32)) {
            Some(p) => self.fds.insert(to as u32, p),
            None => self.fds.remove(&(to as u32)),
        };
    }

    pub fn environ(&mut self) {
        if !self.seen.contains_key(&EntryKey::Environ) {
            let observation = self.world.environ_observation();
            self.push(Entry::Environ(observation));
        }
    }

    /// `cachet.getenv`: the value the guest gets, recording `env NAME`.
    pub fn getenv(&mut self, name: &str) -> Option<String> {
        if !self.seen.contains_key(&EntryKey::Env(name.to_string())) {
            let observation = self.world.env_observation(name);
            self.push(Entry::Env {
                name: name.to_string(),
                observation,
            });
        }
        self.world.env().get(name).cloned()
    }

    pub fn uses(&mut self, fact: Fact) {
        self.push(Entry::Uses(fact));
    }

    /// The logical path of `fd` (+ `path`) when it lies on a read-only mount,
    /// whose metadata the guest must see virtualized.
    fn read_only_logical(&self, fd: i32, path: Option<&str>) -> Option<(usize, String)> {
        let base = self.fds.get(&(fd as u32))?;
        if self.world.mount_mode(base.mount) != MountMode::ReadOnly {
            return None;
        }
        let rel = match path {
            Some(p) => join(&base.rel, p)?,
            None => base.rel.clone(),
        };
        Some((base.mount, logical(self.world.mount_name(base.mount), &rel)))
    }

    /// Rewrites the `filestat` the stock call wrote at `ptr` (see
    /// [`VIRTUAL_TIME_NS`]): fixed times, path-derived inode and device, one
    /// link, and size 0 for directories.
    pub fn virtualize_filestat(&self, mem: &mut [u8], ptr: i32, fd: i32, path: Option<&str>) {
        let Some((mount, logical)) = self.read_only_logical(fd, path) else {
            return;
        };
        let Some(buf) = slice_mut(mem, ptr, FILESTAT_SIZE) else {
            return;
        };
        put_u64(buf, 0, virtual_dev(self.world.mount_name(mount)));
        put_u64(buf, 8, virtual_ino(&logical));
        put_u64(buf, 24, 1);
        if buf[16] == FILETYPE_DIRECTORY {
            put_u64(buf, 32, 0);
        }
        for offset in [40, 48, 56] {
            put_u64(buf, offset, VIRTUAL_TIME_NS);
        }
    }

    /// Rewrites the inode numbers of the `dirent`s the stock call wrote.
    pub fn virtualize_dirents(&self, mem: &mut [u8], ptr: i32, used: usize, fd: i32) {
        let Some((_, dir)) = self.read_only_logical(fd, None) else {
            return;
        };
        let Some(buf) = slice_mut(mem, ptr, used) else {
            return;
        };
        let mut at = 0;
        while at + DIRENT_SIZE <= buf.len() {
            let namlen =
                u32::from_le_bytes(buf[at + 16..at + 20].try_into().expect("4 bytes")) as usize;
            let name_at = at + DIRENT_SIZE;
            let name = buf
                .get(name_at..name_at + namlen)
                .map(|n| String::from_utf8_lossy(n).into_owned());
            let ino = match name.as_deref() {
                Some(".") | None => virtual_ino(&dir),
                Some(name) => virtual_ino(&format!("{dir}/{name}")),
            };
            put_u64(&mut buf[at..], 8, ino);
            at = name_at + namlen;
        }
    }
}

/// What a mutating call's outcome depends on at a path (see
/// [`Recorder::before_mutation`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Precondition {
    /// Whether it exists, and as what (mkdir, symlink, unlink, set_times,
    /// the new name of a link or rename).
    Presence,
    /// That it is an empty directory (rmdir).
    Empty,
    /// Its content, which a link or rename makes readable under another
    /// name; `follow`: through a final symlink.
    Content { follow: bool },
}

/// The arguments of `path_open` that decide whether it reads or writes.
#[derive(Clone, Copy)]
pub(crate) struct OpenCall {
    pub lookup: i32,
    pub oflags: i32,
    pub rights: i64,
}

impl OpenCall {
    /// A preview 2 `open-at`, in preview 1's terms.
    pub fn preview2(
        follow: bool,
        create: bool,
        directory: bool,
        exclusive: bool,
        truncate: bool,
        write: bool,
    ) -> Self {
        let flag = |on: bool, bit: i32| if on { bit } else { 0 };
        OpenCall {
            lookup: flag(follow, SYMLINK_FOLLOW),
            oflags: flag(create, 1) | flag(directory, 2) | flag(exclusive, 4) | flag(truncate, 8),
            rights: if write { WRITE_RIGHTS } else { 0 },
        }
    }
}

/// Whether `target`, resolved from the directory `parent` (a mount-relative
/// path), stays inside the mount, judged by its components alone.
fn lexically_inside(parent: &str, target: &str) -> bool {
    let mut depth = parent
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .count() as i64;
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => depth += 1,
        }
    }
    true
}

fn slice_mut(mem: &mut [u8], ptr: i32, len: usize) -> Option<&mut [u8]> {
    let start = ptr as u32 as usize;
    mem.get_mut(start..start.checked_add(len)?)
}

fn put_u64(buf: &mut [u8], offset: usize, value: u64) {
    buf[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
}

/// Reads a guest string; `None` when out of bounds or not UTF-8 (the stock
/// call has then failed too).
pub(crate) fn guest_str(mem: &[u8], ptr: i32, len: i32) -> Option<&str> {
    let start = ptr as u32 as usize;
    let bytes = mem.get(start..start.checked_add(len as u32 as usize)?)?;
    std::str::from_utf8(bytes).ok()
}

/// Reads a little-endian u32 from guest memory.
pub(crate) fn guest_u32(mem: &[u8], ptr: i32) -> Option<u32> {
    let start = ptr as u32 as usize;
    Some(u32::from_le_bytes(
        mem.get(start..start.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// Writes `value` at `ptr` in guest memory; `None` if it is out of bounds.
pub(crate) fn put_guest_u32(mem: &mut [u8], ptr: i32, value: u32) -> Option<()> {
    let start = ptr as u32 as usize;
    mem.get_mut(start..start.checked_add(4)?)?
        .copy_from_slice(&value.to_le_bytes());
    Some(())
}
