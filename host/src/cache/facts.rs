//! What was learnt from a module's bytes (its framework, whether it embeds
//! its package's path), kept by module digest and package dir in one file
//! beside the stat memo, so an unchanged module is not read again.
//!
//! One file, not an entry per module: a machine with an empty cache (a CI
//! machine served by a remote cache) otherwise created a file per module,
//! and a cached run read one. Loaded once, written back at the end of a run
//! when it learnt something (write then rename; the last writer wins, which
//! only costs another process a re-read of the modules it learnt about).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use cachet_runtime::Sha256Digest;
use serde::{Deserialize, Serialize};

use super::ModuleFacts;

const HEADER: &[u8] = b"cachet-facts v1\n";
/// Entries kept; the least recently learnt go first.
const MAX_ENTRIES: usize = 50_000;

#[derive(Clone, Serialize, Deserialize)]
struct Record {
    key: Sha256Digest,
    facts: ModuleFacts,
    learnt_ns: i128,
}

pub struct FactsTable {
    path: PathBuf,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    map: HashMap<Sha256Digest, Record>,
    changed: bool,
}

impl FactsTable {
    /// Loads the table at `path`; a missing or damaged file is an empty table.
    pub fn load(path: &Path) -> Self {
        let map = std::fs::read(path)
            .ok()
            .and_then(|b| parse(&b))
            .unwrap_or_default();
        FactsTable {
            path: path.to_path_buf(),
            state: Mutex::new(State {
                map,
                changed: false,
            }),
        }
    }

    pub fn get(&self, key: &Sha256Digest) -> Option<ModuleFacts> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.map.get(key).map(|r| r.facts.clone())
    }

    pub fn put(&self, key: Sha256Digest, facts: ModuleFacts) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.map.get(&key).is_some_and(|r| r.facts == facts) {
            return;
        }
        let learnt_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        state.map.insert(
            key,
            Record {
                key,
                facts,
                learnt_ns,
            },
        );
        state.changed = true;
    }

    /// Writes the table back if this run learnt something; a failure only
    /// costs re-reading modules later.
    pub fn save(&self) -> std::io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !state.changed {
            return Ok(());
        }
        let mut records: Vec<&Record> = state.map.values().collect();
        records.sort_by_key(|r| std::cmp::Reverse(r.learnt_ns));
        records.truncate(MAX_ENTRIES);
        super::write_table(&self.path, &super::seal(&records, HEADER)?)?;
        state.changed = false;
        Ok(())
    }
}

fn parse(bytes: &[u8]) -> Option<HashMap<Sha256Digest, Record>> {
    let (records, _): (Vec<Record>, _) = super::unseal(bytes, HEADER)?;
    Some(records.into_iter().map(|r| (r.key, r)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::Framework;

    #[test]
    fn survives_a_round_trip_and_ignores_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("facts");
        let table = FactsTable::load(&path);
        let key = Sha256Digest::of(b"module");
        let facts = ModuleFacts::new(Framework::Libtest, true);
        table.put(key, facts.clone());
        table.save().unwrap();
        assert_eq!(FactsTable::load(&path).get(&key), Some(facts));
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(
            FactsTable::load(&path).get(&key),
            None,
            "a damaged table is empty"
        );
        std::fs::write(&path, b"cachet-facts v1\n").unwrap();
        assert_eq!(FactsTable::load(&path).get(&key), None, "truncated");
    }
}
