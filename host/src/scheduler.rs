//! The scheduler: the one place with concurrency. Design note:
//! `docs/design/scheduler.md`.
//!
//! Every package goes through its steps on its own, so one package's cases
//! run while later packages still build and compile:
//!
//! 1. Build its test binary (Go), read and hash its modules, and list their
//!    cases (a cached listing needs no compile), `-p` slots at a time; a
//!    free slot goes to the earliest package waiting.
//! 2. Plan its jobs (one per case with `--isolate=test`, one per module with
//!    `--isolate=module`), selected with `--run`, and look each up in the
//!    cache.
//! 3. Queue the misses: `-p` runners on guest threads take them in order
//!    (the long ones of the last run first). A module compiles when a case
//!    misses.
//!
//! Every result is sent to the reporter as an [`Event`] through one callback.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use cachet_runtime::Policy;
use tokio::sync::{mpsc, oneshot};

use crate::artifact::Artifact;
use crate::cache::Cache;
use crate::config::{Partition, TestConfig};
use crate::discover::Package;
use crate::event::{Event, PackageOutcome};
use crate::framework::{CaseResult, Verdict};
use crate::job::{self, Env, LazyRuntime, SetupError, Tx};
use crate::plan::{self, Job, Listing};

/// Shared by every task of one `cachet test`.
struct Ctx {
    runtime: Arc<LazyRuntime>,
    config: Arc<TestConfig>,
    /// Results' cache: `None` when `--count` bypasses it.
    cache: Option<Cache>,
    /// The cache even when `--count` bypasses results: what is known of a
    /// module's bytes (digest, framework, listing) and how long jobs took.
    facts: Option<Cache>,
    slots: Arc<Slots>,
    failed: AtomicBool,
    /// Ctrl-C or SIGTERM arrived: no new case starts.
    interrupted: AtomicBool,
    scratch: PathBuf,
    /// Cases' output is sent as it is written (`-v`, one at a time).
    live: bool,
    /// `--remote-executor`: misses run on a farm.
    remote: Option<Arc<crate::remote_exec::RemoteExecutor>>,
    /// Packages with jobs run (and those jobs), whose timings go to the
    /// remote cache at the end.
    timed: Mutex<Vec<(String, Vec<String>)>>,
}

impl Ctx {
    /// What a job runs with.
    fn env<'a>(&'a self, tx: &'a Tx) -> Env<'a> {
        Env {
            runtime: &self.runtime,
            config: &self.config,
            cache: self.cache.as_ref(),
            facts: self.facts.as_ref(),
            live: self.live,
            remote: self.remote.as_deref(),
            farm_time: Default::default(),
            tx,
        }
    }

    /// One of the `-p` slots, for work of package `pkg`.
    async fn slot(&self, pkg: usize) -> Slot {
        Slots::acquire(&self.slots, pkg).await
    }
}

/// Runs every package, calling `on_event` on this thread for each event.
pub fn run(
    config: Arc<TestConfig>,
    packages: Vec<Package>,
    runtime: Arc<LazyRuntime>,
    cache: Option<Cache>,
    scratch: &Path,
    mut on_event: impl FnMut(Event),
) -> Option<String> {
    let workers = config.parallel.max(1);
    // Runners of a remote executor wait on the network: as many as actions
    // in flight, on blocking threads of their own.
    let remote_jobs = config.executor.as_ref().map_or(0, |e| e.jobs);
    // As go test: -v output streams with one package or -p 1.
    let live = config.live_output(packages.len());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Lookups wait on a remote cache's answers, not on the CPU.
        .max_blocking_threads(
            if config.remote.is_some() {
                (workers + 2).max(REMOTE_LOOKUPS)
            } else {
                workers + 2
            } + remote_jobs,
        )
        .enable_io()
        .enable_time()
        .build()
        .expect("a tokio runtime starts");
    let remote = config.executor.as_ref().and_then(|executor| {
        let skip_cache = !config.cache || config.verify;
        match crate::remote_exec::RemoteExecutor::new(
            executor,
            skip_cache,
            cache.clone(),
            rt.handle().clone(),
        ) {
            Ok(r) => Some(Arc::new(r)),
            Err(e) => {
                on_event(Event::Warning {
                    message: format!("remote executor: {e}; running locally"),
                });
                None
            }
        }
    });
    let executor = remote.clone();
    let farm = executor.as_deref();
    let ctx = Arc::new(Ctx {
        remote,
        runtime,
        slots: Slots::new(workers),
        facts: cache.clone(),
        cache: cache.filter(|_| config.cache),
        config,
        failed: AtomicBool::new(false),
        interrupted: AtomicBool::new(false),
        scratch: scratch.to_path_buf(),
        live,
        timed: Mutex::new(Vec::new()),
    });
    rt.block_on(async move {
        let (tx, mut rx) = mpsc::unbounded_channel();
        // A weak sender: the event loop below ends when the driver's senders
        // are gone, whatever the signal watcher is waiting for.
        let signals = tokio::spawn(watch_signals(ctx.clone(), tx.downgrade()));
        let queue = ctx
            .remote
            .clone()
            .map(|r| tokio::spawn(watch_farm_queue(r, tx.downgrade())));
        // Compiled modules shared through the remote serve every later
        // machine: the background compiles are finished for them (Ctrl-C
        // still stops them), not dropped with the run.
        let finish = ctx
            .config
            .remote
            .as_ref()
            .is_some_and(|r| r.compiled && !r.read_only)
            .then(|| ctx.runtime.clone());
        let driver = tokio::spawn(drive(ctx, packages, tx));
        while let Some(event) = rx.recv().await {
            on_event(event);
            // Events come in streams (thousands of short cases a second):
            // take them a millisecond's worth at a time, not each with a
            // wake-up of this thread (a tenth of a trivial case's cost).
            loop {
                while let Ok(event) = rx.try_recv() {
                    on_event(event);
                }
                tokio::time::sleep(EVENT_BATCH).await;
                if rx.is_empty() {
                    break;
                }
            }
        }
        driver.await.expect("the scheduler does not panic");
        if let Some(r) = farm {
            r.cancelled().await;
        }
        if let Some(runtime) = finish {
            let _ = tokio::task::spawn_blocking(move || runtime.finish_background()).await;
        }
        signals.abort();
        if let Some(q) = queue {
            q.abort();
        }
    });
    executor.and_then(|e| e.summary())
}

/// The first Ctrl-C or SIGTERM stops every running case and starts no new
/// one, so the run reports what was interrupted and removes its temp dir;
/// a second one quits at once (removing the temp dir first).
async fn watch_signals(ctx: Arc<Ctx>, tx: mpsc::WeakUnboundedSender<Event>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    for first in [true, false] {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        if first {
            ctx.interrupted.store(true, Ordering::SeqCst);
            // Said before the runs stop: a run that ends at once (a remote
            // one, cancelled) could end the whole run before it is said,
            // and an interrupted run must exit as one (130).
            if let Some(tx) = tx.upgrade() {
                let _ = tx.send(Event::Interrupted {
                    at_host_calls: ctx.config.unlimited_time(),
                });
            }
            ctx.runtime.interrupt();
            if let Some(r) = &ctx.remote {
                r.interrupt();
            }
        } else {
            let _ = cachet_runtime::remove_tree(&ctx.scratch);
            std::process::exit(i32::from(crate::exit::INTERRUPTED));
        }
    }
}

/// A farm that starts none of the run's actions is said once (the run
/// keeps waiting for it: Ctrl-C stops it).
async fn watch_farm_queue(
    remote: Arc<crate::remote_exec::RemoteExecutor>,
    tx: mpsc::WeakUnboundedSender<Event>,
) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        if let Some(message) = remote.stalled() {
            if let Some(tx) = tx.upgrade() {
                let _ = tx.send(Event::Warning { message });
            }
            return;
        }
    }
}

async fn drive(ctx: Arc<Ctx>, packages: Vec<Package>, tx: Tx) {
    // 1. Per package, all at once (`-p` at a time): build its test binary
    //    (Go), read and hash its modules, then list their cases. Packages
    //    go at once, so one package's lookups (in the cache, or a remote
    //    cache's round trips) overlap the hashing of the next, and one
    //    package's compile the runs of those before it.
    let runners = match &ctx.remote {
        Some(_) => ctx.config.executor.as_ref().map_or(1, |e| e.jobs),
        None => ctx.config.parallel,
    };
    let queue = Arc::new(JobQueue::new(packages.len(), runners));
    let prepared: Vec<_> = packages
        .into_iter()
        .enumerate()
        .map(|(pkg, p)| tokio::spawn(prepare(ctx.clone(), tx.clone(), queue.clone(), pkg, p)))
        .collect();

    // 2. Plan each package's jobs as it is ready, look them up, and queue
    //    the misses for the runners. A count partition numbers every case
    //    of the run, so with one every package is planned first.
    let feeders: Vec<_> = match ctx.config.partition.filter(|p| !p.by_hash) {
        None => prepared
            .into_iter()
            .enumerate()
            .map(|(pkg, task)| {
                let (ctx, tx, queue) = (ctx.clone(), tx.clone(), queue.clone());
                tokio::spawn(async move {
                    let p = task.await.expect("preparing does not panic");
                    let mut planned = plan_package(&ctx, &tx, pkg, p);
                    if let (Some(part), Some((package, jobs, _))) = (
                        ctx.config.partition.as_ref().filter(|p| p.by_hash),
                        &mut planned,
                    ) {
                        if !partition_package(part, pkg, &package.name, jobs, &mut 0, &tx) {
                            planned = None;
                        }
                    }
                    feed(ctx, tx, queue, pkg, planned).await;
                })
            })
            .collect(),
        Some(part) => {
            let mut plans = Vec::new();
            for (pkg, task) in prepared.into_iter().enumerate() {
                let p = task.await.expect("preparing does not panic");
                plans.push(plan_package(&ctx, &tx, pkg, p));
            }
            let mut index = 0;
            for (pkg, plan) in plans.iter_mut().enumerate() {
                if let Some((package, jobs, _)) = plan {
                    if !partition_package(&part, pkg, &package.name, jobs, &mut index, &tx) {
                        *plan = None;
                    }
                }
            }
            plans
                .into_iter()
                .enumerate()
                .map(|(pkg, planned)| {
                    tokio::spawn(feed(ctx.clone(), tx.clone(), queue.clone(), pkg, planned))
                })
                .collect()
        }
    };
    for f in feeders {
        f.await.expect("planning does not panic");
    }

    // 3. Every job is queued: the runners end when the queue is empty.
    let runners = queue.close();
    for r in runners {
        r.await.expect("runners do not panic");
    }
    // 4. What this run timed goes to the remote cache (an interrupted
    //    run's times are not kept).
    if let Some(c) = ctx
        .facts
        .as_ref()
        .filter(|_| !ctx.interrupted.load(Ordering::SeqCst))
    {
        let timed = std::mem::take(&mut *ctx.timed.lock().expect("timed packages"));
        for (package, jobs) in timed {
            c.share_timings(&package, &jobs);
        }
    }
}

/// With a remote cache, a package with jobs to run first takes from it how
/// long they took where they ran (so a fresh machine orders them and sends
/// the long ones apart, `job::run_local`), and after the run shares how
/// long they took here.
async fn timings_from_remote(ctx: &Arc<Ctx>, package: &str, jobs: Vec<String>) {
    let Some(cache) = ctx.facts.clone() else {
        return;
    };
    let (name, keys) = (package.to_string(), jobs.clone());
    let _ = tokio::task::spawn_blocking(move || cache.fetch_timings(&name, &keys)).await;
    ctx.timed
        .lock()
        .expect("timed packages")
        .push((package.to_string(), jobs));
}

/// Looks a package's jobs up, reports the hits, and queues the misses (and
/// starts runners for them, up to `-p`).
async fn feed(
    ctx: Arc<Ctx>,
    tx: Tx,
    queue: Arc<JobQueue>,
    pkg: usize,
    planned: Option<(Arc<Package>, Vec<Job>, usize)>,
) {
    let mut runs: Vec<ToRun> = Vec::new();
    if let Some((package, jobs, listed)) = planned {
        // With a remote cache: the package's jobs, whose times it shares.
        let timed = ctx.facts.as_ref().and_then(Cache::remote).map(|_| {
            let mut keys: Vec<String> = jobs.iter().map(crate::plan::case_key).collect();
            keys.sort();
            keys.dedup();
            keys
        });
        let looked = start_lookups(&ctx, &tx, pkg, jobs, listed)
            .await
            .expect("lookups do not panic");
        if let Some(timed) = timed.filter(|_| looked.iter().any(|l| l.is_err())) {
            timings_from_remote(&ctx, &package.name, timed).await;
        }
        let state = Arc::new(Mutex::new(PackageRun {
            remaining: looked.len(),
            started: None,
            failed: false,
            ran: 0,
            all_cached: true,
        }));
        for l in looked {
            match l {
                Ok(hits) => {
                    start_package(pkg, &state, &tx);
                    for hit in hits {
                        finish_case(&ctx, pkg, &state, &tx, hit);
                    }
                    finish_job(pkg, &state, &tx, "");
                }
                Err(run) => runs.push((pkg, state.clone(), run)),
            }
        }
    }
    let long = |run: &job::ToRun| {
        let cache = ctx.facts.as_ref().filter(|_| ctx.config.parallel > 1)?;
        cache
            .last_time(&run.job.package, &crate::plan::case_key(&run.job))
            .filter(|took| *took >= LONG_JOB)
    };
    let runs: Vec<(ToRun, Option<Duration>)> = runs
        .into_iter()
        .map(|r| {
            let took = long(&r.2);
            (r, took)
        })
        .collect();
    for _ in queue.push(pkg, runs) {
        queue.add_runner(tokio::spawn(runner(ctx.clone(), tx.clone(), queue.clone())));
    }
}

/// A runner: runs the queued jobs on a guest thread until none is left.
async fn runner(ctx: Arc<Ctx>, tx: Tx, queue: Arc<JobQueue>) {
    let (ctx2, tx2, queue2) = (ctx.clone(), tx.clone(), queue.clone());
    if ctx.remote.is_some() {
        // Remote runs wait on the network; a local run (a read-write
        // mount, or after the executor failed) goes to a guest thread from
        // here as from anywhere.
        let _ = tokio::task::spawn_blocking(move || run_queue(&ctx2, &tx2, &queue2)).await;
        return;
    }
    let ran = on_guest(&ctx.runtime, move || run_queue(&ctx2, &tx2, &queue2)).await;
    // No guest thread: each job left fails with the reason.
    if let Err(e) = ran {
        let _ = tokio::task::spawn_blocking(move || {
            let mut stint = Stint::default();
            while let Some(next) = queue.pop(&mut stint) {
                run_one(&ctx, &tx, next, |_| Err(e.clone()));
            }
        })
        .await;
    }
}

/// The jobs to run, which `-p` runners on guest threads take: a job costs
/// no hand-off between threads (it cost three, a third of a trivial case's
/// time). Packages queue their misses as they are planned, so the first
/// cases run while later packages still build and compile.
///
/// The order: jobs that took [`LONG_JOB`] or more when they last ran go
/// first, longest first, so a long one never starts last. The others keep
/// the listed order within their package, and a runner keeps to one
/// package (its warm instance slots, its run server's code) for a
/// [`STINT`] of its time, or until the package has no job left; then it
/// takes the package whose ended jobs took the least runner time, with
/// fewer jobs running, then the earliest, first. So every package's cases
/// start soon after it is planned, and one never timed that is long
/// (regexp's exhaustive test, 15 s, in a cold run) is found early instead
/// of after every case of the packages before it; packages that take under
/// a stint (the 2,000-case suite's) still run one after another, each on
/// one runner. A job counts when it ends: a package whose long job runs
/// still has its other jobs taken, so it ends with that job (counted while
/// it ran, `strings` had its last short cases wait behind every other
/// package, and its result came last in a cold run: 78 s, not 38 s). With one
/// runner, the listed order: every order takes the same time. So that the
/// order holds across packages, runners wait while a package that needs
/// no build and no fresh listing (a warm run's every package) is still to
/// be queued.
struct JobQueue<T = ToRun> {
    state: Mutex<QueueState<T>>,
    ready: std::sync::Condvar,
    /// Runners at most (`-p`).
    parallel: usize,
    /// How long a runner keeps to a package that has jobs left.
    stint: Duration,
}

/// A runner's time on one package, kept by the runner for its queue.
#[derive(Default)]
struct Stint {
    /// The package it is on, and its time on it so far.
    pkg: Option<usize>,
    spent: Duration,
    /// When the job it runs started.
    job: Option<Instant>,
}

/// How long a runner keeps to one package while others wait: long enough
/// that a change of module (a run server maps the other's code) costs
/// little, short enough that a package planned late starts soon.
const STINT: Duration = Duration::from_secs(1);

struct QueueState<T> {
    /// Jobs that took [`LONG_JOB`] or more, longest first, with their
    /// package.
    long: VecDeque<(usize, T, Duration)>,
    /// The others, by package, in listed order.
    others: std::collections::BTreeMap<usize, VecDeque<T>>,
    /// Per package: runner time of its jobs that ended, and how many of
    /// its jobs run now.
    spent: Vec<Duration>,
    running: Vec<usize>,
    /// Packages to be queued soon: no build, no fresh listing (yet).
    soon: Vec<bool>,
    soon_left: usize,
    /// Jobs queued so far, and runners started for them.
    queued: usize,
    runners: Vec<tokio::task::JoinHandle<()>>,
    started: usize,
    closed: bool,
}

impl<T> JobQueue<T> {
    fn new(packages: usize, parallel: usize) -> Self {
        JobQueue {
            parallel: parallel.max(1),
            stint: if parallel > 1 { STINT } else { Duration::MAX },
            state: Mutex::new(QueueState {
                long: VecDeque::new(),
                others: Default::default(),
                spent: vec![Duration::ZERO; packages],
                running: vec![0; packages],
                soon: vec![true; packages],
                soon_left: packages,
                queued: 0,
                runners: Vec::new(),
                started: 0,
                closed: false,
            }),
            ready: std::sync::Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Package `pkg` builds or compiles first: runners need not wait for it.
    fn not_soon(&self, pkg: usize) {
        let mut s = self.lock();
        if std::mem::take(&mut s.soon[pkg]) {
            s.soon_left -= 1;
            self.ready.notify_all();
        }
    }

    /// Queues a package's jobs (each with how long it took, when long);
    /// returns how many runners to start for them, up to `parallel`.
    fn push(&self, pkg: usize, runs: Vec<(T, Option<Duration>)>) -> std::ops::Range<usize> {
        let mut s = self.lock();
        if std::mem::take(&mut s.soon[pkg]) {
            s.soon_left -= 1;
        }
        s.queued += runs.len();
        for (run, took) in runs {
            match took {
                Some(took) => {
                    let at = s.long.iter().position(|j| j.2 < took);
                    let at = at.unwrap_or(s.long.len());
                    s.long.insert(at, (pkg, run, took));
                }
                None => s.others.entry(pkg).or_default().push_back(run),
            }
        }
        self.ready.notify_all();
        let want = s.queued.min(self.parallel);
        let start = s.started;
        s.started = want.max(start);
        start..s.started
    }

    fn add_runner(&self, runner: tokio::task::JoinHandle<()>) {
        self.lock().runners.push(runner);
    }

    /// The next job for the runner of `stint` (its last job, if any, has
    /// ended; `stint` then names the new job's package), waiting for one
    /// while more may come; `None` when the queue is closed and empty.
    fn pop(&self, stint: &mut Stint) -> Option<T> {
        self.pop_at(stint, Instant::now)
    }

    /// [`JobQueue::pop`], with the clock given.
    fn pop_at(&self, stint: &mut Stint, now: impl Fn() -> Instant) -> Option<T> {
        let mut s = self.lock();
        if let (Some(pkg), Some(started)) = (stint.pkg, stint.job.take()) {
            let took = now().saturating_duration_since(started);
            s.running[pkg] -= 1;
            s.spent[pkg] += took;
            stint.spent += took;
        }
        loop {
            if s.soon_left == 0 || s.closed {
                if let Some(next) = s.take(stint, self.stint, now()) {
                    return Some(next);
                }
                if s.closed {
                    return None;
                }
            }
            s = self.ready.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// No job comes any more: returns the runners, to wait for.
    fn close(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let mut s = self.lock();
        s.closed = true;
        self.ready.notify_all();
        std::mem::take(&mut s.runners)
    }
}

impl<T> QueueState<T> {
    /// The next job in [`JobQueue`]'s order for the runner of `stint`,
    /// counted as running from `now`.
    fn take(&mut self, stint: &mut Stint, limit: Duration, now: Instant) -> Option<T> {
        let (pkg, run) = match self.long.pop_front() {
            Some((pkg, run, _)) => (pkg, run),
            None => {
                let stay = stint
                    .pkg
                    .filter(|p| stint.spent < limit && self.others.contains_key(p));
                let pkg = match stay {
                    Some(p) => p,
                    None => *self
                        .others
                        .keys()
                        .min_by_key(|p| (self.spent[**p], self.running[**p]))?,
                };
                let jobs = self.others.get_mut(&pkg).expect("just found");
                let run = jobs.pop_front().expect("no package is kept without jobs");
                if jobs.is_empty() {
                    self.others.remove(&pkg);
                }
                (pkg, run)
            }
        };
        if stint.pkg != Some(pkg) {
            *stint = Stint {
                pkg: Some(pkg),
                ..Stint::default()
            };
        }
        self.running[pkg] += 1;
        stint.job = Some(now);
        Some(run)
    }
}

/// The runner's loop: runs the queued jobs until none is left.
fn run_queue(ctx: &Arc<Ctx>, tx: &Tx, queue: &JobQueue) {
    let mut stint = Stint::default();
    while let Some(next) = queue.pop(&mut stint) {
        run_one(ctx, tx, next, |run| {
            let env = ctx.env(tx);
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job::run_job(&env, run)))
                .map(|results| (results, env.farm_time.get()))
                .map_err(|_| SetupError::Panic)
        });
    }
}

/// Runs one job with `run` (unless `--failfast` or Ctrl-C stopped the run)
/// and reports it. `run` gives the results and, when the job ran on a
/// farm, the runs' own time there (the wall time here is mostly the
/// farm's queue, which is not the job's length).
fn run_one(
    ctx: &Ctx,
    tx: &Tx,
    (pkg, state, run): ToRun,
    run_job: impl FnOnce(Box<job::ToRun>) -> Result<(Vec<CaseResult>, Option<Duration>), SetupError>,
) {
    let skip = (ctx.config.failfast && ctx.failed.load(Ordering::SeqCst))
        || ctx.interrupted.load(Ordering::SeqCst);
    if !skip {
        start_package(pkg, &state, tx);
        let (cases, framework) = (run.job.cases.clone(), run.job.framework);
        let timed = (run.job.package.clone(), crate::plan::case_key(&run.job));
        let started = Instant::now();
        let (results, farm_time) = run_job(run).unwrap_or_else(|e| {
            let e = e.to_string();
            let failed = cases
                .iter()
                .map(|name| CaseResult::failed_setup(name, framework, &e))
                .collect();
            (failed, None)
        });
        if let Some(c) = ctx
            .facts
            .as_ref()
            .filter(|_| !ctx.interrupted.load(Ordering::SeqCst))
        {
            let took = farm_time.unwrap_or_else(|| started.elapsed());
            c.record_time(&timed.0, &timed.1, took);
        }
        for result in results {
            finish_case(ctx, pkg, &state, tx, result);
        }
    }
    let why = if ctx.interrupted.load(Ordering::SeqCst) {
        "interrupted"
    } else {
        "--failfast stopped at an earlier failure"
    };
    finish_job(pkg, &state, tx, why);
}

/// How long the reporter lets events gather while they stream in.
const EVENT_BATCH: Duration = Duration::from_millis(1);

/// A job to run: its package, the package's state, the job.
type ToRun = (usize, Arc<Mutex<PackageRun>>, Box<job::ToRun>);

/// A job this long is worth starting early.
const LONG_JOB: Duration = Duration::from_millis(100);

/// Lookups at once with a remote cache, a package each (one request per
/// module with packs): a request on localhost takes ~0.2 ms, mostly
/// waiting. More threads cost more than they save (each is a stack and a
/// malloc arena).
const REMOTE_LOOKUPS: usize = 8;

/// Keeps a package's cases of this shard (`--partition`; `index`: how many
/// cases of the run came before it, which `count:` numbers by); `false`
/// when none is left, having said `[no tests to run]`.
fn partition_package(
    part: &Partition,
    pkg: usize,
    package: &str,
    jobs: &mut Vec<Job>,
    index: &mut usize,
    tx: &Tx,
) -> bool {
    let mut numbers: std::collections::HashMap<String, usize> = Default::default();
    for job in jobs.iter_mut() {
        let keep: Vec<bool> = job
            .cases
            .iter()
            .map(|c| {
                let i = *numbers.entry(c.clone()).or_insert_with(|| {
                    *index += 1;
                    *index - 1
                });
                part.selects(i, package, c)
            })
            .collect();
        let mut k = keep.iter();
        job.cases.retain(|_| *k.next().expect("one flag per case"));
        if !job.run_cases.is_empty() {
            let mut k = keep.iter();
            job.run_cases
                .retain(|_| *k.next().expect("one flag per case"));
        }
    }
    jobs.retain(|j| !j.cases.is_empty());
    if jobs.is_empty() {
        let _ = tx.send(finished(pkg, Duration::ZERO, PackageOutcome::NoTestsToRun));
        return false;
    }
    true
}

/// A package (built), its modules read and identified, and their listings.
struct Prepared {
    package: Arc<Package>,
    mods: Result<Vec<Arc<Artifact>>, SetupError>,
    policy: Arc<Policy>,
    /// `None` when there was nothing to list (an error, or no modules).
    listings: Option<Result<Vec<Listing>, SetupError>>,
}

/// Builds a package's test binary (Go), reads and hashes its modules (`-p`
/// at a time across the run), then lists their cases.
async fn prepare(
    ctx: Arc<Ctx>,
    tx: Tx,
    queue: Arc<JobQueue>,
    pkg: usize,
    mut p: Package,
) -> Prepared {
    if p.go_build.is_some() {
        queue.not_soon(pkg);
        p = blocking(ctx.clone(), pkg, move || {
            p.build();
            p
        })
        .await;
    }
    let p = Arc::new(p);
    let forced = plan::known_framework(&ctx.config, &p);
    let dir = plan::embeddable_dir(&p);
    let reads: Vec<_> = p
        .modules
        .iter()
        .map(|path| {
            let (path, dir, cache) = (path.clone(), dir.clone(), ctx.facts.clone());
            tokio::spawn(blocking(ctx.clone(), pkg, move || {
                Artifact::open(path, forced, dir, cache.as_ref())
            }))
        })
        .collect();
    let mut mods: Result<Vec<Arc<Artifact>>, SetupError> = p
        .error
        .clone()
        .map_or(Ok(Vec::new()), |e| Err(SetupError::Package(e)));
    for task in reads {
        let result = task.await.expect("reading does not panic");
        if let Ok(ms) = &mut mods {
            match result {
                Ok(m) => ms.push(Arc::new(m)),
                Err(e) => mods = Err(e.into()),
            }
        }
    }
    let embedded = mods.as_ref().is_ok_and(|m| m.iter().any(|m| m.embeds_dir));
    let memo = ctx.facts.as_ref().map(Cache::memo);
    let policy = Arc::new(plan::policy(&ctx.config, &p, &ctx.scratch, embedded, memo));
    let listings = match &mods {
        Ok(ms) if !ms.is_empty() => Some(
            list_package(
                ctx.clone(),
                tx,
                (pkg, queue),
                p.name.clone(),
                ms.clone(),
                policy.clone(),
            )
            .await,
        ),
        _ => None,
    };
    Prepared {
        package: p,
        mods,
        policy,
        listings,
    }
}

/// A package's jobs, or `None` (having said why: an error, no test files,
/// `--list`, nothing selected).
fn plan_package(
    ctx: &Ctx,
    tx: &Tx,
    pkg: usize,
    prepared: Prepared,
) -> Option<(Arc<Package>, Vec<Job>, usize)> {
    let Prepared {
        package,
        mods,
        policy,
        listings,
    } = prepared;
    let mods = match mods {
        Ok(m) => m,
        Err(message) => {
            let build = package.build_failed;
            let _ = tx.send(Event::PackageError {
                pkg,
                message: message.to_string(),
                build,
            });
            return None;
        }
    };
    let cases_per_module = match listings {
        None => {
            let _ = tx.send(finished(pkg, Duration::ZERO, PackageOutcome::NoTestFiles));
            return None;
        }
        // A listing Ctrl-C cut short is not the package's failure.
        Some(Err(_)) if ctx.interrupted.load(Ordering::SeqCst) => {
            let _ = tx.send(finished(
                pkg,
                Duration::ZERO,
                PackageOutcome::NotRun("interrupted"),
            ));
            return None;
        }
        Some(Err(message)) => {
            let _ = tx.send(Event::PackageError {
                pkg,
                message: message.to_string(),
                build: false,
            });
            return None;
        }
        Some(Ok(cases)) => cases,
    };
    if let Some(re) = &ctx.config.list {
        let names = cases_per_module
            .iter()
            .flat_map(|l| &l.cases)
            .filter(|c| re.is_match(c))
            .cloned()
            .collect();
        let _ = tx.send(Event::Listed { pkg, names });
        let _ = tx.send(finished(pkg, Duration::ZERO, PackageOutcome::Passed));
        return None;
    }
    let listed = cases_per_module.iter().map(|l| l.cases.len()).sum();
    let modules: Vec<_> = mods.into_iter().zip(cases_per_module).collect();
    let jobs = plan::jobs(pkg, &package.name, &ctx.config, &policy, &modules);
    if jobs.is_empty() {
        let _ = tx.send(finished(pkg, Duration::ZERO, PackageOutcome::NoTestsToRun));
        return None;
    }
    Some((package, jobs, listed))
}

/// Announces a package's planned cases and looks its jobs up in the cache
/// on the blocking pool (no guest thread, no runtime: a fully cached run
/// starts neither).
fn start_lookups(
    ctx: &Arc<Ctx>,
    tx: &Tx,
    pkg: usize,
    jobs: Vec<Job>,
    listed: usize,
) -> tokio::task::JoinHandle<Vec<job::Looked>> {
    let _ = tx.send(Event::Planned {
        pkg,
        cases: jobs.iter().flat_map(|j| j.cases.iter().cloned()).collect(),
        listed,
    });
    let (ctx, tx) = (ctx.clone(), tx.clone());
    tokio::task::spawn_blocking(move || job::look_up_package(&ctx.env(&tx), jobs))
}

/// Records a case's result and sends it to the reporter.
fn finish_case(ctx: &Ctx, pkg: usize, state: &Mutex<PackageRun>, tx: &Tx, result: CaseResult) {
    let failed = result.verdict == Verdict::Fail;
    if failed {
        ctx.failed.store(true, Ordering::SeqCst);
    }
    let mut s = state.lock().expect("package state");
    s.failed |= failed;
    s.all_cached &= result.cached || result.ignored;
    s.ran += 1;
    drop(s);
    let _ = tx.send(Event::CaseFinished {
        pkg,
        result,
        at: SystemTime::now(),
    });
}

struct PackageRun {
    remaining: usize,
    started: Option<Instant>,
    failed: bool,
    ran: usize,
    all_cached: bool,
}

fn start_package(pkg: usize, state: &Mutex<PackageRun>, tx: &Tx) {
    let mut s = state.lock().expect("package state");
    if s.started.is_none() {
        s.started = Some(Instant::now());
        let _ = tx.send(Event::PackageStarted {
            pkg,
            at: SystemTime::now(),
        });
    }
}

fn finish_job(pkg: usize, state: &Mutex<PackageRun>, tx: &Tx, not_run: &'static str) {
    let mut s = state.lock().expect("package state");
    s.remaining -= 1;
    if s.remaining == 0 {
        let elapsed = s.started.map_or(Duration::ZERO, |t| t.elapsed());
        let outcome = if s.failed {
            PackageOutcome::Failed
        } else if s.ran == 0 {
            PackageOutcome::NotRun(not_run)
        } else if s.all_cached {
            PackageOutcome::Cached
        } else {
            PackageOutcome::Passed
        };
        let _ = tx.send(finished(pkg, elapsed, outcome));
    }
}

fn finished(pkg: usize, elapsed: Duration, outcome: PackageOutcome) -> Event {
    Event::PackageFinished {
        pkg,
        elapsed,
        outcome,
        at: SystemTime::now(),
    }
}

/// Runs `f` on the blocking pool once a slot is free.
async fn blocking<T: Send + 'static>(
    ctx: Arc<Ctx>,
    pkg: usize,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let slot = ctx.slot(pkg).await;
    let out = tokio::task::spawn_blocking(f)
        .await
        .expect("blocking tasks do not panic");
    drop(slot);
    out
}

/// The `-p` slots that building, reading and listing take: a free slot goes
/// to the earliest package waiting, whenever it asked, so the first
/// packages are ready (and their cases running) while later ones still
/// build and compile, as `go test` runs them.
struct Slots {
    state: Mutex<SlotState>,
}

struct SlotState {
    free: usize,
    /// By package, then in the order asked.
    waiting: std::collections::BTreeMap<(usize, u64), oneshot::Sender<Slot>>,
    asked: u64,
}

/// A slot, given back when dropped.
struct Slot(Arc<Slots>);

impl Slots {
    fn new(n: usize) -> Arc<Self> {
        Arc::new(Slots {
            state: Mutex::new(SlotState {
                free: n.max(1),
                waiting: Default::default(),
                asked: 0,
            }),
        })
    }

    async fn acquire(slots: &Arc<Self>, pkg: usize) -> Slot {
        let rx = {
            let mut s = slots.state.lock().unwrap_or_else(|e| e.into_inner());
            if s.free > 0 {
                s.free -= 1;
                return Slot(slots.clone());
            }
            let (tx, rx) = oneshot::channel();
            s.asked += 1;
            let asked = s.asked;
            s.waiting.insert((pkg, asked), tx);
            rx
        };
        rx.await
            .expect("a waiting slot is handed over, not dropped")
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let slots = &self.0;
        let mut s = slots.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some((_, next)) = s.waiting.pop_first() else {
            s.free += 1;
            return;
        };
        drop(s);
        // A waiter gone (its task cancelled) hands the slot back: it is
        // dropped here, unused, and goes to the next one.
        let _ = next.send(Slot(slots.clone()));
    }
}

/// Runs `f` on one of the runtime's guest threads, where the runs it starts
/// need no further switch of thread; `Err` if it panicked.
async fn on_guest<T: Send + 'static>(
    runtime: &LazyRuntime,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, SetupError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    runtime
        .get()?
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|_| SetupError::Panic)?;
    rx.await.map_err(|_| SetupError::Panic)
}

/// A module's listing: cached, under way on a farm, or to run here.
enum Listed {
    Cached(Listing),
    Farm(tokio::task::JoinHandle<Result<Listing, SetupError>>),
    Here(Arc<Artifact>, Arc<Policy>),
}

/// Lists every module of a package: cached listings in one blocking task,
/// those a farm takes at once on blocking threads, the rest by running the
/// modules on guest threads.
async fn list_package(
    ctx: Arc<Ctx>,
    tx: Tx,
    (pkg, queue): (usize, Arc<JobQueue>),
    package: String,
    mods: Vec<Arc<Artifact>>,
    policy: Arc<Policy>,
) -> Result<Vec<Listing>, SetupError> {
    let policies: Vec<Arc<Policy>> = mods
        .iter()
        .map(|m| Arc::new(plan::module_policy(&policy, m)))
        .collect();
    let cached = {
        let (ctx, tx, package, mods, policies) = (
            ctx.clone(),
            tx.clone(),
            package.clone(),
            mods.clone(),
            policies.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let env = ctx.env(&tx);
            mods.iter()
                .zip(&policies)
                .map(|(m, p)| job::cached_listing(&env, &package, m, p))
                .collect::<Vec<_>>()
        })
        .await
        .expect("lookups do not panic")
    };
    // Listings on a farm go at once, on blocking threads that wait for
    // them; the rest run here in order, a slot at a time.
    let mut listings = Vec::new();
    for ((m, cached), p) in mods.into_iter().zip(cached).zip(policies) {
        listings.push(match cached {
            Some(listing) => Listed::Cached(listing),
            None if ctx.remote.as_ref().is_some_and(|r| r.takes(&p)) => {
                queue.not_soon(pkg);
                let (ctx, tx, package) = (ctx.clone(), tx.clone(), package.clone());
                Listed::Farm(tokio::task::spawn_blocking(move || {
                    job::list_module(&ctx.env(&tx), &package, &m, &p)
                }))
            }
            None => Listed::Here(m, p),
        });
    }
    let mut out = Vec::new();
    for listed in listings {
        let (m, p) = match listed {
            Listed::Cached(listing) => {
                out.push(listing);
                continue;
            }
            Listed::Farm(task) => {
                out.push(task.await.map_err(|_| SetupError::Panic)??);
                continue;
            }
            Listed::Here(m, p) => (m, p),
        };
        queue.not_soon(pkg);
        let permit = ctx.slot(pkg).await;
        let (ctx2, tx2, package) = (ctx.clone(), tx.clone(), package.clone());
        let listed = on_guest(&ctx.runtime, move || {
            job::list_module(&ctx2.env(&tx2), &package, &m, &p)
        })
        .await;
        drop(permit);
        out.push(listed.and_then(|l| l)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The order one runner takes every job in, each ended before the next
    /// (and none taking any time).
    fn drain(q: &JobQueue<&'static str>) -> Vec<&'static str> {
        q.close();
        let (mut stint, now) = (Stint::default(), Instant::now());
        std::iter::from_fn(|| q.pop_at(&mut stint, || now)).collect()
    }

    #[test]
    fn the_queue_puts_long_jobs_first_then_keeps_package_order() {
        let q = JobQueue::new(3, 2);
        let ms = Duration::from_millis;
        // Package 2 is planned before packages 0 and 1.
        assert_eq!(q.push(2, vec![("c1", None), ("c2", Some(ms(200)))]), 0..2);
        assert_eq!(q.push(0, vec![("a1", None), ("a2", Some(ms(900)))]), 2..2);
        q.push(1, vec![("b1", None), ("b2", None)]);
        // After c2, its runner keeps to package 2 (c1) while it may.
        assert_eq!(drain(&q), ["a2", "c2", "c1", "a1", "b1", "b2"]);
    }

    #[test]
    fn runners_keep_to_a_package_for_a_stint_then_take_the_least_served() {
        let q = JobQueue::new(3, 2);
        // Package 2 builds first: runners do not wait for it.
        q.not_soon(2);
        q.push(
            0,
            vec![("a1", None), ("a2", None), ("a3", None), ("a4", None)],
        );
        q.push(1, vec![("b1", None), ("b2", None)]);
        let t0 = Instant::now();
        let at = |ms: u64| move || t0 + Duration::from_millis(ms);
        // A runner's next job, and the package it is then on.
        let take = |stint: &mut Stint, ms| (q.pop_at(stint, at(ms)), stint.pkg);
        let (mut one, mut two) = (Stint::default(), Stint::default());
        // Side by side: the second runner takes the package with none
        // running.
        assert_eq!(take(&mut one, 0), (Some("a1"), Some(0)));
        assert_eq!(take(&mut two, 0), (Some("b1"), Some(1)));
        // Under a stint on it: the runner keeps to its package.
        assert_eq!(take(&mut two, 500), (Some("b2"), Some(1)));
        // Its package done: of those served least (none of their jobs
        // ended), the one with none running: a package planned just now,
        // before package 0, whose a1 runs.
        q.push(2, vec![("c1", None), ("c2", None), ("c3", None)]);
        assert_eq!(take(&mut two, 800), (Some("c1"), Some(2)));
        // A stint over (c1 took 1.2 s): the least served again, package 0,
        // whose a1 still runs (it counts when it ends).
        assert_eq!(take(&mut two, 2000), (Some("a2"), Some(0)));
        // Within its stint, a runner keeps to its package.
        assert_eq!(take(&mut two, 2500), (Some("a3"), Some(0)));
        // a1 ends after 3 s: package 2 (1.2 s) is now served least.
        assert_eq!(take(&mut one, 3000), (Some("c2"), Some(2)));
        assert_eq!(take(&mut one, 3100), (Some("c3"), Some(2)));
        assert_eq!(take(&mut two, 3200), (Some("a4"), Some(0)));
        q.close();
        assert_eq!(q.pop_at(&mut one, at(3300)), None);
        assert_eq!(q.pop_at(&mut two, at(3300)), None);
    }

    #[test]
    fn one_runner_keeps_the_listed_order() {
        let q = JobQueue::new(2, 1);
        q.push(0, vec![("a1", None), ("a2", None)]);
        q.push(1, vec![("b1", None)]);
        q.close();
        let mut stint = Stint::default();
        let t0 = Instant::now();
        let mut order = Vec::new();
        for s in 0.. {
            let Some(run) = q.pop_at(&mut stint, || t0 + Duration::from_secs(10 * s)) else {
                break;
            };
            order.push(run);
        }
        assert_eq!(order, ["a1", "a2", "b1"]);
    }

    #[test]
    fn runners_wait_for_packages_due_soon_but_not_for_ones_that_compile() {
        let q = Arc::new(JobQueue::new(2, 1));
        q.push(0, vec![("a", None)]);
        let (tx, rx) = std::sync::mpsc::channel();
        let runner = {
            let q = q.clone();
            std::thread::spawn(move || {
                let mut stint = Stint::default();
                tx.send(q.pop(&mut stint)).unwrap()
            })
        };
        // Package 1 is due soon (no build, no fresh listing): no job yet.
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        q.not_soon(1);
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), Some("a"));
        runner.join().unwrap();
    }

    #[tokio::test]
    async fn a_free_slot_goes_to_the_earliest_package_waiting() {
        let slots = Slots::new(1);
        let held = Slots::acquire(&slots, 0).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for pkg in [5, 3, 4, 1] {
            let (slots, order) = (slots.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let slot = Slots::acquire(&slots, pkg).await;
                order.lock().unwrap().push(pkg);
                drop(slot);
            }));
            tokio::task::yield_now().await;
        }
        // Every waiter has asked before the slot is free.
        while slots.state.lock().unwrap().waiting.len() < 4 {
            tokio::task::yield_now().await;
        }
        drop(held);
        for w in waiters {
            w.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [1, 3, 4, 5]);
    }
}
