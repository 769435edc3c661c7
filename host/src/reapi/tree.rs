//! Input roots: a tree of files built from host directories and blobs
//! (each directory a `Directory` message stored by its digest, as REAPI
//! requires), and the way back, a tree fetched from the content store and
//! written under a directory, for a worker. Everything in a tree is named
//! by content: the same files give the same root digest on any machine.

use std::collections::BTreeMap;
use std::io;
use std::path::{Component, Path, PathBuf};

use prost::Message as _;

use super::cas::{Blob, Cas, CasError, Source};
use super::re;
use super::store::Store;

/// One entry of a tree being built, by its path in the root.
#[derive(Clone, Debug)]
enum Entry {
    File {
        digest: re::Digest,
        executable: bool,
        source: Source,
    },
    Symlink(String),
    Dir,
    /// A directory whose tree is already built (and uploaded): its root.
    Subtree(re::Digest),
}

/// A tree being built.
#[derive(Clone, Default)]
pub struct TreeBuilder {
    entries: BTreeMap<String, Entry>,
    /// Remembers host files' digests between runs.
    memo: Option<std::sync::Arc<dyn cachet_runtime::DigestMemo>>,
}

/// A finished tree: its root and every blob it needs.
#[derive(Debug)]
pub struct Tree {
    pub root: re::Digest,
    pub blobs: Vec<Blob>,
    /// Every directory, each after its children: the root last.
    pub directories: Vec<re::Directory>,
}

impl TreeBuilder {
    /// A tree whose host files are hashed through `memo` (a file unchanged
    /// since an earlier run costs a `stat`).
    pub fn with_memo(memo: Option<std::sync::Arc<dyn cachet_runtime::DigestMemo>>) -> Self {
        TreeBuilder {
            entries: BTreeMap::new(),
            memo,
        }
    }

    /// A file of `bytes` at `path` (`a/b/c`, no `..`).
    pub fn add_bytes(&mut self, path: &str, bytes: Vec<u8>, executable: bool) {
        let digest = super::digest_of(&bytes);
        self.entries.insert(
            path.to_string(),
            Entry::File {
                digest,
                executable,
                source: Source::Bytes(bytes),
            },
        );
    }

    /// A host file at `path`, read now for its digest (and again when
    /// uploaded, which checks it did not change).
    pub fn add_file(&mut self, path: &str, host: &Path, executable: bool) -> io::Result<()> {
        let digest = super::digest_file(host, self.memo.as_deref())?;
        self.add_blob(path, digest, host.to_path_buf(), executable);
        Ok(())
    }

    /// A finished tree's root at `path` (its blobs are the caller's).
    pub fn add_tree(&mut self, path: &str, root: re::Digest) {
        self.entries.insert(path.to_string(), Entry::Subtree(root));
    }

    /// A host file whose digest is known (hashed once for many trees).
    pub fn add_blob(&mut self, path: &str, digest: re::Digest, host: PathBuf, executable: bool) {
        self.entries.insert(
            path.to_string(),
            Entry::File {
                digest,
                executable,
                source: Source::File(host),
            },
        );
    }

    /// An empty directory at `path` (a place for outputs, a scratch dir).
    pub fn add_empty_dir(&mut self, path: &str) {
        self.entries.insert(path.to_string(), Entry::Dir);
    }

    /// A host directory's tree at `at`, minus the entries `skip` names
    /// (paths relative to `host`). Symlinks stay symlinks; absolute ones,
    /// which REAPI servers refuse, are left out (the run sees them missing,
    /// and says so in its log). Special files are left out.
    pub fn add_dir(
        &mut self,
        at: &str,
        host: &Path,
        skip: &dyn Fn(&Path) -> bool,
    ) -> io::Result<()> {
        if !at.is_empty() {
            self.add_empty_dir(at);
        }
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            for entry in std::fs::read_dir(host.join(&rel))? {
                let entry = entry?;
                let rel = rel.join(entry.file_name());
                if skip(&rel) {
                    continue;
                }
                let Some(name) = rel.to_str() else {
                    continue; // REAPI names are UTF-8; the run sees it missing
                };
                let path = join(at, name);
                let kind = entry.file_type()?;
                if kind.is_symlink() {
                    let target = std::fs::read_link(entry.path())?;
                    if let Some(t) = target.to_str().filter(|t| !t.starts_with('/')) {
                        self.entries.insert(path, Entry::Symlink(t.to_string()));
                    }
                } else if kind.is_dir() {
                    self.add_empty_dir(&path);
                    stack.push(rel);
                } else if kind.is_file() {
                    use std::os::unix::fs::PermissionsExt as _;
                    let exec = entry.metadata()?.permissions().mode() & 0o111 != 0;
                    self.add_file(&path, &entry.path(), exec)?;
                }
            }
        }
        Ok(())
    }

    /// A host directory's whole contents as the tree's root.
    pub fn add_dir_contents(&mut self, host: &Path) -> io::Result<()> {
        self.add_dir("", host, &|_| false)
    }

    /// The tree as REAPI's `Tree` message (an output directory), and the
    /// blobs it names.
    pub fn finish_as_tree(self) -> (re::Tree, Vec<Blob>) {
        let mut t = self.finish();
        let root = t.directories.pop();
        (
            re::Tree {
                root,
                children: t.directories,
            },
            t.blobs,
        )
    }

    /// The tree's `Directory` messages, bottom up, and its root digest.
    pub fn finish(self) -> Tree {
        #[derive(Default)]
        struct Dir {
            files: Vec<re::FileNode>,
            symlinks: Vec<re::SymlinkNode>,
            dirs: BTreeMap<String, ()>,
        }
        let mut dirs: BTreeMap<String, Dir> = BTreeMap::new();
        dirs.insert(String::new(), Dir::default());
        let mut blobs = Vec::new();
        let mut digests: BTreeMap<String, re::Digest> = BTreeMap::new();
        for (path, entry) in self.entries {
            // Every ancestor exists, and names its child directory.
            let mut parent = String::new();
            let parts: Vec<&str> = path.split('/').collect();
            for part in &parts[..parts.len() - 1] {
                let child = join(&parent, part);
                dirs.entry(parent.clone())
                    .or_default()
                    .dirs
                    .insert(part.to_string(), ());
                dirs.entry(child.clone()).or_default();
                parent = child;
            }
            let name = parts[parts.len() - 1].to_string();
            let dir = dirs.entry(parent).or_default();
            match entry {
                Entry::File {
                    digest,
                    executable,
                    source,
                } => {
                    dir.files.push(re::FileNode {
                        name,
                        digest: Some(digest.clone()),
                        is_executable: executable,
                        node_properties: None,
                    });
                    blobs.push(Blob { digest, source });
                }
                Entry::Symlink(target) => dir.symlinks.push(re::SymlinkNode {
                    name,
                    target,
                    node_properties: None,
                }),
                Entry::Dir => {
                    dir.dirs.insert(name.clone(), ());
                    dirs.entry(path).or_default();
                }
                Entry::Subtree(root) => {
                    dir.dirs.insert(name.clone(), ());
                    digests.insert(path, root);
                }
            }
        }
        // Deepest first, so each child's digest is known before its parent.
        let mut order: Vec<String> = dirs.keys().cloned().collect();
        order.sort_by_key(|p| {
            std::cmp::Reverse(if p.is_empty() {
                0
            } else {
                p.matches('/').count() + 1
            })
        });
        let mut directories = Vec::new();
        for path in order {
            let d = dirs.remove(&path).expect("each directory once");
            let mut files = d.files;
            files.sort_by(|a, b| a.name.cmp(&b.name));
            let mut symlinks = d.symlinks;
            symlinks.sort_by(|a, b| a.name.cmp(&b.name));
            let children = d
                .dirs
                .into_keys()
                .map(|name| re::DirectoryNode {
                    digest: digests.get(&join(&path, &name)).cloned(),
                    name,
                })
                .collect();
            let message = re::Directory {
                files,
                directories: children,
                symlinks,
                node_properties: None,
            };
            let blob = Blob::bytes(message.encode_to_vec());
            directories.push(message);
            digests.insert(path, blob.digest.clone());
            blobs.push(blob);
        }
        Tree {
            root: digests.remove("").expect("the root"),
            blobs,
            directories,
        }
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Why a tree could not be written out.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Cas(#[from] CasError),
    #[error("the input tree is malformed: {0}")]
    Malformed(String),
    #[error("{0}")]
    Io(String),
}

/// The largest tree a worker writes out.
const MAX_ENTRIES: usize = 1_000_000;

/// Writes the tree under `root` into `into` (an empty directory): names
/// are checked (no `/`, `.` or `..`), symlinks must stay inside the tree,
/// every blob is checked against its digest. With a `store`, blobs it
/// holds are linked from it, and blobs fetched are kept in it.
pub async fn fetch(
    cas: &Cas,
    root: &re::Digest,
    into: &Path,
    store: Option<&Store>,
) -> Result<usize, FetchError> {
    let mut pending = vec![(root.clone(), into.to_path_buf())];
    let mut files: Vec<(re::Digest, PathBuf, bool)> = Vec::new();
    let mut entries = 0usize;
    // A level of directories at a time, each level's messages in batches.
    let mut messages: Vec<(re::Directory, PathBuf)> = Vec::new();
    while !pending.is_empty() {
        let level = std::mem::take(&mut pending);
        let mut wanted = Vec::new();
        for (digest, dir) in level {
            match store.and_then(|s| s.get(&digest)) {
                Some(b) => messages.push((decode_dir(&digest, &b)?, dir)),
                None => wanted.push((digest, dir)),
            }
        }
        for chunk in wanted.chunks(512) {
            let digests: Vec<re::Digest> = chunk.iter().map(|(d, _)| d.clone()).collect();
            let all = cas.read_batch(&digests).await?;
            for ((digest, dir), bytes) in chunk.iter().zip(all) {
                if let Some(s) = store {
                    s.put(digest, &bytes, false)
                        .map_err(|e| io_error(Path::new("store"), e))?;
                }
                messages.push((decode_dir(digest, &bytes)?, dir.clone()));
            }
        }
        for (message, dir) in messages.drain(..) {
            pending.extend(write_dir(
                message,
                &dir,
                into,
                store,
                &mut files,
                &mut entries,
            )?);
        }
    }
    // Small files in batches, large ones streamed.
    let (small, large): (Vec<_>, Vec<_>) = files
        .into_iter()
        .partition(|(d, _, _)| d.size_bytes <= 1 << 20);
    for chunk in small.chunks(512) {
        let digests: Vec<re::Digest> = chunk.iter().map(|(d, _, _)| d.clone()).collect();
        let all = cas.read_batch(&digests).await?;
        for ((digest, path, exec), bytes) in chunk.iter().zip(all) {
            place(store, digest, path, &bytes, *exec)?;
        }
    }
    for (digest, path, exec) in &large {
        let bytes = cas.read(digest).await?;
        place(store, digest, path, &bytes, *exec)?;
    }
    Ok(entries)
}

/// A fetched file written at `path`: kept in the store and linked from
/// it, or written out.
fn place(
    store: Option<&Store>,
    digest: &re::Digest,
    path: &Path,
    bytes: &[u8],
    executable: bool,
) -> Result<(), FetchError> {
    if let Some(s) = store {
        s.put(digest, bytes, executable)
            .map_err(|e| io_error(path, e))?;
        if s.link(digest, path, executable)
            .map_err(|e| io_error(path, e))?
        {
            return Ok(());
        }
    }
    write_file(path, bytes, executable)
}

fn decode_dir(digest: &re::Digest, bytes: &[u8]) -> Result<re::Directory, FetchError> {
    re::Directory::decode(bytes)
        .map_err(|e| FetchError::Malformed(format!("directory {}: {e}", digest.hash)))
}

/// Writes one directory's symlinks and subdirectories under `dir`, links
/// the files the store holds, and returns its subdirectories to fetch
/// (the files left to fetch go to `files`).
fn write_dir(
    message: re::Directory,
    dir: &Path,
    into: &Path,
    store: Option<&Store>,
    files: &mut Vec<(re::Digest, PathBuf, bool)>,
    entries: &mut usize,
) -> Result<Vec<(re::Digest, PathBuf)>, FetchError> {
    *entries += message.files.len() + message.directories.len() + message.symlinks.len();
    if *entries > MAX_ENTRIES {
        return Err(FetchError::Malformed(format!(
            "more than {MAX_ENTRIES} entries"
        )));
    }
    // Each name once: a file or directory may never be written through a
    // symlink of the same name.
    let mut names = std::collections::BTreeSet::new();
    let all = (message.files.iter().map(|f| &f.name))
        .chain(message.directories.iter().map(|d| &d.name))
        .chain(message.symlinks.iter().map(|s| &s.name));
    for name in all {
        if !names.insert(name.as_str()) {
            return Err(FetchError::Malformed(format!(
                "{name} appears twice in {}",
                dir.display()
            )));
        }
    }
    let mut pending = Vec::new();
    for d in message.directories {
        let path = dir.join(checked_name(&d.name)?);
        std::fs::create_dir_all(&path).map_err(|e| io_error(&path, e))?;
        let digest = d
            .digest
            .ok_or_else(|| FetchError::Malformed(format!("{}: no digest", d.name)))?;
        pending.push((digest, path));
    }
    for f in message.files {
        let path = dir.join(checked_name(&f.name)?);
        let digest = f
            .digest
            .ok_or_else(|| FetchError::Malformed(format!("{}: no digest", f.name)))?;
        let linked = match store {
            Some(s) => s
                .link(&digest, &path, f.is_executable)
                .map_err(|e| io_error(&path, e))?,
            None => false,
        };
        if !linked {
            files.push((digest, path, f.is_executable));
        }
    }
    for s in message.symlinks {
        let path = dir.join(checked_name(&s.name)?);
        let inside = path.parent().unwrap_or(into).join(&s.target);
        if s.target.starts_with('/') || !stays_inside(into, &inside) {
            return Err(FetchError::Malformed(format!(
                "symlink {} -> {} leaves the tree",
                s.name, s.target
            )));
        }
        std::os::unix::fs::symlink(&s.target, &path).map_err(|e| io_error(&path, e))?;
    }
    Ok(pending)
}

fn checked_name(name: &str) -> Result<&str, FetchError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(FetchError::Malformed(format!("bad name {name:?}")));
    }
    Ok(name)
}

/// Whether `path` (lexically) stays under `root`.
fn stays_inside(root: &Path, path: &Path) -> bool {
    let mut depth = 0i64;
    let Ok(rel) = path.strip_prefix(root) else {
        return false;
    };
    for c in rel.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => depth -= 1,
            Component::CurDir => {}
            _ => return false,
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

/// A new file (never through an existing path or symlink).
fn write_file(path: &Path, bytes: &[u8], executable: bool) -> Result<(), FetchError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mode = if executable { 0o755 } else { 0o644 };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| io_error(path, e))?;
    f.write_all(bytes).map_err(|e| io_error(path, e))?;
    // Exactly the mode asked, whatever the umask.
    use std::os::unix::fs::PermissionsExt as _;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| io_error(path, e))
}

fn io_error(path: &Path, e: io::Error) -> FetchError {
    FetchError::Io(format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_files_give_the_same_root_in_any_order() {
        let mut a = TreeBuilder::default();
        a.add_bytes("pkg/testdata/x.txt", b"x".to_vec(), false);
        a.add_bytes("cachet", b"bin".to_vec(), true);
        a.add_empty_dir("scratch");
        let mut b = TreeBuilder::default();
        b.add_empty_dir("scratch");
        b.add_bytes("cachet", b"bin".to_vec(), true);
        b.add_bytes("pkg/testdata/x.txt", b"x".to_vec(), false);
        let (ta, tb) = (a.finish(), b.finish());
        assert_eq!(ta.root, tb.root);
        let mut c = TreeBuilder::default();
        c.add_bytes("pkg/testdata/x.txt", b"y".to_vec(), false);
        c.add_bytes("cachet", b"bin".to_vec(), true);
        c.add_empty_dir("scratch");
        assert_ne!(c.finish().root, ta.root);
        // root, pkg, pkg/testdata, scratch + two files
        assert_eq!(ta.blobs.len(), 6);
        let root = ta.blobs.last().unwrap();
        let Source::Bytes(bytes) = &root.source else {
            panic!("directories are in memory")
        };
        let dir = re::Directory::decode(bytes.as_slice()).unwrap();
        let names: Vec<&str> = dir.directories.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["pkg", "scratch"]);
        assert_eq!(dir.files[0].name, "cachet");
        assert!(dir.files[0].is_executable);
    }

    #[test]
    fn a_name_twice_in_a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let message = re::Directory {
            files: vec![re::FileNode {
                name: "a".into(),
                digest: Some(super::super::digest_of(b"x")),
                ..Default::default()
            }],
            symlinks: vec![re::SymlinkNode {
                name: "a".into(),
                target: "b".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let (mut files, mut n) = (Vec::new(), 0);
        let err = write_dir(message, dir.path(), dir.path(), None, &mut files, &mut n);
        assert!(matches!(err, Err(FetchError::Malformed(m)) if m.contains("twice")));
        // A file is never written through what is already there.
        std::os::unix::fs::symlink("/tmp/elsewhere", dir.path().join("s")).unwrap();
        assert!(write_file(&dir.path().join("s"), b"x", false).is_err());
    }

    #[test]
    fn symlinks_may_not_leave_the_tree() {
        let root = Path::new("/w");
        assert!(stays_inside(root, Path::new("/w/a/../b")));
        assert!(!stays_inside(root, Path::new("/w/a/../../etc")));
        assert!(!stays_inside(root, Path::new("/etc")));
        for bad in ["", ".", "..", "a/b"] {
            assert!(checked_name(bad).is_err(), "{bad:?}");
        }
    }
}
