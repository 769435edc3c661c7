//! The local cache: [`Cache`] over the store, with the stat memo, the module
//! facts and job timings beside it. Here a lookup is the two-level rule
//! (`key.rs`) applied to the case's own entries and to its module's local
//! pack; `shared.rs` adds the remote cache and the lookup of a whole
//! package's jobs.

use std::path::Path;
use std::time::Duration;

use cachet_runtime::{first_change, reobserve, InputLog, World};
use serde::Deserialize;

use super::entry::{
    facts_key, ordered, ordered_entries, package_id, with_log, CachedResult, EntryError, LogEntry,
    Lookup, Miss, ModuleFacts, PackageLog, LOGS, NAMES, RESULTS,
};
use super::key::{KeyParts, NameKey, TestKey};
use super::shared::Selection;
use super::{memo, pack, remote, table, Store};

#[derive(Clone)]
pub struct Cache {
    pub(super) store: Store,
    pub(super) memo: std::sync::Arc<memo::StatMemo>,
    pub(super) facts: std::sync::Arc<table::Table<ModuleFacts>>,
    /// How long each job (by package and case) last took, to run the
    /// slowest first.
    pub(super) timings: std::sync::Arc<table::Table<u64>>,
    /// Compiled-module files found intact, by identity (the runtime's).
    pub(super) compiled_memo: std::sync::Arc<memo::StatMemo>,
    pub(super) remote: Option<std::sync::Arc<remote::Remote>>,
    pub(super) packs: pack::Packs,
    /// The remote packs this run looked up, to upload when they changed.
    pub(super) selections: std::sync::Arc<std::sync::Mutex<Vec<Selection>>>,
    /// The keys this run saved a result for.
    pub(super) saved: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<TestKey>>>,
    /// Misses say what changed in the key (`--explain`; a read per miss).
    pub(super) explain: bool,
    /// A key's log entry is read, changed and written back, and its bundle
    /// queued for the remote, under one of these (by the key's first
    /// byte): two packages saving the same key at once (runners side by
    /// side on packages of one module) each kept only its own log, and the
    /// other package's result was lost.
    pub(super) log_writes: std::sync::Arc<[std::sync::Mutex<()>; LOG_WRITE_LOCKS]>,
}

/// How many locks share the keys' log entries.
const LOG_WRITE_LOCKS: usize = 32;

/// What a module's pack says of a case.
pub(super) enum Packed {
    Hit(CachedResult),
    /// It has the case, for other inputs: the first observation that differs.
    Changed(Option<String>),
    Absent,
    /// The pack file is damaged (it counts as empty).
    Corrupt(EntryError),
}

impl Cache {
    pub fn open(dir: &Path) -> std::io::Result<Cache> {
        let store = Store::open(dir)?;
        let memo = std::sync::Arc::new(memo::StatMemo::load(&dir.join("memo")));
        let facts = std::sync::Arc::new(table::Table::load(
            &dir.join("module-facts"),
            b"cachet-facts v2\n",
        ));
        let timings = std::sync::Arc::new(table::Table::load(
            &dir.join("timings"),
            b"cachet-timings v1\n",
        ));
        let compiled_memo = std::sync::Arc::new(memo::StatMemo::load(&dir.join("compiled-memo")));
        Ok(Cache {
            store,
            memo,
            facts,
            timings,
            compiled_memo,
            remote: None,
            packs: Default::default(),
            selections: Default::default(),
            saved: Default::default(),
            explain: true,
            log_writes: std::sync::Arc::new(std::array::from_fn(|_| Default::default())),
        })
    }

    /// Looks up misses in `remote` too, and uploads what passes to it.
    pub fn with_remote(mut self, remote: std::sync::Arc<remote::Remote>) -> Self {
        self.remote = Some(remote);
        self
    }

    /// Whether misses say what changed in their key (`--explain`), which
    /// costs a read per miss.
    pub fn with_explain(mut self, explain: bool) -> Self {
        self.explain = explain;
        self
    }

    pub fn remote(&self) -> Option<&std::sync::Arc<remote::Remote>> {
        self.remote.as_ref()
    }

    /// The stat memo, for the runs' policies.
    pub fn memo(&self) -> std::sync::Arc<dyn cachet_runtime::DigestMemo> {
        self.memo.clone()
    }

    /// The compiled files found intact, for the runtime.
    pub fn compiled_memo(&self) -> std::sync::Arc<dyn cachet_runtime::DigestMemo> {
        self.compiled_memo.clone()
    }

    /// Writes the stat memos, the module facts and the timings back; a
    /// failure only costs re-hashing later.
    pub fn save_memo(&self) {
        let _ = self.memo.save();
        let _ = self.compiled_memo.save();
        let _ = self.facts.save();
        let _ = self.timings.save();
    }

    /// How long `package`'s job `case` took when it last ran.
    pub fn last_time(&self, package: &str, case: &str) -> Option<Duration> {
        let micros = self.timings.get(&NameKey::new(package, case).0)?;
        Some(Duration::from_micros(micros))
    }

    /// Remembers how long `package`'s job `case` took (saved with the memo).
    pub fn record_time(&self, package: &str, case: &str, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.timings.put(NameKey::new(package, case).0, micros);
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// What was learnt from a module's bytes before, if anything.
    pub fn module_facts(
        &self,
        digest: &cachet_runtime::ModuleDigest,
        dir: Option<&str>,
    ) -> Option<ModuleFacts> {
        let facts = self.facts.get(&facts_key(digest, dir))?;
        crate::framework::Framework::from_name(&facts.framework).map(|_| facts)
    }

    /// Remembers what was learnt from a module's bytes (saved with the memo).
    pub fn save_module_facts(
        &self,
        digest: &cachet_runtime::ModuleDigest,
        dir: Option<&str>,
        facts: &ModuleFacts,
    ) {
        self.facts.put(facts_key(digest, dir), facts.clone());
    }

    /// Looks at the module's pack (what a remote gave), then at the case's
    /// own entries. Any entry whose log re-observes the same is a valid
    /// result, whichever is newer; the pack goes first because a machine
    /// served by a remote has no entries of its own (a failed open per case).
    pub fn lookup_here(
        &self,
        name: NameKey,
        package: &str,
        parts: &KeyParts,
        world: &World,
    ) -> Lookup {
        let packed = match self.lookup_pack(package, parts, world) {
            Packed::Hit(hit) => return Lookup::Hit(hit),
            Packed::Absent => None,
            Packed::Changed(change) => change.map(Miss::Changed),
            Packed::Corrupt(e) => Some(Miss::Corrupt(e)),
        };
        match (self.lookup_local(name, package, parts, world), packed) {
            // What changed since the pack's run says more than "no entry",
            // and a damaged pack must be said.
            (Lookup::Miss(Miss::NoEntry(_)), Some(miss)) => Lookup::Miss(miss),
            (Lookup::Miss(_), Some(Miss::Corrupt(e))) => Lookup::Miss(Miss::Corrupt(e)),
            (other, _) => other,
        }
    }

    /// The module pack's result for `parts`, when one of its logs
    /// re-observes the same here.
    pub(super) fn lookup_pack(&self, package: &str, parts: &KeyParts, world: &World) -> Packed {
        let bundle = match self.packs.bundle(&self.store, &parts.module, &parts.key()) {
            Ok(Some(b)) => b,
            Ok(None) => return Packed::Absent,
            Err(e) => return Packed::Corrupt(e),
        };
        let own = package_id(package);
        let mut change = None;
        for entry in ordered_entries(&bundle.entries, &own) {
            let now = reobserve(&entry.log, world);
            if now.inputs_digest() == entry.log.inputs_digest() {
                return Packed::Hit(entry.result.clone());
            }
            if change.is_none() {
                change = first_change(&entry.log, &now).map(|c| c.to_string());
            }
        }
        Packed::Changed(change)
    }

    pub(super) fn lookup_local(
        &self,
        name: NameKey,
        package: &str,
        parts: &KeyParts,
        world: &World,
    ) -> Lookup {
        let key = parts.key();
        let entry: LogEntry = match self.read(LOGS, &key.0) {
            Ok(Some(e)) => e,
            Ok(None) if !self.explain => return Lookup::Miss(Miss::NoEntry("no cache entry")),
            Ok(None) => return Lookup::Miss(Miss::NoEntry(self.explain_no_entry(name, parts))),
            Err(e) => return Lookup::Miss(Miss::Corrupt(e)),
        };
        let mut first_change_seen = None;
        for recorded in ordered(&entry.logs, package) {
            let now = reobserve(&recorded.log, world);
            let result_key = key.result(&now.inputs_digest());
            match self.read::<CachedResult>(RESULTS, &result_key.0) {
                Ok(Some(r)) => return Lookup::Hit(r),
                Ok(None) => {
                    if first_change_seen.is_none() {
                        first_change_seen = Some(first_change(&recorded.log, &now));
                    }
                }
                Err(e) => return Lookup::Miss(Miss::Corrupt(e)),
            }
        }
        Lookup::Miss(match first_change_seen.flatten() {
            Some(change) => Miss::Changed(change.to_string()),
            None => Miss::NoEntry("no result for these inputs"),
        })
    }

    pub(super) fn explain_no_entry(&self, name: NameKey, parts: &KeyParts) -> &'static str {
        match self.read::<KeyParts>(NAMES, &name.0) {
            Ok(Some(before)) => parts.difference(&before),
            _ => "no cache entry",
        }
    }

    /// The case names of a cached listing whose log is recorded (whatever
    /// today's world says), and how long its run took, for `cachet inputs`.
    pub fn listing(&self, parts: &KeyParts, package: &str) -> Option<CachedResult> {
        let (_, result) = self.last_run(parts, package).ok()??;
        Some(result)
    }

    /// The last passing log of `parts` (the one of `package`, if it has
    /// one), for `cachet inputs`.
    pub fn log(&self, parts: &KeyParts, package: &str) -> Result<Option<InputLog>, EntryError> {
        Ok(self.last_run(parts, package)?.map(|(log, _)| log))
    }

    /// The last passing run of `parts` (`package`'s, if it has one): from
    /// the case's own entries, else from its module's pack.
    pub(super) fn last_run(
        &self,
        parts: &KeyParts,
        package: &str,
    ) -> Result<Option<(InputLog, CachedResult)>, EntryError> {
        let key = parts.key();
        if let Some(entry) = self.read::<LogEntry>(LOGS, &key.0)? {
            if let Some(l) = ordered(&entry.logs, package).next() {
                let result = self.read(RESULTS, &key.result(&l.log.inputs_digest()).0)?;
                return Ok(result.map(|r| (l.log.clone(), r)));
            }
        }
        let bundle = self.packs.bundle(&self.store, &parts.module, &key)?;
        let own = package_id(package);
        Ok(bundle.and_then(|b| {
            ordered_entries(&b.entries, &own)
                .next()
                .map(|e| (e.log.clone(), e.result.clone()))
        }))
    }

    /// Saves into the local store; returns the key's logs as now kept.
    /// The lock `key`'s log entry is read, changed and written back (and
    /// its bundle queued for the remote) under.
    pub(super) fn log_lock(&self, key: &TestKey) -> std::sync::MutexGuard<'_, ()> {
        let lock = &self.log_writes[usize::from(key.0 .0[0]) % LOG_WRITE_LOCKS];
        lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Saves a passing run's result and its log among the key's other
    /// packages' (under [`Cache::log_lock`]).
    pub(super) fn save_local(
        &self,
        name: NameKey,
        package: &str,
        parts: &KeyParts,
        log: &InputLog,
        result: &CachedResult,
    ) -> std::io::Result<Vec<PackageLog>> {
        let key = parts.key();
        // Result first: a log entry is only ever visible with its result saved.
        self.store.put(
            RESULTS,
            &key.result(&log.inputs_digest()).0,
            &serde_json::to_vec(result)?,
        )?;
        let logs = match self.read::<LogEntry>(LOGS, &key.0) {
            Ok(Some(e)) => e.logs,
            _ => Vec::new(),
        };
        let entry = LogEntry {
            parts: parts.clone(),
            logs: with_log(logs, package, log),
        };
        self.store.put(LOGS, &key.0, &serde_json::to_vec(&entry)?)?;
        self.store
            .put(NAMES, &name.0, &serde_json::to_vec(parts)?)?;
        Ok(entry.logs)
    }

    pub(super) fn read<T: for<'de> Deserialize<'de>>(
        &self,
        kind: &str,
        key: &cachet_runtime::Sha256Digest,
    ) -> Result<Option<T>, EntryError> {
        match self.store.get(kind, key)? {
            None => Ok(None),
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| EntryError::Parse {
                        entry: format!("{kind}/{}", key.hex()),
                        error: e.to_string(),
                    })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cachet_runtime::log::{Entry, Observation};
    use cachet_runtime::{ModuleDigest, Sha256Digest, Wasi};

    #[test]
    fn packages_saving_one_key_at_once_keep_every_log() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let result = CachedResult::empty();
        let packages: Vec<String> = (0..8).map(|i| format!("pkg{i}")).collect();
        // Twenty keys, each saved once by every package at the same moment.
        for case in (0..20).map(|i| format!("tests::case{i}")) {
            let parts = KeyParts::new(
                ModuleDigest(Sha256Digest::of(b"module")),
                Wasi::P1,
                "libtest",
                &case,
                &[],
                &cachet_runtime::Policy::default(),
                1 << 20,
            );
            let start = std::sync::Barrier::new(packages.len());
            std::thread::scope(|s| {
                for p in &packages {
                    let (cache, parts, result, start, case) =
                        (&cache, &parts, &result, &start, &case);
                    s.spawn(move || {
                        // Each package's own input state.
                        let log = InputLog {
                            entries: vec![Entry::Env {
                                name: "DATA".into(),
                                observation: Observation::Digest(Sha256Digest::of(p.as_bytes())),
                            }],
                        };
                        start.wait();
                        let name = NameKey::new(p, case);
                        cache.save(name, p, parts, &log, result, true).unwrap();
                    });
                }
            });
            let entry: LogEntry = cache.read(LOGS, &parts.key().0).unwrap().unwrap();
            let mut kept: Vec<&str> = entry.logs.iter().map(|l| l.package.as_str()).collect();
            kept.sort_unstable();
            assert_eq!(kept, packages, "{case}");
        }
    }
}
