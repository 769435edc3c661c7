//! The store: a directory of entries addressed by sha256 keys. It knows
//! nothing of tests (as Go's `cmd/go/internal/cache`).
//!
//! ```text
//! ROOT/<kind>/<2 hex>/<64 hex>   entry: header line, payload, sha256 trailer
//! ROOT/<flat kind>/<64 hex>      the same, for kinds with an entry per module
//! ROOT/tmp/                      writes in progress, renamed into place
//! ```
//!
//! - Writes go to `tmp/` and are renamed into place: a reader sees a whole
//!   entry or none, with any number of cachet processes at once, and a killed
//!   process leaves at most a stray temp file (removed by [`Store::trim`]).
//! - The trailer is the sha256 of the header, the key and the payload: a
//!   damaged or misplaced file is reported as corrupt, never returned.
//! - Entries record their last use in their mtime (updated at most hourly),
//!   and [`Store::trim`] removes those unused for [`MAX_AGE`] and, past
//!   [`MAX_BYTES`], the least recently used.
//!
//! Chosen over the `cacache` crate: entries here are small and keyed by fixed
//! hashes, so rename-into-place plus a trailer gives atomicity and integrity
//! in one file per entry; cacache's append-only index buckets need a full
//! walk to collect garbage and would add a dozen dependencies.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use cachet_runtime::Sha256Digest;
use sha2::{Digest as _, Sha256};

/// First line of every entry; bumped when the entry format changes.
const HEADER: &[u8] = b"cachet-entry v1\n";

/// Entries unused this long are removed (Go keeps test results 5 days).
pub const MAX_AGE: Duration = Duration::from_secs(5 * 24 * 3600);
/// Above this total, least recently used entries are removed.
pub const MAX_BYTES: u64 = 1 << 30;
/// Kinds with an entry per module, not per case: a few hundred entries need
/// no shard directories, and on a fresh machine each shard is a `mkdir`
/// (most of the file system time of a run served by a remote cache).
const FLAT_KINDS: &[&str] = &["packs"];
/// A used entry's mtime is refreshed when older than this.
const TOUCH_AFTER: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
#[error("cache entry {path} is corrupt ({reason}); it is ignored and will be replaced")]
pub struct Corrupt {
    pub path: PathBuf,
    pub reason: &'static str,
}

#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    /// Kinds without a directory when this process first looked: their
    /// lookups are misses without a failed `open` each (a fresh machine
    /// served by a remote cache has no entries of its own). An entry
    /// another process adds meanwhile is then not seen by this run, as if
    /// it were added after.
    empty_kinds: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, bool>>>,
}

impl Store {
    pub fn open(root: &Path) -> io::Result<Store> {
        fs::create_dir_all(root.join("tmp"))?;
        Ok(Store {
            empty_kinds: Default::default(),
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, kind: &str, key: &Sha256Digest) -> PathBuf {
        let hex = key.hex();
        if FLAT_KINDS.contains(&kind) {
            return self.root.join(kind).join(hex);
        }
        self.root.join(kind).join(&hex[..2]).join(hex)
    }

    fn trailer(kind: &str, key: &Sha256Digest, payload: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(HEADER);
        h.update(kind.as_bytes());
        h.update(key.0);
        h.update(payload);
        h.finalize().into()
    }

    /// Whether `kind` had no directory when first asked (see `empty_kinds`).
    fn known_empty(&self, kind: &str) -> bool {
        let mut kinds = self.empty_kinds.lock().unwrap_or_else(|e| e.into_inner());
        *kinds
            .entry(kind.to_string())
            .or_insert_with(|| !self.root.join(kind).is_dir())
    }

    /// Stores `payload` under (`kind`, `key`), atomically.
    pub fn put(&self, kind: &str, key: &Sha256Digest, payload: &[u8]) -> io::Result<()> {
        self.empty_kinds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(kind.to_string(), false);
        let path = self.path(kind, key);
        fs::create_dir_all(path.parent().expect("entries have a parent"))?;
        // Written beside its final name: a rename within one directory, and
        // writers spread over the shards (one shared temp dir serialized
        // 32 writers on its lock: a remote-cache run spent half its time there).
        let mut tmp =
            tempfile::NamedTempFile::new_in(path.parent().expect("entries have a parent"))?;
        tmp.write_all(HEADER)?;
        tmp.write_all(payload)?;
        tmp.write_all(&Self::trailer(kind, key, payload))?;
        tmp.persist(&path).map_err(|e| e.error)?;
        Ok(())
    }

    /// The payload under (`kind`, `key`): `Ok(None)` when absent, `Err` when
    /// the file is damaged (the caller treats it as a miss and warns).
    pub fn get(&self, kind: &str, key: &Sha256Digest) -> Result<Option<Vec<u8>>, Corrupt> {
        if self.known_empty(kind) {
            return Ok(None);
        }
        let path = self.path(kind, key);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(_) => {
                return Err(Corrupt {
                    path,
                    reason: "unreadable",
                })
            }
        };
        let corrupt = |reason| {
            Err(Corrupt {
                path: path.clone(),
                reason,
            })
        };
        if bytes.len() < HEADER.len() + 32 || !bytes.starts_with(HEADER) {
            return corrupt("bad header or truncated");
        }
        let (body, trailer) = bytes.split_at(bytes.len() - 32);
        let payload = &body[HEADER.len()..];
        if Self::trailer(kind, key, payload) != trailer {
            return corrupt("checksum mismatch");
        }
        touch(&path);
        Ok(Some(payload.to_vec()))
    }

    /// Removes stray temp files, entries unused for `max_age`, and the least
    /// recently used entries while the total exceeds `max_bytes`.
    pub fn trim(&self, max_age: Duration, max_bytes: u64) -> io::Result<TrimReport> {
        let now = SystemTime::now();
        let mut report = TrimReport::default();
        let mut entries = Vec::new();
        for kind in fs::read_dir(&self.root)?.flatten() {
            let is_tmp = kind.file_name() == "tmp";
            if kind.file_type().is_ok_and(|t| t.is_file()) {
                // Temp files an earlier version left beside the kinds.
                let stale = kind.file_name().to_string_lossy().starts_with(".tmp")
                    && kind
                        .metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|m| now.duration_since(m).ok())
                        .is_some_and(|age| age > TOUCH_AFTER);
                if stale && fs::remove_file(kind.path()).is_ok() {
                    report.removed += 1;
                }
                continue;
            }
            let Ok(shards) = fs::read_dir(kind.path()) else {
                continue;
            };
            for shard in shards.flatten() {
                let is_entry = is_tmp || shard.file_type().is_ok_and(|t| t.is_file());
                let files: Vec<fs::DirEntry> = if is_entry {
                    vec![shard]
                } else {
                    fs::read_dir(shard.path())
                        .map(|d| d.flatten().collect())
                        .unwrap_or_default()
                };
                for f in files {
                    let Ok(meta) = f.metadata() else { continue };
                    // A save that was cut off leaves its temp file.
                    let is_tmp = is_tmp || f.file_name().to_string_lossy().starts_with(".tmp");
                    let age = meta
                        .modified()
                        .ok()
                        .and_then(|m| now.duration_since(m).ok())
                        .unwrap_or_default();
                    if (is_tmp && age > TOUCH_AFTER) || (!is_tmp && age > max_age) {
                        if fs::remove_file(f.path()).is_ok() {
                            report.removed += 1;
                        }
                    } else if !is_tmp {
                        entries.push((age, meta.len(), f.path()));
                    }
                }
            }
        }
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        entries.sort_by_key(|e| std::cmp::Reverse(e.0));
        for (_, len, path) in entries {
            if total <= max_bytes {
                break;
            }
            if fs::remove_file(path).is_ok() {
                total -= len;
                report.removed += 1;
            }
        }
        report.kept_bytes = total;
        Ok(report)
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct TrimReport {
    pub removed: u64,
    pub kept_bytes: u64,
}

fn touch(path: &Path) {
    let old = fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .is_some_and(|age| age > TOUCH_AFTER);
    if old {
        if let Ok(f) = fs::File::options().append(true).open(path) {
            let _ = f.set_modified(SystemTime::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Sha256Digest {
        Sha256Digest::of(s.as_bytes())
    }

    #[test]
    fn put_get_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.get("results", &key("a")).unwrap().is_none());
        store.put("results", &key("a"), b"payload").unwrap();
        assert_eq!(
            store.get("results", &key("a")).unwrap().unwrap(),
            b"payload"
        );
        // Same bytes under another key or kind are not that entry.
        let path = store.path("results", &key("a"));
        let other = store.path("logs", &key("a"));
        fs::create_dir_all(other.parent().unwrap()).unwrap();
        fs::copy(&path, &other).unwrap();
        assert!(
            store.get("logs", &key("a")).is_err(),
            "a misplaced entry is corrupt"
        );
        for flip in [
            0,
            HEADER.len() + 2,
            fs::metadata(&path).unwrap().len() as usize - 1,
        ] {
            store.put("results", &key("a"), b"payload").unwrap();
            let mut bytes = fs::read(&path).unwrap();
            bytes[flip] ^= 1;
            fs::write(&path, &bytes).unwrap();
            assert!(store.get("results", &key("a")).is_err(), "flip at {flip}");
        }
        fs::write(&path, b"cachet").unwrap();
        assert!(store.get("results", &key("a")).is_err(), "truncated");
    }

    #[test]
    fn trim_by_age_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (i, age_days) in [(0, 0u64), (1, 2), (2, 9)] {
            store
                .put("results", &key(&i.to_string()), &[0u8; 1000])
                .unwrap();
            let f = fs::File::options()
                .append(true)
                .open(store.path("results", &key(&i.to_string())))
                .unwrap();
            f.set_modified(SystemTime::now() - Duration::from_secs(age_days * 86_400))
                .unwrap();
        }
        store.put("packs", &key("flat"), &[0u8; 100]).unwrap();
        assert!(dir.path().join("packs").join(key("flat").hex()).is_file());
        let r = store.trim(MAX_AGE, MAX_BYTES).unwrap();
        assert_eq!(r.removed, 1, "the 9-day-old entry");
        assert_eq!(
            r.kept_bytes,
            2000 + 100 + 2 * (HEADER.len() as u64 + 32) + HEADER.len() as u64 + 32
        );
        let r = store.trim(MAX_AGE, 1500).unwrap();
        assert_eq!(r.removed, 1, "the older of the two results left");
        assert!(store.get("results", &key("0")).unwrap().is_some());
        assert!(store.get("results", &key("1")).unwrap().is_none());
    }
}
