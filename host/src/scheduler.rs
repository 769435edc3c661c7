//! The scheduler: the one place with concurrency. Design note:
//! `docs/design/scheduler.md`.
//!
//! 1. Read and hash every module (no compiling yet), `-p` at a time.
//! 2. List each module's cases with its framework's list protocol (a cached
//!    listing needs no compile) and select them with `--run`.
//! 3. Run the jobs (one per case with `--isolate=test`, one per module with
//!    `--isolate=module`), `-p` at a time, in command-line order: a FIFO
//!    semaphore hands out slots in the order jobs were queued. Each case is
//!    looked up in the cache first; a module compiles when a case misses.
//!
//! Every result is sent to the reporter as an [`Event`] through one callback.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use cachet_runtime::Policy;
use tokio::sync::{mpsc, Semaphore};

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
    slots: Arc<Semaphore>,
    failed: AtomicBool,
    /// Ctrl-C or SIGTERM arrived: no new case starts.
    interrupted: AtomicBool,
    scratch: PathBuf,
    /// Cases' output is sent as it is written (`-v`, one at a time).
    live: bool,
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
            tx,
        }
    }

    /// One of the `-p` slots, in the order asked for.
    async fn slot(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.slots
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore open")
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
) {
    let workers = config.parallel.max(1);
    // As go test: -v output streams with one package or -p 1.
    let live = config.live_output(packages.len());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Lookups wait on a remote cache's answers, not on the CPU.
        .max_blocking_threads(if config.remote.is_some() {
            (workers + 2).max(REMOTE_LOOKUPS)
        } else {
            workers + 2
        })
        .enable_io()
        .enable_time()
        .build()
        .expect("a tokio runtime starts");
    let ctx = Arc::new(Ctx {
        runtime,
        slots: Arc::new(Semaphore::new(workers)),
        facts: cache.clone(),
        cache: cache.filter(|_| config.cache),
        config,
        failed: AtomicBool::new(false),
        interrupted: AtomicBool::new(false),
        scratch: scratch.to_path_buf(),
        live,
    });
    rt.block_on(async move {
        let (tx, mut rx) = mpsc::unbounded_channel();
        // A weak sender: the event loop below ends when the driver's senders
        // are gone, whatever the signal watcher is waiting for.
        let signals = tokio::spawn(watch_signals(ctx.clone(), tx.downgrade()));
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
        if let Some(runtime) = finish {
            let _ = tokio::task::spawn_blocking(move || runtime.finish_background()).await;
        }
        signals.abort();
    });
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
            ctx.runtime.interrupt();
            if let Some(tx) = tx.upgrade() {
                let _ = tx.send(Event::Interrupted {
                    at_host_calls: ctx.config.unlimited_time(),
                });
            }
        } else {
            let _ = cachet_runtime::remove_tree(&ctx.scratch);
            std::process::exit(i32::from(crate::exit::INTERRUPTED));
        }
    }
}

async fn drive(ctx: Arc<Ctx>, packages: Vec<Package>, tx: Tx) {
    // 1. Per package: read and hash its modules, then list their cases.
    //    Packages go at once, so one package's lookups (in the cache, or a
    //    remote cache's round trips) overlap the hashing of the next.
    let packages: Vec<Arc<Package>> = packages.into_iter().map(Arc::new).collect();
    let prepared: Vec<_> = packages
        .iter()
        .map(|p| tokio::spawn(prepare(ctx.clone(), tx.clone(), p.clone())))
        .collect();

    // 2. Plan each package's jobs as it is ready, in order; without a count
    //    partition (which numbers every case of the run) its lookups start
    //    at once.
    let global_partition = ctx.config.partition.as_ref().filter(|p| !p.by_hash);
    let mut plans: Vec<Option<Vec<Job>>> = Vec::new();
    let mut listed = vec![0; packages.len()];
    let mut lookups = Vec::new();
    for (pkg, task) in prepared.into_iter().enumerate() {
        let Prepared {
            mods,
            policy,
            listings,
        } = task.await.expect("preparing does not panic");
        let planned = plan_package(&ctx, &tx, pkg, &packages[pkg], mods, policy, listings);
        let mut jobs = planned.map(|(jobs, n)| {
            listed[pkg] = n;
            jobs
        });
        let by_hash = ctx.config.partition.as_ref().filter(|p| p.by_hash);
        if let (Some(part), Some(js)) = (by_hash, &mut jobs) {
            if !partition_package(part, pkg, &packages[pkg].name, js, &mut 0, &tx) {
                jobs = None;
            }
        }
        if global_partition.is_none() {
            lookups.push(start_lookups(&ctx, &tx, pkg, jobs, listed[pkg]));
            plans.push(None);
        } else {
            plans.push(jobs);
        }
    }
    if let Some(part) = global_partition {
        let mut index = 0;
        for (pkg, plan) in plans.iter_mut().enumerate() {
            if let Some(jobs) = plan {
                if !partition_package(part, pkg, &packages[pkg].name, jobs, &mut index, &tx) {
                    *plan = None;
                }
            }
        }
        for (pkg, jobs) in plans.into_iter().enumerate() {
            lookups.push(start_lookups(&ctx, &tx, pkg, jobs, listed[pkg]));
        }
    }

    // 3. Take each package's lookups, in order; then run the misses, `-p`
    //    at a time, the slowest first.
    let mut runs: Vec<ToRun> = Vec::new();
    for (pkg, looked) in lookups.into_iter().enumerate() {
        let Some(looked) = looked else { continue };
        let looked = looked.await.expect("lookups do not panic");
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
    slowest_first(&ctx, &mut runs);
    // `-p` runners on guest threads take the jobs from one queue, in order:
    // a job costs no hand-off between threads (it cost three, a third of
    // a trivial case's time).
    let queue = Arc::new(Mutex::new(VecDeque::from(runs)));
    let runners = ctx
        .config
        .parallel
        .max(1)
        .min(queue.lock().expect("queue").len());
    let tasks: Vec<_> = (0..runners)
        .map(|_| {
            let (ctx, tx, queue) = (ctx.clone(), tx.clone(), queue.clone());
            tokio::spawn(async move {
                let (ctx2, tx2, queue2) = (ctx.clone(), tx.clone(), queue.clone());
                let ran = on_guest(&ctx.runtime, move || run_queue(&ctx2, &tx2, &queue2)).await;
                // No guest thread: each job left fails with the reason.
                if let Err(e) = ran {
                    while let Some(next) = pop(&queue) {
                        run_one(&ctx, &tx, next, |_| Err(e.clone()));
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("runners do not panic");
    }
}

/// A runner: runs the queued jobs until none is left.
fn run_queue(ctx: &Arc<Ctx>, tx: &Tx, queue: &Mutex<VecDeque<ToRun>>) {
    while let Some(next) = pop(queue) {
        run_one(ctx, tx, next, |run| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                job::run_job(&ctx.env(tx), run)
            }))
            .map_err(|_| SetupError::Panic)
        });
    }
}

fn pop(queue: &Mutex<VecDeque<ToRun>>) -> Option<ToRun> {
    queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front()
}

/// Runs one job with `run` (unless `--failfast` or Ctrl-C stopped the run)
/// and reports it.
fn run_one(
    ctx: &Ctx,
    tx: &Tx,
    (pkg, state, run): ToRun,
    run_job: impl FnOnce(Box<job::ToRun>) -> Result<Vec<CaseResult>, SetupError>,
) {
    let skip = (ctx.config.failfast && ctx.failed.load(Ordering::SeqCst))
        || ctx.interrupted.load(Ordering::SeqCst);
    if !skip {
        start_package(pkg, &state, tx);
        let (cases, framework) = (run.job.cases.clone(), run.job.framework);
        let timed = (run.job.package.clone(), crate::plan::case_key(&run.job));
        let started = Instant::now();
        let results = run_job(run).unwrap_or_else(|e| {
            let e = e.to_string();
            cases
                .iter()
                .map(|name| CaseResult::failed_setup(name, framework, &e))
                .collect()
        });
        if let Some(c) = ctx
            .facts
            .as_ref()
            .filter(|_| !ctx.interrupted.load(Ordering::SeqCst))
        {
            c.record_time(&timed.0, &timed.1, started.elapsed());
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

/// Orders the jobs to run so that a long one never starts last: those that
/// took [`LONG_JOB`] or more when they last ran go first, longest first;
/// the others keep the listed order (jobs of one module in a row reuse its
/// warm instance slots: shuffling 2,000 short jobs by their noise cost 20%
/// of an uncached run). Only with parallel slots: with one, every order
/// takes the same time, and `-p 1` keeps the listed order.
fn slowest_first(ctx: &Ctx, runs: &mut [ToRun]) {
    let Some(cache) = ctx.facts.as_ref() else {
        return;
    };
    if ctx.config.parallel < 2 {
        return;
    }
    runs.sort_by_cached_key(|(_, _, run)| {
        match cache.last_time(&run.job.package, &crate::plan::case_key(&run.job)) {
            Some(took) if took >= LONG_JOB => (false, std::cmp::Reverse(took)),
            _ => (true, std::cmp::Reverse(Duration::ZERO)),
        }
    });
}

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

/// A package's modules, read and identified, and their listings.
struct Prepared {
    mods: Result<Vec<Arc<Artifact>>, SetupError>,
    policy: Arc<Policy>,
    /// `None` when there was nothing to list (an error, or no modules).
    listings: Option<Result<Vec<Listing>, SetupError>>,
}

/// Reads and hashes a package's modules (`-p` at a time across the run),
/// then lists their cases.
async fn prepare(ctx: Arc<Ctx>, tx: Tx, p: Arc<Package>) -> Prepared {
    let forced = plan::known_framework(&ctx.config, &p);
    let dir = plan::embeddable_dir(&p);
    let reads: Vec<_> = p
        .modules
        .iter()
        .map(|path| {
            let (path, dir, cache) = (path.clone(), dir.clone(), ctx.facts.clone());
            tokio::spawn(blocking(ctx.slots.clone(), move || {
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
        Ok(ms) if !ms.is_empty() => {
            Some(list_package(ctx.clone(), tx, p.name.clone(), ms.clone(), policy.clone()).await)
        }
        _ => None,
    };
    Prepared {
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
    package: &Package,
    mods: Result<Vec<Arc<Artifact>>, SetupError>,
    policy: Arc<Policy>,
    listings: Option<Result<Vec<Listing>, SetupError>>,
) -> Option<(Vec<Job>, usize)> {
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
    Some((jobs, listed))
}

/// Announces a package's planned cases and looks its jobs up in the cache
/// on the blocking pool (no guest thread, no runtime: a fully cached run
/// starts neither).
fn start_lookups(
    ctx: &Arc<Ctx>,
    tx: &Tx,
    pkg: usize,
    jobs: Option<Vec<Job>>,
    listed: usize,
) -> Option<tokio::task::JoinHandle<Vec<job::Looked>>> {
    let jobs = jobs?;
    let _ = tx.send(Event::Planned {
        pkg,
        cases: jobs.iter().flat_map(|j| j.cases.iter().cloned()).collect(),
        listed,
    });
    let (ctx, tx) = (ctx.clone(), tx.clone());
    Some(tokio::task::spawn_blocking(move || {
        job::look_up_package(&ctx.env(&tx), jobs)
    }))
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
    slots: Arc<Semaphore>,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let permit = slots.acquire_owned().await.expect("semaphore open");
    let out = tokio::task::spawn_blocking(f)
        .await
        .expect("blocking tasks do not panic");
    drop(permit);
    out
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

/// Lists every module of a package: cached listings in one blocking task,
/// the rest by running the modules on guest threads.
async fn list_package(
    ctx: Arc<Ctx>,
    tx: Tx,
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
    let mut out = Vec::new();
    for ((m, cached), p) in mods.into_iter().zip(cached).zip(policies) {
        if let Some(listing) = cached {
            out.push(listing);
            continue;
        }
        let permit = ctx.slot().await;
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
