//! What the cache stores, as data: the two levels of a local entry (a test
//! key's logs, the results by inputs), what a remote entry holds (a
//! [`Bundle`]: a key's logs with their results; a [`Pack`]: a module's
//! bundles), the facts learnt from a module's bytes, and the sealed
//! encoding remote entries and tables share. No I/O: `local.rs` keeps
//! these in the store, `remote.rs` sends them over a transport.

use std::time::Duration;

use cachet_runtime::{InputLog, Sha256Digest};
use serde::{Deserialize, Serialize};

use super::key::{KeyParts, TestKey};

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

/// A bundle's entries, `package`'s own (hashed) first.
pub(super) fn ordered_entries<'a>(
    entries: &'a [BundleEntry],
    package: &'a str,
) -> impl Iterator<Item = &'a BundleEntry> {
    entries
        .iter()
        .filter(move |e| e.package == package)
        .chain(entries.iter().filter(move |e| e.package != package))
}

/// `package`'s own log first, then the others, most recent first.
pub(super) fn ordered<'a>(
    logs: &'a [PackageLog],
    package: &'a str,
) -> impl Iterator<Item = &'a PackageLog> {
    logs.iter()
        .filter(move |l| l.package == package)
        .chain(logs.iter().filter(move |l| l.package != package))
}

/// Level 1: a test key's last passing input logs, most recent first, each
/// with the package it ran in, and the key's parts (for `cachet inputs` and
/// `--explain`).
#[derive(Serialize, Deserialize)]
pub(super) struct LogEntry {
    pub(super) parts: KeyParts,
    pub(super) logs: Vec<PackageLog>,
}

#[derive(Clone, Serialize, Deserialize)]
pub(super) struct PackageLog {
    pub(super) package: String,
    pub(super) log: InputLog,
}

/// Input states a test key keeps for one package in a bundle (its
/// testdata on two branches, say). Locally a key keeps one log per package:
/// the results stay filed by inputs, and any log of the same shape finds them.
const STATES_PER_PACKAGE: usize = 2;
/// Packages a test key keeps input states for: the packages holding the
/// same module (one module copied into many packages, a workspace's
/// crates sharing a test binary) each keep theirs, up to this many.
const MAX_PACKAGES: usize = 64;

/// `items` (most recent first) as a key keeps them: at most `per_package`
/// of each package, of at most [`MAX_PACKAGES`] packages, the most recent.
fn kept<T>(
    items: impl IntoIterator<Item = T>,
    package: impl Fn(&T) -> &str,
    per_package: usize,
) -> Vec<T> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    let mut out = Vec::new();
    for item in items {
        let p = package(&item);
        match counts.iter().position(|(q, _)| q == p) {
            Some(i) if counts[i].1 >= per_package => continue,
            Some(i) => counts[i].1 += 1,
            None if counts.len() >= MAX_PACKAGES => continue,
            None => counts.push((p.to_string(), 1)),
        }
        out.push(item);
    }
    out
}

/// A key's local logs after a run of `package` recorded `log`: it first,
/// then the others' (one per package), as [`kept`].
pub(super) fn with_log(logs: Vec<PackageLog>, package: &str, log: &InputLog) -> Vec<PackageLog> {
    let new = PackageLog {
        package: package.to_string(),
        log: log.clone(),
    };
    let rest = logs
        .into_iter()
        .filter(|l| l.package != package && l.log != *log);
    kept(std::iter::once(new).chain(rest), |l| &l.package, 1)
}

/// A key's bundle entries: those of `new`, then those of `old` for other
/// input states, as [`kept`]. Where a server or a pack already held
/// entries, what a run adds goes in front of them.
pub fn merge(new: &[BundleEntry], old: &[BundleEntry]) -> Vec<BundleEntry> {
    let mut digests = Vec::new();
    let unique = new.iter().chain(old).filter(|e| {
        let d = e.log.inputs_digest();
        let first = !digests.contains(&d);
        digests.push(d);
        first
    });
    kept(unique.cloned(), |e| &e.package, STATES_PER_PACKAGE)
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
    /// The sha256 of the case's whole output (framing removed), of which
    /// `output` may keep only the head and tail: what `--verify` compares.
    #[serde(default)]
    pub output_digest: Option<cachet_runtime::Sha256Digest>,
    /// For a module's cases run in one instance: each case's result.
    #[serde(default)]
    pub module_cases: Vec<CachedCase>,
    /// For a listing: the cases the harness skips without running them.
    #[serde(default)]
    pub ignored: Vec<String>,
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
    Corrupt(EntryError),
}

/// A stored entry that cannot be used: one warning, and it counts as absent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// The store's checksum or framing failed (see `store::Corrupt`).
    #[error("{0}")]
    Corrupt(String),
    /// It verified but is not what this version of cachet writes.
    #[error("cache entry {entry} does not parse ({error}); it is ignored")]
    Parse { entry: String, error: String },
}

impl From<super::store::Corrupt> for EntryError {
    fn from(c: super::store::Corrupt) -> Self {
        EntryError::Corrupt(c.to_string())
    }
}

impl std::fmt::Display for Miss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Miss::Bypassed(why) => write!(f, "cache not used: {why}"),
            Miss::NoEntry(why) => f.write_str(why),
            Miss::Changed(change) => f.write_str(change),
            Miss::Corrupt(e) => write!(f, "{e}"),
        }
    }
}

pub enum Lookup {
    Hit(CachedResult),
    Miss(Miss),
}

pub(super) const LOGS: &str = "logs";
pub(super) const RESULTS: &str = "results";
pub(super) const NAMES: &str = "names";

/// What was learnt from a module's bytes, so an unchanged module need not be
/// read again: kept by module digest (and package dir, which the embedded
/// path is searched for).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleFacts {
    pub(super) framework: String,
    pub embeds_dir: bool,
    /// A preview 2 component (facts written before components ran are of
    /// core modules).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub component: bool,
}

impl ModuleFacts {
    pub fn new(
        framework: crate::framework::Framework,
        embeds_dir: bool,
        wasi: cachet_runtime::Wasi,
    ) -> Self {
        ModuleFacts {
            framework: framework.name().to_string(),
            embeds_dir,
            component: wasi == cachet_runtime::Wasi::P2,
        }
    }

    pub fn wasi(&self) -> cachet_runtime::Wasi {
        match self.component {
            true => cachet_runtime::Wasi::P2,
            false => cachet_runtime::Wasi::P1,
        }
    }

    /// The framework detected from the bytes.
    pub fn framework(&self) -> crate::framework::Framework {
        crate::framework::Framework::from_name(&self.framework).expect("checked when read")
    }
}

pub(super) fn facts_key(
    digest: &cachet_runtime::ModuleDigest,
    dir: Option<&str>,
) -> cachet_runtime::Sha256Digest {
    let mut bytes = digest.0 .0.to_vec();
    bytes.extend_from_slice(dir.unwrap_or("").as_bytes());
    cachet_runtime::Sha256Digest::of(&bytes)
}

/// What one action-cache entry holds: a test key's logs with their results.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Bundle {
    pub parts: KeyParts,
    pub entries: Vec<BundleEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BundleEntry {
    /// sha256 of the package name: which package's log this is, without naming it.
    pub package: String,
    pub log: InputLog,
    pub result: CachedResult,
}

/// A module's bundles for the cases one run selected of it, so a machine
/// with an empty local cache gets a package with one request: filed under
/// [`pack_key`] of those cases' keys, each bundle checked against its key.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pack {
    pub bundles: Vec<Bundle>,
}

/// How long a package's jobs last took on the machines that ran them, by
/// [`NameKey`](super::NameKey) (package and job, hashed, so it names
/// neither): shared through a remote cache so that a fresh machine starts
/// the slowest jobs first and sends the long ones apart as a warm one does.
/// Filed under [`timings_key`]; what it says orders and places runs, and
/// never decides a verdict.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Timings {
    /// (the job's name key in hex, microseconds)
    pub jobs: Vec<(String, u64)>,
}

/// Where `package`'s [`Timings`] are filed.
pub fn timings_key(package: &str) -> cachet_runtime::Sha256Digest {
    cachet_runtime::Sha256Digest::of(format!("cachet timings v1\n{package}").as_bytes())
}

/// Where the pack of these test keys is filed: the same selection of the
/// same module (same flags, same shard) finds it again, and shards, which
/// select different cases, never overwrite each other's.
pub fn pack_key(keys: &[TestKey]) -> Sha256Digest {
    let mut sorted: Vec<_> = keys.iter().map(|k| k.0.hex()).collect();
    sorted.sort();
    sorted.dedup();
    Sha256Digest::of(format!("cachet pack v1\n{}", sorted.join("\n")).as_bytes())
}

/// The package as a bundle names it.
pub fn package_id(package: &str) -> String {
    Sha256Digest::of(package.as_bytes()).hex()
}

impl Pack {
    /// The sha256 of its encoding's JSON (what the encoding's checksum is).
    pub fn digest(&self) -> Option<Sha256Digest> {
        serde_json::to_vec(self).ok().map(|b| Sha256Digest::of(&b))
    }
}

#[cfg(test)]
impl CachedResult {
    /// A passing result with nothing in it.
    pub(super) fn empty() -> Self {
        CachedResult {
            output: String::new(),
            elapsed: Duration::ZERO,
            skipped: false,
            cases: Vec::new(),
            output_digest: None,
            module_cases: Vec::new(),
            ignored: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(package: usize, state: usize) -> BundleEntry {
        let text = format!(
            "{}\nopen pkg/p{package}/s{state} notfound\n",
            "cachet-input-log v2"
        );
        BundleEntry {
            package: package_id(&format!("p{package}")),
            log: InputLog::parse(&text).unwrap(),
            result: CachedResult::empty(),
        }
    }

    #[test]
    fn a_key_keeps_input_states_per_package() {
        // Twenty packages of one module: all kept, whatever the order.
        let twenty: Vec<_> = (0..20).map(|p| entry(p, 0)).collect();
        assert_eq!(merge(&twenty[..1], &twenty[1..]).len(), 20);
        assert_eq!(merge(&twenty[10..], &twenty[..10]).len(), 20);
        // A package's newest states first, two of them; the same state once.
        let states: Vec<_> = (0..4).map(|s| entry(7, s)).collect();
        let kept = merge(
            &states[..1],
            &[states[1].clone(), states[0].clone(), states[2].clone()],
        );
        assert_eq!(kept, vec![states[0].clone(), states[1].clone()]);
        // Past MAX_PACKAGES, the most recent packages.
        let many: Vec<_> = (0..MAX_PACKAGES + 6).map(|p| entry(p, 0)).collect();
        let kept = merge(&many, &[]);
        assert_eq!(kept, many[..MAX_PACKAGES].to_vec());
        // Locally, a package's new log replaces its old one.
        let logs: Vec<_> = (0..3)
            .map(|p| PackageLog {
                package: format!("p{p}"),
                log: entry(p, 0).log,
            })
            .collect();
        let now = with_log(logs, "p1", &entry(1, 1).log);
        let order: Vec<_> = now
            .iter()
            .map(|l| (l.package.as_str(), l.log.clone()))
            .collect();
        assert_eq!(
            order,
            vec![
                ("p1", entry(1, 1).log),
                ("p0", entry(0, 0).log),
                ("p2", entry(2, 0).log)
            ]
        );
    }
}
