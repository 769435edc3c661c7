//! One job, on a guest thread: each case looked up in the cache, run in the
//! sandbox when it misses, and its result built from the outcome (verdict,
//! output without framing, the sandbox's reason for a stop); a passing
//! result is saved. A module's listing is a job of its own kind. No
//! concurrency here: the scheduler decides what runs when.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cachet_runtime::{
    OutputTee, Policy, RunError, RunOutcome, Runtime, RuntimeConfig, RuntimeError,
};
use tokio::sync::mpsc;

use crate::artifact::{Artifact, ArtifactError};
use crate::cache::{self, Cache, CachedCase, CachedResult, KeyParts, Lookup, Miss, NameKey};
use crate::config::{Isolate, TestConfig};
use crate::event::Event;
use crate::framework::CaseStream;
use crate::framework::{CaseResult, Verdict};
use crate::plan::{Job, Listing};

/// Where events go.
pub type Tx = mpsc::UnboundedSender<Event>;

/// Why a package's modules or a job could not be set up (the test never
/// ran); each reads as one line with its fix.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SetupError {
    /// Discovery or the package's build failed, as `discover` says it.
    #[error("{0}")]
    Package(String),
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error("{0}")]
    Runtime(Arc<RuntimeError>),
    #[error("{file}: {error}")]
    Run { file: String, error: Arc<RunError> },
    #[error("{file}: listing its tests with `{args}` failed ({status}); is it a {framework} test binary? Pass --framework to say")]
    Listing {
        file: String,
        args: String,
        status: String,
        framework: &'static str,
    },
    #[error(
        "cannot create a scratch directory in {dir}: {error}; set TMPDIR to a writable directory"
    )]
    Scratch {
        dir: String,
        error: Arc<std::io::Error>,
    },
    #[error("internal error in cachet (a panic); please report it")]
    Panic,
}

impl SetupError {
    /// The run's scratch directory could not be made in the temp dir.
    pub fn scratch(error: std::io::Error) -> Self {
        SetupError::Scratch {
            dir: std::env::temp_dir().display().to_string(),
            error: Arc::new(error),
        }
    }
}

/// The sandbox runtime, made on first use: a fully cached run never starts
/// an engine, its instance pool or its threads.
pub struct LazyRuntime {
    config: RuntimeConfig,
    runtime: OnceLock<Result<Runtime, SetupError>>,
    /// A run apart came back without an outcome, and the run was told.
    said_lost: std::sync::atomic::AtomicBool,
}

impl LazyRuntime {
    pub fn new(config: RuntimeConfig) -> Self {
        LazyRuntime {
            config,
            runtime: OnceLock::new(),
            said_lost: Default::default(),
        }
    }

    /// The runtime, made now if it was not yet.
    pub fn get(&self) -> Result<&Runtime, SetupError> {
        self.runtime
            .get_or_init(|| {
                Runtime::new(self.config.clone()).map_err(|e| SetupError::Runtime(Arc::new(e)))
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Remembers the compiled files found intact in `memo` (the cache's).
    pub fn remembering_compiled(mut self, memo: Arc<dyn cachet_runtime::DigestMemo>) -> Self {
        self.config.compiled_memo = Some(cachet_runtime::SharedMemo(memo));
        self
    }

    /// Looks for compiled modules in `store` too, and shares them there.
    pub fn sharing_compiled(mut self, store: cachet_runtime::SharedCompiled) -> Self {
        self.config.shared_compiled = Some(store);
        self
    }

    /// Waits for the background compiles (`Runtime::finish_background`).
    pub fn finish_background(&self) {
        if let Some(Ok(rt)) = self.runtime.get() {
            rt.finish_background();
        }
    }

    /// How modules were compiled or loaded, if the runtime was made.
    pub fn stats(&self) -> Option<cachet_runtime::LoadStats> {
        match self.runtime.get() {
            Some(Ok(rt)) => Some(rt.stats()),
            _ => None,
        }
    }

    /// Whether Ctrl-C stopped the runs.
    pub fn interrupted(&self) -> bool {
        matches!(self.runtime.get(), Some(Ok(rt)) if rt.interrupted())
    }

    /// Stops what runs (Ctrl-C); nothing to do if nothing ever ran.
    pub fn interrupt(&self) {
        if let Some(Ok(rt)) = self.runtime.get() {
            rt.interrupt();
        }
    }
}

/// The runtime of a run, made when a case first needs it (a fully cached
/// run starts no engine); compiles run in a child process (this binary)
/// under the compile limits. `cachet test --timeout 0` runs wasm without
/// epoch checks (faster; Ctrl-C then stops a case at its next host call);
/// `cachet exec` keeps them, so Ctrl-C stops the program it runs.
pub fn runtime_for(config: &TestConfig, uninterruptible: bool) -> LazyRuntime {
    let compile = std::env::current_exe()
        .ok()
        .map(|program| cachet_runtime::CompileGuard {
            program,
            args: vec!["__compile".into()],
            timeout: config.compile_timeout,
            memory: config.compile_memory,
        });
    LazyRuntime::new(RuntimeConfig {
        compiled_cache: crate::home::cache_dir().map(|d| d.join("compiled")),
        max_wasm_stack: config.sandbox.stack,
        compile,
        uninterruptible,
        tier: config.tier,
        shared_compiled: None,
        compiled_memo: None,
        // Long runs' time limit is the child's kill (`run_local`).
        run_apart: std::env::current_exe()
            .ok()
            .filter(|_| config.runs_apart)
            .map(|program| cachet_runtime::RunGuard {
                program,
                args: vec!["__run-apart".into()],
            }),
    })
}

/// A run expected to last this long or longer runs apart, in a child
/// process whose time limit is a kill (`Runtime::run_apart`): its code has
/// no epoch checks, which cost up to a third of a long run's time
/// (docs/BENCHMARKS.md), and the child's start (a process, an engine, the
/// module mapped from the cache) costs about 20-25 ms here.
const LONG_RUN: Duration = Duration::from_secs(1);

/// What a job runs with.
pub struct Env<'a> {
    pub runtime: &'a LazyRuntime,
    pub config: &'a TestConfig,
    /// Results' cache: `None` when `--count` bypasses it.
    pub cache: Option<&'a Cache>,
    /// The cache even when `--count` bypasses results: listings.
    pub facts: Option<&'a Cache>,
    /// Output streams live (`-v` with one package or `-p 1`).
    pub live: bool,
    pub tx: &'a Tx,
    /// `--remote-executor`: where misses run when it takes them.
    pub remote: Option<&'a crate::remote_exec::RemoteExecutor>,
    /// The time the job's runs took on the farm (`None`: none ran there).
    pub farm_time: std::cell::Cell<Option<Duration>>,
}

/// A module's cases from the cache, if its listing is cached (`policy`:
/// the module's).
pub fn cached_listing(env: &Env, package: &str, m: &Artifact, policy: &Policy) -> Option<Listing> {
    let cache = env.facts?;
    let (parts, name) =
        crate::plan::listing_key(package, m, policy, env.config.sandbox.stack_bytes())?;
    match cache.lookup(name, package, &parts, &policy.world()) {
        Lookup::Hit(r) => Some(Listing::cached(r)),
        Lookup::Miss(Miss::Corrupt(e)) => {
            let message = e.to_string();
            let _ = env.tx.send(Event::Warning { message });
            None
        }
        Lookup::Miss(_) => None,
    }
}

/// Lists a module's cases by running it with its framework's list
/// protocol (on the farm, with a remote executor), and caches the listing
/// (`policy`: the module's). A module that cannot list is its one case;
/// here it is compiled now, so a module that cannot load fails its
/// package's setup, as a listing would.
pub fn list_module(
    env: &Env,
    package: &str,
    m: &Artifact,
    policy: &Policy,
) -> Result<Listing, SetupError> {
    let file = m.path.display().to_string();
    let harness = m.framework.harness();
    // A listing on a farm is compiled by the worker (one it cannot load is
    // listed here after all, and fails as it would have); a module with
    // no listing is compiled here, so that one that cannot load fails its
    // package's setup.
    let farm = env.remote.is_some_and(|r| r.takes(policy)) && harness.list_args().is_some();
    // A module whose runs all go apart lists apart too: its code here
    // would serve nothing else. One that cannot go is compiled here below.
    let apart = !farm && harness.list_args().is_some() && serves_apart(env, m);
    if !farm && !apart {
        m.module(env.runtime.get()?)?;
    }
    let Some(args) = harness.list_args() else {
        return Ok(Listing::whole(m));
    };
    let (parts, name) =
        crate::plan::listing_key(package, m, policy, env.config.sandbox.stack_bytes())
            .expect("a harness with list arguments has a listing key");
    let list = |args: &[String]| -> Result<(Vec<String>, RunOutcome), SetupError> {
        let mut p = policy.clone();
        p.args(args);
        let outcome = match on_farm(env, m, &p).or_else(|| apart.then(|| run_apart(env, m, &p))?) {
            Some(o) => o,
            None => {
                let runtime = env.runtime.get()?;
                let module = m.module(runtime)?;
                // Its cases' runs ask for Cranelift's code, if any runs here.
                runtime
                    .run_alone(&module, &p)
                    .map_err(|e| SetupError::Run {
                        file: file.clone(),
                        error: Arc::new(e),
                    })?
            }
        };
        if !outcome.status.passed() {
            return Err(SetupError::Listing {
                file: file.clone(),
                args: args.join(" "),
                status: outcome.status.to_string(),
                framework: m.framework.name(),
            });
        }
        let cases = harness.parse_list(&String::from_utf8_lossy(&outcome.output));
        Ok((cases, outcome))
    };
    let (cases, mut outcome) = list(&args)?;
    // The ignored ones take a second listing; its inputs join the first's.
    let mut ignored = Vec::new();
    if let Some(args) = harness.ignored_list_args() {
        let (listed, second) = list(&args)?;
        ignored = listed;
        ignored.sort();
        outcome.log.entries.extend(second.log.entries);
        outcome.changed_during_run = outcome.changed_during_run.or(second.changed_during_run);
    }
    if let (Some(cache), None) = (env.facts, &outcome.changed_during_run) {
        let result = CachedResult {
            output: String::new(),
            elapsed: outcome.elapsed,
            skipped: false,
            cases: cases.clone(),
            output_digest: None,
            module_cases: Vec::new(),
            ignored: ignored.clone(),
        };
        let share = !m.embeds_dir && env.config.shares_results();
        let _ = cache.save(name, package, &parts, &outcome.log, &result, share);
    }
    Ok(Listing {
        cases,
        init: outcome.elapsed,
        ignored,
    })
}

/// A job the cache could not answer: run it.
pub struct ToRun {
    pub job: Job,
    /// Its one case's key, when the cache serves it.
    key: Option<(KeyParts, NameKey)>,
    /// Why it runs (`None` under `--verify`, when it was cached).
    explain: Option<Miss>,
    /// `--verify`: the cached result it must reproduce.
    cached: Option<CachedResult>,
}

/// A job's cache key, as `cachet inputs` computes it too.
fn job_key(env: &Env, job: &Job) -> (KeyParts, NameKey) {
    crate::plan::job_key(
        job,
        &env.config.flags,
        &env.config.args,
        env.config.sandbox.stack_bytes(),
    )
}

/// What a lookup says of a job: its results (cached), or what to run.
pub type Looked = Result<Vec<CaseResult>, Box<ToRun>>;

/// Looks a package's jobs up in the cache (which, with a remote cache,
/// fetches each module's pack first; see `Cache::look_up_all`).
pub fn look_up_package(env: &Env, jobs: Vec<Job>) -> Vec<Looked> {
    let Some(cache) = env.cache else {
        return jobs.into_iter().map(|j| look_up(env, j, None)).collect();
    };
    let (ignored, jobs): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| j.ignored);
    let queries: Vec<cache::Query> = jobs
        .iter()
        .map(|j| {
            let (parts, name) = job_key(env, j);
            cache::Query {
                name,
                package: j.package.clone(),
                parts,
                world: j.policy.world(),
                shared: env.config.shares_results() && !j.module.embeds_dir,
            }
        })
        .collect();
    let found = cache.look_up_all(&queries);
    jobs.into_iter()
        .zip(queries)
        .zip(found)
        .map(|((j, q), l)| look_up(env, j, Some(((q.parts, q.name), l))))
        .chain(ignored.into_iter().map(|j| look_up(env, j, None)))
        .collect()
}

/// What a job's cache lookup (`found`: its key and what the cache said)
/// means: its results when cached (and not being verified), else what to
/// run. Needs no runtime and runs no wasm.
pub fn look_up(env: &Env, job: Job, found: Option<((KeyParts, NameKey), Lookup)>) -> Looked {
    let (key, lookup) = match found {
        Some((k, l)) => (Some(k), Some(l)),
        None => (None, None),
    };
    if let Some(Lookup::Miss(Miss::Corrupt(e))) = &lookup {
        let message = e.to_string();
        let _ = env.tx.send(Event::Warning { message });
    }
    if job.ignored {
        return Ok(vec![ignored_result(&job)]);
    }
    let (explain, cached) = match lookup {
        Some(Lookup::Hit(r)) if !env.config.verify => return Ok(cached_results(&job, r)),
        Some(Lookup::Hit(r)) => (None, Some(r)),
        Some(Lookup::Miss(why)) => (Some(why), None),
        None => (
            Some(Miss::Bypassed(
                "--count was given, or the cache could not be opened",
            )),
            None,
        ),
    };
    Err(Box::new(ToRun {
        job,
        key,
        explain,
        cached,
    }))
}

/// Runs a job in the sandbox, and saves a passing result (or, under
/// `--verify`, compares it with the cached one).
pub fn run_job(env: &Env, run: Box<ToRun>) -> Vec<CaseResult> {
    let ToRun {
        job,
        key,
        explain,
        cached,
    } = *run;
    let (mut results, mut outcome) = run_uncached(env, &job);
    // `--retries`: a failing job runs again; a case that fails and then
    // passes is flaky, reported so and never cached.
    let retries = env.config.retries_for(&job.package);
    let mut earlier: Vec<Vec<CaseResult>> = Vec::new();
    while earlier.len() < retries as usize
        && results.iter().any(|r| r.verdict == Verdict::Fail)
        && !env.runtime.interrupted()
    {
        earlier.push(results);
        (results, outcome) = run_uncached(env, &job);
    }
    if !earlier.is_empty() {
        mark_flaky(&mut results, &earlier);
    }
    let Some(outcome) = outcome else {
        return results;
    };
    let why = explain
        .filter(|_| env.config.explain)
        .map(|m| explained(&m, &job));
    for r in &mut results {
        r.explain = why.clone();
    }
    match cached {
        Some(before) => verify(&mut results, &before),
        None => {
            if let (Some(cache), Some((parts, name))) = (env.cache, &key) {
                let share = !job.module.embeds_dir && env.config.shares_results();
                save(
                    cache,
                    &job.package,
                    parts,
                    *name,
                    &mut results,
                    &outcome,
                    share,
                );
            }
        }
    }
    results
}

/// Marks the cases that passed now but failed in an `earlier` attempt.
fn mark_flaky(results: &mut [CaseResult], earlier: &[Vec<CaseResult>]) {
    let attempts = earlier.len() as u32 + 1;
    for r in results.iter_mut().filter(|r| r.verdict != Verdict::Fail) {
        let failures: Vec<&CaseResult> = earlier
            .iter()
            .filter_map(|a| {
                a.iter()
                    .find(|e| e.name == r.name && e.verdict == Verdict::Fail)
            })
            .collect();
        if let Some(first) = failures.first() {
            let mut output = first.output.clone();
            for note in first.reason.iter() {
                output.push_str(&format!("\ncachet: {note}"));
            }
            r.flaky = Some(crate::framework::Flaky {
                failed: failures.len() as u32,
                attempts,
                first_failure: output,
            });
        }
    }
}

/// Why a case ran, in words; a module that embeds its checkout's absolute
/// path cannot hit the cache of another checkout, and says so.
fn explained(miss: &Miss, job: &Job) -> String {
    let portable = matches!(
        miss,
        Miss::NoEntry("module changed" | "mount layout changed" | "no cache entry")
    );
    let mut why = miss.to_string();
    if job.module.embeds_dir && portable {
        why.push_str(" (the module embeds its package's absolute path, from env!(\"CARGO_MANIFEST_DIR\"), so its results are valid only in this checkout; read testdata by relative paths to share them)");
    }
    if job.isolate == Isolate::Module && job.cases.len() > 1 {
        let because = job
            .shared_because
            .as_ref()
            .map(|b| format!(": {b}"))
            .unwrap_or_default();
        why.push_str(&format!(
            " (with {} in one instance{because})",
            job.cases[1..].join(", ")
        ));
    }
    why
}

/// An ignored case's result: skipped, known from its module's listing
/// without running anything.
fn ignored_result(job: &Job) -> CaseResult {
    CaseResult {
        ignored: true,
        ..CaseResult::new(
            &job.cases[0],
            job.framework,
            Verdict::Skip,
            Duration::ZERO,
            String::new(),
        )
    }
}

/// A job's results as the cache holds them.
fn cached_results(job: &Job, r: CachedResult) -> Vec<CaseResult> {
    let verdict = |skipped| {
        if skipped {
            Verdict::Skip
        } else {
            Verdict::Pass
        }
    };
    if r.module_cases.is_empty() {
        return vec![CaseResult {
            cached: true,
            ..CaseResult::new(
                &job.cases[0],
                job.framework,
                verdict(r.skipped),
                r.elapsed,
                r.output,
            )
        }];
    }
    r.module_cases
        .into_iter()
        .map(|c| CaseResult {
            cached: true,
            in_module_output: c.in_module_output,
            ..CaseResult::new(
                &c.name,
                job.framework,
                verdict(c.skipped),
                c.elapsed,
                c.output,
            )
        })
        .collect()
}

/// `--verify`: cached cases ran again; each result must match.
fn verify(now: &mut [CaseResult], before: &CachedResult) {
    if let [one] = now {
        if before.module_cases.is_empty() {
            return verify_case(one, before);
        }
    }
    for (r, b) in now.iter_mut().zip(&before.module_cases) {
        let b = CachedResult {
            output: b.output.clone(),
            elapsed: b.elapsed,
            skipped: b.skipped,
            cases: Vec::new(),
            output_digest: None,
            module_cases: Vec::new(),
            ignored: Vec::new(),
        };
        verify_case(r, &b);
    }
}

/// One case of `--verify`: its verdict must match, and its whole output too
/// (by digest: the cache may keep only its head and tail).
fn verify_case(now: &mut CaseResult, before: &CachedResult) {
    let same_verdict = matches!(
        (now.verdict, before.skipped),
        (Verdict::Pass, false) | (Verdict::Skip, true)
    );
    let same_output = match (&now.output_digest, &before.output_digest) {
        (Some(a), Some(b)) => a == b,
        _ => now.output == before.output,
    };
    let what = if !same_verdict {
        Some("the cached run passed, this run did not")
    } else if !same_output {
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
fn run_uncached(env: &Env, job: &Job) -> (Vec<CaseResult>, Option<RunOutcome>) {
    let harness = job.framework.harness();
    let setup_failed = |e: SetupError| {
        let e = e.to_string();
        job.cases
            .iter()
            .map(|name| CaseResult::failed_setup(name, job.framework, &e))
            .collect()
    };
    let mut policy = (*job.policy).clone();
    let mut args = harness.case_args(&job.run_cases);
    args.extend(harness.flag_args(&env.config.flags));
    args.extend(env.config.args.iter().cloned());
    policy.args(&args);
    harness.prepare(&mut policy);
    // One case's output is streamed through its framing filter: digested
    // whole for --verify, and shown live with -v.
    let stream = (job.cases.len() == 1).then(|| {
        let name = job.cases[0].clone();
        // A harness that frames its own output (Go) cannot have cachet's
        // `=== CONT` markers woven in: with cases running at once, each
        // case's output is shown whole when it ends.
        let live = env.live && !(harness.frames_itself() && env.config.parallel > 1);
        if live {
            let _ = env.tx.send(Event::CaseStarted {
                pkg: job.pkg,
                name: name.clone(),
                framed: harness.frames_itself(),
            });
        }
        let stream = Arc::new(Mutex::new(CaseStream::new(job.framework, &name, live)));
        if !live {
            // Nothing shown yet: a start over on Cranelift's code may
            // forget the first start's output.
            let (s, framework, name) = (stream.clone(), job.framework, name.clone());
            policy.tee_restart(OutputTee(Arc::new(move |_: &[u8]| {
                *s.lock().expect("case stream") = CaseStream::new(framework, &name, false);
            })));
        }
        let (tx, pkg, s) = (env.tx.clone(), job.pkg, stream.clone());
        let tee = OutputTee(Arc::new(move |bytes: &[u8]| {
            let text = s.lock().expect("case stream").push(bytes);
            if !text.is_empty() {
                let _ = tx.send(Event::CaseOutput {
                    pkg,
                    name: name.clone(),
                    text,
                });
            }
        }));
        policy.output_tee(tee.clone());
        (stream, live, tee)
    });
    let mut outcome = match on_farm(env, &job.module, &policy) {
        Some(o) => {
            // A remote run's output arrives whole: through the same stream.
            if let Some((_, _, tee)) = &stream {
                (tee.0)(&o.output);
            }
            o
        }
        None => match run_local(env, job, &policy) {
            Ok(o) => o,
            Err(e) => return (setup_failed(e), None),
        },
    };
    harness.refine(&mut outcome, &policy.world());
    if let Some(message) = outcome.cleanup_error.clone() {
        let _ = env.tx.send(Event::Warning { message });
    }
    let raw = String::from_utf8_lossy(&outcome.output).into_owned();
    let mut results = match job.isolate {
        Isolate::Module => harness.module_results(&job.cases, &outcome, &raw),
        Isolate::Test => vec![harness.case_result(&job.cases[0], &outcome, &raw)],
    };
    if let ([result], Some((stream, live, _))) = (results.as_mut_slice(), stream) {
        let end = stream.lock().expect("case stream").finish();
        result.output_digest = Some(end.digest);
        if live {
            result.live_rest = end.rest;
        }
    }
    if job.isolate == Isolate::Module {
        rerun_not_started(env, job, &mut results, &outcome, &raw);
    }
    (results, Some(outcome))
}

/// The run of `policy` on the farm, when there is one and it takes the
/// run; `None` runs it here (a fallback's warning, said once, reported).
fn on_farm(env: &Env, module: &Artifact, policy: &Policy) -> Option<RunOutcome> {
    let remote = env.remote.filter(|r| r.takes(policy))?;
    match remote.run(module, policy, env.config) {
        Ok(outcome) => {
            let before = env.farm_time.get().unwrap_or_default();
            env.farm_time.set(Some(before + outcome.elapsed));
            Some(outcome)
        }
        Err(fallback) => {
            if let Some(message) = fallback.warning {
                let _ = env.tx.send(Event::Warning { message });
            }
            None
        }
    }
}

/// Runs the job's policy in this machine's sandbox: apart when its
/// framework's runs all go apart (Go's), or it is expected to be long
/// ([`LONG_RUN`]: it took that long last time, or, not timed yet, its cases
/// share one instance), else here.
fn run_local(env: &Env, job: &Job, policy: &Policy) -> Result<RunOutcome, SetupError> {
    let runtime = env.runtime.get()?;
    let took = env
        .facts
        .and_then(|f| f.last_time(&job.package, &crate::plan::case_key(job)));
    if serves_apart(env, &job.module) || took.map_or(job.cases.len() > 1, |took| took >= LONG_RUN) {
        if let Some(outcome) = run_apart(env, &job.module, policy) {
            return Ok(outcome);
        }
    }
    let module = job.module.module(runtime)?;
    if job.cases.len() > 1 {
        // Many cases in one instance: a long run, for Cranelift's code.
        runtime.settle(&module);
    }
    runtime.run(&module, policy).map_err(|e| SetupError::Run {
        file: job.module.path.display().to_string(),
        error: Arc::new(e),
    })
}

/// Whether every run of `m` goes apart: its framework's do
/// ([`Framework::serves_apart`]), unless Winch's code was asked for.
fn serves_apart(env: &Env, m: &Artifact) -> bool {
    m.framework.serves_apart() && env.config.tier != cachet_runtime::Tier::Winch
}

/// Runs `policy` on `m` apart (`Runtime::run_apart`); `None`: it runs here
/// (it could not go, or came back without an outcome: said once).
fn run_apart(env: &Env, m: &Artifact, policy: &Policy) -> Option<RunOutcome> {
    let runtime = env.runtime.get().ok()?;
    let bytes = || m.bytes().ok().map(std::borrow::Cow::into_owned);
    match runtime.run_apart(m.digest, m.wasi, &bytes, policy) {
        Ok(outcome) => Some(outcome),
        Err(cachet_runtime::NotApart::Unable) => None,
        Err(cachet_runtime::NotApart::Lost(why)) => {
            if !env
                .runtime
                .said_lost
                .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                let _ = env.tx.send(Event::Warning {
                    message: format!(
                        "a run apart ended without an outcome ({why}); it runs again in cachet's process (said once; `--long-runs here` keeps every run there)"
                    ),
                });
            }
            None
        }
    }
}

/// A shared instance that stopped in one case (a panic, an exit, a limit)
/// never ran the cases after it: they run again in a fresh instance, so
/// each case's verdict is the one it gets alone, whatever cut the module
/// into instances. Only where another case failed: the job is then never
/// saved, and its input log (the first instance's) need not cover them.
fn rerun_not_started(
    env: &Env,
    job: &Job,
    results: &mut [CaseResult],
    outcome: &RunOutcome,
    raw: &str,
) {
    let pending = job
        .framework
        .harness()
        .not_started(&job.cases, outcome, raw);
    let culprit = results
        .iter()
        .any(|r| r.verdict == Verdict::Fail && !pending.contains(&r.name));
    if pending.is_empty()
        || pending.len() >= job.cases.len()
        || !culprit
        || env.runtime.interrupted()
    {
        return;
    }
    let again = Job {
        run_cases: pending.clone(),
        cases: pending,
        ..job.clone()
    };
    let (rerun, _) = run_uncached(env, &again);
    for r in rerun {
        if let Some(slot) = results.iter_mut().find(|s| s.name == r.name) {
            *slot = r;
        }
    }
}

/// Saves a job's results when every case passed (or was skipped), unless an
/// input changed while it ran.
fn save(
    cache: &Cache,
    package: &str,
    parts: &KeyParts,
    name: NameKey,
    results: &mut [CaseResult],
    outcome: &RunOutcome,
    share: bool,
) {
    if results.is_empty() || results.iter().any(|r| r.verdict == Verdict::Fail) {
        return;
    }
    if results.iter().any(|r| r.flaky.is_some()) {
        results[0].not_saved = Some("not cached: flaky (failed before it passed)".into());
        return;
    }
    if let Some(change) = &outcome.changed_during_run {
        results[0].not_saved = Some(format!("not cached: {change}"));
        return;
    }
    let module_cases = if parts.case.starts_with("--module ") {
        results
            .iter()
            .map(|r| CachedCase {
                name: r.name.clone(),
                skipped: r.verdict == Verdict::Skip,
                elapsed: r.elapsed,
                output: trim_output(&r.output),
                in_module_output: r.in_module_output,
            })
            .collect()
    } else {
        Vec::new()
    };
    let first = &results[0];
    let cached = CachedResult {
        output: trim_output(&first.output),
        elapsed: first.elapsed,
        skipped: first.verdict == Verdict::Skip,
        cases: Vec::new(),
        output_digest: first.output_digest,
        module_cases,
        ignored: Vec::new(),
    };
    let _ = cache.save(name, package, parts, &outcome.log, &cached, share);
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
