//! The remote cache: results shared between machines through a server's
//! action cache and content store, reached by a [`Transport`] (today
//! Bazel's HTTP cache protocol, `http.rs`, so bazel-remote, nginx with
//! WebDAV and the hosted caches that speak it serve cachet unchanged).
//! Design note: `docs/design/cache.md`.
//!
//! One action-cache entry per test key holds everything a lookup needs,
//! so a remote hit costs one request: the key's input logs (one per
//! package, as locally) each with the result of its run. It is an REAPI
//! `ActionResult` whose `stdout_raw` is the bundle, or, for a bundle over
//! [`INLINE_MAX`], whose `stdout_digest` names it in the content store,
//! where its digest verifies it. Inline bundles carry their own sha256.
//! The lookup re-observes each log locally: a result is used only when
//! every observation comes out the same here, as for a local entry, and is
//! then copied into the local cache (the module's local pack, `pack.rs`).
//!
//! A [`Pack`] holds the bundles of the cases one run selected of a module,
//! filed under [`pack_key`] of their keys: a machine with an empty cache
//! gets a module's cases with one request instead of one per case.
//!
//! A bundle names no host path: logs use logical paths, environment values
//! are digests, and packages are hashed. Results that embed a checkout's
//! path (`env!("CARGO_MANIFEST_DIR")`) are never uploaded.
//!
//! The server is never trusted to be up or right: every request has a
//! bounded time and a few retries; any failure, error status or body that
//! does not verify is one warning and the remote is off for the rest of
//! the run (the run goes on with the local cache). Uploads run on a few
//! threads while cases run and are waited for, bounded, at the end.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cachet_runtime::Sha256Digest;
use serde::Deserialize;

use super::entry::{timings_key, Bundle, BundleEntry, Pack, Timings};
use super::http::HttpTransport;
use super::key::TestKey;
use super::transport::{ActionResult, Transport, TransportError};

/// Bundles up to this size travel inside the action-cache entry.
pub const INLINE_MAX: usize = 64 << 10;
/// Attempts per request (on connection errors and 5xx), before giving up.
const ATTEMPTS: u32 = 3;
const UPLOAD_THREADS: usize = 4;
/// How long the end of a run waits for uploads still in flight.
const UPLOAD_WAIT: Duration = Duration::from_secs(60);
const MAGIC: &[u8] = b"cachet-remote v1\n";
const PACK_MAGIC: &[u8] = b"cachet-pack v1\n";
const TIMINGS_MAGIC: &[u8] = b"cachet-timings v1\n";
/// A package's shared timings keep at most this many jobs (this run's
/// first, then what the server held).
const MAX_TIMINGS: usize = 50_000;
/// A larger pack is not uploaded (its keys are, one by one).
const MAX_PACK: usize = 16 << 20;

/// Why `--remote-cache` cannot be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RemoteConfigError {
    #[error("invalid --remote-cache {0:?}: give an http:// or https:// URL such as http://cache.example:8080/cachet")]
    Url(String),
    #[error("--remote-cache: put credentials in CACHET_REMOTE_CACHE_TOKEN or CACHET_REMOTE_CACHE_USER and CACHET_REMOTE_CACHE_PASSWORD, not in the URL")]
    Credentials,
}

/// How to reach the server, from flags and the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteConfig {
    /// `http://` or `https://`, without a trailing slash.
    pub url: String,
    pub read_only: bool,
    /// `--remote-cache-compiled`: compiled modules too ([`RemoteCompiled`]).
    pub compiled: bool,
    /// The `Authorization` header: `Bearer TOKEN` or `Basic ...`.
    pub auth: Option<String>,
}

impl RemoteConfig {
    /// Validates `url`; the credentials come from `CACHET_REMOTE_CACHE_TOKEN`
    /// (bearer) or `CACHET_REMOTE_CACHE_USER` and `..._PASSWORD` (basic).
    pub fn new(url: &str, read_only: bool) -> Result<Self, RemoteConfigError> {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .filter(|r| !r.is_empty() && !r.starts_with('/'))
            .ok_or_else(|| RemoteConfigError::Url(url.to_string()))?;
        if rest.contains('@') {
            return Err(RemoteConfigError::Credentials);
        }
        let token = std::env::var("CACHET_REMOTE_CACHE_TOKEN").ok();
        let user = std::env::var("CACHET_REMOTE_CACHE_USER").ok();
        let auth = match (token, user) {
            (Some(t), _) if !t.is_empty() => Some(format!("Bearer {t}")),
            (_, Some(u)) if !u.is_empty() => {
                let p = std::env::var("CACHET_REMOTE_CACHE_PASSWORD").unwrap_or_default();
                Some(format!("Basic {}", base64(format!("{u}:{p}").as_bytes())))
            }
            _ => None,
        };
        Ok(RemoteConfig {
            url: url.trim_end_matches('/').to_string(),
            read_only,
            compiled: false,
            auth,
        })
    }
}

impl RemoteConfig {
    /// Shares compiled modules too, when `compiled`.
    pub fn sharing_compiled(mut self, compiled: bool) -> Self {
        self.compiled = compiled;
        self
    }
}

/// Compiled modules in the remote cache (`--remote-cache-compiled`): a
/// compiled file (as the runtime keeps it on disk: its key and a BLAKE3
/// after the body) is filed under `H("cachet compiled v3", file key)`
/// and travels as a content-store blob, checked by its sha256 on the way
/// and by the runtime against its key before it is loaded. The file key
/// names the engine's fingerprint (compiler settings, CPU features) and the
/// wasmtime version, so an incompatible engine never gets it.
pub struct RemoteCompiled(pub Arc<Remote>);

fn compiled_entry(key: &Sha256Digest) -> Sha256Digest {
    Sha256Digest::of(format!("cachet compiled v3\n{}", key.hex()).as_bytes())
}

impl cachet_runtime::CompiledStore for RemoteCompiled {
    fn fetch(&self, key: &Sha256Digest) -> Option<Vec<u8>> {
        let remote = &self.0;
        if remote.off.load(Ordering::Relaxed) {
            return None;
        }
        // Not kept in `answers`: compiled files are megabytes, asked once.
        match remote.try_fetch(&compiled_entry(key)) {
            Ok(Some(file)) => {
                remote.stats.compiled_hits.fetch_add(1, Ordering::Relaxed);
                Some(file)
            }
            Ok(None) => None,
            Err(e) => {
                remote.turn_off(e.to_string());
                None
            }
        }
    }

    fn store(&self, key: &Sha256Digest, file: Vec<u8>) {
        let remote = &self.0;
        if remote.config.read_only || remote.off.load(Ordering::Relaxed) {
            return;
        }
        remote.queue(compiled_entry(key), file);
    }
}

/// Counts for the end of a run.
#[derive(Debug, Default)]
pub struct RemoteStats {
    pub hits: AtomicUsize,
    pub uploaded: AtomicUsize,
    /// Compiled modules that came from the remote.
    pub compiled_hits: AtomicUsize,
    /// Packages whose job timings came from the remote.
    pub timings_hits: AtomicUsize,
}

pub struct Remote {
    config: RemoteConfig,
    transport: Box<dyn Transport>,
    off: AtomicBool,
    warning: Mutex<Option<String>>,
    pub stats: RemoteStats,
    uploads: Mutex<Option<Uploads>>,
    /// What the server held for the keys looked up, so an upload adds to
    /// it instead of replacing another machine's input states.
    seen: Mutex<HashMap<TestKey, Vec<BundleEntry>>>,
    /// The server's answer for each entry asked for in this run: packages
    /// holding the same module ask for the same keys, often at once, and
    /// one request answers them all.
    answers: Mutex<HashMap<Sha256Digest, Arc<Answer>>>,
    /// The timings the server held for each package asked for, so an
    /// upload keeps the jobs this run did not time (another shard's).
    timings_seen: Mutex<HashMap<String, Timings>>,
}

/// An entry's bytes as the server gave them (`None`: it had none, or failed).
type Answer = OnceLock<Option<Arc<[u8]>>>;

struct Uploads {
    queue: Arc<(Mutex<Queue>, Condvar)>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Entries waiting for an upload thread. A newer entry for a key still
/// waiting replaces it (within a run a key's entry only gains logs), so
/// packages holding the same module do not upload a key once each.
#[derive(Default)]
struct Queue {
    order: VecDeque<Sha256Digest>,
    bytes: HashMap<Sha256Digest, Vec<u8>>,
    closed: bool,
}

impl Remote {
    pub fn new(config: RemoteConfig) -> Arc<Remote> {
        let transport = Box::new(HttpTransport::new(&config));
        Arc::new(Remote {
            config,
            transport,
            off: AtomicBool::new(false),
            warning: Mutex::new(None),
            stats: RemoteStats::default(),
            uploads: Mutex::new(None),
            seen: Mutex::new(Default::default()),
            answers: Mutex::new(Default::default()),
            timings_seen: Mutex::new(Default::default()),
        })
    }

    pub fn read_only(&self) -> bool {
        self.config.read_only
    }

    /// `--remote-cache-compiled`.
    pub fn shares_compiled(&self) -> bool {
        self.config.compiled
    }

    /// The test key's bundle, if the server has one that verifies; `None`
    /// for a miss, and after any problem (then the remote is off).
    pub fn fetch(&self, key: &TestKey) -> Option<Bundle> {
        let (bundle, _): (Bundle, _) = self.fetch_entry(&key.0, MAGIC)?;
        self.seen
            .lock()
            .expect("seen")
            .insert(*key, bundle.entries.clone());
        Some(bundle)
    }

    /// The pack filed under `key` (see [`pack_key`]), if the server has one
    /// that verifies: its bundles with their keys, and the digest of its
    /// encoding ([`Pack::digest`]). Its bundles' entries count as seen, so
    /// uploads of single keys keep them.
    pub fn fetch_pack(&self, key: &Sha256Digest) -> Option<(Vec<(TestKey, Bundle)>, Sha256Digest)> {
        let (pack, digest): (Pack, _) = self.fetch_entry(key, PACK_MAGIC)?;
        let keyed: Vec<_> = pack
            .bundles
            .into_iter()
            .map(|b| (b.parts.key(), b))
            .collect();
        let mut seen = self.seen.lock().expect("seen");
        for (k, b) in &keyed {
            seen.entry(*k).or_insert_with(|| b.entries.clone());
        }
        Some((keyed, digest))
    }

    /// How long `package`'s jobs took on the machines that shared it, if
    /// the server has an entry that verifies.
    pub fn fetch_timings(&self, package: &str) -> Option<Timings> {
        let (timings, _): (Timings, _) = self.fetch_entry(&timings_key(package), TIMINGS_MAGIC)?;
        self.stats.timings_hits.fetch_add(1, Ordering::Relaxed);
        self.timings_seen
            .lock()
            .expect("timings seen")
            .insert(package.to_string(), timings.clone());
        Some(timings)
    }

    /// Queues `package`'s timings for upload, with the jobs the server
    /// held that this run did not time (nothing when read-only or off).
    pub fn upload_timings(self: &Arc<Self>, package: &str, mut timings: Timings) {
        if self.config.read_only || self.off.load(Ordering::Relaxed) {
            return;
        }
        if let Some(seen) = self.timings_seen.lock().expect("timings seen").get(package) {
            let ours: std::collections::HashSet<String> =
                timings.jobs.iter().map(|(k, _)| k.clone()).collect();
            let theirs = seen.jobs.iter().filter(|(k, _)| !ours.contains(k));
            timings.jobs.extend(theirs.cloned());
        }
        timings.jobs.truncate(MAX_TIMINGS);
        if let Ok(bytes) = super::entry::seal(&timings, TIMINGS_MAGIC) {
            self.queue(timings_key(package), bytes);
        }
    }

    fn fetch_entry<T: for<'de> Deserialize<'de>>(
        &self,
        key: &Sha256Digest,
        magic: &[u8],
    ) -> Option<(T, Sha256Digest)> {
        if self.off.load(Ordering::Relaxed) {
            return None;
        }
        // Asked once per run: a second asker waits for the first's answer.
        let answer = self
            .answers
            .lock()
            .expect("answers")
            .entry(*key)
            .or_default()
            .clone();
        let bytes = answer.get_or_init(|| match self.try_fetch(key) {
            Ok(bytes) => bytes.map(Arc::from),
            Err(e) => {
                self.turn_off(e.to_string());
                None
            }
        });
        let found = super::entry::unseal(bytes.as_deref()?, magic);
        if found.is_none() {
            self.turn_off(format!("entry {}: the entry is damaged", key.hex()));
        }
        found
    }

    /// The bytes of the entry under `key`, verified against their digest
    /// where the server stores them by digest.
    fn try_fetch(&self, key: &Sha256Digest) -> Result<Option<Vec<u8>>, TransportError> {
        let Some(action) = self.with_retries(|| self.transport.get_action(key))? else {
            return Ok(None);
        };
        let fatal = |why: String| TransportError::Fatal(why);
        let bytes = match (action.stdout_raw, action.stdout_digest) {
            (Some(raw), _) if !raw.is_empty() => raw,
            (_, Some((digest, size))) => {
                let body = self
                    .with_retries(|| self.transport.get_blob(&digest))?
                    .ok_or_else(|| {
                        fatal(format!(
                            "blob {}: missing, though entry {} names it",
                            digest.hex(),
                            key.hex()
                        ))
                    })?;
                if body.len() as u64 != size || Sha256Digest::of(&body) != digest {
                    return Err(fatal(format!(
                        "blob {}: the body does not match its digest",
                        digest.hex()
                    )));
                }
                body
            }
            _ => return Err(fatal(format!("entry {}: holds no cachet entry", key.hex()))),
        };
        Ok(Some(bytes))
    }

    /// Queues `bundle` for upload under `key` (nothing when read-only or off).
    pub fn upload(self: &Arc<Self>, key: TestKey, bundle: &Bundle) {
        if self.config.read_only || self.off.load(Ordering::Relaxed) {
            return;
        }
        let mut bundle = bundle.clone();
        // What the server held for other packages and inputs stays.
        if let Some(seen) = self.seen.lock().expect("seen").get(&key) {
            bundle.entries = super::entry::merge(&bundle.entries, seen);
        }
        if let Ok(bytes) = super::entry::seal(&bundle, MAGIC) {
            self.queue(key.0, bytes);
        }
    }

    /// Queues `pack` for upload under `key` (nothing when read-only or off).
    pub fn upload_pack(self: &Arc<Self>, key: Sha256Digest, pack: &Pack) {
        if self.config.read_only || self.off.load(Ordering::Relaxed) {
            return;
        }
        match super::entry::seal(pack, PACK_MAGIC) {
            Ok(bytes) if bytes.len() <= MAX_PACK => self.queue(key, bytes),
            // Its keys are uploaded one by one anyway.
            _ => {}
        }
    }

    fn queue(self: &Arc<Self>, key: Sha256Digest, bytes: Vec<u8>) {
        let mut uploads = self.uploads.lock().expect("uploads");
        let up = uploads.get_or_insert_with(|| self.start_uploads());
        let (queue, wake) = &*up.queue;
        let mut q = queue.lock().expect("upload queue");
        if q.bytes.insert(key, bytes).is_none() {
            q.order.push_back(key);
        }
        wake.notify_one();
    }

    fn start_uploads(self: &Arc<Self>) -> Uploads {
        let queue: Arc<(Mutex<Queue>, Condvar)> = Default::default();
        let threads = (0..UPLOAD_THREADS)
            .map(|_| {
                let (me, queue) = (self.clone(), queue.clone());
                std::thread::spawn(move || loop {
                    let (key, bytes) = {
                        let (q, wake) = &*queue;
                        let mut q = q.lock().expect("upload queue");
                        loop {
                            if let Some(key) = q.order.pop_front() {
                                let bytes = q.bytes.remove(&key).unwrap_or_default();
                                break (key, bytes);
                            }
                            if q.closed {
                                return;
                            }
                            q = wake.wait(q).expect("upload queue");
                        }
                    };
                    if me.off.load(Ordering::Relaxed) {
                        continue;
                    }
                    match me.put_entry(&key, bytes) {
                        Ok(()) => {
                            me.stats.uploaded.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => me.turn_off(e.to_string()),
                    }
                })
            })
            .collect();
        Uploads { queue, threads }
    }

    fn put_entry(&self, key: &Sha256Digest, bytes: Vec<u8>) -> Result<(), TransportError> {
        let action = if bytes.len() <= INLINE_MAX {
            ActionResult {
                stdout_raw: Some(bytes),
                stdout_digest: None,
            }
        } else {
            let digest = Sha256Digest::of(&bytes);
            self.with_retries(|| self.transport.put_blob(&digest, &bytes))?;
            ActionResult {
                stdout_raw: None,
                stdout_digest: Some((digest, bytes.len() as u64)),
            }
        };
        self.with_retries(|| self.transport.put_action(key, &action))
    }

    /// Waits (bounded) for the queued uploads; returns the warning of the
    /// run, if the remote had a problem.
    pub fn finish(&self) -> Option<String> {
        let uploads = self.uploads.lock().expect("uploads").take();
        if let Some(Uploads { queue, threads }) = uploads {
            queue.0.lock().expect("upload queue").closed = true;
            queue.1.notify_all();
            let deadline = Instant::now() + UPLOAD_WAIT;
            for t in threads {
                while !t.is_finished() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if t.is_finished() {
                    let _ = t.join();
                } else {
                    self.turn_off(format!(
                        "uploads did not finish within {}s; the rest were dropped",
                        UPLOAD_WAIT.as_secs()
                    ));
                    self.off.store(true, Ordering::Relaxed);
                }
            }
        }
        self.warning.lock().expect("warning").clone()
    }

    /// What the server held for `key` when it was looked up.
    pub fn seen(&self, key: &TestKey) -> Vec<BundleEntry> {
        self.seen
            .lock()
            .expect("seen")
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    /// An answer that verified but cannot be ours: off, with one warning.
    pub fn reject(&self, why: String) {
        self.turn_off(why);
    }

    /// The first problem turns the remote off for the rest of the run.
    fn turn_off(&self, why: String) {
        self.off.store(true, Ordering::Relaxed);
        let mut w = self.warning.lock().expect("warning");
        if w.is_none() {
            *w = Some(format!(
                "remote cache {}: {why}; not used for the rest of this run (results are still correct: cases ran or came from the local cache)",
                self.config.url
            ));
        }
    }

    /// `attempt`, again after a short pause while it fails transiently.
    fn with_retries<T>(
        &self,
        mut attempt: impl FnMut() -> Result<T, TransportError>,
    ) -> Result<T, TransportError> {
        let mut n = 0;
        loop {
            match attempt() {
                Err(TransportError::Transient(e)) => {
                    n += 1;
                    if n == ATTEMPTS {
                        let e = format!("{e} ({ATTEMPTS} attempts)");
                        return Err(TransportError::Transient(e));
                    }
                    std::thread::sleep(Duration::from_millis(50 << n));
                }
                other => return other,
            }
        }
    }
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, &c| n << 8 | u32::from(c)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_verify_their_checksum() {
        let bundle = Bundle {
            parts: serde_json::from_str(
                r#"{"module":"m","framework":"plain","case":"c","program":"p","args":[],"mounts":[],"memory":1,"output":1,"stack":1,"scratch":1,"open_files":1,"time":"real"}"#,
            )
            .unwrap(),
            entries: Vec::new(),
        };
        let bytes = crate::cache::entry::seal(&bundle, MAGIC).unwrap();
        assert_eq!(
            crate::cache::entry::unseal(&bytes, MAGIC).map(|(b, _)| b),
            Some(bundle.clone())
        );
        assert!(crate::cache::entry::unseal::<Bundle>(&bytes, PACK_MAGIC).is_none());
        for i in [0, MAGIC.len() + 3, bytes.len() - 2] {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(
                crate::cache::entry::unseal::<Bundle>(&bad, MAGIC).is_none(),
                "flipped byte {i}"
            );
        }
        assert!(crate::cache::entry::unseal::<Bundle>(&bytes[..bytes.len() - 1], MAGIC).is_none());
    }

    #[test]
    fn urls_and_credentials() {
        assert!(RemoteConfig::new("http://127.0.0.1:8080/c/", false).is_ok());
        assert_eq!(
            RemoteConfig::new("http://h/x/", true).unwrap().url,
            "http://h/x"
        );
        for bad in ["ftp://h", "h:80", "http://", "https://user:pw@h/"] {
            assert!(RemoteConfig::new(bad, false).is_err(), "{bad}");
        }
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"a"), "YQ==");
    }
}
