//! Host-level limits on what a run may hold: bytes in its scratch dir, and
//! open files.
//!
//! Without them one test wrote 2 GiB to its `/tmp`, and one guest holding
//! ~20,000 open files made every concurrent case fail to open anything, with
//! EIO (issue 7). Both are now per run, checked before the call that would
//! pass them, and seen by the guest as a full disk (`ENOSPC`) or a full file
//! table (`EMFILE`), as on a real system.
//!
//! Scratch use is the sum over the inodes the run created or grew of a
//! fixed [`INODE_CHARGE`] plus the file's apparent size. Inodes are keyed by
//! the real (dev, ino), read through the stock `fd_filestat_get` on the
//! guest's own fd, so a file reached by another name, renamed or unlinked
//! while open is still the same file. An unlinked file is released when its
//! last open fd closes, as the kernel releases it.

use std::collections::{HashMap, HashSet};

/// What each file, directory or symlink costs besides its size: one block,
/// which is what it occupies on ext4. Bounds entries too: a 512 MiB quota
/// allows 131,072 empty files or directories.
pub const INODE_CHARGE: u64 = 4096;

/// A real file identity on the host.
pub(crate) type Inode = (u64, u64);

/// Real metadata of a scratch file, as the stock `filestat` reports it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RealStat {
    pub inode: Inode,
    pub nlink: u64,
    pub size: u64,
    pub is_dir: bool,
}

impl RealStat {
    /// Parses a WASI p1 `filestat` (dev, ino, filetype, nlink, size, ...).
    pub fn parse(buf: &[u8]) -> Option<Self> {
        let u64_at = |i: usize| {
            buf.get(i..i + 8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        };
        Some(RealStat {
            inode: (u64_at(0)?, u64_at(8)?),
            is_dir: *buf.get(16)? == 3,
            nlink: u64_at(24)?,
            size: u64_at(32)?,
        })
    }
}

/// One run's scratch use and open files.
#[derive(Debug)]
pub(crate) struct Quota {
    scratch_limit: u64,
    used: u64,
    /// What each inode is charged now.
    charged: HashMap<Inode, u64>,
    /// Scratch fds and the inode each refers to.
    scratch_fds: HashMap<u32, Inode>,
    /// Inodes with no name left, kept while an fd holds them.
    unlinked: HashSet<Inode>,
    open_limit: u32,
    /// Files the guest opened and has not closed (preopens not counted).
    open: HashSet<u32>,
    /// A call was refused for a limit (for the run's outcome).
    pub scratch_hit: bool,
    pub open_hit: bool,
}

impl Quota {
    pub fn new(scratch_limit: u64, open_limit: u32) -> Self {
        Quota {
            scratch_limit,
            used: 0,
            charged: HashMap::new(),
            scratch_fds: HashMap::new(),
            unlinked: HashSet::new(),
            open_limit,
            open: HashSet::new(),
            scratch_hit: false,
            open_hit: false,
        }
    }

    /// Whether `grow` more bytes fit; remembers a refusal.
    pub fn fits(&mut self, grow: u64) -> bool {
        let ok = self.used.saturating_add(grow) <= self.scratch_limit;
        self.scratch_hit |= !ok;
        ok
    }

    /// Whether another file may be opened; remembers a refusal.
    pub fn may_open(&mut self) -> bool {
        let ok = (self.open.len() as u64) < u64::from(self.open_limit);
        self.open_hit |= !ok;
        ok
    }

    /// The current charge of `stat`'s inode, from what it is now.
    pub fn update(&mut self, stat: RealStat) {
        let charge = INODE_CHARGE + if stat.is_dir { 0 } else { stat.size };
        let before = self.charged.insert(stat.inode, charge).unwrap_or(0);
        self.used = self.used + charge - before;
    }

    /// A scratch inode's current charge (0 when not charged yet).
    pub fn size_of(&self, inode: Inode) -> u64 {
        self.charged.get(&inode).map_or(0, |c| c - INODE_CHARGE)
    }

    fn release(&mut self, inode: Inode) {
        if let Some(c) = self.charged.remove(&inode) {
            self.used -= c;
        }
        self.unlinked.remove(&inode);
    }

    /// A name of `stat`'s inode is gone (unlink, rmdir, replaced by rename).
    pub fn unlinked(&mut self, stat: RealStat) {
        if stat.nlink > 1 && !stat.is_dir {
            return;
        }
        if self.scratch_fds.values().any(|i| *i == stat.inode) {
            self.unlinked.insert(stat.inode);
        } else {
            self.release(stat.inode);
        }
    }

    /// The guest opened `fd`; `scratch` is its inode when it is in scratch.
    pub fn opened(&mut self, fd: u32, scratch: Option<RealStat>) {
        self.open.insert(fd);
        match scratch {
            Some(stat) => {
                self.scratch_fds.insert(fd, stat.inode);
                self.update(stat);
            }
            None => {
                self.scratch_fds.remove(&fd);
            }
        }
    }

    pub fn scratch_inode(&self, fd: u32) -> Option<Inode> {
        self.scratch_fds.get(&fd).copied()
    }

    pub fn closed(&mut self, fd: u32) {
        self.open.remove(&fd);
        if let Some(inode) = self.scratch_fds.remove(&fd) {
            let still_open = self.scratch_fds.values().any(|i| *i == inode);
            if !still_open && self.unlinked.contains(&inode) {
                self.release(inode);
            }
        }
    }

    pub fn renumbered(&mut self, from: u32, to: u32) {
        self.closed(to);
        if self.open.remove(&from) {
            self.open.insert(to);
        }
        if let Some(inode) = self.scratch_fds.remove(&from) {
            self.scratch_fds.insert(to, inode);
        }
    }

    #[cfg(test)]
    pub fn used(&self) -> u64 {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(ino: u64, size: u64, nlink: u64) -> RealStat {
        RealStat {
            inode: (1, ino),
            nlink,
            size,
            is_dir: false,
        }
    }

    #[test]
    fn charges_follow_inodes_not_names() {
        let mut q = Quota::new(100_000, 10);
        q.opened(5, Some(file(7, 0, 1)));
        q.update(file(7, 1000, 1));
        assert_eq!(q.used(), INODE_CHARGE + 1000);
        // Unlinked while open: still charged until the last fd closes.
        q.unlinked(file(7, 1000, 1));
        q.update(file(7, 5000, 1));
        assert_eq!(q.used(), INODE_CHARGE + 5000);
        q.closed(5);
        assert_eq!(q.used(), 0);
        // A second name keeps it.
        q.update(file(8, 10, 2));
        q.unlinked(file(8, 10, 2));
        assert_eq!(q.used(), INODE_CHARGE + 10);
    }

    #[test]
    fn limits_refuse_and_remember() {
        let mut q = Quota::new(2 * INODE_CHARGE, 1);
        assert!(q.fits(INODE_CHARGE));
        q.update(file(1, 0, 1));
        assert!(!q.fits(INODE_CHARGE + 1));
        assert!(q.scratch_hit);
        assert!(q.may_open());
        q.opened(3, None);
        assert!(!q.may_open());
        assert!(q.open_hit);
        q.renumbered(3, 9);
        q.closed(9);
        assert!(q.may_open());
    }
}
