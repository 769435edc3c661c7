//! `cachet exec MODULE [ARGS...]`: runs one module as running it directly
//! would (`wasmtime run`), but sandboxed: output streams through, stdout
//! and stderr apart; the exit status passes through; the guest sees the
//! current directory read-only at its absolute path (and `.`), a scratch
//! `/tmp`, the `--dir`s and `--mount`s asked for, and only the variables
//! given with `PWD`. Never `/`, unless asked.
//!
//! It is what `go test -exec` (or `go_wasip1_wasm_exec` on `PATH`) and
//! cargo's `CARGO_TARGET_WASM32_WASIP1_RUNNER` call. When the arguments are
//! a plain test invocation (what `go test` and `cargo test` pass by
//! default: no profiles, no benchmarks, no `-count`), the module's cases
//! run one per instance through the scheduler, served from and saved to
//! the per-case cache like `cachet test`'s, and what the binary would have
//! printed is printed from their results: so `go test` and `cargo test`
//! gain the cache unchanged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use regex::Regex;

use crate::artifact::Artifact;
use crate::cli::ExecArgs;
use crate::config::{
    self, parse_duration, ConfigError, ExtraMount, Layout, SandboxConfig, TestConfig,
};
use crate::discover::Package;
use crate::event::{CaseResult, Event, PackageOutcome, Verdict};
use crate::framework::{Framework, OutputMode};

/// What a module exits with when the sandbox stopped it (a trap, a limit):
/// 128 + SIGABRT, as the wasmtime CLI does.
pub const STOPPED: u8 = 134;

/// Runs `cachet exec`; returns the exit status.
pub fn run(args: ExecArgs) -> u8 {
    match prepare(args) {
        Ok(exec) => exec.run(),
        Err(e) => {
            eprintln!("cachet exec: {e}");
            crate::exit::SETUP_ERROR
        }
    }
}

struct Exec {
    module: PathBuf,
    /// `argv[0]` of a direct run: the module as given, as `wasmtime run` has it.
    program: String,
    args: Vec<String>,
    config: TestConfig,
    cache: Option<crate::cache::Cache>,
    summary: bool,
}

fn prepare(args: ExecArgs) -> Result<Exec, String> {
    let cwd =
        std::env::current_dir().map_err(|e| format!("cannot read the current directory: {e}"))?;
    let guest_cwd = cwd
        .to_str()
        .ok_or("the current directory's path is not UTF-8; run from another")?
        .to_string();
    let sandbox = SandboxConfig::from_args(&args.sandbox).map_err(|e| e.to_string())?;
    let mut mounts = Vec::new();
    for d in &args.dir {
        mounts.push(parse_dir(d).map_err(|e| e.to_string())?);
    }
    for m in &args.sandbox.mount {
        mounts.push(parse_exec_mount(m).map_err(|e| e.to_string())?);
    }
    config::check_distinct(&mounts).map_err(|e| e.to_string())?;
    let timeout = match &args.timeout {
        Some(t) => {
            let d = parse_duration(t)
                .ok_or_else(|| ConfigError::Duration("timeout", t.clone()).to_string())?;
            (!d.is_zero()).then_some(d)
        }
        None => None,
    };
    let parallel = args
        .parallel
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if parallel == 0 {
        return Err(ConfigError::Parallel(0).to_string());
    }
    if !args.module.is_file() {
        return Err(format!("{}: no such file", args.module.display()));
    }
    let program = args.module.to_string_lossy().into_owned();
    let module = std::path::absolute(&args.module).unwrap_or(args.module);
    let config = TestConfig {
        run: None,
        list: None,
        failfast: false,
        timeout,
        count: 1,
        env: sandbox.env,
        mounts,
        memory: sandbox.memory,
        stack: sandbox.stack,
        output_limit: sandbox.output_limit,
        tmp_limit: sandbox.tmp_limit,
        open_files: sandbox.open_files,
        hermetic: sandbox.hermetic,
        prebuilt: true,
        short: false,
        go_parallel: None,
        compile_timeout: cachet_runtime::DEFAULT_COMPILE_TIMEOUT,
        compile_memory: cachet_runtime::DEFAULT_COMPILE_MEMORY,
        verbose: false,
        json: false,
        parallel,
        framework: None,
        isolate: None,
        packages: Vec::new(),
        args: Vec::new(),
        cache: !args.no_cache,
        explain: false,
        verify: false,
        layout: Layout::Exec { cwd, guest_cwd },
        remote: None,
        partition: None,
        junit: None,
        retries: 0,
        fail_flaky: false,
        overrides: Vec::new(),
    };
    let cache = config.cache.then(crate::open_cache).flatten();
    Ok(Exec {
        module,
        program,
        args: args.args,
        config,
        cache,
        summary: args.summary,
    })
}

/// `--dir HOST[::GUEST][:rw]`, as the wasmtime CLI's `--dir` (read-only
/// unless `:rw`); GUEST defaults to HOST's absolute path and may be `/`.
fn parse_dir(spec: &str) -> Result<ExtraMount, ConfigError> {
    let (rest, writable) = match spec.strip_suffix(":rw") {
        Some(r) => (r, true),
        None => (spec.strip_suffix(":ro").unwrap_or(spec), false),
    };
    let (host, guest) = match rest.split_once("::") {
        Some((h, g)) => (h, g.to_string()),
        None => {
            let abs = std::path::absolute(rest).map_err(|_| ConfigError::Dir(spec.into()))?;
            (
                rest,
                abs.to_str()
                    .ok_or(ConfigError::Dir(spec.into()))?
                    .to_string(),
            )
        }
    };
    let guest = config::normal_guest(&guest).ok_or(ConfigError::Dir(spec.into()))?;
    if host.is_empty() {
        return Err(ConfigError::Dir(spec.into()));
    }
    config::extra_mount(host, guest, writable)
}

/// `--mount HOST:GUEST[:rw]` as `cachet test` takes it, but `/` and `/tmp`
/// allowed: `cachet exec` mounts only what it is asked to.
fn parse_exec_mount(spec: &str) -> Result<ExtraMount, ConfigError> {
    let (rest, writable) = match spec.strip_suffix(":rw") {
        Some(r) => (r, true),
        None => (spec.strip_suffix(":ro").unwrap_or(spec), false),
    };
    let (host, guest) = rest
        .rsplit_once(':')
        .filter(|(h, _)| !h.is_empty())
        .ok_or_else(|| ConfigError::Mount(spec.into()))?;
    let guest = config::normal_guest(guest).ok_or_else(|| ConfigError::Mount(spec.into()))?;
    config::extra_mount(host, guest, writable)
}

impl Exec {
    fn run(mut self) -> u8 {
        let artifact = match Artifact::open(self.module.clone(), None, None, self.cache.as_ref()) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("cachet exec: {e}");
                return crate::exit::SETUP_ERROR;
            }
        };
        let own_tmp = !self
            .config
            .mounts
            .iter()
            .any(|m| m.guest == cachet_runtime::SCRATCH_GUEST_PATH);
        let invocation = if self.cache.is_some() && own_tmp {
            Invocation::parse(artifact.framework, &self.args)
        } else {
            None
        };
        match invocation {
            Some(inv) => {
                self.config.framework = Some(artifact.framework);
                self.config.run = inv.run.clone();
                self.config.failfast = inv.failfast;
                self.config.timeout = self.config.timeout.or(inv.timeout);
                self.config.short = inv.short;
                self.config.go_parallel = inv.parallel;
                self.config.verbose = inv.mode == OutputMode::Verbose;
                self.config.json = inv.mode == OutputMode::Json;
                self.per_case(artifact.framework, inv)
            }
            None => self.direct(&artifact),
        }
    }

    /// The scratch dir and the runtime, as `cachet test` makes them.
    fn setup(&self) -> Result<(crate::workdir::Workdir, Arc<crate::job::LazyRuntime>), String> {
        let scratch = crate::workdir::Workdir::create().map_err(|e| {
            format!(
                "cannot create a scratch directory in {}: {e}; set TMPDIR to a writable directory",
                std::env::temp_dir().display()
            )
        })?;
        Ok((scratch, Arc::new(crate::runtime_for(&self.config, false))))
    }

    /// Runs the module once with the arguments as given, output passed through.
    fn direct(&self, artifact: &Artifact) -> u8 {
        let (scratch, runtime) = match self.setup() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("cachet exec: {e}");
                return crate::exit::SETUP_ERROR;
            }
        };
        let package = Package::wasm(String::new(), PathBuf::new(), Vec::new());
        let mut policy = crate::plan::policy(&self.config, &package, scratch.path(), false, None);
        policy
            .program_name(&self.program)
            .args(&self.args)
            .inherit_stdio();
        let outcome = runtime
            .get()
            .and_then(|rt| Ok((rt, artifact.module(rt)?)))
            .and_then(|(rt, module)| {
                with_signals(rt, || rt.run(&module, &policy)).map_err(|e| e.to_string())
            });
        match outcome {
            Ok(o) => match o.status {
                cachet_runtime::Status::Exited(code) => u8::try_from(code).unwrap_or(1),
                cachet_runtime::Status::Interrupted => crate::exit::INTERRUPTED,
                status => {
                    eprintln!("cachet exec: {}: {status}", self.program);
                    for frame in status.frames().iter().take(8) {
                        eprintln!("    at {frame}");
                    }
                    STOPPED
                }
            },
            Err(e) => {
                eprintln!("cachet exec: {e}");
                crate::exit::SETUP_ERROR
            }
        }
    }

    /// Runs the invocation's cases through the scheduler and the cache, and
    /// prints what the binary would have printed.
    fn per_case(self, framework: Framework, inv: Invocation) -> u8 {
        let (scratch, runtime) = match self.setup() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("cachet exec: {e}");
                return crate::exit::SETUP_ERROR;
            }
        };
        let Layout::Exec { cwd, guest_cwd } = &self.config.layout else {
            unreachable!("exec's layout")
        };
        let package = Package::wasm(guest_cwd.clone(), cwd.clone(), vec![self.module.clone()]);
        let mut printer = Printer::new(framework, inv);
        let out = std::io::stdout();
        crate::scheduler::run(
            Arc::new(self.config),
            vec![package],
            runtime,
            self.cache.clone(),
            scratch.path(),
            |e| {
                let text = printer.event(e);
                if !text.is_empty() {
                    use std::io::Write as _;
                    let mut out = out.lock();
                    let _ = out.write_all(text.as_bytes());
                    let _ = out.flush();
                }
            },
        );
        if let Some(c) = &self.cache {
            c.save_memo();
        }
        let (text, code) = printer.finish();
        print!("{text}");
        if self.summary {
            eprintln!(
                "cachet exec: {} of {} cases from the cache",
                printer.cached, printer.finished
            );
        }
        code
    }
}

/// Stops the run on the first Ctrl-C or SIGTERM (its status is then
/// `Interrupted`), so its scratch dir is removed as after any run.
fn with_signals<T>(rt: &cachet_runtime::Runtime, f: impl FnOnce() -> T) -> T {
    let watcher = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .ok();
    let Some(watcher) = watcher else { return f() };
    let interrupt = rt.interrupter();
    let handle = std::thread::spawn(move || {
        watcher.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            tokio::select! {
                _ = int.recv() => interrupt(),
                _ = term.recv() => interrupt(),
            }
        })
    });
    let out = f();
    drop(handle);
    out
}

/// A plain test invocation: the arguments `go test` or `cargo test` pass by
/// default, and the ones that only choose cases or shape the output.
#[derive(Clone, Debug)]
pub struct Invocation {
    pub run: Option<Regex>,
    pub mode: OutputMode,
    pub short: bool,
    pub parallel: Option<usize>,
    pub failfast: bool,
    /// Go's `-test.timeout`, applied to each case.
    pub timeout: Option<Duration>,
    /// libtest's `--quiet`.
    pub quiet: bool,
}

impl Invocation {
    /// `None` when the arguments ask for anything else (benchmarks,
    /// profiles, `-count`, `--nocapture`, subtest patterns): the module
    /// then runs directly, uncached.
    pub fn parse(framework: Framework, args: &[String]) -> Option<Invocation> {
        let mut inv = Invocation {
            run: None,
            mode: OutputMode::Quiet,
            short: false,
            parallel: None,
            failfast: false,
            timeout: None,
            quiet: false,
        };
        match framework {
            Framework::Go => {
                for a in args {
                    let flag = a.strip_prefix("--").or(a.strip_prefix('-'))?;
                    let (name, value) = match flag.split_once('=') {
                        Some((n, v)) => (n, Some(v)),
                        None => (flag, None),
                    };
                    let boolean = || match value {
                        None | Some("true") => Some(true),
                        Some("false") => Some(false),
                        _ => None,
                    };
                    match name {
                        "test.paniconexit0" => {
                            boolean()?;
                        }
                        // `go test`'s own cache reads this file after the
                        // run: never written, so `go test` caches nothing
                        // and cachet's cache answers instead.
                        "test.testlogfile" => {}
                        "test.timeout" => {
                            let d = parse_duration(value?)?;
                            inv.timeout = (!d.is_zero()).then_some(d);
                        }
                        "test.v" => {
                            inv.mode = match value {
                                None | Some("true") => OutputMode::Verbose,
                                Some("test2json") => OutputMode::Json,
                                Some("false") => OutputMode::Quiet,
                                _ => return None,
                            }
                        }
                        "test.short" => inv.short = boolean()?,
                        "test.failfast" => inv.failfast = boolean()?,
                        "test.parallel" => inv.parallel = Some(value?.parse().ok()?),
                        // A pattern with `/` selects subtests, which run inside their case.
                        "test.run" if !value?.contains('/') => {
                            inv.run = Some(Regex::new(value?).ok()?);
                        }
                        _ => return None,
                    }
                }
                Some(inv)
            }
            Framework::Libtest => {
                let mut filters = Vec::new();
                let mut exact = false;
                let mut iter = args.iter();
                while let Some(a) = iter.next() {
                    match a.as_str() {
                        "--exact" => exact = true,
                        "-q" | "--quiet" => inv.quiet = true,
                        "--test-threads" => {
                            iter.next()?.parse::<usize>().ok()?;
                        }
                        a if a.starts_with("--test-threads=") => {}
                        a if a.starts_with('-') => return None,
                        a => filters.push(regex::escape(a)),
                    }
                }
                if !filters.is_empty() {
                    let alternatives = filters.join("|");
                    let pattern = if exact {
                        format!("^(?:{alternatives})$")
                    } else {
                        alternatives
                    };
                    inv.run = Some(Regex::new(&pattern).ok()?);
                }
                Some(inv)
            }
            Framework::Plain => None,
        }
    }
}

/// Prints cases as the binary would have, in the order it runs them, each
/// as soon as it and every case before it are done.
struct Printer {
    framework: Framework,
    inv: Invocation,
    order: Vec<String>,
    listed: usize,
    done: HashMap<String, CaseResult>,
    next: usize,
    started: Instant,
    failed: Vec<(String, String)>,
    counts: [usize; 3],
    /// Text for stderr (setup errors, warnings) and the exit status they force.
    setup_error: bool,
    interrupted: bool,
    no_tests: bool,
    cached: usize,
    finished: usize,
}

impl Printer {
    fn new(framework: Framework, inv: Invocation) -> Self {
        Printer {
            framework,
            inv,
            order: Vec::new(),
            listed: 0,
            done: HashMap::new(),
            next: 0,
            started: Instant::now(),
            failed: Vec::new(),
            counts: [0; 3],
            setup_error: false,
            interrupted: false,
            no_tests: false,
            cached: 0,
            finished: 0,
        }
    }

    /// What to print now on stdout.
    fn event(&mut self, event: Event) -> String {
        match event {
            Event::Planned { cases, listed, .. } => {
                self.order = cases;
                self.listed = listed;
                if self.framework == Framework::Libtest {
                    let n = self.order.len();
                    return format!("\nrunning {n} test{}\n", if n == 1 { "" } else { "s" });
                }
                String::new()
            }
            Event::CaseFinished { result, .. } => {
                self.finished += 1;
                self.cached += usize::from(result.cached);
                self.done.insert(result.name.clone(), result);
                let mut text = String::new();
                while let Some(r) = self.order.get(self.next).and_then(|n| self.done.remove(n)) {
                    self.next += 1;
                    text.push_str(&self.case(&r));
                }
                text
            }
            Event::PackageError { message, .. } => {
                eprintln!("cachet exec: {message}");
                self.setup_error = true;
                String::new()
            }
            Event::Warning { message } => {
                eprintln!("cachet exec: warning: {message}");
                String::new()
            }
            Event::Interrupted { .. } => {
                self.interrupted = true;
                String::new()
            }
            Event::PackageFinished { outcome, .. } => {
                self.no_tests = matches!(
                    outcome,
                    PackageOutcome::NoTestsToRun | PackageOutcome::NoTestFiles
                );
                String::new()
            }
            _ => String::new(),
        }
    }

    /// One case, as the binary prints it.
    fn case(&mut self, r: &CaseResult) -> String {
        let slot = match r.verdict {
            Verdict::Pass => 0,
            Verdict::Fail => 1,
            Verdict::Skip => 2,
        };
        self.counts[slot] += 1;
        let mut body = r.output.clone();
        if let Some(reason) = &r.reason {
            if !body.is_empty() && !body.ends_with('\n') {
                body.push('\n');
            }
            body.push_str(&format!("cachet: {reason}\n"));
        } else if let Some(limit) = r.timed_out {
            body.push_str(&format!(
                "panic: test timed out after {}\n",
                cachet_runtime::duration_string(limit)
            ));
        }
        match self.framework {
            Framework::Go if r.in_module_output => String::new(),
            Framework::Go => body,
            _ => {
                if r.verdict == Verdict::Fail {
                    self.failed.push((r.name.clone(), body));
                }
                if self.inv.quiet {
                    let mark = [".", "F", "i"][slot];
                    let done = self.next;
                    if done.is_multiple_of(88) && done < self.order.len() {
                        format!("{mark} {done}/{}\n", self.order.len())
                    } else {
                        mark.to_string()
                    }
                } else {
                    let word = ["ok", "FAILED", "ignored"][slot];
                    format!("test {} ... {word}\n", r.name)
                }
            }
        }
    }

    /// The closing lines and the exit status.
    fn finish(&mut self) -> (String, u8) {
        let failed = self.counts[1] > 0;
        let code = if self.interrupted {
            crate::exit::INTERRUPTED
        } else if self.setup_error {
            crate::exit::SETUP_ERROR
        } else if failed {
            self.failure_status()
        } else {
            crate::exit::PASSED
        };
        if self.setup_error && self.order.is_empty() {
            return (String::new(), code);
        }
        let text = match self.framework {
            Framework::Go => {
                let prefix = if self.inv.mode == OutputMode::Json {
                    "\u{16}"
                } else {
                    ""
                };
                let mut t = String::new();
                if self.no_tests {
                    t.push_str("testing: warning: no tests to run\n");
                }
                let word = if failed || code != crate::exit::PASSED {
                    "FAIL"
                } else {
                    "PASS"
                };
                t.push_str(&format!("{prefix}{word}\n"));
                t
            }
            _ => self.libtest_finish(failed),
        };
        (text, code)
    }

    /// Go exits 1 when a test failed; libtest 101.
    fn failure_status(&self) -> u8 {
        match self.framework {
            Framework::Libtest => 101,
            _ => crate::exit::TESTS_FAILED,
        }
    }

    fn libtest_finish(&self, failed: bool) -> String {
        let mut t = String::new();
        if self.no_tests {
            t.push_str("\nrunning 0 tests\n");
        }
        if self.inv.quiet && !self.order.is_empty() {
            t.push('\n');
        }
        if failed {
            t.push_str("\nfailures:\n");
            let stdouts: String = self
                .failed
                .iter()
                .filter(|(_, body)| !body.is_empty())
                .map(|(name, body)| format!("---- {name} stdout ----\n{body}\n"))
                .collect();
            if !stdouts.is_empty() {
                t.push('\n');
                t.push_str(&stdouts);
            }
            t.push_str("\nfailures:\n");
            let mut names: Vec<&str> = self.failed.iter().map(|(n, _)| n.as_str()).collect();
            names.sort();
            for n in names {
                t.push_str(&format!("    {n}\n"));
            }
        }
        let [passed, failed_n, ignored] = self.counts;
        t.push_str(&format!(
            "\ntest result: {}. {passed} passed; {failed_n} failed; {ignored} ignored; 0 measured; {} filtered out; finished in {:.2}s\n\n",
            if failed { "FAILED" } else { "ok" },
            self.listed.saturating_sub(self.order.len()),
            self.started.elapsed().as_secs_f64(),
        ));
        t
    }
}

/// Whether `path` names this program as Go's wasip1 runner
/// (`go_wasip1_wasm_exec` on `PATH`): then it behaves as `cachet exec`.
pub fn is_go_runner_name(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n == "go_wasip1_wasm_exec")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn go_test_invocations() {
        let inv = Invocation::parse(
            Framework::Go,
            &args(&[
                "-test.paniconexit0",
                "-test.timeout=10m0s",
                "-test.testlogfile=/tmp/go-build1/b001/testlog.txt",
                "-test.v=test2json",
                "-test.run=^TestA$",
                "-test.short=true",
            ]),
        )
        .unwrap();
        assert_eq!(inv.mode, OutputMode::Json);
        assert_eq!(inv.timeout, Some(Duration::from_secs(600)));
        assert!(inv.short && inv.run.unwrap().is_match("TestA"));
        for uncached in [
            "-test.count=1",
            "-test.bench=.",
            "-test.cpuprofile=x",
            "-test.run=TestA/sub",
            "-test.run=(",
            "positional",
            "-test.v=maybe",
        ] {
            assert!(
                Invocation::parse(Framework::Go, &args(&[uncached])).is_none(),
                "{uncached}"
            );
        }
    }

    #[test]
    fn cargo_test_invocations() {
        let none = Invocation::parse(Framework::Libtest, &[]).unwrap();
        assert!(none.run.is_none() && !none.quiet);
        let filtered =
            Invocation::parse(Framework::Libtest, &args(&["a::b", "c.d", "-q"])).unwrap();
        let re = filtered.run.unwrap();
        assert!(re.is_match("x::a::b::y") && re.is_match("c.d") && !re.is_match("cxd"));
        assert!(filtered.quiet);
        let exact = Invocation::parse(Framework::Libtest, &args(&["--exact", "a"])).unwrap();
        assert!(exact.run.as_ref().unwrap().is_match("a") && !exact.run.unwrap().is_match("ab"));
        for uncached in ["--nocapture", "--ignored", "--include-ignored", "--list"] {
            assert!(
                Invocation::parse(Framework::Libtest, &args(&[uncached])).is_none(),
                "{uncached}"
            );
        }
        assert!(Invocation::parse(Framework::Plain, &[]).is_none());
    }

    #[test]
    fn dirs_are_parsed_as_wasmtime_does() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().to_str().unwrap();
        let m = parse_dir(host).unwrap();
        assert_eq!((m.guest.as_str(), m.writable), (host, false));
        let root = parse_dir(&format!("{host}::/:rw")).unwrap();
        assert_eq!((root.guest.as_str(), root.writable), ("/", true));
        assert!(parse_dir(&format!("{host}::relative")).is_err());
        assert!(
            parse_exec_mount(&format!("{host}:/")).is_ok(),
            "/ is allowed here"
        );
        assert!(is_go_runner_name(Path::new("/usr/bin/go_wasip1_wasm_exec")));
    }
}
