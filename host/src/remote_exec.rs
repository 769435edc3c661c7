//! Remote execution: the cases that miss every cache run as REAPI actions
//! on a farm (`--remote-executor`), and `cachet __run-action`, the command
//! those actions run on a worker. Both ends of the wire are here.
//!
//! An action is a batch of sandbox runs of one module: the jobs of that
//! module that reach the executor within a few milliseconds of each other
//! (up to [`FIRST_BATCH`] until the module's runs were timed on the farm,
//! in this run or, by the cache's record, an earlier one; then about a
//! second's work of them), so the farm's per-action cost (queueing,
//! fetching inputs, starting cachet) is paid once per batch. Its input
//! root holds this cachet binary (`cachet`; with `--remote-cachet
//! installed`, none: the command names the worker's own `cachet`, and the
//! action's platform asks for workers offering [`PROPERTY`]`=`[`protocol`]),
//! the module (`module.wasm`), each mount of the runs' policies (`m0/`,
//! `m1/`, ...; a package directory without its `target/` and `.git/`) and
//! the manifest (`action.json`: each run's policy as data, the tier and
//! compile limits). Every name in it is by content, none by host path, so
//! the same batch from any machine is the same action. The worker writes
//! each run's outcome back (`r0/outcome.json`, `r0/output.bin`,
//! `r0/collected.bin`, ...): status, input log, output. Everything after
//! the run (the harness's verdicts, the cache, the report) happens here,
//! as for a local run; a result from a worker is trusted as a remote cache
//! entry is, and is data: parsed with limits, and its input log must hold
//! on this machine before it is cached.
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
use crate::config::{TestConfig, WorkerCachet};
use crate::reapi::cas::{Blob, Cas};
use crate::reapi::exec::{ExecError, Executor, Stage};
use crate::reapi::tree::TreeBuilder;
use crate::reapi::{re, Conn, Endpoint};

const MANIFEST: &str = "action.json";
const MODULE: &str = "module.wasm";
const OUTCOME: &str = "outcome.json";
const OUTPUT: &str = "output.bin";
const COLLECTED: &str = "collected.bin";
/// Written instead of outcomes when the module cannot load or run.
const MODULE_ERROR: &str = "module-error.txt";
/// The most runs an action carries before its module's runs were timed,
/// and after (when they are short).
const FIRST_BATCH: usize = 8;
const MAX_BATCH: usize = 64;
/// How long a batch waits for more runs of its module before it goes.
const LINGER: Duration = Duration::from_millis(5);
/// The work an action should be, once its module's runs were timed.
const BATCH_WORK: Duration = Duration::from_secs(1);
/// The largest outcome cachet reads back (the input log is most of it).
const MAX_OUTCOME: i64 = 256 << 20;
const MAX_COLLECTED: i64 = 16 << 20;
/// Bumped when the manifest or outcome changes meaning: part of every
/// action, so workers of another version never serve this one.
const WIRE_VERSION: u32 = 2;
/// Extra time an action gets past its run's limit (fetching inputs,
/// compiling the module happen in it too).
const ACTION_SLACK: Duration = Duration::from_secs(120);
/// Past this, an action has no timeout of its own (BuildGrid's default
/// maximum is two hours; longer limits are `--timeout 0`'s "none").
const MAX_ACTION_TIMEOUT: Duration = Duration::from_secs(2 * 3600);
/// The "package" under which the cache keeps each module's mean time per
/// run on the farm (by module digest).
const REMOTE_TIMINGS: &str = "\0remote-execution";
/// How long an interrupted run waits for its cancels to reach the farm.
const CANCEL_WAIT: Duration = Duration::from_secs(5);
/// The platform property naming the cachet protocol a worker speaks.
pub const PROPERTY: &str = "cachet";
/// The program an action names for the worker's own cachet (a bare name:
/// `cachet worker` runs itself; another worker finds it on its PATH).
pub const PROGRAM: &str = "cachet";
/// How long the run waits for a worker to start any of its actions
/// before it says it is still waiting (a farm with no worker that takes
/// them queues them for ever).
const QUEUE_PATIENCE: Duration = Duration::from_secs(10);

/// What a worker's installed cachet must speak to run this cachet's
/// actions: the cache's meaning and the action's wire format.
pub fn protocol() -> String {
    format!("{}+action-v{WIRE_VERSION}", crate::cache::key::ABI_VERSION)
}

/// An action's manifest: what the worker needs besides the input root.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub module: String,
    /// Each run's policy; run `i` writes its outcome under `r{i}/`.
    pub runs: Vec<PolicySpec>,
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
    pub runs: AtomicU64,
    pub actions: AtomicU64,
    pub fallbacks: AtomicU64,
    pub uploaded_bytes: AtomicU64,
    /// Microseconds spent building and uploading inputs, waiting for the
    /// execution, and reading outcomes back, summed over actions.
    pub upload_us: AtomicU64,
    pub execute_us: AtomicU64,
    pub download_us: AtomicU64,
    /// Of the execution, what the workers report they spent fetching
    /// inputs, running, and uploading outputs (the rest is the server's
    /// queue and hand-offs).
    pub worker_fetch_us: AtomicU64,
    pub worker_run_us: AtomicU64,
    pub worker_upload_us: AtomicU64,
}

impl ExecStats {
    /// Adds a worker's own account of an action.
    fn add_worker(&self, m: &re::ExecutedActionMetadata) {
        let span = |a: &Option<crate::reapi::protobuf::Timestamp>,
                    b: &Option<crate::reapi::protobuf::Timestamp>| {
            let us = |t: &crate::reapi::protobuf::Timestamp| {
                t.seconds as i128 * 1_000_000 + i128::from(t.nanos / 1000)
            };
            match (a, b) {
                (Some(a), Some(b)) => u64::try_from(us(b) - us(a)).unwrap_or(0),
                _ => 0,
            }
        };
        let add = |c: &AtomicU64, v: u64| c.fetch_add(v.min(1 << 40), Ordering::Relaxed);
        add(
            &self.worker_fetch_us,
            span(
                &m.input_fetch_start_timestamp,
                &m.input_fetch_completed_timestamp,
            ),
        );
        add(
            &self.worker_run_us,
            span(
                &m.execution_start_timestamp,
                &m.execution_completed_timestamp,
            ),
        );
        add(
            &self.worker_upload_us,
            span(
                &m.output_upload_start_timestamp,
                &m.output_upload_completed_timestamp,
            ),
        );
    }
}

/// Runs of one module over the same mounts: they can share an action.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct BatchKey {
    module: PathBuf,
    /// The module's digest: its runs' time on the farm is kept by it.
    digest: cachet_runtime::ModuleDigest,
    mounts: Vec<PathBuf>,
}

/// A run of a batch: its policy as data, its time and output limits.
struct BatchRun {
    spec: PolicySpec,
    timeout: Duration,
    output_limit: usize,
}

/// A run waiting in a batch, and where its outcome goes.
struct Queued {
    run: BatchRun,
    done: std::sync::mpsc::SyncSender<Result<RunOutcome, Fallback>>,
}

/// A batch being filled; its opener sends it.
struct Open {
    runs: Mutex<Vec<Queued>>,
    /// Told when the batch is full (it goes before its linger ends).
    full: tokio::sync::Notify,
}

/// A mount directory's tree, or a file, built and uploaded once per run
/// (the first job to need it does; the others wait for it).
type Uploaded = Arc<tokio::sync::OnceCell<Result<re::Digest, String>>>;

/// The remote executor of one `cachet test`.
pub struct RemoteExecutor {
    endpoint: Endpoint,
    conn: Conn,
    cachet: WorkerCachet,
    rt: tokio::runtime::Handle,
    off: AtomicBool,
    interrupted: tokio::sync::watch::Sender<bool>,
    subtrees: Mutex<HashMap<PathBuf, Uploaded>>,
    /// Files hashed and uploaded once per run (this binary, modules).
    files: Mutex<HashMap<PathBuf, Uploaded>>,
    /// Digests the server is known to hold.
    present: Mutex<BTreeSet<String>>,
    operations: Mutex<BTreeSet<String>>,
    /// The CancelOperation calls Ctrl-C started.
    cancels: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    open: Mutex<HashMap<BatchKey, Arc<Open>>>,
    /// Actions in flight at once: `--remote-jobs` / [`FIRST_BATCH`].
    in_flight: tokio::sync::Semaphore,
    /// Per module (by digest, as the cache keeps it): runs timed on the
    /// farm in this cachet run, and their summed time.
    timing: Mutex<HashMap<cachet_runtime::ModuleDigest, (u32, Duration)>>,
    /// When the first action was sent, and whether a worker has started
    /// one since (for [`Self::stalled`]).
    first_sent: std::sync::OnceLock<Instant>,
    started: AtomicBool,
    stall_said: AtomicBool,
    skip_cache: bool,
    /// The cache's stat memo: files unchanged since a run are not read.
    memo: Option<Arc<dyn cachet_runtime::DigestMemo>>,
    /// Where each module's time per run on the farm is kept for the next
    /// cachet run (its first batches are then sized too).
    timings: Option<crate::cache::Cache>,
    pub stats: ExecStats,
}

impl RemoteExecutor {
    /// `rt`: the runtime whose blocking threads call [`Self::run`].
    pub fn new(
        config: &crate::config::ExecutorConfig,
        skip_cache: bool,
        cache: Option<crate::cache::Cache>,
        rt: tokio::runtime::Handle,
    ) -> Result<Self, String> {
        // The channel's connection task lives on `rt`.
        let conn = {
            let _in = rt.enter();
            config.endpoint.connect().map_err(|e| e.to_string())?
        };
        Ok(RemoteExecutor {
            endpoint: config.endpoint.clone(),
            conn,
            cachet: config.cachet,
            rt,
            off: AtomicBool::new(false),
            interrupted: tokio::sync::watch::channel(false).0,
            subtrees: Mutex::default(),
            files: Mutex::default(),
            present: Mutex::default(),
            operations: Mutex::default(),
            cancels: Mutex::default(),
            open: Mutex::default(),
            in_flight: tokio::sync::Semaphore::new(config.jobs.div_ceil(FIRST_BATCH).max(1)),
            timing: Mutex::default(),
            first_sent: std::sync::OnceLock::new(),
            started: AtomicBool::new(false),
            stall_said: AtomicBool::new(false),
            skip_cache,
            memo: cache.as_ref().map(crate::cache::Cache::memo),
            timings: cache,
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
        let cancels = self.rt.spawn(async move {
            let mut all = tokio::task::JoinSet::new();
            for n in names {
                let exec = exec.clone();
                all.spawn(async move { exec.cancel(&n).await });
            }
            while all.join_next().await.is_some() {}
        });
        self.cancels.lock().expect("cancels").push(cancels);
    }

    /// Waits for the cancels Ctrl-C sent (a few seconds at most): the
    /// run must not end, and the process with it, before the farm heard
    /// them, or the actions run on to their time limit.
    pub async fn cancelled(&self) {
        let cancels = std::mem::take(&mut *self.cancels.lock().expect("cancels"));
        let deadline = tokio::time::Instant::now() + CANCEL_WAIT;
        for c in cancels {
            let _ = tokio::time::timeout_at(deadline, c).await;
        }
    }

    /// Said once, when no worker has started any action of this run
    /// [`QUEUE_PATIENCE`] after the first was sent: the run keeps waiting
    /// (a busy farm is no fault), but the user hears what it waits for.
    pub fn stalled(&self) -> Option<String> {
        let since = self.first_sent.get()?;
        if since.elapsed() < QUEUE_PATIENCE
            || self.started.load(Ordering::Relaxed)
            || self.off.load(Ordering::Relaxed)
            || *self.interrupted.borrow()
            || self.stall_said.swap(true, Ordering::Relaxed)
        {
            return None;
        }
        let hint = match self.cachet {
            WorkerCachet::Installed => format!(
                "with --remote-cachet installed, a worker must offer the platform property {PROPERTY}={}, as `cachet worker` of a compatible version does",
                protocol()
            ),
            WorkerCachet::Upload => match self.conn.instance.as_str() {
                "" => "is a worker serving the server's default instance?".to_string(),
                name => format!("is a worker serving instance {name:?}?"),
            },
        };
        Some(format!(
            "remote executor {}: no worker has started this run's actions in {} s; still waiting ({hint})",
            self.endpoint.display(),
            QUEUE_PATIENCE.as_secs()
        ))
    }

    /// Runs `policy` over `module` on the farm (from a blocking thread):
    /// in a batch with the other runs of the module that arrive with it.
    pub fn run(
        &self,
        module: &Artifact,
        policy: &Policy,
        config: &TestConfig,
    ) -> Result<RunOutcome, Fallback> {
        self.stats.runs.fetch_add(1, Ordering::Relaxed);
        let (done, outcome) = std::sync::mpsc::sync_channel(1);
        let key = BatchKey {
            module: module.path.clone(),
            digest: module.digest,
            mounts: policy.mounts().iter().map(|m| m.host.clone()).collect(),
        };
        let run = Queued {
            run: BatchRun {
                spec: policy.spec(|i, _| mount_dir(i)),
                timeout: policy.timeout_duration(),
                output_limit: policy.output_limit_bytes(),
            },
            done,
        };
        if let Some(batch) = self.join(&key, run) {
            // This run opened the batch: it waits for company, then sends it.
            // Then it waits for a free action: while every action is in
            // flight, the batch stays open and grows (under load, batches
            // grow; idle, a run goes at once).
            let _permit = self.rt.block_on(async {
                tokio::select! {
                    _ = tokio::time::sleep(LINGER) => {}
                    _ = batch.full.notified() => {}
                }
                self.in_flight.acquire().await.expect("never closed")
            });
            {
                let mut open = self.open.lock().expect("open batches");
                if open.get(&key).is_some_and(|b| Arc::ptr_eq(b, &batch)) {
                    open.remove(&key);
                }
            }
            let runs = std::mem::take(&mut *batch.runs.lock().expect("batch"));
            self.rt.block_on(self.send(&key, runs, config));
        }
        let r = outcome
            .recv()
            .unwrap_or(Err(Fallback { warning: None }))
            .and_then(|o| checked_here(o, policy));
        if r.is_err() {
            self.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// Adds `run` to the open batch of `key`, or opens one (returned: its
    /// opener sends it). A full batch is closed at once.
    fn join(&self, key: &BatchKey, run: Queued) -> Option<Arc<Open>> {
        let limit = self.batch_limit(key);
        let mut open = self.open.lock().expect("open batches");
        if let Some(batch) = open.get(key) {
            let mut runs = batch.runs.lock().expect("batch");
            runs.push(run);
            if runs.len() >= limit {
                drop(runs);
                if let Some(b) = open.remove(key) {
                    b.full.notify_one();
                }
            }
            return None;
        }
        let batch = Arc::new(Open {
            runs: Mutex::new(vec![run]),
            full: tokio::sync::Notify::new(),
        });
        if limit > 1 {
            open.insert(key.clone(), batch.clone());
        } else {
            batch.full.notify_one();
        }
        Some(batch)
    }

    /// How many runs of a module an action takes: about [`BATCH_WORK`] of
    /// them once its runs were timed on the farm (in this cachet run, or
    /// the last one), [`FIRST_BATCH`] until then.
    fn batch_limit(&self, key: &BatchKey) -> usize {
        let each = match self.timing.lock().expect("timing").get(&key.digest) {
            Some(&(n, total)) if n > 0 => Some(total / n),
            _ => self
                .timings
                .as_ref()
                .and_then(|c| c.last_time(REMOTE_TIMINGS, &key.digest.0.hex())),
        };
        match each {
            Some(each) if !each.is_zero() => {
                ((BATCH_WORK.as_nanos() / each.as_nanos()) as usize).clamp(1, MAX_BATCH)
            }
            _ => FIRST_BATCH,
        }
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

    /// Sends a batch as one action; each run hears its own outcome.
    async fn send(&self, key: &BatchKey, runs: Vec<Queued>, config: &TestConfig) {
        let (runs, done): (Vec<_>, Vec<_>) = runs.into_iter().map(|q| (q.run, q.done)).unzip();
        match self.execute(key, &runs, config).await {
            Ok(outcomes) => {
                let (n, total) = {
                    let mut timing = self.timing.lock().expect("timing");
                    let t = timing.entry(key.digest).or_default();
                    for o in outcomes.iter().flatten() {
                        t.0 += 1;
                        t.1 += o.elapsed;
                    }
                    *t
                };
                if let (Some(c), true) = (&self.timings, n > 0) {
                    c.record_time(REMOTE_TIMINGS, &key.digest.0.hex(), total / n);
                }
                for (o, done) in outcomes.into_iter().zip(done) {
                    let _ = done.send(o);
                }
            }
            Err(first) => {
                // The first run says why (once per cachet run); the rest
                // just run locally.
                let mut why = Some(first);
                for done in done {
                    let _ = done.send(Err(why.take().unwrap_or(Fallback { warning: None })));
                }
            }
        }
    }

    /// One action of `runs`: each run's outcome, or why none came back.
    async fn execute(
        &self,
        key: &BatchKey,
        runs: &[BatchRun],
        config: &TestConfig,
    ) -> Result<Vec<Result<RunOutcome, Fallback>>, Fallback> {
        let started = Instant::now();
        self.stats.actions.fetch_add(1, Ordering::Relaxed);
        let cas = Cas::new(self.conn.clone());
        let (action, blobs) = self.action(key, runs, config, &cas).await?;
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
        let started = &self.started;
        let progress = |n: &str, stage: Stage| {
            ops.lock().expect("ops").insert(n.to_string());
            if stage >= Stage::Executing {
                started.store(true, Ordering::Relaxed);
            }
        };
        self.first_sent.get_or_init(Instant::now);
        let mut stop = self.interrupted.subscribe();
        let mut busy = 0u32;
        let response = loop {
            let r = tokio::select! {
                r = exec.execute(digest.clone(), self.skip_cache, &progress) => r,
                _ = stop.wait_for(|v| *v) => {
                    return Ok(runs.iter().map(|_| Ok(interrupted())).collect());
                }
            };
            // A server at its limit of calls is not a failed one: wait and
            // ask again (each wait longer, up to a second).
            match r {
                Err(ExecError::Busy(_)) if busy < crate::reapi::MAX_BUSY => {
                    busy += 1;
                    tokio::time::sleep(crate::reapi::backoff(busy)).await;
                }
                r => break r,
            }
        };
        let response = match response {
            Ok(r) => r,
            Err(ExecError::Unavailable(e) | ExecError::Busy(e)) => return Err(self.give_up(e)),
            Err(ExecError::Failed(s)) => {
                return Err(self.give_up(format!(
                    "the action failed: {:?}: {}{}",
                    s.code(),
                    s.message(),
                    refused_advice(&s)
                )))
            }
        };
        self.started.store(true, Ordering::Relaxed);
        let executed = Instant::now();
        self.stats
            .execute_us
            .fetch_add((executed - uploaded).as_micros() as u64, Ordering::Relaxed);
        if let Some(m) = response
            .result
            .as_ref()
            .and_then(|r| r.execution_metadata.as_ref())
        {
            self.stats.add_worker(m);
        }
        let outcomes = self.read_outcomes(&cas, response, runs).await;
        self.stats
            .download_us
            .fetch_add(executed.elapsed().as_micros() as u64, Ordering::Relaxed);
        outcomes
    }

    /// The action of a batch, and the blobs it needs.
    async fn action(
        &self,
        key: &BatchKey,
        runs: &[BatchRun],
        config: &TestConfig,
        cas: &Cas,
    ) -> Result<(Blob, Vec<Blob>), Fallback> {
        let mut tree = TreeBuilder::default();
        let mut blobs = Vec::new();
        let (program, platform) = match self.cachet {
            WorkerCachet::Upload => {
                let exe = std::env::current_exe()
                    .map_err(|e| self.give_up(format!("cannot find cachet's own binary: {e}")))?;
                let digest = self.file(&exe, cas).await?;
                tree.add_blob("cachet", digest, exe, true);
                ("./cachet", None)
            }
            WorkerCachet::Installed => (
                PROGRAM,
                Some(re::Platform {
                    properties: vec![re::platform::Property {
                        name: PROPERTY.into(),
                        value: protocol(),
                    }],
                }),
            ),
        };
        let digest = self.file(&key.module, cas).await?;
        tree.add_blob(MODULE, digest, key.module.clone(), false);
        for (i, host) in key.mounts.iter().enumerate() {
            let root = self.subtree(host, cas).await?;
            tree.add_tree(&mount_dir(i), root);
        }
        let manifest = Manifest {
            version: WIRE_VERSION,
            module: MODULE.into(),
            runs: runs.iter().map(|r| r.spec.clone()).collect(),
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
        #[allow(deprecated)] // also in the command, for servers before REAPI 2.2
        let command = re::Command {
            arguments: vec![program.into(), "__run-action".into(), MANIFEST.into()],
            platform: platform.clone(),
            output_paths: (0..runs.len())
                .flat_map(|i| [OUTCOME, OUTPUT, COLLECTED].map(|f| run_file(i, f)))
                .chain([MODULE_ERROR.to_string()])
                .collect(),
            ..Default::default()
        };
        let command = Blob::bytes(command.encode_to_vec());
        // A backstop against a stuck worker (the sandbox keeps each run's
        // own limit): none when a run has no time limit.
        let timeout = runs
            .iter()
            .try_fold(config.compile_timeout + ACTION_SLACK, |sum, r| {
                sum.checked_add(r.timeout)
            })
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
            platform,
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
                let digest = crate::reapi::digest_file(host, self.memo.as_deref())
                    .map_err(|e| format!("reading {}: {e}", host.display()))?;
                let blob = Blob {
                    digest: digest.clone(),
                    source: crate::reapi::cas::Source::File(host.to_path_buf()),
                };
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
                let mut t = TreeBuilder::with_memo(self.memo.clone());
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
        let up = cas
            .upload(&blobs)
            .await
            .map_err(|e| format!("uploading inputs: {e}{}", advice(&e)))?;
        self.stats
            .uploaded_bytes
            .fetch_add(up.bytes, Ordering::Relaxed);
        self.present.lock().expect("present").extend(hashes);
        Ok(())
    }

    /// The outcomes a worker wrote, each read with limits. A result with
    /// no outcomes (the worker could not run the batch) fails the executor;
    /// a run whose outcome is malformed too.
    async fn read_outcomes(
        &self,
        cas: &Cas,
        response: re::ExecuteResponse,
        runs: &[BatchRun],
    ) -> Result<Vec<Result<RunOutcome, Fallback>>, Fallback> {
        let bad = |why: String| self.give_up(why);
        let Some(result) = response.result else {
            return Err(bad("the response holds no result".into()));
        };
        let file = |i: usize, name: &str| {
            let path = run_file(i, name);
            result
                .output_files
                .iter()
                .find(|f| f.path == path)
                .and_then(|f| f.digest.clone())
        };
        if result.output_files.iter().any(|f| f.path == MODULE_ERROR) {
            // The module cannot load or run there: each run goes here, and
            // fails as it would have (the executor stays on).
            return Ok(runs
                .iter()
                .map(|_| Err(Fallback { warning: None }))
                .collect());
        }
        if file(0, OUTCOME).is_none() {
            // The worker could not run it (exit 2): its stderr says why.
            let why = match &result.stderr_digest {
                Some(d) if d.size_bytes < 64 << 10 => cas.read(d).await.ok(),
                _ => None,
            }
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("exit status {}", result.exit_code));
            return Err(bad(format!("the worker could not run the case: {why}")));
        }
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
        let mut outcomes = Vec::with_capacity(runs.len());
        for (i, run) in runs.iter().enumerate() {
            let Some(outcome) = file(i, OUTCOME) else {
                return Err(bad(format!("the result lacks run {i}'s outcome")));
            };
            limit(&outcome, MAX_OUTCOME)?;
            let spec_bytes = cas.read(&outcome).await.map_err(|e| bad(e.to_string()))?;
            let spec: OutcomeSpec = serde_json::from_slice(&spec_bytes)
                .map_err(|e| bad(format!("the outcome is malformed: {e}")))?;
            let output = match file(i, OUTPUT) {
                Some(d) => {
                    limit(&d, run.output_limit as i64 + (1 << 20))?;
                    cas.read(&d).await.map_err(|e| bad(e.to_string()))?
                }
                None => Vec::new(),
            };
            let collected = match file(i, COLLECTED) {
                Some(d) => {
                    limit(&d, MAX_COLLECTED)?;
                    Some(cas.read(&d).await.map_err(|e| bad(e.to_string()))?)
                }
                None => None,
            };
            outcomes.push(Ok(RunOutcome::from_spec(spec, output, collected)));
        }
        Ok(outcomes)
    }

    /// A line for the run's end: what went to the farm.
    pub fn summary(&self) -> Option<String> {
        let s = &self.stats;
        let runs = s.runs.load(Ordering::Relaxed);
        if runs == 0 {
            return None;
        }
        let fallbacks = s.fallbacks.load(Ordering::Relaxed);
        let actions = s.actions.load(Ordering::Relaxed);
        let per = actions.max(1) as f64;
        let ms = |us: &AtomicU64| us.load(Ordering::Relaxed) as f64 / 1000.0 / per;
        Some(format!(
            "remote executor {}: {} of {runs} runs remote in {actions} actions, {:.1} MiB uploaded; per action: inputs {:.1} ms, execution {:.1} ms (on the worker: fetch {:.1} ms, run {:.1} ms, upload {:.1} ms), outcome {:.1} ms",
            self.endpoint.display(),
            runs - fallbacks,
            s.uploaded_bytes.load(Ordering::Relaxed) as f64 / (1 << 20) as f64,
            ms(&s.upload_us),
            ms(&s.execute_us),
            ms(&s.worker_fetch_us),
            ms(&s.worker_run_us),
            ms(&s.worker_upload_us),
            ms(&s.download_us),
        ))
    }
}

/// What to do about a first call the farm refused: credentials the user
/// gives through the environment.
fn advice(e: &crate::reapi::cas::CasError) -> &'static str {
    let crate::reapi::cas::CasError::Status(s) = e else {
        return "";
    };
    match s.code() {
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
            " (give the farm's bearer token in CACHET_REMOTE_EXECUTOR_TOKEN)"
        }
        tonic::Code::Unavailable if format!("{s:?}").contains("Certificate") => {
            " (for a farm whose certificate a private CA signed, name the CA's PEM file in CACHET_REMOTE_EXECUTOR_CA)"
        }
        _ => "",
    }
}

/// What to do about an action the server refused: a platform property
/// its scheduler does not know (BuildGrid refuses those).
fn refused_advice(s: &tonic::Status) -> String {
    if s.code() == tonic::Code::FailedPrecondition && s.message().contains(PROPERTY) {
        format!(
            " (register the platform property `{PROPERTY}` with the farm's scheduler: BuildGrid's match-property-keys)"
        )
    } else {
        String::new()
    }
}

/// Where run `i` of an action writes its file `name`.
fn run_file(i: usize, name: &str) -> String {
    format!("r{i}/{name}")
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

/// `cachet __run-action action.json`: a worker's side. Runs the batch in
/// order, in one runtime with the module loaded once. Exit 0 when every
/// run passed, 1 when one did not (so REAPI caches only passing batches),
/// 2 when it could not run (the reason on stderr), 3 when the module
/// could not be loaded or run (the reason in `module-error.txt` too: the
/// batch is then run on the client, where it fails as it would have).
pub fn run_action(manifest: &Path) -> u8 {
    match try_run_action(manifest) {
        Ok(passed) => u8::from(!passed),
        Err(ActionError::Setup(e)) => {
            eprintln!("cachet __run-action: {e}");
            crate::exit::SETUP_ERROR
        }
        Err(ActionError::Module(e)) => {
            eprintln!("cachet __run-action: {e}");
            let at = manifest.with_file_name(MODULE_ERROR);
            if std::fs::write(&at, &e).is_err() {
                return crate::exit::SETUP_ERROR;
            }
            3
        }
    }
}

/// Why a worker ran no batch.
enum ActionError {
    /// The worker or the action is at fault: the executor is.
    Setup(String),
    /// The module cannot load or run here: nor would it on the client.
    Module(String),
}

impl From<String> for ActionError {
    fn from(e: String) -> Self {
        ActionError::Setup(e)
    }
}

fn try_run_action(manifest: &Path) -> Result<bool, ActionError> {
    let bytes = std::fs::read(manifest).map_err(|e| format!("{}: {e}", manifest.display()))?;
    let m: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{}: not a cachet action manifest: {e}", manifest.display()))?;
    if m.version != WIRE_VERSION {
        return Err(ActionError::Setup(format!(
            "the action is of wire version {}, this cachet speaks {WIRE_VERSION}",
            m.version
        )));
    }
    let root = manifest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let scratch = root.join(".scratch");
    std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let policies = m
        .runs
        .iter()
        .map(|spec| Policy::from_spec(spec, &root, &scratch))
        .collect::<Result<Vec<_>, _>>()?;
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
        run_apart: None,
    })
    .map_err(|e| e.to_string())?;
    let module_path = root.join(&m.module);
    let wasm =
        std::fs::read(&module_path).map_err(|e| format!("{}: {e}", module_path.display()))?;
    let module = runtime
        .load(&wasm)
        .map_err(|e| ActionError::Module(e.to_string()))?;
    if policies.len() > 1 {
        // Many runs of one module: worth Cranelift's code.
        runtime.settle(&module);
    }
    let mut passed = true;
    for (i, policy) in policies.iter().enumerate() {
        let outcome = runtime
            .run(&module, policy)
            .map_err(|e| ActionError::Module(e.to_string()))?;
        passed &= outcome.status.passed();
        let (spec, output, collected) = outcome.into_spec();
        let write = |name: &str, bytes: &[u8]| {
            let path = root.join(run_file(i, name));
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))
        };
        write(OUTPUT, &output)?;
        if let Some(c) = collected {
            write(COLLECTED, &c)?;
        }
        write(
            OUTCOME,
            &serde_json::to_vec(&spec).map_err(|e| e.to_string())?,
        )?;
    }
    runtime.finish_background();
    Ok(passed)
}
