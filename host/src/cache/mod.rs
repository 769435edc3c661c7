//! The test result cache. Design note: `docs/design/cache.md`.
//!
//! - `store.rs`: a content-addressed directory that knows nothing of tests.
//! - `key.rs`: the test key and the two-level lookup, explained once.
//! - here: [`Cache::lookup`] and [`Cache::save`], which the scheduler calls
//!   around each run, and the reason every miss has (`--explain`).
//!
//! Only passing runs are saved, and only when no input changed while the
//! test ran. The cache never prints; warnings come back as values.
//!
//! A test key keeps one log per package that holds its module (the same
//! `.wasm` copied into two packages reads different files there): a lookup
//! tries the package's own log first, then the others, so neither package's
//! runs push the other's log out.

pub mod key;
pub mod memo;
mod pack;
pub mod remote;
pub mod store;
mod table;

use std::path::Path;
use std::time::Duration;

use cachet_runtime::{first_change, reobserve, InputLog, World};

/// `magic`, the sha256 of the JSON in hex and a newline, the JSON: how
/// remote entries and the module-facts table are written.
pub(crate) fn seal<T: Serialize>(value: &T, magic: &[u8]) -> Result<Vec<u8>, serde_json::Error> {
    let json = serde_json::to_vec(value)?;
    let mut out = magic.to_vec();
    out.extend_from_slice(cachet_runtime::Sha256Digest::of(&json).hex().as_bytes());
    out.push(b'\n');
    out.extend_from_slice(&json);
    Ok(out)
}

/// The value and its JSON's sha256, if the bytes are [`seal`]ed under
/// `magic` and their checksum holds.
pub(crate) fn unseal<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    magic: &[u8],
) -> Option<(T, cachet_runtime::Sha256Digest)> {
    let rest = bytes.strip_prefix(magic)?;
    let (hex, json) = (rest.get(..64)?, rest.get(65..)?);
    let digest = cachet_runtime::Sha256Digest::of(json);
    if rest.get(64) != Some(&b'\n') || digest.hex().as_bytes() != hex {
        return None;
    }
    serde_json::from_slice(json).ok().map(|v| (v, digest))
}

/// Writes a whole-file table (the stat memo, the module facts) at `path`
/// through a temp file in the store's `tmp/`, which trimming sweeps: a
/// save cut short leaves nothing elsewhere (issue 8).
fn write_table(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path.parent().expect("tables have a parent").join("tmp");
    std::fs::create_dir_all(&dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
    tmp.write_all(bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// A bundle's entries, `package`'s own (hashed) first.
fn ordered_entries<'a>(
    entries: &'a [remote::BundleEntry],
    package: &'a str,
) -> impl Iterator<Item = &'a remote::BundleEntry> {
    entries
        .iter()
        .filter(move |e| e.package == package)
        .chain(entries.iter().filter(move |e| e.package != package))
}

/// `package`'s own log first, then the others, most recent first.
fn ordered<'a>(logs: &'a [PackageLog], package: &'a str) -> impl Iterator<Item = &'a PackageLog> {
    logs.iter()
        .filter(move |l| l.package == package)
        .chain(logs.iter().filter(move |l| l.package != package))
}
use serde::{Deserialize, Serialize};

pub use key::{KeyParts, NameKey, TestKey};
pub use store::Store;

/// Level 1: a test key's last passing input logs, most recent first, each
/// with the package it ran in, and the key's parts (for `cachet inputs` and
/// `--explain`).
#[derive(Serialize, Deserialize)]
struct LogEntry {
    parts: KeyParts,
    logs: Vec<PackageLog>,
}

#[derive(Clone, Serialize, Deserialize)]
struct PackageLog {
    package: String,
    log: InputLog,
}

/// Logs kept per test key: packages holding the same module.
const MAX_LOGS: usize = 8;

/// Level 2: the result of a passing run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CachedResult {
    /// The case's own output (framing removed).
    pub output: String,
    pub elapsed: Duration,
    /// libtest reported the case as ignored.
    pub skipped: bool,
    /// For a listing: the case names.
    pub cases: Vec<String>,
    /// The sha256 of the case's whole output (framing removed), of which
    /// `output` may keep only the head and tail: what `--verify` compares.
    #[serde(default)]
    pub output_digest: Option<cachet_runtime::Sha256Digest>,
    /// For a module's cases run in one instance: each case's result.
    #[serde(default)]
    pub module_cases: Vec<CachedCase>,
}

/// One case of a module run in one instance.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CachedCase {
    pub name: String,
    pub skipped: bool,
    pub elapsed: Duration,
    pub output: String,
    /// Its output is part of another case's (Go prints a module's run as
    /// one output).
    pub in_module_output: bool,
}

/// Why a case ran instead of hitting the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Miss {
    /// The cache is off for this run (`--count`, `--isolate=module`).
    Bypassed(&'static str),
    /// No entry, with what changed in the key when a run under the same name
    /// is known (`module changed`, `args changed`, ...).
    NoEntry(&'static str),
    /// The first observation of the log that differs today.
    Changed(String),
    /// An entry was damaged; it is ignored (and replaced after the run).
    Corrupt(String),
}

impl std::fmt::Display for Miss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Miss::Bypassed(why) => write!(f, "cache not used: {why}"),
            Miss::NoEntry(why) => f.write_str(why),
            Miss::Changed(change) => f.write_str(change),
            Miss::Corrupt(e) => f.write_str(e),
        }
    }
}

pub enum Lookup {
    Hit(CachedResult),
    Miss(Miss),
}

const LOGS: &str = "logs";
const RESULTS: &str = "results";
const NAMES: &str = "names";

/// What was learnt from a module's bytes, so an unchanged module need not be
/// read again: kept by module digest (and package dir, which the embedded
/// path is searched for).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleFacts {
    framework: String,
    pub embeds_dir: bool,
}

impl ModuleFacts {
    pub fn new(framework: crate::framework::Framework, embeds_dir: bool) -> Self {
        ModuleFacts {
            framework: framework.name().to_string(),
            embeds_dir,
        }
    }

    /// The framework detected from the bytes.
    pub fn framework(&self) -> crate::framework::Framework {
        crate::framework::Framework::from_name(&self.framework).expect("checked when read")
    }
}

fn facts_key(
    digest: &cachet_runtime::ModuleDigest,
    dir: Option<&str>,
) -> cachet_runtime::Sha256Digest {
    let mut bytes = digest.0 .0.to_vec();
    bytes.extend_from_slice(dir.unwrap_or("").as_bytes());
    cachet_runtime::Sha256Digest::of(&bytes)
}

#[derive(Clone)]
pub struct Cache {
    store: Store,
    memo: std::sync::Arc<memo::StatMemo>,
    facts: std::sync::Arc<table::Table<ModuleFacts>>,
    /// How long each job (by package and case) last took, to run the
    /// slowest first.
    timings: std::sync::Arc<table::Table<u64>>,
    remote: Option<std::sync::Arc<remote::Remote>>,
    packs: pack::Packs,
    /// The remote packs this run looked up, to upload when they changed.
    selections: std::sync::Arc<std::sync::Mutex<Vec<Selection>>>,
    /// The keys this run saved a result for.
    saved: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<TestKey>>>,
    /// Misses say what changed in the key (`--explain`; a read per miss).
    explain: bool,
}

/// What a module's pack says of a case.
enum Packed {
    Hit(CachedResult),
    /// It has the case, for other inputs: the first observation that differs.
    Changed(Option<String>),
    Absent,
    /// The pack file is damaged (it counts as empty).
    Corrupt(String),
}

/// The cases one run selected of a module, as filed on the remote.
struct Selection {
    pack: cachet_runtime::Sha256Digest,
    parts: Vec<KeyParts>,
    keys: Vec<TestKey>,
    /// The digest of the pack the server held, if any.
    fetched: Option<cachet_runtime::Sha256Digest>,
    /// That pack had an entry for every key.
    complete: bool,
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
        Ok(Cache {
            store,
            memo,
            facts,
            timings,
            remote: None,
            packs: Default::default(),
            selections: Default::default(),
            saved: Default::default(),
            explain: true,
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

    /// Writes the stat memo, the module facts and the timings back; a
    /// failure only costs re-hashing later.
    pub fn save_memo(&self) {
        let _ = self.memo.save();
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

    /// Looks here (the module's pack, the case's own entries), then at the
    /// remote.
    pub fn lookup(&self, name: NameKey, package: &str, parts: &KeyParts, world: &World) -> Lookup {
        match self.lookup_here(name, package, parts, world) {
            Lookup::Miss(miss) => self.lookup_remote(package, parts, world, miss),
            hit => hit,
        }
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

    /// The module pack's result for `parts`, when one of its logs
    /// re-observes the same here.
    fn lookup_pack(&self, package: &str, parts: &KeyParts, world: &World) -> Packed {
        let bundle = match self.packs.bundle(&self.store, &parts.module, &parts.key()) {
            Ok(Some(b)) => b,
            Ok(None) => return Packed::Absent,
            Err(e) => return Packed::Corrupt(e),
        };
        let own = remote::package_id(package);
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

    /// Fetches the remote pack of one module's selected cases (`parts`,
    /// all for the same module), so their lookups find it locally; it is
    /// uploaded at the end when this run changed it ([`Cache::upload_packs`]).
    pub fn prefetch_pack(&self, parts: Vec<KeyParts>) {
        let Some(remote) = self.remote.as_ref() else {
            return;
        };
        let keys: Vec<TestKey> = parts.iter().map(KeyParts::key).collect();
        let key = remote::pack_key(&keys);
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
        for sel in selections {
            // What the server gave, unchanged by this run.
            if sel.fetched.is_some() && sel.complete && !sel.keys.iter().any(|k| saved.contains(k))
            {
                continue;
            }
            let bundles: Vec<remote::Bundle> = sel
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
                    let entries = pack::merge(&own, &pack::merge(&packed, &remote.seen(&key)));
                    (!entries.is_empty()).then_some(remote::Bundle { parts, entries })
                })
                .collect();
            let pack = remote::Pack { bundles };
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
        let own = remote::package_id(package);
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

    fn lookup_local(
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

    fn explain_no_entry(&self, name: NameKey, parts: &KeyParts) -> &'static str {
        match self.read::<KeyParts>(NAMES, &name.0) {
            Ok(Some(before)) => parts.difference(&before),
            _ => "no cache entry",
        }
    }

    /// The case names of a cached listing whose log is recorded (whatever
    /// today's world says), for `cachet inputs`.
    pub fn cases(&self, parts: &KeyParts, package: &str) -> Option<Vec<String>> {
        let (_, result) = self.last_run(parts, package).ok()??;
        Some(result.cases)
    }

    /// The last passing log of `parts` (the one of `package`, if it has
    /// one), for `cachet inputs`.
    pub fn log(&self, parts: &KeyParts, package: &str) -> Result<Option<InputLog>, String> {
        Ok(self.last_run(parts, package)?.map(|(log, _)| log))
    }

    /// The last passing run of `parts` (`package`'s, if it has one): from
    /// the case's own entries, else from its module's pack.
    fn last_run(
        &self,
        parts: &KeyParts,
        package: &str,
    ) -> Result<Option<(InputLog, CachedResult)>, String> {
        let key = parts.key();
        if let Some(entry) = self.read::<LogEntry>(LOGS, &key.0)? {
            if let Some(l) = ordered(&entry.logs, package).next() {
                let result = self.read(RESULTS, &key.result(&l.log.inputs_digest()).0)?;
                return Ok(result.map(|r| (l.log.clone(), r)));
            }
        }
        let bundle = self.packs.bundle(&self.store, &parts.module, &key)?;
        let own = remote::package_id(package);
        Ok(bundle.and_then(|b| {
            ordered_entries(&b.entries, &own)
                .next()
                .map(|e| (e.log.clone(), e.result.clone()))
        }))
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
        let logs = self.save_local(name, package, parts, log, result)?;
        let key = parts.key();
        self.saved.lock().expect("saved").insert(key);
        if let Some(remote) = self.remote.as_ref().filter(|r| share && !r.read_only()) {
            let bundle = remote::Bundle {
                parts: parts.clone(),
                entries: self.bundle_entries(&key, logs),
            };
            remote.upload(key, &bundle);
        }
        Ok(())
    }

    /// `logs` of `key` with their saved results, as a bundle holds them.
    fn bundle_entries(&self, key: &TestKey, logs: Vec<PackageLog>) -> Vec<remote::BundleEntry> {
        logs.into_iter()
            .filter_map(|l| {
                let result = self
                    .read::<CachedResult>(RESULTS, &key.result(&l.log.inputs_digest()).0)
                    .ok()??;
                Some(remote::BundleEntry {
                    package: remote::package_id(&l.package),
                    log: l.log,
                    result,
                })
            })
            .collect()
    }

    /// Saves into the local store; returns the key's logs as now kept.
    fn save_local(
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
        let mut logs = match self.read::<LogEntry>(LOGS, &key.0) {
            Ok(Some(e)) => e.logs,
            _ => Vec::new(),
        };
        logs.retain(|l| l.package != package && l.log != *log);
        logs.insert(
            0,
            PackageLog {
                package: package.to_string(),
                log: log.clone(),
            },
        );
        logs.truncate(MAX_LOGS);
        let entry = LogEntry {
            parts: parts.clone(),
            logs,
        };
        self.store.put(LOGS, &key.0, &serde_json::to_vec(&entry)?)?;
        self.store
            .put(NAMES, &name.0, &serde_json::to_vec(parts)?)?;
        Ok(entry.logs)
    }

    fn read<T: for<'de> Deserialize<'de>>(
        &self,
        kind: &str,
        key: &cachet_runtime::Sha256Digest,
    ) -> Result<Option<T>, String> {
        match self.store.get(kind, key) {
            Ok(None) => Ok(None),
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                format!(
                    "cache entry {kind}/{} does not parse ({e}); it is ignored",
                    key.hex()
                )
            }),
            Err(e) => Err(e.to_string()),
        }
    }
}
