//! The cache beyond this machine, and lookups of a whole package: each
//! job's key is looked up here (`local.rs`); with a remote cache, the
//! selected cases of each module with a miss are fetched as one pack, the
//! misses looked up again and then by their own remote entry, and what came
//! from the remote is kept as one local pack per module. Passing results
//! are uploaded as they are saved, packs after the report.

use cachet_runtime::{reobserve, InputLog, World};

use super::entry::{
    merge, ordered_entries, pack_key, package_id, Bundle, BundleEntry, CachedResult, LogEntry,
    Lookup, Miss, Pack, PackageLog, Timings, LOGS, RESULTS,
};
use super::key::{KeyParts, NameKey, TestKey};
use super::local::{Cache, Packed};

/// One job to look up: its key, its package, the world its log is
/// re-observed in, and whether its result may come from (and go to) a
/// remote cache.
pub struct Query {
    pub name: NameKey,
    pub package: String,
    pub parts: KeyParts,
    pub world: World,
    pub shared: bool,
}

/// The cases one run selected of a module, as filed on the remote.
pub(super) struct Selection {
    pack: cachet_runtime::Sha256Digest,
    parts: Vec<KeyParts>,
    keys: Vec<TestKey>,
    /// The digest of the pack the server held, if any.
    fetched: Option<cachet_runtime::Sha256Digest>,
    /// That pack had an entry for every key.
    complete: bool,
}

impl Cache {
    /// Looks up a package's jobs, in order. With a remote cache, the
    /// selected cases of each shared module with a miss here are first
    /// fetched as one pack; what came from the remote is written as one
    /// file per module.
    pub fn look_up_all(&self, queries: &[Query]) -> Vec<Lookup> {
        let mut found: Vec<Lookup> = queries
            .iter()
            .map(|q| self.lookup_here(q.name, &q.package, &q.parts, &q.world))
            .collect();
        if self.remote.is_none() || !queries.iter().any(|q| q.shared) {
            return found;
        }
        let mut modules: Vec<&str> = Vec::new();
        for (q, f) in queries.iter().zip(&found) {
            if matches!(f, Lookup::Miss(_)) && q.shared && !modules.contains(&&*q.parts.module) {
                modules.push(&q.parts.module);
            }
        }
        for m in &modules {
            let selected = queries
                .iter()
                .filter(|q| q.shared && q.parts.module == *m)
                .map(|q| q.parts.clone())
                .collect();
            self.prefetch_pack(selected);
        }
        for (q, f) in queries.iter().zip(found.iter_mut()) {
            if let (Lookup::Miss(miss), true) = (&mut *f, q.shared) {
                let miss = std::mem::replace(miss, Miss::NoEntry(""));
                *f = self.lookup_remote(&q.package, &q.parts, &q.world, miss);
            }
        }
        let modules: Vec<String> = modules.iter().map(|m| m.to_string()).collect();
        self.flush_packs(Some(&modules));
        found
    }

    /// Looks here (the module's pack, the case's own entries), then at the
    /// remote.
    pub fn lookup(&self, name: NameKey, package: &str, parts: &KeyParts, world: &World) -> Lookup {
        match self.lookup_here(name, package, parts, world) {
            Lookup::Miss(miss) => self.lookup_remote(package, parts, world, miss),
            hit => hit,
        }
    }

    /// After a miss here (`miss`): the module's pack again (a prefetch may
    /// have filled it since), then the remote's entry for the case.
    pub fn lookup_remote(
        &self,
        package: &str,
        parts: &KeyParts,
        world: &World,
        miss: Miss,
    ) -> Lookup {
        if self.remote.is_none() {
            return Lookup::Miss(miss);
        }
        if let Packed::Hit(hit) = self.lookup_pack(package, parts, world) {
            return Lookup::Hit(hit);
        }
        match self.remote_case(package, parts, world) {
            Some(hit) => Lookup::Hit(hit),
            None => Lookup::Miss(miss),
        }
    }

    /// Fetches the remote pack of one module's selected cases (`parts`,
    /// all for the same module), so their lookups find it locally; it is
    /// uploaded at the end when this run changed it ([`Cache::upload_packs`]).
    pub fn prefetch_pack(&self, parts: Vec<KeyParts>) {
        let Some(remote) = self.remote.as_ref() else {
            return;
        };
        let keys: Vec<TestKey> = parts.iter().map(KeyParts::key).collect();
        let key = pack_key(&keys);
        let mut complete = false;
        let fetched = remote.fetch_pack(&key).and_then(|(bundles, digest)| {
            let wanted: std::collections::HashSet<&TestKey> = keys.iter().collect();
            // A pack filed under our key must hold only our keys.
            if bundles.iter().any(|(k, _)| !wanted.contains(k)) {
                remote.reject(format!("ac/{}: a pack of other tests", key.hex()));
                return None;
            }
            let had: std::collections::HashSet<&TestKey> = bundles.iter().map(|(k, _)| k).collect();
            complete = wanted.iter().all(|k| had.contains(k));
            for (k, b) in &bundles {
                self.packs.add(&self.store, *k, b);
            }
            Some(digest)
        });
        self.selections.lock().expect("selections").push(Selection {
            pack: key,
            parts,
            keys,
            fetched,
            complete,
        });
    }

    /// Takes from the remote cache how long `package`'s jobs (`cases`, by
    /// their names as the timings table keys them) took where they ran,
    /// for those this machine has no time of: asked once per package with
    /// jobs to run, so a fresh machine orders them and sends the long ones
    /// apart as the machine that timed them would. Times this machine took
    /// win.
    pub fn fetch_timings(&self, package: &str, cases: &[String]) {
        let Some(remote) = self.remote.as_ref() else {
            return;
        };
        let Some(timings) = remote.fetch_timings(package) else {
            return;
        };
        let unknown: std::collections::HashSet<cachet_runtime::Sha256Digest> = cases
            .iter()
            .map(|c| NameKey::new(package, c).0)
            .filter(|k| self.timings.get(k).is_none())
            .collect();
        for (hex, micros) in timings.jobs {
            // Only this package's jobs: an entry cannot time another's.
            match cachet_runtime::Sha256Digest::parse_hex(&hex) {
                Some(k) if unknown.contains(&k) => self.timings.put(k, micros),
                _ => {}
            }
        }
    }

    /// Uploads how long `package`'s jobs (`cases`) last took here, keeping
    /// the server's times of jobs this machine has none of.
    pub fn share_timings(&self, package: &str, cases: &[String]) {
        let Some(remote) = self.remote.as_ref().filter(|r| !r.read_only()) else {
            return;
        };
        let jobs: Vec<(String, u64)> = cases
            .iter()
            .filter_map(|c| {
                let k = NameKey::new(package, c).0;
                self.timings.get(&k).map(|micros| (k.hex(), micros))
            })
            .collect();
        if !jobs.is_empty() {
            remote.upload_timings(package, Timings { jobs });
        }
    }

    /// Writes the module packs this run changed (`modules`, or all).
    pub fn flush_packs(&self, modules: Option<&[String]>) {
        self.packs.flush(&self.store, modules);
    }

    /// Uploads the pack of each selection looked up, built from the local
    /// entries, the module's pack and what the server held, when it
    /// differs from what the server gave.
    pub fn upload_packs(&self) {
        let Some(remote) = self.remote.as_ref().filter(|r| !r.read_only()) else {
            return;
        };
        let selections = std::mem::take(&mut *self.selections.lock().expect("selections"));
        let saved = self.saved.lock().expect("saved").clone();
        // Packages holding the same module select the same keys: one pack.
        let mut done = std::collections::HashSet::new();
        for sel in selections {
            if !done.insert(sel.pack) {
                continue;
            }
            // What the server gave, unchanged by this run.
            if sel.fetched.is_some() && sel.complete && !sel.keys.iter().any(|k| saved.contains(k))
            {
                continue;
            }
            let bundles: Vec<Bundle> = sel
                .parts
                .into_iter()
                .zip(sel.keys)
                .filter_map(|(parts, key)| {
                    let own = match self.read::<LogEntry>(LOGS, &key.0) {
                        Ok(Some(e)) => self.bundle_entries(&key, e.logs),
                        _ => Vec::new(),
                    };
                    let packed = match self.packs.bundle(&self.store, &parts.module, &key) {
                        Ok(Some(b)) => b.entries.clone(),
                        _ => Vec::new(),
                    };
                    let entries = merge(&own, &merge(&packed, &remote.seen(&key)));
                    (!entries.is_empty()).then_some(Bundle { parts, entries })
                })
                .collect();
            let pack = Pack { bundles };
            if !pack.bundles.is_empty() && pack.digest() != sel.fetched {
                remote.upload_pack(sel.pack, &pack);
            }
        }
    }

    /// The remote's entry for `parts`, when one of its logs re-observes the
    /// same here; copied into the module's pack.
    fn remote_case(&self, package: &str, parts: &KeyParts, world: &World) -> Option<CachedResult> {
        let remote = self.remote.as_ref()?;
        let key = parts.key();
        let bundle = remote.fetch(&key)?;
        // An entry filed under our key must be for our key.
        if bundle.parts != *parts {
            remote.reject(format!("ac/{}: an entry of another test", key.0.hex()));
            return None;
        }
        let own = package_id(package);
        for entry in ordered_entries(&bundle.entries, &own) {
            let now = reobserve(&entry.log, world);
            if now.inputs_digest() == entry.log.inputs_digest() {
                remote
                    .stats
                    .hits
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // Into the module's pack: one file per module, not two per case.
                self.packs.add(&self.store, key, &bundle);
                return Some(entry.result.clone());
            }
        }
        None
    }

    /// Saves a passing run's log and result, and (when `share`, the
    /// result being valid in any checkout) uploads the key's entry to the
    /// remote. Errors only cost a future rerun.
    pub fn save(
        &self,
        name: NameKey,
        package: &str,
        parts: &KeyParts,
        log: &InputLog,
        result: &CachedResult,
        share: bool,
    ) -> std::io::Result<()> {
        let key = parts.key();
        let _writing = self.log_lock(&key);
        let logs = self.save_local(name, package, parts, log, result)?;
        self.saved.lock().expect("saved").insert(key);
        if let Some(remote) = self.remote.as_ref().filter(|r| share && !r.read_only()) {
            let bundle = Bundle {
                parts: parts.clone(),
                entries: self.bundle_entries(&key, logs),
            };
            remote.upload(key, &bundle);
        }
        Ok(())
    }

    /// `logs` of `key` with their saved results, as a bundle holds them.
    fn bundle_entries(&self, key: &TestKey, logs: Vec<PackageLog>) -> Vec<BundleEntry> {
        logs.into_iter()
            .filter_map(|l| {
                let result = self
                    .read::<CachedResult>(RESULTS, &key.result(&l.log.inputs_digest()).0)
                    .ok()??;
                Some(BundleEntry {
                    package: package_id(&l.package),
                    log: l.log,
                    result,
                })
            })
            .collect()
    }
}
