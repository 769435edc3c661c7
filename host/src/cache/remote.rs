//! The remote cache: results shared between machines over Bazel's HTTP
//! cache protocol (`GET`/`PUT` of `/ac/<sha256>` and `/cas/<sha256>`), so
//! bazel-remote, nginx with WebDAV and the hosted caches that speak it
//! serve cachet unchanged. Design note: `docs/design/cache.md`.
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

use std::io::Read as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use cachet_runtime::{InputLog, Sha256Digest};
use serde::{Deserialize, Serialize};

use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};

use super::key::{KeyParts, TestKey};
use super::CachedResult;

/// Bundles up to this size travel inside the action-cache entry.
pub const INLINE_MAX: usize = 64 << 10;
/// A response body larger than this is not a cachet entry.
const MAX_BODY: u64 = 64 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per request (on connection errors and 5xx), before giving up.
const ATTEMPTS: u32 = 3;
const UPLOAD_THREADS: usize = 4;
/// How long the end of a run waits for uploads still in flight.
const UPLOAD_WAIT: Duration = Duration::from_secs(60);
const MAGIC: &[u8] = b"cachet-remote v1\n";
const PACK_MAGIC: &[u8] = b"cachet-pack v1\n";
/// A larger pack is not uploaded (its keys are, one by one).
const MAX_PACK: usize = 16 << 20;

/// How to reach the server, from flags and the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteConfig {
    /// `http://` or `https://`, without a trailing slash.
    pub url: String,
    pub read_only: bool,
    /// The `Authorization` header: `Bearer TOKEN` or `Basic ...`.
    pub auth: Option<String>,
}

impl RemoteConfig {
    /// Validates `url`; the credentials come from `CACHET_REMOTE_CACHE_TOKEN`
    /// (bearer) or `CACHET_REMOTE_CACHE_USER` and `..._PASSWORD` (basic).
    pub fn new(url: &str, read_only: bool) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .filter(|r| !r.is_empty() && !r.starts_with('/'))
            .ok_or_else(|| {
                format!("invalid --remote-cache {url:?}: give an http:// or https:// URL such as http://cache.example:8080/cachet")
            })?;
        if rest.contains('@') {
            return Err("--remote-cache: put credentials in CACHET_REMOTE_CACHE_TOKEN or CACHET_REMOTE_CACHE_USER and CACHET_REMOTE_CACHE_PASSWORD, not in the URL".into());
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
            auth,
        })
    }
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

/// Counts for the end of a run.
#[derive(Debug, Default)]
pub struct RemoteStats {
    pub hits: AtomicUsize,
    pub uploaded: AtomicUsize,
}

pub struct Remote {
    config: RemoteConfig,
    agent: ureq::Agent,
    off: AtomicBool,
    warning: Mutex<Option<String>>,
    pub stats: RemoteStats,
    uploads: Mutex<Option<Uploads>>,
    /// What the server held for the keys looked up, so an upload adds to
    /// it instead of replacing another machine's input states.
    seen: Mutex<std::collections::HashMap<TestKey, Vec<BundleEntry>>>,
}

/// Input states kept per test key on the server (other packages, other
/// checkouts' testdata), most recent first.
const MAX_ENTRIES: usize = 8;

struct Uploads {
    tx: mpsc::Sender<(Sha256Digest, Vec<u8>)>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Resolves the server's host once per run. ureq resolves on every request,
/// on a thread of its own when a timeout is set: a run with a lookup per
/// module started 200 threads for it.
#[derive(Debug, Default)]
struct OnceResolver {
    inner: ureq::unversioned::resolver::DefaultResolver,
    resolved: Mutex<Option<(String, ResolvedSocketAddrs)>>,
}

impl Resolver for OnceResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let at = format!("{:?} {:?}", uri.scheme(), uri.authority());
        if let Some((known, addrs)) = &*self.resolved.lock().expect("resolver") {
            if *known == at {
                return Ok(addrs.clone());
            }
        }
        let addrs = self.inner.resolve(uri, config, timeout)?;
        *self.resolved.lock().expect("resolver") = Some((at, addrs.clone()));
        Ok(addrs)
    }
}

/// Why a request did not give an answer.
enum Failure {
    /// Worth another attempt (connection refused or reset, timeout, 5xx).
    Transient(String),
    Fatal(String),
}

impl Remote {
    pub fn new(config: RemoteConfig) -> Arc<Remote> {
        let http = ureq::Agent::config_builder()
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(REQUEST_TIMEOUT))
            .http_status_as_error(false)
            .max_idle_connections_per_host(32)
            .user_agent(concat!("cachet/", env!("CARGO_PKG_VERSION")))
            .build();
        let agent = ureq::Agent::with_parts(
            http,
            ureq::unversioned::transport::DefaultConnector::new(),
            OnceResolver::default(),
        );
        Arc::new(Remote {
            config,
            agent,
            off: AtomicBool::new(false),
            warning: Mutex::new(None),
            stats: RemoteStats::default(),
            uploads: Mutex::new(None),
            seen: Mutex::new(Default::default()),
        })
    }

    pub fn read_only(&self) -> bool {
        self.config.read_only
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

    fn fetch_entry<T: for<'de> Deserialize<'de>>(
        &self,
        key: &Sha256Digest,
        magic: &[u8],
    ) -> Option<(T, Sha256Digest)> {
        if self.off.load(Ordering::Relaxed) {
            return None;
        }
        match self.try_fetch(key, magic) {
            Ok(b) => b,
            Err(e) => {
                self.turn_off(e);
                None
            }
        }
    }

    fn try_fetch<T: for<'de> Deserialize<'de>>(
        &self,
        key: &Sha256Digest,
        magic: &[u8],
    ) -> Result<Option<(T, Sha256Digest)>, String> {
        let Some(ac) = self.get(&format!("ac/{}", key.hex()))? else {
            return Ok(None);
        };
        let action = ActionResult::decode(&ac)
            .ok_or_else(|| format!("ac/{}: not an ActionResult", key.hex()))?;
        let bytes = match (action.stdout_raw, action.stdout_digest) {
            (Some(raw), _) if !raw.is_empty() => raw,
            (_, Some((hash, size))) => {
                let body = self.get(&format!("cas/{hash}"))?.ok_or_else(|| {
                    format!("cas/{hash}: missing, though ac/{} names it", key.hex())
                })?;
                if body.len() as u64 != size || Sha256Digest::of(&body).hex() != hash {
                    return Err(format!("cas/{hash}: the body does not match its digest"));
                }
                body
            }
            _ => return Err(format!("ac/{}: holds no cachet entry", key.hex())),
        };
        super::unseal(&bytes, magic)
            .map(Some)
            .ok_or_else(|| format!("ac/{}: the entry is damaged", key.hex()))
    }

    /// Queues `bundle` for upload under `key` (nothing when read-only or off).
    pub fn upload(self: &Arc<Self>, key: TestKey, bundle: &Bundle) {
        if self.config.read_only || self.off.load(Ordering::Relaxed) {
            return;
        }
        let mut bundle = bundle.clone();
        if let Some(seen) = self.seen.lock().expect("seen").get(&key) {
            let ours: Vec<_> = bundle
                .entries
                .iter()
                .map(|e| e.log.inputs_digest())
                .collect();
            bundle.entries.extend(
                seen.iter()
                    .filter(|e| !ours.contains(&e.log.inputs_digest()))
                    .cloned(),
            );
            bundle.entries.truncate(MAX_ENTRIES);
        }
        if let Ok(bytes) = super::seal(&bundle, MAGIC) {
            self.queue(key.0, bytes);
        }
    }

    /// Queues `pack` for upload under `key` (nothing when read-only or off).
    pub fn upload_pack(self: &Arc<Self>, key: Sha256Digest, pack: &Pack) {
        if self.config.read_only || self.off.load(Ordering::Relaxed) {
            return;
        }
        match super::seal(pack, PACK_MAGIC) {
            Ok(bytes) if bytes.len() <= MAX_PACK => self.queue(key, bytes),
            // Its keys are uploaded one by one anyway.
            _ => {}
        }
    }

    fn queue(self: &Arc<Self>, key: Sha256Digest, bytes: Vec<u8>) {
        let mut uploads = self.uploads.lock().expect("uploads");
        let up = uploads.get_or_insert_with(|| self.start_uploads());
        let _ = up.tx.send((key, bytes));
    }

    fn start_uploads(self: &Arc<Self>) -> Uploads {
        let (tx, rx) = mpsc::channel::<(Sha256Digest, Vec<u8>)>();
        let rx = Arc::new(Mutex::new(rx));
        let threads = (0..UPLOAD_THREADS)
            .map(|_| {
                let (me, rx) = (self.clone(), rx.clone());
                std::thread::spawn(move || loop {
                    let next = rx.lock().expect("upload queue").recv();
                    let Ok((key, bytes)) = next else { return };
                    if me.off.load(Ordering::Relaxed) {
                        continue;
                    }
                    match me.put_entry(&key, bytes) {
                        Ok(()) => {
                            me.stats.uploaded.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => me.turn_off(e),
                    }
                })
            })
            .collect();
        Uploads { tx, threads }
    }

    fn put_entry(&self, key: &Sha256Digest, bytes: Vec<u8>) -> Result<(), String> {
        let action = if bytes.len() <= INLINE_MAX {
            ActionResult {
                stdout_raw: Some(bytes),
                stdout_digest: None,
            }
        } else {
            let hash = Sha256Digest::of(&bytes).hex();
            let size = bytes.len() as u64;
            self.put(&format!("cas/{hash}"), &bytes)?;
            ActionResult {
                stdout_raw: None,
                stdout_digest: Some((hash, size)),
            }
        };
        self.put(&format!("ac/{}", key.hex()), &action.encode())
    }

    /// Waits (bounded) for the queued uploads; returns the warning of the
    /// run, if the remote had a problem.
    pub fn finish(&self) -> Option<String> {
        let uploads = self.uploads.lock().expect("uploads").take();
        if let Some(Uploads { tx, threads }) = uploads {
            drop(tx);
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

    /// `GET`: the body, or `None` for 404.
    fn get(&self, path: &str) -> Result<Option<Vec<u8>>, String> {
        self.with_retries(path, || {
            let mut req = self.agent.get(format!("{}/{path}", self.config.url));
            if let Some(a) = &self.config.auth {
                req = req.header("Authorization", a);
            }
            let mut resp = req.call().map_err(transport)?;
            match resp.status().as_u16() {
                200 => {
                    let mut body = Vec::new();
                    resp.body_mut()
                        .as_reader()
                        .take(MAX_BODY + 1)
                        .read_to_end(&mut body)
                        .map_err(|e| Failure::Transient(format!("reading {path}: {e}")))?;
                    if body.len() as u64 > MAX_BODY {
                        return Err(Failure::Fatal(format!("{path}: the body is too large")));
                    }
                    Ok(Some(body))
                }
                404 => Ok(None),
                s => Err(status(path, s)),
            }
        })
    }

    fn put(&self, path: &str, body: &[u8]) -> Result<(), String> {
        self.with_retries(path, || {
            let mut req = self.agent.put(format!("{}/{path}", self.config.url));
            if let Some(a) = &self.config.auth {
                req = req.header("Authorization", a);
            }
            let resp = req.send(body).map_err(transport)?;
            match resp.status().as_u16() {
                200..=299 => Ok(()),
                s => Err(status(path, s)),
            }
        })
    }

    fn with_retries<T>(
        &self,
        path: &str,
        mut attempt: impl FnMut() -> Result<T, Failure>,
    ) -> Result<T, String> {
        let mut last = String::new();
        for n in 0..ATTEMPTS {
            if n > 0 {
                std::thread::sleep(Duration::from_millis(50 << n));
            }
            match attempt() {
                Ok(v) => return Ok(v),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Transient(e)) => last = e,
            }
        }
        Err(format!("{last} ({ATTEMPTS} attempts at {path})"))
    }
}

fn transport(e: ureq::Error) -> Failure {
    Failure::Transient(e.to_string())
}

fn status(path: &str, code: u16) -> Failure {
    let msg = format!("{path}: the server answered {code}");
    match code {
        401 | 403 => Failure::Fatal(format!(
            "{msg} (set CACHET_REMOTE_CACHE_TOKEN, or CACHET_REMOTE_CACHE_USER and CACHET_REMOTE_CACHE_PASSWORD)"
        )),
        500..=599 | 408 | 429 => Failure::Transient(msg),
        _ => Failure::Fatal(msg),
    }
}

impl Pack {
    /// The sha256 of its encoding's JSON (what the encoding's checksum is).
    pub fn digest(&self) -> Option<Sha256Digest> {
        serde_json::to_vec(self).ok().map(|b| Sha256Digest::of(&b))
    }
}

/// The part of REAPI's `ActionResult` cachet uses: `stdout_raw` (field 5)
/// or `stdout_digest` (field 6, a `Digest`: `hash` 1, `size_bytes` 2).
#[derive(Debug, Default, PartialEq, Eq)]
struct ActionResult {
    stdout_raw: Option<Vec<u8>>,
    stdout_digest: Option<(String, u64)>,
}

impl ActionResult {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(raw) = &self.stdout_raw {
            field_bytes(&mut out, 5, raw);
        }
        if let Some((hash, size)) = &self.stdout_digest {
            let mut d = Vec::new();
            field_bytes(&mut d, 1, hash.as_bytes());
            varint(&mut d, 2 << 3);
            varint(&mut d, *size);
            field_bytes(&mut out, 6, &d);
        }
        out
    }

    /// Reads the fields above, skipping every other; `None` if malformed.
    fn decode(mut b: &[u8]) -> Option<ActionResult> {
        let mut a = ActionResult::default();
        while !b.is_empty() {
            let (field, value) = next_field(&mut b)?;
            match (field, value) {
                (5, Value::Bytes(raw)) => a.stdout_raw = Some(raw.to_vec()),
                (6, Value::Bytes(mut d)) => {
                    let (mut hash, mut size) = (None, 0);
                    while !d.is_empty() {
                        match next_field(&mut d)? {
                            (1, Value::Bytes(h)) => hash = Some(std::str::from_utf8(h).ok()?),
                            (2, Value::Varint(s)) => size = s,
                            _ => {}
                        }
                    }
                    let hash =
                        hash.filter(|h| h.len() == 64 && h.bytes().all(|c| c.is_ascii_hexdigit()))?;
                    a.stdout_digest = Some((hash.to_ascii_lowercase(), size));
                }
                _ => {}
            }
        }
        Some(a)
    }
}

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

fn next_field<'a>(b: &mut &'a [u8]) -> Option<(u64, Value<'a>)> {
    let tag = read_varint(b)?;
    let value = match tag & 7 {
        0 => Value::Varint(read_varint(b)?),
        1 => {
            *b = b.get(8..)?;
            Value::Fixed
        }
        2 => {
            let len = usize::try_from(read_varint(b)?).ok()?;
            let (v, rest) = (b.get(..len)?, b.get(len..)?);
            *b = rest;
            Value::Bytes(v)
        }
        5 => {
            *b = b.get(4..)?;
            Value::Fixed
        }
        _ => return None,
    };
    Some((tag >> 3, value))
}

fn read_varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, (field << 3) | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
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
    fn action_results_round_trip_and_skip_unknown_fields() {
        let inline = ActionResult {
            stdout_raw: Some(b"bundle".to_vec()),
            stdout_digest: None,
        };
        assert_eq!(ActionResult::decode(&inline.encode()), Some(inline));
        let by_digest = ActionResult {
            stdout_raw: None,
            stdout_digest: Some(("ab".repeat(32), 12345)),
        };
        let mut bytes = vec![0x20, 0x07]; // exit_code = 7 (field 4, varint)
        bytes.extend(by_digest.encode());
        assert_eq!(ActionResult::decode(&bytes), Some(by_digest));
        for garbage in [&b"\xff\xff\xff"[..], b"\x2a\x10short", b"\x07"] {
            assert_eq!(ActionResult::decode(garbage), None);
        }
    }

    #[test]
    fn bundles_verify_their_checksum() {
        let bundle = Bundle {
            parts: serde_json::from_str(
                r#"{"module":"m","framework":"plain","case":"c","program":"p","args":[],"mounts":[],"memory":1,"output":1,"stack":1,"scratch":1,"open_files":1,"time":"real"}"#,
            )
            .unwrap(),
            entries: Vec::new(),
        };
        let bytes = crate::cache::seal(&bundle, MAGIC).unwrap();
        assert_eq!(
            crate::cache::unseal(&bytes, MAGIC).map(|(b, _)| b),
            Some(bundle.clone())
        );
        assert!(crate::cache::unseal::<Bundle>(&bytes, PACK_MAGIC).is_none());
        for i in [0, MAGIC.len() + 3, bytes.len() - 2] {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(
                crate::cache::unseal::<Bundle>(&bad, MAGIC).is_none(),
                "flipped byte {i}"
            );
        }
        assert!(crate::cache::unseal::<Bundle>(&bytes[..bytes.len() - 1], MAGIC).is_none());
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
