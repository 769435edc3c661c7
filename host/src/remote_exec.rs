//! Remote execution: the cases that miss every cache run as REAPI actions
//! on a farm (`--remote-executor`), and `cachet __run-action`, the command
//! those actions run on a worker. Both ends of the wire are here.
//!
//! An action is one job's sandbox run. Its input root holds this cachet
//! binary (`cachet`), the module (`module.wasm`), each mount of the job's
//! policy (`m0/`, `m1/`, ...; a package directory without its `target/`
//! and `.git/`) and the run's manifest (`action.json`: the policy as data,
//! the tier and compile limits). Every name in it is by content, none by
//! host path, so the same job from any machine is the same action. The
//! worker writes the outcome back (`outcome.json`, `output.bin`,
//! `collected.bin`): status, input log, output. Everything after the run
//! (the harness's verdicts, the cache, the report) happens here, as for a
//! local run; a result from a worker is trusted as a remote cache entry is,
//! and is data: parsed with limits, and its input log must hold on this
//! machine before it is cached.
//!
//! When the executor cannot be reached or fails, cachet says so once and
//! runs the rest locally: never a lost or wrong result.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cachet_runtime::{
    CompileGuard, OutcomeSpec, Policy, PolicySpec, RunOutcome, Runtime, RuntimeConfig, Status, Tier,
};
use prost::Message as _;
use serde::{Deserialize, Serialize};

use crate::artifact::Artifact;
use crate::config::TestConfig;
use crate::reapi::cas::{Blob, Cas};
use crate::reapi::exec::{ExecError, Executor};
use crate::reapi::tree::TreeBuilder;
use crate::reapi::{re, Conn, Endpoint};

const MANIFEST: &str = "action.json";
const MODULE: &str = "module.wasm";
const OUTCOME: &str = "outcome.json";
const OUTPUT: &str = "output.bin";
const COLLECTED: &str = "collected.bin";
/// The largest outcome cachet reads back (the input log is most of it).
const MAX_OUTCOME: i64 = 256 << 20;
const MAX_COLLECTED: i64 = 16 << 20;
/// Bumped when the manifest or outcome changes meaning: part of every
/// action, so workers of another version never serve this one.
const WIRE_VERSION: u32 = 1;
/// Extra time an action gets past its run's limit (fetching inputs,
/// compiling the module happen in it too).
const ACTION_SLACK: Duration = Duration::from_secs(120);
/// Past this, an action has no timeout of its own (BuildGrid's default
/// maximum is two hours; longer limits are `--timeout 0`'s "none").
const MAX_ACTION_TIMEOUT: Duration = Duration::from_secs(2 * 3600);

/// Attempts of a call the server refused for being at its limit
/// (RESOURCE_EXHAUSTED) before it counts as a failure: about a minute.
const MAX_BUSY: u32 = 64;

/// The wait before the `n`th attempt of a refused call: 20 ms doubling,
/// at most a second, spread so waiters do not come back together.
fn backoff(n: u32) -> Duration {
    let base = Duration::from_millis(20u64 << n.min(6)).min(Duration::from_secs(1));
    let spread = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() % 1000);
    base + base * spread / 2000
}

/// A run's manifest: what the worker needs besides the input root.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub module: String,
    pub policy: PolicySpec,
    pub tier: Tier,
    pub stack: Option<usize>,
    pub compile_timeout: Duration,
    pub compile_memory: u64,
}

/// Why a job runs locally after all.
#[derive(Debug)]
pub struct Fallback {
    /// Said once per run: the executor is off for the rest of it.
    pub warning: Option<String>,
}

/// What remote execution did in a run, for the summary and benchmarks.
#[derive(Debug, Default)]
pub struct ExecStats {
    pub actions: AtomicU64,
    pub fallbacks: AtomicU64,
    pub uploaded_bytes: AtomicU64,
    /// Microseconds spent building and uploading inputs, waiting for the
    /// execution, and reading outcomes back, summed over actions.
    pub upload_us: AtomicU64,
    pub execute_us: AtomicU64,
    pub download_us: AtomicU64,
}

/// A mount directory's tree, or a file, built and uploaded once per run
/// (the first job to need it does; the others wait for it).
type Uploaded = Arc<tokio::sync::OnceCell<Result<re::Digest, String>>>;

/// The remote executor of one `cachet test`.
pub struct RemoteExecutor {
    endpoint: Endpoint,
    conn: Conn,
    rt: tokio::runtime::Handle,
    off: AtomicBool,
    interrupted: tokio::sync::watch::Sender<bool>,
    subtrees: Mutex<HashMap<PathBuf, Uploaded>>,
    /// Files hashed and uploaded once per run (this binary, modules).
    files: Mutex<HashMap<PathBuf, Uploaded>>,
    /// Digests the server is known to hold.
    present: Mutex<BTreeSet<String>>,
    operations: Mutex<BTreeSet<String>>,
    skip_cache: bool,
    pub stats: ExecStats,
}

impl RemoteExecutor {
    /// `rt`: the runtime whose blocking threads call [`Self::run`].
    pub fn new(
        endpoint: Endpoint,
        skip_cache: bool,
        rt: tokio::runtime::Handle,
    ) -> Result<Self, String> {
        // The channel's connection task lives on `rt`.
        let conn = {
            let _in = rt.enter();
            endpoint.connect().map_err(|e| e.to_string())?
        };
        Ok(RemoteExecutor {
            endpoint,
            conn,
            rt,
            off: AtomicBool::new(false),
            interrupted: tokio::sync::watch::channel(false).0,
            subtrees: Mutex::default(),
            files: Mutex::default(),
            present: Mutex::default(),
            operations: Mutex::default(),
            skip_cache,
            stats: ExecStats::default(),
        })
    }

    /// Whether this policy's run can go to a worker: not after the
    /// executor failed, and not with a read-write mount (its changes must
    /// land on this machine, and its metadata is this machine's).
    pub fn takes(&self, policy: &Policy) -> bool {
        !self.off.load(Ordering::Relaxed)
            && policy
                .mounts()
                .iter()
                .all(|m| m.mode == cachet_runtime::MountMode::ReadOnly)
    }

    /// Ctrl-C: in-flight actions are cancelled on the server.
    pub fn interrupt(&self) {
        let _ = self.interrupted.send(true);
        let names: Vec<String> = self
            .operations
            .lock()
            .expect("ops")
            .iter()
            .cloned()
            .collect();
        let exec = Executor::new(self.conn.clone());
        self.rt.spawn(async move {
            for n in names {
                exec.cancel(&n).await;
            }
        });
    }

    /// Runs `policy` over `module` on the farm (from a blocking thread).
    pub fn run(
        &self,
        module: &Artifact,
        policy: &Policy,
        config: &TestConfig,
    ) -> Result<RunOutcome, Fallback> {
        self.stats.actions.fetch_add(1, Ordering::Relaxed);
        let r = self.rt.block_on(self.run_async(module, policy, config));
        if r.is_err() {
            self.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// The executor failed: off for the rest of the run, said once.
    fn give_up(&self, why: String) -> Fallback {
        let first = !self.off.swap(true, Ordering::SeqCst);
        Fallback {
            warning: first.then(|| {
                format!(
                    "remote executor {}: {why}; running the rest locally",
                    self.endpoint.display()
                )
            }),
        }
    }

    async fn run_async(
        &self,
        module: &Artifact,
        policy: &Policy,
        config: &TestConfig,
    ) -> Result<RunOutcome, Fallback> {
        let started = Instant::now();
        let cas = Cas::new(self.conn.clone());
        let (action, blobs) = self.action(module, policy, config, &cas).await?;
        let digest = action.digest.clone();
        let mut upload: Vec<Blob> = {
            let present = self.present.lock().expect("present");
            blobs
                .into_iter()
                .filter(|b| !present.contains(&b.digest.hash))
                .collect()
        };
        upload.push(action);
        self.upload(&cas, upload)
            .await
            .map_err(|e| self.give_up(e))?;
        let uploaded = Instant::now();
        self.stats
            .upload_us
            .fetch_add((uploaded - started).as_micros() as u64, Ordering::Relaxed);

        let exec = Executor::new(self.conn.clone());
        let ops = &self.operations;
        let named = |n: &str| {
            ops.lock().expect("ops").insert(n.to_string());
        };
        let mut stop = self.interrupted.subscribe();
        let mut busy = 0u32;
        let response = loop {
            let r = tokio::select! {
                r = exec.execute(digest.clone(), self.skip_cache, &named) => r,
                _ = stop.wait_for(|v| *v) => {
                    return Ok(interrupted());
                }
            };
            // A server at its limit of calls is not a failed one: wait and
            // ask again (each wait longer, up to a second).
            match r {
                Err(ExecError::Busy(_)) if busy < MAX_BUSY => {
                    busy += 1;
                    tokio::time::sleep(backoff(busy)).await;
                }
                r => break r,
            }
        };
        let response = match response {
            Ok(r) => r,
            Err(ExecError::Unavailable(e) | ExecError::Busy(e)) => return Err(self.give_up(e)),
            Err(ExecError::Failed(s)) => {
                return Err(self.give_up(format!(
                    "the action failed: {:?}: {}",
                    s.code(),
                    s.message()
                )))
            }
        };
        let executed = Instant::now();
        self.stats
            .execute_us
            .fetch_add((executed - uploaded).as_micros() as u64, Ordering::Relaxed);
        let outcome = self
            .read_outcome(&cas, response, policy)
            .await
            .and_then(|o| checked_here(o, policy));
        self.stats
            .download_us
            .fetch_add(executed.elapsed().as_micros() as u64, Ordering::Relaxed);
        outcome
    }

    /// The action of a run, and the blobs it needs.
    async fn action(
        &self,
        module: &Artifact,
        policy: &Policy,
        config: &TestConfig,
        cas: &Cas,
    ) -> Result<(Blob, Vec<Blob>), Fallback> {
        let mut tree = TreeBuilder::default();
        let mut blobs = Vec::new();
        let exe = std::env::current_exe()
            .map_err(|e| self.give_up(format!("cannot find cachet's own binary: {e}")))?;
        for (path, host, exec) in [("cachet", &exe, true), (MODULE, &module.path, false)] {
            let digest = self.file(host, cas).await?;
            tree.add_blob(path, digest, host.clone(), exec);
        }
        for (i, m) in policy.mounts().iter().enumerate() {
            let root = self.subtree(&m.host, cas).await?;
            tree.add_tree(&mount_dir(i), root);
        }
        let manifest = Manifest {
            version: WIRE_VERSION,
            module: MODULE.into(),
            policy: policy.spec(|i, _| mount_dir(i)),
            tier: config.tier,
            stack: config.sandbox.stack,
            compile_timeout: config.compile_timeout,
            compile_memory: config.compile_memory,
        };
        let manifest = serde_json::to_vec(&manifest).expect("a manifest serializes");
        tree.add_bytes(MANIFEST, manifest, false);
        let t = tree.finish();
        blobs.extend(
            t.blobs
                .into_iter()
                .filter(|b| matches!(b.source, crate::reapi::cas::Source::Bytes(_))),
        );
        let command = re::Command {
            arguments: vec!["./cachet".into(), "__run-action".into(), MANIFEST.into()],
            output_paths: vec![OUTCOME.into(), OUTPUT.into(), COLLECTED.into()],
            ..Default::default()
        };
        let command = Blob::bytes(command.encode_to_vec());
        // A backstop against a stuck worker (the sandbox keeps the run's own
        // limit): none for a run without a time limit.
        let timeout = policy
            .timeout_duration()
            .checked_add(config.compile_timeout + ACTION_SLACK)
            .filter(|t| *t < MAX_ACTION_TIMEOUT);
        let action = re::Action {
            command_digest: Some(command.digest.clone()),
            input_root_digest: Some(t.root),
            timeout: timeout.map(|t| crate::reapi::protobuf::Duration {
                seconds: t.as_secs() as i64,
                nanos: 0,
            }),
            do_not_cache: false,
            salt: Vec::new(),
            platform: None,
        };
        blobs.push(command);
        Ok((Blob::bytes(action.encode_to_vec()), blobs))
    }

    /// A file's digest, the file uploaded on first use.
    async fn file(&self, host: &Path, cas: &Cas) -> Result<re::Digest, Fallback> {
        let cell = self
            .files
            .lock()
            .expect("files")
            .entry(host.to_path_buf())
            .or_default()
            .clone();
        let r = cell
            .get_or_init(|| async {
                let bytes =
                    std::fs::read(host).map_err(|e| format!("reading {}: {e}", host.display()))?;
                let blob = Blob::bytes(bytes);
                let digest = blob.digest.clone();
                self.upload(cas, vec![blob]).await.map(|()| digest)
            })
            .await;
        r.clone().map_err(|e| self.give_up(e))
    }

    /// A mount directory's tree root, built and uploaded on first use.
    async fn subtree(&self, host: &Path, cas: &Cas) -> Result<re::Digest, Fallback> {
        let cell = self
            .subtrees
            .lock()
            .expect("subtrees")
            .entry(host.to_path_buf())
            .or_default()
            .clone();
        let r = cell
            .get_or_init(|| async {
                let skip = |rel: &Path| rel == Path::new("target") || rel == Path::new(".git");
                let mut t = TreeBuilder::default();
                t.add_dir("", host, &skip)
                    .map_err(|e| format!("reading {}: {e}", host.display()))?;
                let tree = t.finish();
                self.upload(cas, tree.blobs).await.map(|()| tree.root)
            })
            .await;
        r.clone().map_err(|e| self.give_up(e))
    }

    /// Uploads what the server lacks, and counts it.
    async fn upload(&self, cas: &Cas, blobs: Vec<Blob>) -> Result<(), String> {
        let hashes: Vec<String> = blobs.iter().map(|b| b.digest.hash.clone()).collect();
        let mut busy = 0u32;
        let up = loop {
            match cas.upload(&blobs).await {
                Err(crate::reapi::cas::CasError::Status(s))
                    if s.code() == tonic::Code::ResourceExhausted && busy < MAX_BUSY =>
                {
                    busy += 1;
                    tokio::time::sleep(backoff(busy)).await;
                }
                r => break r.map_err(|e| format!("uploading inputs: {e}"))?,
            }
        };
        self.stats
            .uploaded_bytes
            .fetch_add(up.bytes, Ordering::Relaxed);
        self.present.lock().expect("present").extend(hashes);
        Ok(())
    }

    /// The outcome a worker wrote, read with limits and checked.
    async fn read_outcome(
        &self,
        cas: &Cas,
        response: re::ExecuteResponse,
        policy: &Policy,
    ) -> Result<RunOutcome, Fallback> {
        let bad = |why: String| self.give_up(why);
        let Some(result) = response.result else {
            return Err(bad("the response holds no result".into()));
        };
        let file = |name: &str| result.output_files.iter().find(|f| f.path == name);
        let Some(outcome) = file(OUTCOME).and_then(|f| f.digest.clone()) else {
            // The worker could not run it (exit 2): its stderr says why.
            let why = match &result.stderr_digest {
                Some(d) if d.size_bytes < 64 << 10 => cas.read(d).await.ok(),
                _ => None,
            }
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("exit status {}", result.exit_code));
            return Err(bad(format!("the worker could not run the case: {why}")));
        };
        let limit = |d: &re::Digest, max: i64| {
            if d.size_bytes > max {
                Err(bad(format!(
                    "an outcome file of {} bytes is past its limit",
                    d.size_bytes
                )))
            } else {
                Ok(())
            }
        };
        limit(&outcome, MAX_OUTCOME)?;
        let spec_bytes = cas.read(&outcome).await.map_err(|e| bad(e.to_string()))?;
        let spec: OutcomeSpec = serde_json::from_slice(&spec_bytes)
            .map_err(|e| bad(format!("the outcome is malformed: {e}")))?;
        let output = match file(OUTPUT).and_then(|f| f.digest.clone()) {
            Some(d) => {
                limit(&d, policy.output_limit_bytes() as i64 + (1 << 20))?;
                cas.read(&d).await.map_err(|e| bad(e.to_string()))?
            }
            None => Vec::new(),
        };
        let collected = match file(COLLECTED).and_then(|f| f.digest.clone()) {
            Some(d) => {
                limit(&d, MAX_COLLECTED)?;
                Some(cas.read(&d).await.map_err(|e| bad(e.to_string()))?)
            }
            None => None,
        };
        Ok(RunOutcome::from_spec(spec, output, collected))
    }

    /// A line for the run's end: what went to the farm.
    pub fn summary(&self) -> Option<String> {
        let s = &self.stats;
        let actions = s.actions.load(Ordering::Relaxed);
        if actions == 0 {
            return None;
        }
        let fallbacks = s.fallbacks.load(Ordering::Relaxed);
        let remote = (actions - fallbacks).max(1) as f64;
        let ms = |us: &AtomicU64| us.load(Ordering::Relaxed) as f64 / 1000.0 / remote;
        Some(format!(
            "remote executor {}: {} of {actions} runs remote, {:.1} MiB uploaded; per action: inputs {:.1} ms, execution {:.1} ms, outcome {:.1} ms",
            self.endpoint.display(),
            actions - fallbacks,
            s.uploaded_bytes.load(Ordering::Relaxed) as f64 / (1 << 20) as f64,
            ms(&s.upload_us),
            ms(&s.execute_us),
            ms(&s.download_us),
        ))
    }
}

/// Where the `i`th mount of a policy is in an action's input root.
fn mount_dir(i: usize) -> String {
    format!("m{i}")
}

/// A worker's outcome, its input log re-observed on this machine: a run
/// that saw something else (a file left out of the input root, a worker
/// that lies about what it read) is not this machine's result, and the
/// case runs here instead.
fn checked_here(outcome: RunOutcome, policy: &Policy) -> Result<RunOutcome, Fallback> {
    let now = cachet_runtime::reobserve(&outcome.log, &policy.world());
    if now.inputs_digest() != outcome.log.inputs_digest() {
        return Err(Fallback { warning: None });
    }
    Ok(outcome)
}

/// The outcome of a run stopped by Ctrl-C before its result came back.
fn interrupted() -> RunOutcome {
    let spec = OutcomeSpec {
        status: Status::Interrupted,
        elapsed: Duration::ZERO,
        log: Default::default(),
        changed_during_run: Some("interrupted".into()),
        cleanup_error: None,
        compiler: cachet_runtime::Compiler::Cranelift,
        restarted: false,
        wasi: cachet_runtime::Wasi::P1,
        exit_frames: Vec::new(),
        collected: false,
    };
    RunOutcome::from_spec(spec, Vec::new(), None)
}

/// `cachet __run-action action.json`: a worker's side. Exit 0 when the run
/// passed, 1 when it did not (so REAPI caches only passing runs), 2 when
/// it could not run (the reason on stderr).
pub fn run_action(manifest: &Path) -> u8 {
    match try_run_action(manifest) {
        Ok(passed) => u8::from(!passed),
        Err(e) => {
            eprintln!("cachet __run-action: {e}");
            crate::exit::SETUP_ERROR
        }
    }
}

fn try_run_action(manifest: &Path) -> Result<bool, String> {
    let bytes = std::fs::read(manifest).map_err(|e| format!("{}: {e}", manifest.display()))?;
    let m: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{}: not a cachet action manifest: {e}", manifest.display()))?;
    if m.version != WIRE_VERSION {
        return Err(format!(
            "the action is of wire version {}, this cachet speaks {WIRE_VERSION}",
            m.version
        ));
    }
    let root = manifest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let scratch = root.join(".scratch");
    std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let policy = Policy::from_spec(&m.policy, &root, &scratch)?;
    let compiled_cache =
        std::env::var_os("CACHET_WORKER_CACHE").map(|d| PathBuf::from(d).join("compiled"));
    let runtime = Runtime::new(RuntimeConfig {
        compiled_cache,
        max_wasm_stack: m.stack,
        compile: std::env::current_exe().ok().map(|program| CompileGuard {
            program,
            args: vec!["__compile".into()],
            timeout: m.compile_timeout,
            memory: m.compile_memory,
        }),
        uninterruptible: false,
        tier: m.tier,
        shared_compiled: None,
        compiled_memo: None,
    })
    .map_err(|e| e.to_string())?;
    let module_path = root.join(&m.module);
    let wasm =
        std::fs::read(&module_path).map_err(|e| format!("{}: {e}", module_path.display()))?;
    let module = runtime.load(&wasm).map_err(|e| e.to_string())?;
    let outcome = runtime.run(&module, &policy).map_err(|e| e.to_string())?;
    runtime.finish_background();
    let passed = outcome.status.passed();
    let (spec, output, collected) = outcome.into_spec();
    let write = |name: &str, bytes: &[u8]| {
        std::fs::write(root.join(name), bytes).map_err(|e| format!("{name}: {e}"))
    };
    write(OUTPUT, &output)?;
    if let Some(c) = collected {
        write(COLLECTED, &c)?;
    }
    write(
        OUTCOME,
        &serde_json::to_vec(&spec).map_err(|e| e.to_string())?,
    )?;
    Ok(passed)
}
