//! The stat memo: `(dev, ino, size, mtime, ctime) -> content digest`, kept in
//! one file beside the results, so a warm lookup costs an `fstat` per input
//! instead of a read.
//!
//! Racy-file rule (as git's index and Go's cache): an entry recorded less
//! than [`RACY`] after the file's mtime is not trusted, because a write in the
//! same timestamp tick could change the content without changing any field
//! of the key. Any other write changes `ctime` (which no tool can set back),
//! so the memo can never turn a changed file into a hit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use cachet_runtime::{DigestMemo, FileId, Sha256Digest};
use sha2::{Digest as _, Sha256};

/// How long after its mtime a file must have been hashed to be trusted.
pub const RACY: i128 = 2_000_000_000;
/// Entries kept; the oldest recorded go first.
const MAX_ENTRIES: usize = 200_000;
const HEADER: &[u8] = b"cachet-memo v1\n";
const RECORD: usize = 8 + 8 + 8 + 16 + 16 + 32 + 16;

#[derive(Clone, Copy)]
struct Entry {
    digest: Sha256Digest,
    recorded_ns: i128,
}

pub struct StatMemo {
    path: PathBuf,
    map: Mutex<HashMap<FileId, Entry>>,
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

impl StatMemo {
    /// Loads the memo at `path`; a missing or damaged file is an empty memo.
    pub fn load(path: &Path) -> Self {
        let map = std::fs::read(path)
            .ok()
            .and_then(|b| parse(&b))
            .unwrap_or_default();
        StatMemo {
            path: path.to_path_buf(),
            map: Mutex::new(map),
        }
    }

    /// Writes the memo back (write then rename; last writer wins, which only
    /// costs another process a re-hash).
    pub fn save(&self) -> std::io::Result<()> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut entries: Vec<(&FileId, &Entry)> = map.iter().collect();
        entries.sort_by_key(|(_, e)| std::cmp::Reverse(e.recorded_ns));
        entries.truncate(MAX_ENTRIES);
        let mut bytes = Vec::with_capacity(HEADER.len() + entries.len() * RECORD + 32);
        bytes.extend_from_slice(HEADER);
        for (id, e) in entries {
            bytes.extend_from_slice(&id.dev.to_le_bytes());
            bytes.extend_from_slice(&id.ino.to_le_bytes());
            bytes.extend_from_slice(&id.size.to_le_bytes());
            bytes.extend_from_slice(&id.mtime_ns.to_le_bytes());
            bytes.extend_from_slice(&id.ctime_ns.to_le_bytes());
            bytes.extend_from_slice(&e.digest.0);
            bytes.extend_from_slice(&e.recorded_ns.to_le_bytes());
        }
        let trailer: [u8; 32] = Sha256::digest(&bytes).into();
        bytes.extend_from_slice(&trailer);
        super::table::write_table(&self.path, &bytes)
    }
}

fn parse(bytes: &[u8]) -> Option<HashMap<FileId, Entry>> {
    let body = bytes.strip_prefix(HEADER)?;
    let (records, trailer) = body.split_at_checked(body.len().checked_sub(32)?)?;
    if Sha256::digest(&bytes[..bytes.len() - 32]).as_slice() != trailer
        || records.len() % RECORD != 0
    {
        return None;
    }
    let mut map = HashMap::with_capacity(records.len() / RECORD);
    for r in records.chunks_exact(RECORD) {
        let u64_at = |i: usize| u64::from_le_bytes(r[i..i + 8].try_into().expect("8 bytes"));
        let i128_at = |i: usize| i128::from_le_bytes(r[i..i + 16].try_into().expect("16 bytes"));
        let id = FileId {
            dev: u64_at(0),
            ino: u64_at(8),
            size: u64_at(16),
            mtime_ns: i128_at(24),
            ctime_ns: i128_at(40),
        };
        let digest = Sha256Digest(r[56..88].try_into().expect("32 bytes"));
        map.insert(
            id,
            Entry {
                digest,
                recorded_ns: i128_at(88),
            },
        );
    }
    Some(map)
}

impl DigestMemo for StatMemo {
    fn get(&self, id: &FileId) -> Option<Sha256Digest> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let e = map.get(id)?;
        (e.recorded_ns - id.mtime_ns >= RACY).then_some(e.digest)
    }

    fn put(&self, id: FileId, digest: Sha256Digest) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(
            id,
            Entry {
                digest,
                recorded_ns: now_ns(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(mtime_ns: i128) -> FileId {
        FileId {
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns,
            ctime_ns: mtime_ns,
        }
    }

    #[test]
    fn racy_entries_are_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let memo = StatMemo::load(&dir.path().join("memo"));
        let d = Sha256Digest::of(b"x");
        memo.put(id(now_ns()), d);
        assert_eq!(
            memo.get(&id(now_ns())),
            None,
            "recorded within 2 s of its mtime"
        );
        let old = now_ns() - 10 * RACY;
        memo.put(id(old), d);
        assert_eq!(memo.get(&id(old)), Some(d));
        let changed = FileId {
            ctime_ns: old + 1,
            ..id(old)
        };
        assert_eq!(memo.get(&changed), None, "any write changes ctime");
    }

    #[test]
    fn survives_a_round_trip_and_ignores_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memo");
        let old = now_ns() - 10 * RACY;
        let d = Sha256Digest::of(b"y");
        let memo = StatMemo::load(&path);
        memo.put(id(old), d);
        memo.save().unwrap();
        assert_eq!(StatMemo::load(&path).get(&id(old)), Some(d));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER.len() + 60] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(
            StatMemo::load(&path).get(&id(old)),
            None,
            "a damaged memo is empty"
        );
    }
}
