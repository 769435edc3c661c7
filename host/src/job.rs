//! One job, on a guest thread: each case looked up in the cache, run in the
//! sandbox when it misses, and its result built from the outcome (verdict,
//! output without framing, the sandbox's reason for a stop); a passing
//! result is saved. A module's listing is a job of its own kind. No
//! concurrency here: the scheduler decides what runs when.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cachet_runtime::{OutputTee, Policy, RunOutcome, Runtime, RuntimeConfig, Status};
use tokio::sync::mpsc;

use crate::artifact::Artifact;
use crate::cache::{Cache, CachedCase, CachedResult, KeyParts, Lookup, Miss, NameKey};
use crate::config::{Isolate, TestConfig};
use crate::event::{CaseResult, Event, Verdict};
use crate::framework::{CaseStream, Framework};
use crate::plan::Job;

/// Where events go.
pub type Tx = mpsc::UnboundedSender<Event>;

/// The sandbox runtime, made on first use: a fully cached run never starts
/// an engine, its instance pool or its threads.
pub struct LazyRuntime {
    config: RuntimeConfig,
    runtime: OnceLock<Result<Runtime, String>>,
}

impl LazyRuntime {
    pub fn new(config: RuntimeConfig) -> Self {
        LazyRuntime {
            config,
            runtime: OnceLock::new(),
        }
    }

    /// The runtime, made now if it was not yet.
    pub fn get(&self) -> Result<&Runtime, String> {
        self.runtime
            .get_or_init(|| Runtime::new(self.config.clone()).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(Clone::clone)
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

/// What a job runs with.
pub struct Env<'a> {
    pub runtime: &'a LazyRuntime,
    pub config: &'a TestConfig,
    pub cache: Option<&'a Cache>,
    /// Output streams live (`-v` with one package or `-p 1`).
    pub live: bool,
    pub tx: &'a Tx,
}

/// Pseudo case name under which a module's listing is cached.
pub const LIST_CASE: &str = "--list";

/// The key of a module's listing, and its policy (with `argv[0]`).
fn listing_key(
    env: &Env,
    package: &str,
    m: &Artifact,
    policy: &Policy,
    args: &[String],
) -> (KeyParts, NameKey, Policy) {
    let mut p = policy.clone();
    p.program_name(&m.file_name());
    let parts = KeyParts::new(
        m.digest,
        m.framework.name(),
        LIST_CASE,
        args,
        &p,
        env.config.stack_bytes(),
    );
    let name = NameKey::new(package, &format!("{LIST_CASE} {}", m.file_name()));
    (parts, name, p)
}

/// A module's cases, and what one instance of it costs before any case runs
/// (the listing run: package init, for Go), which decides how Go cases are
/// cut into instances (see `plan::jobs`).
#[derive(Clone, Debug)]
pub struct Listing {
    pub cases: Vec<String>,
    pub init: Duration,
}

/// A module's cases from the cache, if its listing is cached.
pub fn cached_listing(
    env: &Env,
    package: &str,
    m: &Artifact,
    policy: &Policy,
    args: &[String],
) -> Option<Listing> {
    let cache = env.cache?;
    let (parts, name, p) = listing_key(env, package, m, policy, args);
    match cache.lookup(name, package, &parts, &p.world()) {
        Lookup::Hit(r) => Some(Listing {
            cases: r.cases,
            init: r.elapsed,
        }),
        Lookup::Miss(Miss::Corrupt(e)) => {
            let _ = env.tx.send(Event::Warning { message: e });
            None
        }
        Lookup::Miss(_) => None,
    }
}

/// Lists a module's cases by running it with its framework's list
/// protocol, and caches the listing.
pub fn list_module(
    env: &Env,
    package: &str,
    m: &Artifact,
    policy: &Policy,
    args: &[String],
) -> Result<Listing, String> {
    let file = m.path.display().to_string();
    let (parts, name, mut p) = listing_key(env, package, m, policy, args);
    let runtime = env.runtime.get()?;
    let module = m.module(runtime)?;
    p.args(args);
    let outcome = runtime
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
    if let (Some(cache), None) = (env.cache, &outcome.changed_during_run) {
        let result = CachedResult {
            output: String::new(),
            elapsed: outcome.elapsed,
            skipped: false,
            cases: cases.clone(),
            output_digest: None,
            module_cases: Vec::new(),
        };
        let share = !m.embeds_dir && env.config.shares_results();
        let _ = cache.save(name, package, &parts, &outcome.log, &result, share);
    }
    Ok(Listing {
        cases,
        init: outcome.elapsed,
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

/// The case part of a job's cache key: its case, or for cases run in one
/// instance all of them (their results are cached together).
pub fn case_key(job: &Job) -> String {
    match (job.isolate, job.cases.as_slice()) {
        (Isolate::Test, [one]) => one.clone(),
        (_, cases) => format!("--module {}", cases.join(" ")),
    }
}

/// A job's cache key: its case's (or its cases') key parts, and its name
/// for `--explain`.
fn job_key(env: &Env, job: &Job) -> (KeyParts, NameKey) {
    let args = job
        .framework
        .key_args(&env.config.run_flags(), &env.config.args);
    let case = case_key(job);
    let parts = KeyParts::new(
        job.module.digest,
        job.framework.name(),
        &case,
        &args,
        &job.policy,
        env.config.stack_bytes(),
    );
    (parts, NameKey::new(&job.package, &case))
}

/// What a lookup says of a job: its results (cached), or what to run.
pub type Looked = Result<Vec<CaseResult>, Box<ToRun>>;

/// Looks a package's jobs up in the cache. With a remote cache, the
/// selected cases of each shareable module with a miss here are first
/// fetched as one pack, and what came from the remote is written as one
/// file per module.
pub fn look_up_package(env: &Env, jobs: Vec<Job>) -> Vec<Looked> {
    let Some(cache) = env.cache else {
        return jobs.into_iter().map(|j| look_up(env, j, None)).collect();
    };
    let keys: Vec<_> = jobs.iter().map(|j| job_key(env, j)).collect();
    let mut found: Vec<Lookup> = jobs
        .iter()
        .zip(&keys)
        .map(|(j, (parts, name))| cache.lookup_here(*name, &j.package, parts, &j.policy.world()))
        .collect();
    if cache.remote().is_some() && env.config.shares_results() {
        let shared = |i: usize| !jobs[i].module.embeds_dir;
        let mut modules: Vec<&str> = Vec::new();
        for (i, (parts, _)) in keys.iter().enumerate() {
            if matches!(found[i], Lookup::Miss(_))
                && shared(i)
                && !modules.contains(&&*parts.module)
            {
                modules.push(&parts.module);
            }
        }
        for m in &modules {
            let selected = (0..jobs.len())
                .filter(|&i| shared(i) && keys[i].0.module == *m)
                .map(|i| keys[i].0.clone())
                .collect();
            cache.prefetch_pack(selected);
        }
        for (i, f) in found.iter_mut().enumerate() {
            if let Lookup::Miss(miss) = f {
                let miss = std::mem::replace(miss, Miss::NoEntry(""));
                *f = cache.lookup_remote(
                    &jobs[i].package,
                    &keys[i].0,
                    &jobs[i].policy.world(),
                    miss,
                );
            }
        }
        let modules: Vec<String> = modules.iter().map(|m| m.to_string()).collect();
        cache.flush_packs(Some(&modules));
    }
    jobs.into_iter()
        .zip(keys)
        .zip(found)
        .map(|((j, k), l)| look_up(env, j, Some((k, l))))
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
        let _ = env.tx.send(Event::Warning { message: e.clone() });
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
            r.flaky = Some(crate::event::Flaky {
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

/// A job's results as the cache holds them.
fn cached_results(job: &Job, r: CachedResult) -> Vec<CaseResult> {
    let verdict = |skipped| {
        if skipped {
            Verdict::Skip
        } else {
            Verdict::Pass
        }
    };
    let framed = job.framework.frames_itself();
    if r.module_cases.is_empty() {
        return vec![CaseResult {
            cached: true,
            framed,
            ..case(&job.cases[0], verdict(r.skipped), r.elapsed, r.output)
        }];
    }
    r.module_cases
        .into_iter()
        .map(|c| CaseResult {
            cached: true,
            framed,
            in_module_output: c.in_module_output,
            ..case(&c.name, verdict(c.skipped), c.elapsed, c.output)
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
    let setup_failed = |e: &str| job.cases.iter().map(|name| failed_setup(name, e)).collect();
    let runtime = match env.runtime.get() {
        Ok(r) => r,
        Err(e) => return (setup_failed(&e), None),
    };
    let module = match job.module.module(runtime) {
        Ok(m) => m,
        Err(e) => return (setup_failed(&e), None),
    };
    let mut policy = (*job.policy).clone();
    let flags = env.config.run_flags();
    policy.args(
        &job.framework
            .run_args(&job.run_cases, &flags, &env.config.args),
    );
    if job.framework == Framework::Go {
        policy.collect_scratch_file(crate::go::harness::TESTLOG);
    }
    // One case's output is streamed through its framing filter: digested
    // whole for --verify, and shown live with -v.
    let stream = (job.cases.len() == 1).then(|| {
        let name = job.cases[0].clone();
        // A harness that frames its own output (Go) cannot have cachet's
        // `=== CONT` markers woven in: with cases running at once, each
        // case's output is shown whole when it ends.
        let live = env.live && !(job.framework.frames_itself() && env.config.parallel > 1);
        if live {
            let _ = env.tx.send(Event::CaseStarted {
                pkg: job.pkg,
                name: name.clone(),
                framed: job.framework.frames_itself(),
            });
        }
        let stream = Arc::new(Mutex::new(CaseStream::new(job.framework, &name, live)));
        let (tx, pkg, s) = (env.tx.clone(), job.pkg, stream.clone());
        policy.output_tee(OutputTee(Arc::new(move |bytes: &[u8]| {
            let text = s.lock().expect("case stream").push(bytes);
            if !text.is_empty() {
                let _ = tx.send(Event::CaseOutput {
                    pkg,
                    name: name.clone(),
                    text,
                });
            }
        })));
        (stream, live)
    });
    let mut outcome = match runtime.run(&module, &policy) {
        Ok(o) => o,
        Err(e) => return (setup_failed(&e.to_string()), None),
    };
    if job.framework == Framework::Go {
        crate::go::testlog::refine(
            &mut outcome.log,
            outcome.collected.as_deref(),
            &policy.world(),
        );
    }
    if let Some(message) = outcome.cleanup_error.clone() {
        let _ = env.tx.send(Event::Warning { message });
    }
    let raw = String::from_utf8_lossy(&outcome.output).into_owned();
    let mut results = match (job.isolate, job.framework) {
        (Isolate::Module, Framework::Libtest) => module_results(job, &outcome, &raw),
        (Isolate::Module, Framework::Go) => go_module_results(job, &outcome, &raw, flags.mode),
        _ => vec![case_result(&job.cases[0], job.framework, &outcome, &raw)],
    };
    if let ([result], Some((stream, live))) = (results.as_mut_slice(), stream) {
        let end = stream.lock().expect("case stream").finish();
        result.output_digest = Some(end.digest);
        if live {
            result.live_rest = end.rest;
        }
    }
    (results, Some(outcome))
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

pub fn failed_setup(name: &str, error: &str) -> CaseResult {
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
        output_digest: None,
        framed: false,
        in_module_output: false,
        cached: false,
        explain: None,
        not_saved: None,
        flaky: None,
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
    let (verdict, harness_reason) = match (framework, &outcome.status) {
        (Framework::Go, Status::Exited(code)) => {
            crate::go::harness::verdict(name, Some(*code), raw)
        }
        _ => match (outcome.status.passed(), out.skipped) {
            (true, true) => (Verdict::Skip, None),
            (true, false) => (Verdict::Pass, None),
            (false, _) => (Verdict::Fail, None),
        },
    };
    let (timed_out, mut reason) = stop_reason(&outcome.status, raw);
    if framework == Framework::Go
        && matches!(outcome.status, Status::Exited(1 | 2))
        && (crate::go::harness::result_of(raw, name).is_some() || raw.contains("\npanic: "))
    {
        // Go's own `--- FAIL` lines (or its panic) say it all.
        reason = None;
    }
    CaseResult {
        timed_out,
        reason: reason.or(harness_reason),
        framed: framework.frames_itself(),
        ..case(name, verdict, outcome.elapsed, out.body)
    }
}

/// The cases of a Go module run in one instance. Go printed the run as one
/// output, which is shown whole with the first case that failed (or the
/// first case, when all output is shown); each case's verdict comes from
/// its result line. Cases with none did not finish when the instance
/// crashed or was stopped, unless Go ended normally (quiet mode prints no
/// line for a passing case).
fn go_module_results(
    job: &Job,
    outcome: &RunOutcome,
    raw: &str,
    mode: crate::framework::OutputMode,
) -> Vec<CaseResult> {
    let exit = match outcome.status {
        Status::Exited(c) => Some(c),
        _ => None,
    };
    let ended = matches!(exit, Some(0 | 1));
    let (timed_out, reason) = stop_reason(&outcome.status, raw);
    let mut results: Vec<CaseResult> = job
        .cases
        .iter()
        .map(|name| {
            let own = crate::go::harness::result_of(raw, name);
            let verdict = match (own, ended) {
                (Some(v), _) => v,
                (None, true) => Verdict::Pass,
                (None, false) => Verdict::Fail,
            };
            let mut r = case(name, verdict, Duration::ZERO, String::new());
            r.framed = true;
            r.in_module_output = true;
            if own.is_none() && !ended {
                r.timed_out = timed_out;
                r.reason = Some(match &reason {
                    Some(why) => format!("did not finish: {why}"),
                    None => "did not finish: the instance stopped in another case".into(),
                });
            }
            r
        })
        .collect();
    let carrier = match mode {
        crate::framework::OutputMode::Quiet => results
            .iter()
            .position(|r| r.verdict == Verdict::Fail)
            .unwrap_or(0),
        _ => 0,
    };
    if let Some(r) = results.get_mut(carrier) {
        r.output = crate::go::harness::body(raw);
        r.in_module_output = false;
        r.elapsed = outcome.elapsed;
    }
    results
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
