//! The test result cache. Design note: `docs/design/cache.md`.
//!
//! - `store.rs`: a content-addressed directory that knows nothing of tests.
//! - `key.rs`: the test key and the two-level lookup, explained once.
//! - here: [`Cache::lookup`] and [`Cache::save`], which the scheduler calls
//!   around each run, and the reason every miss has (`--explain`).
//!
//! Only passing runs are saved, and only when no input changed while the
//! test ran. The cache never prints; warnings come back as values.

pub mod key;
pub mod memo;
pub mod store;

use std::path::Path;
use std::time::Duration;

use cachet_runtime::{first_change, reobserve, InputLog, World};
use serde::{Deserialize, Serialize};

pub use key::{KeyParts, NameKey, TestKey};
pub use store::Store;

/// Level 1: a test key's last passing input log, with the key's parts (for
/// `cachet inputs` and `--explain`).
#[derive(Serialize, Deserialize)]
struct LogEntry {
    parts: KeyParts,
    log: InputLog,
}

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

#[derive(Clone)]
pub struct Cache {
    store: Store,
    memo: std::sync::Arc<memo::StatMemo>,
}

impl Cache {
    pub fn open(dir: &Path) -> std::io::Result<Cache> {
        let store = Store::open(dir)?;
        let memo = std::sync::Arc::new(memo::StatMemo::load(&dir.join("memo")));
        Ok(Cache { store, memo })
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

    /// Finds the result of `parts` in `world`, or says why not.
    pub fn lookup(&self, name: NameKey, parts: &KeyParts, world: &World) -> Lookup {
        let key = parts.key();
        let entry: LogEntry = match self.read(LOGS, &key.0) {
            Ok(Some(e)) => e,
            Ok(None) => return Lookup::Miss(Miss::NoEntry(self.explain_no_entry(name, parts))),
            Err(e) => return Lookup::Miss(Miss::Corrupt(e)),
        };
        let now = reobserve(&entry.log, world);
        let result_key = key.result(&now.inputs_digest());
        match self.read::<CachedResult>(RESULTS, &result_key.0) {
            Ok(Some(r)) => Lookup::Hit(r),
            Ok(None) => Lookup::Miss(match first_change(&entry.log, &now) {
                Some(change) => Miss::Changed(change.to_string()),
                None => Miss::NoEntry("no result for these inputs"),
            }),
            Err(e) => Lookup::Miss(Miss::Corrupt(e)),
        }
    }

    fn explain_no_entry(&self, name: NameKey, parts: &KeyParts) -> &'static str {
        match self.read::<KeyParts>(NAMES, &name.0) {
            Ok(Some(before)) => parts.difference(&before),
            _ => "no cache entry",
        }
    }

    /// The case names of a cached listing whose log is recorded (whatever
    /// today's world says), for `cachet inputs`.
    pub fn cases(&self, parts: &KeyParts) -> Option<Vec<String>> {
        let entry: LogEntry = self.read(LOGS, &parts.key().0).ok()??;
        let result: CachedResult = self
            .read(RESULTS, &parts.key().result(&entry.log.inputs_digest()).0)
            .ok()??;
        Some(result.cases)
    }

    /// The last passing log of `parts`, for `cachet inputs`.
    pub fn log(&self, parts: &KeyParts) -> Result<Option<InputLog>, String> {
        Ok(self.read::<LogEntry>(LOGS, &parts.key().0)?.map(|e| e.log))
    }

    /// Saves a passing run's log and result. Errors only cost a future rerun.
    pub fn save(
        &self,
        name: NameKey,
        parts: &KeyParts,
        log: &InputLog,
        result: &CachedResult,
    ) -> std::io::Result<()> {
        let key = parts.key();
        let entry = LogEntry {
            parts: parts.clone(),
            log: log.clone(),
        };
        // Result first: a log entry is only ever visible with its result saved.
        self.store.put(
            RESULTS,
            &key.result(&log.inputs_digest()).0,
            &serde_json::to_vec(result)?,
        )?;
        self.store.put(LOGS, &key.0, &serde_json::to_vec(&entry)?)?;
        self.store.put(NAMES, &name.0, &serde_json::to_vec(parts)?)
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
