//! Scratch directories for `/tmp`, reused when a run leaves them empty.
//!
//! Creating and removing a directory costs ~160 µs here, nine tenths of a
//! run's overhead (docs/BENCHMARKS.md). A directory that a run left empty
//! holds nothing another run could see, so it goes back to a small pool; one
//! with anything in it is removed. Every run still starts with an empty
//! `/tmp` that no other running instance shares.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tempfile::TempDir;

/// Empty directories kept for reuse; more than the host ever runs at once.
const POOL_SIZE: usize = 64;

#[derive(Default)]
pub(crate) struct ScratchPool {
    free: Mutex<Vec<(PathBuf, TempDir)>>,
}

impl ScratchPool {
    /// An empty directory under `base`: a pooled one, or a new one.
    pub fn take(&self, base: &Path) -> io::Result<TempDir> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(i) = free.iter().position(|(b, _)| b == base) {
            let (_, dir) = free.remove(i);
            // Someone may have removed the base (a test's temp dir) meanwhile.
            if dir.path().is_dir() {
                return Ok(dir);
            }
        }
        drop(free);
        tempfile::Builder::new()
            .prefix("cachet-run-")
            .tempdir_in(base)
    }

    /// Returns a directory after its run: kept if still empty, else removed.
    pub fn give_back(&self, dir: TempDir) {
        let empty = std::fs::read_dir(dir.path()).is_ok_and(|mut d| d.next().is_none());
        if !empty {
            return; // dropping the TempDir removes it and everything in it
        }
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() == POOL_SIZE {
            free.remove(0);
        }
        let base = dir
            .path()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        free.push((base, dir));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_empty_dirs_are_reused() {
        let base = tempfile::tempdir().unwrap();
        let pool = ScratchPool::default();
        let a = pool.take(base.path()).unwrap();
        let a_path = a.path().to_path_buf();
        pool.give_back(a);
        let again = pool.take(base.path()).unwrap();
        assert_eq!(again.path(), a_path, "an empty dir is reused");
        std::fs::write(again.path().join("left.txt"), "x").unwrap();
        pool.give_back(again);
        assert!(!a_path.exists(), "a dir with files is removed");
        let fresh = pool.take(base.path()).unwrap();
        assert_ne!(fresh.path(), a_path);
        assert_eq!(std::fs::read_dir(fresh.path()).unwrap().count(), 0);
    }
}
