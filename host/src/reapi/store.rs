//! A worker's own content store: blobs fetched once from the server and
//! kept on disk by digest, so the next action that needs the same file
//! (cachet's binary, a module, a package's files) links it into its input
//! root instead of fetching it again. This is what buildbox-casd's local
//! cache does for BuildGrid's own workers.
//!
//! Files are kept read-only (`0444`, or `0555` for an executable copy) and
//! hard-linked into input roots; a kept file found writable or of the
//! wrong size is thrown away and fetched again. An action that makes its
//! inputs writable and then writes them could still change a kept file for
//! later actions on this worker, as with buildbox's hard-link staging:
//! cachet's own actions never write their inputs (the sandbox mounts them
//! read-only). Past its size limit the store forgets its oldest files;
//! input roots already linked keep theirs.

use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::re;

/// Blobs on disk by digest.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    limit: u64,
    size: AtomicU64,
}

impl Store {
    /// The store in `dir` (made if missing), kept under `limit` bytes.
    pub fn open(dir: &Path, limit: u64) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut size = 0;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with(".tmp") {
                // A write that never finished (the worker was killed).
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            size += entry.metadata()?.len();
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            limit,
            size: AtomicU64::new(size),
        })
    }

    fn path(&self, d: &re::Digest, executable: bool) -> PathBuf {
        let x = if executable { ".x" } else { "" };
        self.dir.join(format!("{}-{}{x}", d.hash, d.size_bytes))
    }

    /// The kept file of `d`, if it is still what was kept.
    fn intact(&self, d: &re::Digest, executable: bool) -> Option<PathBuf> {
        let path = self.path(d, executable);
        let meta = std::fs::symlink_metadata(&path).ok()?;
        let sound = meta.is_file()
            && i64::try_from(meta.len()) == Ok(d.size_bytes)
            && meta.permissions().mode() & 0o222 == 0;
        if !sound {
            let _ = std::fs::remove_file(&path);
            return None;
        }
        Some(path)
    }

    /// A small blob's bytes (a directory message), checked by digest.
    pub fn get(&self, d: &re::Digest) -> Option<Vec<u8>> {
        let path = self.intact(d, false)?;
        let bytes = std::fs::read(&path).ok()?;
        if super::digest_of(&bytes) != *d {
            let _ = std::fs::remove_file(&path);
            return None;
        }
        Some(bytes)
    }

    /// Keeps `bytes` (already checked against `d`).
    pub fn put(&self, d: &re::Digest, bytes: &[u8], executable: bool) -> io::Result<()> {
        let path = self.path(d, executable);
        if path.exists() {
            return Ok(());
        }
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp")
            .tempfile_in(&self.dir)?;
        io::Write::write_all(&mut tmp, bytes)?;
        let mode = if executable { 0o555 } else { 0o444 };
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))?;
        tmp.persist(&path).map_err(|e| e.error)?;
        self.size.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Puts the kept file of `d` at `to` (a hard link, or a copy across
    /// file systems); false when the store does not hold it.
    pub fn link(&self, d: &re::Digest, to: &Path, executable: bool) -> io::Result<bool> {
        let Some(from) = self.intact(d, executable) else {
            return Ok(false);
        };
        match std::fs::hard_link(&from, to) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false), // forgotten meanwhile
            Err(_) => {
                std::fs::copy(&from, to)?;
                Ok(true)
            }
        }
    }

    /// Forgets the oldest files until the store is back to 3/4 of its
    /// limit (cheap when under it).
    pub fn trim(&self) {
        if self.size.load(Ordering::Relaxed) <= self.limit {
            return;
        }
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
            .flatten()
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        files.sort();
        let mut size: u64 = files.iter().map(|f| f.1).sum();
        for (_, len, path) in files {
            if size <= self.limit / 4 * 3 {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                size -= len;
            }
        }
        self.size.store(size, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_files_are_linked_read_only_and_a_tampered_one_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("blobs"), 1 << 20).unwrap();
        let bytes = b"module bytes".to_vec();
        let d = super::super::digest_of(&bytes);
        let to = dir.path().join("a");
        assert!(!store.link(&d, &to, false).unwrap());
        store.put(&d, &bytes, false).unwrap();
        assert!(store.link(&d, &to, false).unwrap());
        assert_eq!(std::fs::read(&to).unwrap(), bytes);
        assert_eq!(
            std::fs::metadata(&to).unwrap().permissions().mode() & 0o777,
            0o444
        );
        // The executable copy is another file.
        assert!(!store.link(&d, &dir.path().join("b"), true).unwrap());
        assert_eq!(store.get(&d).unwrap(), bytes);
        // Made writable (and written) through a link: not used again.
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&to, b"module bytez").unwrap();
        assert!(!store.link(&d, &dir.path().join("c"), false).unwrap());
        assert!(store.get(&d).is_none());
    }

    #[test]
    fn past_its_limit_the_store_forgets_its_oldest_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 120).unwrap();
        let mut digests = Vec::new();
        for i in 0..5u8 {
            let bytes = vec![i; 40];
            let d = super::super::digest_of(&bytes);
            store.put(&d, &bytes, false).unwrap();
            let f = std::fs::File::open(store.path(&d, false)).unwrap();
            let t = std::time::SystemTime::UNIX_EPOCH
                + std::time::Duration::from_secs(u64::from(i) + 1);
            f.set_modified(t).unwrap();
            digests.push(d);
        }
        store.trim();
        let kept: Vec<bool> = digests.iter().map(|d| store.get(d).is_some()).collect();
        assert_eq!(kept, [false, false, false, true, true]);
        // Reopened, it counts what it holds.
        assert_eq!(
            Store::open(dir.path(), 120)
                .unwrap()
                .size
                .load(Ordering::Relaxed),
            80
        );
    }
}
