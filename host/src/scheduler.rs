//! The scheduler: the one place with concurrency. Design note:
//! `docs/design/scheduler.md`.
//!
//! 1. Load (compile or fetch from the compiled-module cache) every module,
//!    `-p` at a time.
//! 2. List each module's cases with its framework's list protocol and select
//!    them with `--run`.
//! 3. Run the jobs (one per case with `--isolate=test`, one per module with
//!    `--isolate=module`), `-p` at a time, in command-line order: a FIFO
//!    semaphore hands out slots in the order jobs were queued.
//!
//! Every result is sent to the reporter as an [`Event`] through one callback.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use cachet_runtime::{Module, OutputTee, Policy, RunOutcome, Runtime, Status};
use tokio::sync::{mpsc, Semaphore};

use crate::config::{Isolate, TestConfig};
use crate::discover::Package;
use crate::event::{CaseResult, Event, PackageOutcome, Verdict};
use crate::framework::{self, Framework, LiveOutput};
use crate::plan::{self, Job};

/// Shared by every task of one `cachet test`.
struct Ctx {
    runtime: Arc<Runtime>,
    config: Arc<TestConfig>,
    slots: Arc<Semaphore>,
    failed: AtomicBool,
    scratch: PathBuf,
    /// Cases' output is sent as it is written (`-v`, one at a time).
    live: bool,
}

/// Runs every package, calling `on_event` on this thread for each event.
pub fn run(
    config: Arc<TestConfig>,
    packages: Vec<Package>,
    runtime: Arc<Runtime>,
    scratch: &Path,
    mut on_event: impl FnMut(Event),
) {
    let workers = config.parallel.max(1);
    // As go test: -v output streams with one package or -p 1.
    let live = config.verbose && !config.json && (workers == 1 || packages.len() == 1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(workers + 2)
        .build()
        .expect("a tokio runtime starts");
    let ctx = Arc::new(Ctx {
        runtime,
        slots: Arc::new(Semaphore::new(workers)),
        config,
        failed: AtomicBool::new(false),
        scratch: scratch.to_path_buf(),
        live,
    });
    rt.block_on(async move {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let driver = tokio::spawn(drive(ctx, packages, tx));
        while let Some(event) = rx.recv().await {
            on_event(event);
        }
        driver.await.expect("the scheduler does not panic");
    });
}

type Tx = mpsc::UnboundedSender<Event>;

/// A module's case names being listed, or why it could not be.
type Listing = tokio::task::JoinHandle<Result<Vec<String>, String>>;

/// A loaded module with its framework and selected cases.
struct Loaded {
    path: PathBuf,
    module: Module,
    framework: Framework,
    /// The module contains its package's absolute path (from
    /// `env!("CARGO_MANIFEST_DIR")`), so the package is mounted there too.
    embeds_dir: bool,
}

async fn drive(ctx: Arc<Ctx>, packages: Vec<Package>, tx: Tx) {
    // 1. Load every module of every package that was set up.
    let mut loads = Vec::new();
    for (pkg, p) in packages.iter().enumerate() {
        for path in &p.modules {
            let (ctx, path) = (ctx.clone(), path.clone());
            let forced = ctx
                .config
                .framework
                .or(p.cargo.then_some(Framework::Libtest));
            let slots = ctx.slots.clone();
            let dir = p.cargo.then(|| plan::absolute_dir(p)).flatten();
            loads.push((
                pkg,
                tokio::spawn(blocking(slots, move || {
                    load(&ctx.runtime, path, forced, dir)
                })),
            ));
        }
    }
    let mut loaded: Vec<Result<Vec<Loaded>, String>> = packages
        .iter()
        .map(|p| p.error.clone().map_or(Ok(Vec::new()), Err))
        .collect();
    for (pkg, task) in loads {
        let result = task.await.expect("loading does not panic");
        if let Ok(mods) = &mut loaded[pkg] {
            match result {
                Ok(m) => mods.push(m),
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
            Arc::new(plan::policy(&ctx.config, p, &ctx.scratch, embedded))
        })
        .collect();
    let mut listings: Vec<Vec<Listing>> = Vec::new();
    for (pkg, mods) in loaded.iter().enumerate() {
        let tasks = match mods {
            Ok(mods) => mods
                .iter()
                .map(|m| tokio::spawn(list(ctx.clone(), m.spec(), policies[pkg].clone())))
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
        let policy = policies[pkg].clone();
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
        let modules: Vec<(Module, Framework, String, Vec<String>)> = mods
            .into_iter()
            .zip(cases_per_module)
            .map(|(m, cases)| {
                let file = m
                    .path
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (m.module, m.framework, file, cases)
            })
            .collect();
        let jobs = plan::jobs(pkg, &ctx.config, policy, modules);
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
        }));
        for job in jobs {
            let (ctx, tx, state) = (ctx.clone(), tx.clone(), state.clone());
            let permit = ctx
                .slots
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore open");
            tasks.push(tokio::spawn(async move {
                let skip = ctx.config.failfast && ctx.failed.load(Ordering::SeqCst);
                if !skip {
                    start_package(pkg, &state, &tx);
                    let (ctx2, tx2) = (ctx.clone(), tx.clone());
                    let results = tokio::task::spawn_blocking(move || run_job(&ctx2, job, &tx2))
                        .await
                        .expect("jobs do not panic");
                    drop(permit);
                    for result in results {
                        let failed = result.verdict == Verdict::Fail;
                        if failed {
                            ctx.failed.store(true, Ordering::SeqCst);
                        }
                        let mut s = state.lock().expect("package state");
                        s.failed |= failed;
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
                finish_job(pkg, &state, &tx);
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

fn finish_job(pkg: usize, state: &Mutex<PackageRun>, tx: &Tx) {
    let mut s = state.lock().expect("package state");
    s.remaining -= 1;
    if s.remaining == 0 {
        let elapsed = s.started.map_or(Duration::ZERO, |t| t.elapsed());
        let outcome = if s.failed {
            PackageOutcome::Failed
        } else if s.ran == 0 {
            PackageOutcome::NotRun
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

fn load(
    runtime: &Runtime,
    path: PathBuf,
    forced: Option<Framework>,
    dir: Option<String>,
) -> Result<Loaded, String> {
    let file = path.display().to_string();
    let bytes = std::fs::read(&path).map_err(|e| format!("{file}: cannot read: {e}"))?;
    let framework = forced.unwrap_or_else(|| Framework::detect(&bytes));
    let module = runtime.load(&bytes).map_err(|e| format!("{file}: {e}"))?;
    let embeds_dir = dir.is_some_and(|d| framework::contains(&bytes, d.as_bytes()));
    Ok(Loaded {
        path,
        module,
        framework,
        embeds_dir,
    })
}

/// What listing needs of a loaded module, owned so it can move to a task.
struct ListSpec {
    path: PathBuf,
    module: Module,
    framework: Framework,
}

impl Loaded {
    fn spec(&self) -> ListSpec {
        ListSpec {
            path: self.path.clone(),
            module: self.module.clone(),
            framework: self.framework,
        }
    }
}

async fn list(ctx: Arc<Ctx>, m: ListSpec, policy: Arc<Policy>) -> Result<Vec<String>, String> {
    let Some(args) = m.framework.list_args() else {
        let name = m
            .path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Ok(vec![name]);
    };
    let mut p = (*policy).clone();
    p.args(&args);
    let (runtime, module) = (ctx.runtime.clone(), m.module.clone());
    let file = m.path.display().to_string();
    let outcome = blocking(ctx.slots.clone(), move || runtime.run(&module, &p))
        .await
        .map_err(|e| format!("{file}: {e}"))?;
    if !outcome.status.passed() {
        return Err(format!(
            "{file}: listing its tests with `{}` failed ({}); is it a {} test binary? Pass --framework to say",
            args.join(" "),
            outcome.status,
            m.framework.name()
        ));
    }
    Ok(m.framework
        .parse_list(&String::from_utf8_lossy(&outcome.output)))
}

fn run_job(ctx: &Ctx, job: Job, tx: &Tx) -> Vec<CaseResult> {
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
    let outcome = match ctx.runtime.run(&job.module, &policy) {
        Ok(o) => o,
        Err(e) => {
            return job
                .cases
                .iter()
                .map(|name| failed_setup(name, &e.to_string()))
                .collect();
        }
    };
    let raw = String::from_utf8_lossy(&outcome.output).into_owned();
    let mut results = match (job.isolate, job.framework) {
        (Isolate::Module, Framework::Libtest) => module_results(&job, &outcome, &raw),
        _ => vec![case_result(&job.cases[0], job.framework, &outcome, &raw)],
    };
    if let (Some(live), [result]) = (live, results.as_mut_slice()) {
        result.shown = live.lock().expect("live output").shown_of(&result.output);
    }
    results
}

fn failed_setup(name: &str, error: &str) -> CaseResult {
    CaseResult {
        name: name.to_string(),
        verdict: Verdict::Fail,
        elapsed: Duration::ZERO,
        output: String::new(),
        shown: 0,
        timed_out: None,
        reason: Some(format!("cannot set up the run: {error}")),
    }
}

/// The sandbox's reason for a stop the test itself did not report.
fn stop_reason(status: &Status, output: &str) -> (Option<Duration>, Option<String>) {
    match status {
        Status::Exited(0) => (None, None),
        Status::Timeout(limit) => (Some(*limit), None),
        // A Rust panic already printed its message; the trap adds nothing.
        Status::Trapped(_) if output.contains("panicked at") => (None, None),
        other => (None, Some(other.to_string())),
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
        name: name.to_string(),
        verdict,
        elapsed: outcome.elapsed,
        output: out.body,
        shown: 0,
        timed_out,
        reason,
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
        .map(|(i, (name, v, output))| {
            let last = i + 1 == n && trapped;
            CaseResult {
                name,
                verdict: match v {
                    framework::Verdict::Pass => Verdict::Pass,
                    framework::Verdict::Fail => Verdict::Fail,
                    framework::Verdict::Skip => Verdict::Skip,
                },
                // One instance ran them all; per-case times are not known.
                elapsed: if n == 1 {
                    outcome.elapsed
                } else {
                    Duration::ZERO
                },
                output,
                shown: 0,
                timed_out: if last { timed_out } else { None },
                reason: if last { reason.clone() } else { None },
            }
        })
        .collect();
    if trapped && results.is_empty() {
        results.push(CaseResult {
            name: job.cases.first().cloned().unwrap_or_default(),
            verdict: Verdict::Fail,
            elapsed: outcome.elapsed,
            output: raw.to_string(),
            shown: 0,
            timed_out,
            reason,
        });
    }
    results
}
