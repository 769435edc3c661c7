//! The run's private directory in the system temp dir, where every case's
//! `/tmp` is made. Removed when the run ends, also after Ctrl-C; a run that
//! was killed (or crashed) leaves it behind, and the next cachet removes it.
//!
//! Ownership is an advisory lock on `.cachet-lock` inside the directory,
//! held for the whole run: the kernel drops it when the process dies, so a
//! directory whose lock can be taken belongs to nobody. The lock file is
//! locked before it gets its name, so no other cachet ever sees it unlocked
//! while its owner lives. Issue 7 found 30,000-entry trees left by crashed
//! runs, and one empty directory left by every run.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

const PREFIX: &str = "cachet-";
const LOCK: &str = ".cachet-lock";
/// The devices every run sees at `/dev` (empty files the runtime makes
/// `null`, `zero`, `random` and `urandom`), inside the run's directory.
pub const DEVICES: &str = ".dev";

pub struct Workdir {
    dir: PathBuf,
    _lock: File,
}

impl Workdir {
    /// Removes the directories of dead runs, then makes this run's.
    pub fn create() -> io::Result<Workdir> {
        let tmp = std::env::temp_dir();
        sweep(&tmp);
        let dir = tempfile::Builder::new()
            .prefix(PREFIX)
            .tempdir_in(&tmp)?
            .keep();
        let staged = dir.join(".cachet-lock.new");
        let lock = File::create(&staged)?;
        lock.lock()?;
        std::fs::rename(&staged, dir.join(LOCK))?;
        std::fs::create_dir(dir.join(DEVICES))?;
        for device in cachet_runtime::DEVICE_FILES {
            File::create(dir.join(DEVICES).join(device))?;
        }
        Ok(Workdir { dir, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let _ = cachet_runtime::remove_tree(&self.dir);
    }
}

/// Removes every `cachet-*` directory in `tmp` whose lock nobody holds.
fn sweep(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(PREFIX)
            || !entry.file_type().is_ok_and(|t| t.is_dir())
        {
            continue;
        }
        let path = entry.path();
        let Ok(lock) = File::open(path.join(LOCK)) else {
            continue; // not ours, or not locked yet
        };
        if lock.try_lock().is_ok() {
            let _ = cachet_runtime::remove_tree(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_runs_are_swept_and_live_ones_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let dead = tmp.path().join("cachet-dead");
        std::fs::create_dir_all(dead.join("cachet-run-1/deep")).unwrap();
        std::fs::write(dead.join(LOCK), "").unwrap();
        let live = tmp.path().join("cachet-live");
        std::fs::create_dir(&live).unwrap();
        let held = File::create(live.join(LOCK)).unwrap();
        held.lock().unwrap();
        let foreign = tmp.path().join("cachet-not-ours");
        std::fs::create_dir(&foreign).unwrap();
        sweep(tmp.path());
        assert!(!dead.exists(), "no one holds its lock");
        assert!(live.exists(), "its owner holds the lock");
        assert!(foreign.exists(), "no lock file: not cachet's");
    }
}
