//! Scratch directories for `/tmp`, reused when a run leaves them empty, and
//! removed without recursion when it does not.
//!
//! Creating and removing a directory costs ~160 µs here, nine tenths of a
//! run's overhead (docs/BENCHMARKS.md). A directory that a run left empty
//! holds nothing another run could see, so it goes back to a small pool; one
//! with anything in it is removed. Every run still starts with an empty
//! `/tmp` that no other running instance shares.
//!
//! A guest decides how deep its `/tmp` tree is: `std::fs::remove_dir_all`
//! recurses once per level and overflowed cachet's stack on 16,000 nested
//! directories (issue 7). [`remove_tree`] lifts nested entries up to the top
//! instead, so its stack, its open files and its path lengths stay constant.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cap_std::ambient_authority;
use cap_std::fs::Dir;
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
    pub fn give_back(&self, dir: TempDir) -> io::Result<()> {
        let empty = std::fs::read_dir(dir.path()).is_ok_and(|mut d| d.next().is_none());
        if !empty {
            return remove_tree(&dir.keep());
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
        Ok(())
    }
}

/// Removes the directory `root` and everything in it, without recursion:
/// the children of a directory that is not empty are renamed to the top
/// level, so every step works on paths of one or two components. Symlinks
/// are removed, never followed.
pub fn remove_tree(root: &Path) -> io::Result<()> {
    let dir = match Dir::open_ambient_dir(root, ambient_authority()) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut lifted = 0u64;
    loop {
        let entries: Vec<_> = dir.entries()?.collect::<io::Result<_>>()?;
        if entries.is_empty() {
            break;
        }
        for entry in entries {
            let name = entry.file_name();
            if !entry.file_type()?.is_dir() {
                dir.remove_file(&name)?;
                continue;
            }
            if dir.remove_dir(&name).is_ok() {
                continue;
            }
            let sub = dir.open_dir(&name)?;
            for child in sub.entries()? {
                let child = child?.file_name();
                lift(&sub, &child, &dir, &mut lifted)?;
            }
            dir.remove_dir(&name)?;
        }
    }
    drop(dir);
    std::fs::remove_dir(root)
}

/// Renames `sub/name` to a fresh name in `top`. A name the guest already
/// used there is replaced (it is being removed anyway) or skipped.
fn lift(sub: &Dir, name: &std::ffi::OsStr, top: &Dir, lifted: &mut u64) -> io::Result<()> {
    let mut last = None;
    for _ in 0..16 {
        *lifted += 1;
        match sub.rename(name, top, format!(".cachet-lifted-{lifted}")) {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("tried at least once"))
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
        pool.give_back(a).unwrap();
        let again = pool.take(base.path()).unwrap();
        assert_eq!(again.path(), a_path, "an empty dir is reused");
        std::fs::write(again.path().join("left.txt"), "x").unwrap();
        pool.give_back(again).unwrap();
        assert!(!a_path.exists(), "a dir with files is removed");
        let fresh = pool.take(base.path()).unwrap();
        assert_ne!(fresh.path(), a_path);
        assert_eq!(std::fs::read_dir(fresh.path()).unwrap().count(), 0);
    }

    #[test]
    fn removes_deep_trees_without_recursion() {
        // Deeper than any recursive removal survives on a 2 MiB stack, and
        // with paths far past PATH_MAX; run on a small stack to prove it.
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("deep");
        std::fs::create_dir(&root).unwrap();
        let top = Dir::open_ambient_dir(&root, ambient_authority()).unwrap();
        let mut dir = top.try_clone().unwrap();
        for i in 0..20_000 {
            dir.create_dir("d").unwrap();
            if i % 1000 == 0 {
                dir.write("f", b"x").unwrap();
                dir.symlink("../../..", "up").unwrap();
            }
            dir = dir.open_dir("d").unwrap();
        }
        top.write(".cachet-lifted-1", b"a name the remover uses")
            .unwrap();
        drop((dir, top));
        let root2 = root.clone();
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || remove_tree(&root2).unwrap())
            .unwrap()
            .join()
            .unwrap();
        assert!(!root.exists());
        assert!(base.path().exists(), "symlinks were not followed");
    }
}
