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
use crate::cache::{Cache, CachedResult, KeyParts, Lookup, Miss, NameKey};
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

/// A module's cases from the cache, if its listing is cached.
pub fn cached_listing(
    env: &Env,
    package: &str,
    m: &Artifact,
    policy: &Policy,
    args: &[String],
) -> Option<Vec<String>> {
    let cache = env.cache?;
    let (parts, name, p) = listing_key(env, package, m, policy, args);
    match cache.lookup(name, package, &parts, &p.world()) {
        Lookup::Hit(r) => Some(r.cases),
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
) -> Result<Vec<String>, String> {
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
        };
        let _ = cache.save(name, package, &parts, &outcome.log, &result);
    }
    Ok(cases)
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

/// Looks a job up in the cache: its result when cached (and not being
/// verified), else what to run. Needs no runtime and runs no wasm.
pub fn look_up(env: &Env, job: Job) -> Result<CaseResult, Box<ToRun>> {
    // The cache serves one case per instance; --isolate=module runs bypass it.
    let cache = env
        .cache
        .filter(|_| job.cases.len() == 1 && job.isolate == Isolate::Test);
    let key = cache.map(|_| {
        let parts = KeyParts::new(
            job.module.digest,
            job.framework.name(),
            &job.cases[0],
            &env.config.args,
            &job.policy,
            env.config.stack_bytes(),
        );
        (parts, NameKey::new(&job.package, &job.cases[0]))
    });
    let lookup = cache
        .zip(key.as_ref())
        .map(|(c, (parts, name))| c.lookup(*name, &job.package, parts, &job.policy.world()));
    if let Some(Lookup::Miss(Miss::Corrupt(e))) = &lookup {
        let _ = env.tx.send(Event::Warning { message: e.clone() });
    }
    let (explain, cached) = match lookup {
        Some(Lookup::Hit(r)) if !env.config.verify => return Ok(cached_result(&job.cases[0], r)),
        Some(Lookup::Hit(r)) => (None, Some(r)),
        Some(Lookup::Miss(why)) => (Some(why), None),
        None if env.cache.is_none() => (
            Some(Miss::Bypassed(
                "--count was given, or the cache could not be opened",
            )),
            None,
        ),
        None => (Some(Miss::Bypassed("--isolate=module")), None),
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
    let (mut results, outcome) = run_uncached(env, &job);
    if let ([result], Some(outcome)) = (results.as_mut_slice(), &outcome) {
        result.explain = explain
            .filter(|_| env.config.explain)
            .map(|m| explained(&m, &job));
        match cached {
            Some(before) => verify(result, &before),
            None => {
                if let (Some(cache), Some((parts, name))) = (env.cache, &key) {
                    save(cache, &job.package, parts, *name, result, outcome);
                }
            }
        }
    }
    results
}

/// Why a case ran, in words; a module that embeds its checkout's absolute
/// path cannot hit the cache of another checkout, and says so.
fn explained(miss: &Miss, job: &Job) -> String {
    let portable = matches!(
        miss,
        Miss::NoEntry("module changed" | "mount layout changed" | "no cache entry")
    );
    if job.module.embeds_dir && portable {
        format!("{miss} (the module embeds its package's absolute path, from env!(\"CARGO_MANIFEST_DIR\"), so its results are valid only in this checkout; read testdata by relative paths to share them)")
    } else {
        miss.to_string()
    }
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

/// `--verify`: a cached case ran again; its result must match, and its
/// whole output too (by digest: the cache may keep only its head and tail).
fn verify(now: &mut CaseResult, before: &CachedResult) {
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
    policy.args(&job.framework.run_args(&job.run_cases, &env.config.args));
    // One case's output is streamed through its framing filter: digested
    // whole for --verify, and shown live with -v.
    let stream = (job.cases.len() == 1).then(|| {
        let name = job.cases[0].clone();
        let live = env.live;
        if live {
            let _ = env.tx.send(Event::CaseStarted {
                pkg: job.pkg,
                name: name.clone(),
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
    let outcome = match runtime.run(&module, &policy) {
        Ok(o) => o,
        Err(e) => return (setup_failed(&e.to_string()), None),
    };
    if let Some(message) = outcome.cleanup_error.clone() {
        let _ = env.tx.send(Event::Warning { message });
    }
    let raw = String::from_utf8_lossy(&outcome.output).into_owned();
    let mut results = match (job.isolate, job.framework) {
        (Isolate::Module, Framework::Libtest) => module_results(job, &outcome, &raw),
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

/// Saves a passing case, unless an input changed while it ran.
fn save(
    cache: &Cache,
    package: &str,
    parts: &KeyParts,
    name: NameKey,
    result: &mut CaseResult,
    outcome: &RunOutcome,
) {
    if result.verdict == Verdict::Fail {
        return;
    }
    if let Some(change) = &outcome.changed_during_run {
        result.not_saved = Some(format!("not cached: {change}"));
        return;
    }
    let cached = CachedResult {
        output: trim_output(&result.output),
        elapsed: result.elapsed,
        skipped: result.verdict == Verdict::Skip,
        cases: Vec::new(),
        output_digest: result.output_digest,
    };
    let _ = cache.save(name, package, parts, &outcome.log, &cached);
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
