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

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use cachet_runtime::{OutputTee, Policy, RunOutcome, Runtime, Status};
use tokio::sync::{mpsc, Semaphore};

use crate::artifact::Artifact;
use crate::cache::{Cache, CachedResult, KeyParts, Lookup, Miss, NameKey};
use crate::config::{Isolate, TestConfig};
use crate::discover::Package;
use crate::event::{CaseResult, Event, PackageOutcome, Verdict};
use crate::framework::{Framework, LiveOutput};
use crate::plan::{self, Job};

/// Shared by every task of one `cachet test`.
struct Ctx {
    runtime: Arc<Runtime>,
    config: Arc<TestConfig>,
    cache: Option<Cache>,
    slots: Arc<Semaphore>,
    failed: AtomicBool,
    /// Ctrl-C or SIGTERM arrived: no new case starts.
    interrupted: AtomicBool,
    scratch: PathBuf,
    /// Cases' output is sent as it is written (`-v`, one at a time).
    live: bool,
}

impl Ctx {
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
    runtime: Arc<Runtime>,
    cache: Option<Cache>,
    scratch: &Path,
    mut on_event: impl FnMut(Event),
) {
    let workers = config.parallel.max(1);
    // As go test: -v output streams with one package or -p 1.
    let live = config.verbose && !config.json && (workers == 1 || packages.len() == 1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(workers + 2)
        .enable_io()
        .build()
        .expect("a tokio runtime starts");
    let ctx = Arc::new(Ctx {
        runtime,
        slots: Arc::new(Semaphore::new(workers)),
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
        let driver = tokio::spawn(drive(ctx, packages, tx));
        while let Some(event) = rx.recv().await {
            on_event(event);
        }
        driver.await.expect("the scheduler does not panic");
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
                let _ = tx.send(Event::Interrupted);
            }
        } else {
            let _ = cachet_runtime::remove_tree(&ctx.scratch);
            std::process::exit(i32::from(crate::exit::INTERRUPTED));
        }
    }
}

type Tx = mpsc::UnboundedSender<Event>;

/// A module's case names being listed, or why it could not be.
type Listing = tokio::task::JoinHandle<Result<Vec<String>, String>>;

async fn drive(ctx: Arc<Ctx>, packages: Vec<Package>, tx: Tx) {
    // 1. Read and hash every module of every package that was set up.
    let mut reads = Vec::new();
    for (pkg, p) in packages.iter().enumerate() {
        for path in &p.modules {
            let path = path.clone();
            let forced = ctx
                .config
                .framework
                .or(p.cargo.then_some(Framework::Libtest));
            let dir = p.cargo.then(|| plan::absolute_dir(p)).flatten();
            let task = blocking(ctx.slots.clone(), move || Artifact::read(path, forced, dir));
            reads.push((pkg, tokio::spawn(task)));
        }
    }
    let mut loaded: Vec<Result<Vec<Arc<Artifact>>, String>> = packages
        .iter()
        .map(|p| p.error.clone().map_or(Ok(Vec::new()), Err))
        .collect();
    for (pkg, task) in reads {
        let result = task.await.expect("reading does not panic");
        if let Ok(mods) = &mut loaded[pkg] {
            match result {
                Ok(m) => mods.push(Arc::new(m)),
                Err(e) => loaded[pkg] = Err(e),
            }
        }
    }

    // 2. List every module's cases (in parallel), then plan jobs per package.
    let policies: Vec<Arc<Policy>> = packages
        .iter()
        .zip(&loaded)
        .map(|(p, mods)| {
            let embedded = mods.as_ref().is_ok_and(|m| m.iter().any(|m| m.embeds_dir));
            let memo = ctx.cache.as_ref().map(Cache::memo);
            Arc::new(plan::policy(&ctx.config, p, &ctx.scratch, embedded, memo))
        })
        .collect();
    let mut listings: Vec<Vec<Listing>> = Vec::new();
    for (pkg, mods) in loaded.iter().enumerate() {
        let tasks = match mods {
            Ok(mods) => mods
                .iter()
                .map(|m| {
                    let name = packages[pkg].name.clone();
                    tokio::spawn(list(
                        ctx.clone(),
                        tx.clone(),
                        name,
                        m.clone(),
                        policies[pkg].clone(),
                    ))
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        listings.push(tasks);
    }
    let mut plans: Vec<Option<Vec<Job>>> = Vec::new();
    for ((pkg, mods), tasks) in loaded.into_iter().enumerate().zip(listings) {
        let mods = match mods {
            Ok(m) => m,
            Err(message) => {
                let _ = tx.send(Event::PackageError { pkg, message });
                plans.push(None);
                continue;
            }
        };
        if mods.is_empty() {
            let _ = tx.send(finished(pkg, Duration::ZERO, PackageOutcome::NoTestFiles));
            plans.push(None);
            continue;
        }
        let mut cases_per_module = Vec::new();
        let mut error = None;
        for task in tasks {
            match task.await.expect("listing does not panic") {
                Ok(cases) => cases_per_module.push(cases),
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        if let Some(message) = error {
            let _ = tx.send(Event::PackageError { pkg, message });
            plans.push(None);
            continue;
        }
        if let Some(re) = &ctx.config.list {
            let names = cases_per_module
                .iter()
                .flatten()
                .filter(|c| re.is_match(c))
                .cloned()
                .collect();
            let _ = tx.send(Event::Listed { pkg, names });
            let _ = tx.send(finished(pkg, Duration::ZERO, PackageOutcome::Passed));
            plans.push(None);
            continue;
        }
        let modules = mods.into_iter().zip(cases_per_module).collect();
        let jobs = plan::jobs(
            pkg,
            &packages[pkg].name,
            &ctx.config,
            policies[pkg].clone(),
            modules,
        );
        if jobs.is_empty() {
            let _ = tx.send(finished(pkg, Duration::ZERO, PackageOutcome::NoTestsToRun));
            plans.push(None);
            continue;
        }
        plans.push(Some(jobs));
    }

    // 3. Run the jobs, in order, `-p` at a time.
    let mut tasks = Vec::new();
    for (pkg, jobs) in plans.into_iter().enumerate() {
        let Some(jobs) = jobs else { continue };
        let state = Arc::new(Mutex::new(PackageRun {
            remaining: jobs.len(),
            started: None,
            failed: false,
            ran: 0,
            all_cached: true,
        }));
        for job in jobs {
            let (ctx, tx, state) = (ctx.clone(), tx.clone(), state.clone());
            let permit = ctx.slot().await;
            tasks.push(tokio::spawn(async move {
                let skip = (ctx.config.failfast && ctx.failed.load(Ordering::SeqCst))
                    || ctx.interrupted.load(Ordering::SeqCst);
                if !skip {
                    start_package(pkg, &state, &tx);
                    let (ctx2, tx2) = (ctx.clone(), tx.clone());
                    let cases = job.cases.clone();
                    let results = on_guest(&ctx.runtime, move || run_job(&ctx2, job, &tx2))
                        .await
                        .unwrap_or_else(|e| {
                            cases.iter().map(|name| failed_setup(name, &e)).collect()
                        });
                    drop(permit);
                    for result in results {
                        let failed = result.verdict == Verdict::Fail;
                        if failed {
                            ctx.failed.store(true, Ordering::SeqCst);
                        }
                        let mut s = state.lock().expect("package state");
                        s.failed |= failed;
                        s.all_cached &= result.cached;
                        s.ran += 1;
                        drop(s);
                        let _ = tx.send(Event::CaseFinished {
                            pkg,
                            result,
                            at: SystemTime::now(),
                        });
                    }
                } else {
                    drop(permit);
                }
                let why = if ctx.interrupted.load(Ordering::SeqCst) {
                    "interrupted"
                } else {
                    "--failfast stopped at an earlier failure"
                };
                finish_job(pkg, &state, &tx, why);
            }));
        }
    }
    for t in tasks {
        t.await.expect("job tasks do not panic");
    }
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
    runtime: &Runtime,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    runtime
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| e.to_string())?;
    rx.await
        .map_err(|_| "internal error in cachet (a panic); please report it".to_string())
}

/// Pseudo case name under which a module's listing is cached.
const LIST_CASE: &str = "--list";

async fn list(
    ctx: Arc<Ctx>,
    tx: Tx,
    package: String,
    m: Arc<Artifact>,
    policy: Arc<Policy>,
) -> Result<Vec<String>, String> {
    let permit = ctx.slot().await;
    let ctx2 = ctx.clone();
    let listed = on_guest(&ctx.runtime, move || match m.framework.list_args() {
        Some(args) => list_blocking(&ctx2, &tx, &package, &m, &policy, &args),
        // A plain module is its one case. It is compiled now, so a module
        // that cannot load fails its package's setup, as a listing would.
        None => m.module(&ctx2.runtime).map(|_| vec![m.file_name()]),
    })
    .await;
    drop(permit);
    listed.and_then(|l| l)
}

fn list_blocking(
    ctx: &Ctx,
    tx: &Tx,
    package: &str,
    m: &Artifact,
    policy: &Policy,
    args: &[String],
) -> Result<Vec<String>, String> {
    let file = m.path.display().to_string();
    let parts = KeyParts::new(
        m.digest,
        m.framework.name(),
        LIST_CASE,
        args,
        policy,
        ctx.config.stack_bytes(),
    );
    let name = NameKey::new(package, &format!("{LIST_CASE} {}", m.file_name()));
    if let Some(cache) = &ctx.cache {
        match cache.lookup(name, &parts, &policy.world()) {
            Lookup::Hit(r) => return Ok(r.cases),
            Lookup::Miss(Miss::Corrupt(e)) => {
                let _ = tx.send(Event::Warning { message: e });
            }
            Lookup::Miss(_) => {}
        }
    }
    let module = m.module(&ctx.runtime)?;
    let mut p = policy.clone();
    p.program_name(&m.file_name()).args(args);
    let outcome = ctx
        .runtime
        .run(&module, &p)
        .map_err(|e| format!("{file}: {e}"))?;
    if !outcome.status.passed() {
        return Err(format!(
            "{file}: listing its tests with `{}` failed ({}); is it a {} test binary? Pass --framework to say",
            args.join(" "),
            outcome.status,
            m.framework.name()
        ));
    }
    let cases = m
        .framework
        .parse_list(&String::from_utf8_lossy(&outcome.output));
    if let (Some(cache), None) = (&ctx.cache, &outcome.changed_during_run) {
        let result = CachedResult {
            output: String::new(),
            elapsed: outcome.elapsed,
            skipped: false,
            cases: cases.clone(),
        };
        let _ = cache.save(name, &parts, &outcome.log, &result);
    }
    Ok(cases)
}

fn run_job(ctx: &Ctx, job: Job, tx: &Tx) -> Vec<CaseResult> {
    // The cache serves one case per instance; --isolate=module runs bypass it.
    let cache = ctx
        .cache
        .as_ref()
        .filter(|_| job.cases.len() == 1 && job.isolate == Isolate::Test);
    let key = cache.map(|c| {
        let parts = KeyParts::new(
            job.module.digest,
            job.framework.name(),
            &job.cases[0],
            &ctx.config.args,
            &job.policy,
            ctx.config.stack_bytes(),
        );
        (c, parts, NameKey::new(&job.package, &job.cases[0]))
    });
    let lookup = key
        .as_ref()
        .map(|(c, parts, name)| c.lookup(*name, parts, &job.policy.world()));
    if let Some(Lookup::Miss(Miss::Corrupt(e))) = &lookup {
        let _ = tx.send(Event::Warning { message: e.clone() });
    }
    let (mut explain, mut cached) = (None, None);
    match lookup {
        Some(Lookup::Hit(r)) if !ctx.config.verify => return vec![cached_result(&job.cases[0], r)],
        Some(Lookup::Hit(r)) => cached = Some(r),
        Some(Lookup::Miss(why)) => explain = Some(why),
        None if ctx.cache.is_none() => {
            explain = Some(Miss::Bypassed(
                "--count was given, or the cache could not be opened",
            ))
        }
        None => explain = Some(Miss::Bypassed("--isolate=module")),
    }
    let (mut results, outcome) = run_uncached(ctx, &job, tx);
    if let ([result], Some(outcome)) = (results.as_mut_slice(), &outcome) {
        result.explain = explain
            .filter(|_| ctx.config.explain)
            .map(|m| m.to_string());
        match cached {
            Some(before) => verify(result, &before),
            None => {
                if let Some((cache, parts, name)) = &key {
                    save(cache, parts, *name, result, outcome);
                }
            }
        }
    }
    results
}

fn cached_result(name: &str, r: CachedResult) -> CaseResult {
    let verdict = if r.skipped {
        Verdict::Skip
    } else {
        Verdict::Pass
    };
    CaseResult {
        cached: true,
        ..case(name, verdict, r.elapsed, r.output)
    }
}

/// `--verify`: a cached case ran again; its result must match.
fn verify(now: &mut CaseResult, before: &CachedResult) {
    let same_verdict = matches!(
        (now.verdict, before.skipped),
        (Verdict::Pass, false) | (Verdict::Skip, true)
    );
    let what = if !same_verdict {
        Some("the cached run passed, this run did not")
    } else if now.output != before.output {
        Some("the output differs")
    } else {
        None
    };
    if let Some(what) = what {
        now.verdict = Verdict::Fail;
        now.reason = Some(format!(
            "verify: {what} from the cached result: the test is nondeterministic or read an input cachet did not record"
        ));
    }
}

/// Runs the job; the outcome comes back with the results when it ran.
fn run_uncached(ctx: &Ctx, job: &Job, tx: &Tx) -> (Vec<CaseResult>, Option<RunOutcome>) {
    let setup_failed = |e: &str| job.cases.iter().map(|name| failed_setup(name, e)).collect();
    let module = match job.module.module(&ctx.runtime) {
        Ok(m) => m,
        Err(e) => return (setup_failed(&e), None),
    };
    let mut policy = (*job.policy).clone();
    policy.args(&job.framework.run_args(&job.run_cases, &ctx.config.args));
    let live = (ctx.live && job.cases.len() == 1).then(|| {
        let name = job.cases[0].clone();
        let _ = tx.send(Event::CaseStarted {
            pkg: job.pkg,
            name: name.clone(),
        });
        let filter = Arc::new(Mutex::new(LiveOutput::new(job.framework, &name)));
        let (tx, pkg, f) = (tx.clone(), job.pkg, filter.clone());
        policy.output_tee(OutputTee(Arc::new(move |bytes: &[u8]| {
            let text = f.lock().expect("live output").push(bytes);
            if !text.is_empty() {
                let _ = tx.send(Event::CaseOutput {
                    pkg,
                    name: name.clone(),
                    text,
                });
            }
        })));
        filter
    });
    let outcome = match ctx.runtime.run(&module, &policy) {
        Ok(o) => o,
        Err(e) => return (setup_failed(&e.to_string()), None),
    };
    if let Some(message) = outcome.cleanup_error.clone() {
        let _ = tx.send(Event::Warning { message });
    }
    let raw = String::from_utf8_lossy(&outcome.output).into_owned();
    let mut results = match (job.isolate, job.framework) {
        (Isolate::Module, Framework::Libtest) => module_results(job, &outcome, &raw),
        _ => vec![case_result(&job.cases[0], job.framework, &outcome, &raw)],
    };
    if let ([result], Some(live)) = (results.as_mut_slice(), live) {
        result.live_rest = live.lock().expect("live output").rest();
    }
    (results, Some(outcome))
}

/// Saves a passing case, unless an input changed while it ran.
fn save(
    cache: &Cache,
    parts: &KeyParts,
    name: NameKey,
    result: &mut CaseResult,
    outcome: &RunOutcome,
) {
    if result.verdict == Verdict::Fail {
        return;
    }
    if let Some(change) = &outcome.changed_during_run {
        result.not_saved = Some(format!("not cached: {change} during the run"));
        return;
    }
    let cached = CachedResult {
        output: trim_output(&result.output),
        elapsed: result.elapsed,
        skipped: result.verdict == Verdict::Skip,
        cases: Vec::new(),
    };
    let _ = cache.save(name, parts, &outcome.log, &cached);
}

/// Output kept in a cache entry: its first and last [`KEPT_OUTPUT`] / 2 bytes.
const KEPT_OUTPUT: usize = 1 << 20;

/// A passing case's output as the cache keeps it (for `-v` replay): whole up
/// to [`KEPT_OUTPUT`], else its head and tail with a notice between.
fn trim_output(output: &str) -> String {
    if output.len() <= KEPT_OUTPUT {
        return output.to_string();
    }
    let half = KEPT_OUTPUT / 2;
    let head_end = (0..=half)
        .rev()
        .find(|&i| output.is_char_boundary(i))
        .unwrap_or(0);
    let tail_start = (output.len() - half..output.len())
        .find(|&i| output.is_char_boundary(i))
        .unwrap_or(output.len());
    let omitted = tail_start - head_end;
    format!(
        "{}\n[cachet: {omitted} bytes of output not kept in the cache]\n{}",
        &output[..head_end],
        &output[tail_start..]
    )
}

fn failed_setup(name: &str, error: &str) -> CaseResult {
    CaseResult {
        reason: Some(format!("cannot set up the run: {error}")),
        ..case(name, Verdict::Fail, Duration::ZERO, String::new())
    }
}

/// A result with nothing but the essentials set.
fn case(name: &str, verdict: Verdict, elapsed: Duration, output: String) -> CaseResult {
    CaseResult {
        name: name.to_string(),
        verdict,
        elapsed,
        output,
        live_rest: None,
        cached: false,
        explain: None,
        not_saved: None,
        timed_out: None,
        reason: None,
    }
}

/// The sandbox's reason for a stop the test itself did not report: one
/// line, then the innermost wasm frames of a trap.
fn stop_reason(status: &Status, output: &str) -> (Option<Duration>, Option<String>) {
    match status {
        Status::Exited(0) => (None, None),
        Status::Timeout(limit) => (Some(*limit), None),
        // A Rust panic already printed its message; the trap adds nothing.
        Status::Trapped { .. } if output.contains("panicked at") => (None, None),
        other => {
            let mut reason = other.to_string();
            for frame in other.frames() {
                reason.push_str("\n    at ");
                reason.push_str(frame);
            }
            (None, Some(reason))
        }
    }
}

fn case_result(name: &str, framework: Framework, outcome: &RunOutcome, raw: &str) -> CaseResult {
    let out = framework.case_output(name, raw);
    let verdict = match (outcome.status.passed(), out.skipped) {
        (true, true) => Verdict::Skip,
        (true, false) => Verdict::Pass,
        (false, _) => Verdict::Fail,
    };
    let (timed_out, reason) = stop_reason(&outcome.status, raw);
    CaseResult {
        timed_out,
        reason,
        ..case(name, verdict, outcome.elapsed, out.body)
    }
}

fn module_results(job: &Job, outcome: &RunOutcome, raw: &str) -> Vec<CaseResult> {
    let trapped = !outcome.status.passed();
    let split = job.framework.split_module_output(raw, trapped);
    let (timed_out, reason) = stop_reason(&outcome.status, raw);
    let n = split.len();
    let mut results: Vec<CaseResult> = split
        .into_iter()
        .enumerate()
        .map(|(i, (name, verdict, output))| {
            let last = i + 1 == n && trapped;
            // One instance ran them all; per-case times are not known.
            let elapsed = if n == 1 {
                outcome.elapsed
            } else {
                Duration::ZERO
            };
            CaseResult {
                timed_out: if last { timed_out } else { None },
                reason: if last { reason.clone() } else { None },
                ..case(&name, verdict, elapsed, output)
            }
        })
        .collect();
    if trapped && results.is_empty() {
        let name = job.cases.first().cloned().unwrap_or_default();
        results.push(CaseResult {
            timed_out,
            reason,
            ..case(&name, Verdict::Fail, outcome.elapsed, raw.to_string())
        });
    }
    results
}
