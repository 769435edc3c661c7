//! Small tables kept in one file each beside the stat memo, keyed by a
//! digest: what was learnt from a module's bytes (`module-facts`), and how
//! long each job last took (`timings`). One file, not an entry per key: a
//! fresh machine (a CI machine served by a remote cache) otherwise created
//! a file per module, and a cached run read one.
//!
//! Loaded once, written back at the end of a run when it changed (write
//! then rename; the last writer wins, which only costs another process
//! what it learnt: a re-read of some modules, an order of jobs).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use cachet_runtime::Sha256Digest;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Entries kept; the least recently written go first.
const MAX_ENTRIES: usize = 50_000;

#[derive(Clone, Serialize, Deserialize)]
struct Record<V> {
    key: Sha256Digest,
    value: V,
    written_ns: i128,
}

pub struct Table<V> {
    path: PathBuf,
    magic: &'static [u8],
    state: Mutex<State<V>>,
}

struct State<V> {
    map: HashMap<Sha256Digest, Record<V>>,
    changed: bool,
}

impl<V: Clone + PartialEq + Serialize + DeserializeOwned> Table<V> {
    /// Loads the table at `path`; a missing or damaged file (or one of
    /// another format, by its first line `magic`) is an empty table.
    pub fn load(path: &Path, magic: &'static [u8]) -> Self {
        let map = std::fs::read(path)
            .ok()
            .and_then(|b| super::entry::unseal::<Vec<Record<V>>>(&b, magic))
            .map(|(records, _)| records.into_iter().map(|r| (r.key, r)).collect())
            .unwrap_or_default();
        Table {
            path: path.to_path_buf(),
            magic,
            state: Mutex::new(State {
                map,
                changed: false,
            }),
        }
    }

    pub fn get(&self, key: &Sha256Digest) -> Option<V> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.map.get(key).map(|r| r.value.clone())
    }

    pub fn put(&self, key: Sha256Digest, value: V) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.map.get(&key).is_some_and(|r| r.value == value) {
            return;
        }
        let written_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        state.map.insert(
            key,
            Record {
                key,
                value,
                written_ns,
            },
        );
        state.changed = true;
    }

    /// Writes the table back if it changed; a failure only costs what it
    /// held.
    pub fn save(&self) -> std::io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !state.changed {
            return Ok(());
        }
        let mut records: Vec<&Record<V>> = state.map.values().collect();
        records.sort_by_key(|r| std::cmp::Reverse(r.written_ns));
        records.truncate(MAX_ENTRIES);
        write_table(&self.path, &super::entry::seal(&records, self.magic)?)?;
        state.changed = false;
        Ok(())
    }
}

/// Writes a whole-file table (the stat memo, the module facts) at `path`
/// through a temp file in the store's `tmp/`, which trimming sweeps: a
/// save cut short leaves nothing elsewhere (issue 8).
pub(super) fn write_table(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path.parent().expect("tables have a parent").join("tmp");
    std::fs::create_dir_all(&dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
    tmp.write_all(bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAGIC: &[u8] = b"cachet-test-table v1\n";

    #[test]
    fn survives_a_round_trip_and_ignores_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("table");
        let table = Table::<u64>::load(&path, MAGIC);
        let key = Sha256Digest::of(b"key");
        table.put(key, 7);
        table.save().unwrap();
        assert_eq!(Table::<u64>::load(&path, MAGIC).get(&key), Some(7));
        assert_eq!(
            Table::<u64>::load(&path, b"cachet-other v1\n").get(&key),
            None,
            "another table's file"
        );
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(
            Table::<u64>::load(&path, MAGIC).get(&key),
            None,
            "a damaged table is empty"
        );
        std::fs::write(&path, MAGIC).unwrap();
        assert_eq!(
            Table::<u64>::load(&path, MAGIC).get(&key),
            None,
            "truncated"
        );
    }
}
