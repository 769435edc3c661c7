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
pub mod remote;
pub mod store;

use std::path::Path;
use std::time::Duration;

use cachet_runtime::{first_change, reobserve, InputLog, World};

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
const FACTS: &str = "facts";

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
    remote: Option<std::sync::Arc<remote::Remote>>,
}

impl Cache {
    pub fn open(dir: &Path) -> std::io::Result<Cache> {
        let store = Store::open(dir)?;
        let memo = std::sync::Arc::new(memo::StatMemo::load(&dir.join("memo")));
        Ok(Cache {
            store,
            memo,
            remote: None,
        })
    }

    /// Looks up misses in `remote` too, and uploads what passes to it.
    pub fn with_remote(mut self, remote: std::sync::Arc<remote::Remote>) -> Self {
        self.remote = Some(remote);
        self
    }

    pub fn remote(&self) -> Option<&std::sync::Arc<remote::Remote>> {
        self.remote.as_ref()
    }

    /// The stat memo, for the runs' policies.
    pub fn memo(&self) -> std::sync::Arc<dyn cachet_runtime::DigestMemo> {
        self.memo.clone()
    }

    /// Writes the stat memo back; a failure only costs re-hashing later.
    pub fn save_memo(&self) {
        let _ = self.memo.save();
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
        let facts: ModuleFacts = self.read(FACTS, &facts_key(digest, dir)).ok()??;
        crate::framework::Framework::from_name(&facts.framework).map(|_| facts)
    }

    /// Remembers what was learnt from a module's bytes.
    pub fn save_module_facts(
        &self,
        digest: &cachet_runtime::ModuleDigest,
        dir: Option<&str>,
        facts: &ModuleFacts,
    ) -> std::io::Result<()> {
        self.store
            .put(FACTS, &facts_key(digest, dir), &serde_json::to_vec(facts)?)
    }

    /// Finds the result of `parts` in `world` for `package`, or says why not.
    pub fn lookup(&self, name: NameKey, package: &str, parts: &KeyParts, world: &World) -> Lookup {
        match self.lookup_local(name, package, parts, world) {
            Lookup::Miss(miss) => match self.lookup_remote(package, parts, world) {
                Some(hit) => hit,
                None => Lookup::Miss(miss),
            },
            hit => hit,
        }
    }

    /// The remote's entry for `parts`, when one of its logs re-observes the
    /// same here; copied into the local cache.
    fn lookup_remote(&self, package: &str, parts: &KeyParts, world: &World) -> Option<Lookup> {
        let remote = self.remote.as_ref()?;
        let key = parts.key();
        let bundle = remote.fetch(&key)?;
        // An entry filed under our key must be for our key.
        if bundle.parts != *parts {
            return None;
        }
        let own = remote::package_id(package);
        let ordered = bundle
            .entries
            .iter()
            .filter(|e| e.package == own)
            .chain(bundle.entries.iter().filter(|e| e.package != own));
        for entry in ordered {
            let now = reobserve(&entry.log, world);
            if now.inputs_digest() == entry.log.inputs_digest() {
                remote
                    .stats
                    .hits
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _ = self.save_local(None, package, parts, &entry.log, &entry.result);
                return Some(Lookup::Hit(entry.result.clone()));
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
        let log = self.log(parts, package).ok()??;
        let result: CachedResult = self
            .read(RESULTS, &parts.key().result(&log.inputs_digest()).0)
            .ok()??;
        Some(result.cases)
    }

    /// The last passing log of `parts` (the one of `package`, if it has
    /// one), for `cachet inputs`.
    pub fn log(&self, parts: &KeyParts, package: &str) -> Result<Option<InputLog>, String> {
        let entry = self.read::<LogEntry>(LOGS, &parts.key().0)?;
        Ok(entry.and_then(|e| ordered(&e.logs, package).next().map(|l| l.log.clone())))
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
        let logs = self.save_local(Some(name), package, parts, log, result)?;
        if let Some(remote) = self.remote.as_ref().filter(|r| share && !r.read_only()) {
            let key = parts.key();
            let entries = logs
                .into_iter()
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
                .collect();
            let bundle = remote::Bundle {
                parts: parts.clone(),
                entries,
            };
            remote.upload(key, &bundle);
        }
        Ok(())
    }

    /// Saves into the local store; returns the key's logs as now kept.
    /// `name` (for `--explain`'s "module changed") is left out for results
    /// copied from the remote: one file fewer per hit.
    fn save_local(
        &self,
        name: Option<NameKey>,
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
        if let Some(name) = name {
            self.store
                .put(NAMES, &name.0, &serde_json::to_vec(parts)?)?;
        }
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
