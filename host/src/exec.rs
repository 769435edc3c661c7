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

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::artifact::Artifact;
use crate::cli::ExecArgs;
use crate::config::{
    check_distinct, cores, parse_dir, ConfigError, Layout, MountRules, SandboxConfig, TestConfig,
};
use crate::discover::Package;
use crate::framework::{Framework, Invocation, RunFlags};
use crate::job::{LazyRuntime, SetupError};
use crate::reporter::native::Printer;

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

fn prepare(args: ExecArgs) -> Result<Exec, ConfigError> {
    let cwd = std::env::current_dir().map_err(|e| ConfigError::Cwd(e.to_string()))?;
    let guest_cwd = cwd.to_str().ok_or(ConfigError::CwdNotUtf8)?.to_string();
    let mut sandbox = SandboxConfig::from_args(&args.sandbox, MountRules::Exec)?;
    let dirs = args
        .dir
        .iter()
        .map(|d| parse_dir(d))
        .collect::<Result<Vec<_>, ConfigError>>()?;
    sandbox.mounts.splice(0..0, dirs);
    check_distinct(&sandbox.mounts)?;
    let parallel = args.parallel.unwrap_or_else(cores);
    if parallel == 0 {
        return Err(ConfigError::Parallel(0));
    }
    if !args.module.is_file() {
        return Err(ConfigError::NoModule(args.module.display().to_string()));
    }
    let program = args.module.to_string_lossy().into_owned();
    let module = std::path::absolute(&args.module).unwrap_or(args.module);
    let config = TestConfig {
        count: 1,
        sandbox,
        prebuilt: true,
        compile_timeout: cachet_runtime::DEFAULT_COMPILE_TIMEOUT,
        compile_memory: cachet_runtime::DEFAULT_COMPILE_MEMORY,
        parallel,
        cache: !args.no_cache,
        runs_apart: args.long_runs != Some(crate::cli::LongRunsArg::Here),
        layout: Layout::Exec {
            cwd,
            guest_cwd,
            test_binary: false,
        },
        ..TestConfig::default()
    };
    let cache = config.cache.then(crate::home::open_cache).flatten();
    Ok(Exec {
        module,
        program,
        args: args.args,
        config,
        cache,
        summary: args.summary,
    })
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
        // A test binary (a harness with a native format: cargo's runner and
        // `go test -exec` run these) gets the directory and variables those
        // runners assume, whatever its arguments; anything else exactly what
        // the flags ask for, as under `wasmtime run`.
        let harness = artifact.framework.harness();
        if let Layout::Exec { test_binary, .. } = &mut self.config.layout {
            *test_binary = harness.native().is_some();
        }
        let invocation = harness.invocation(&self.args);
        let own_tmp = !self
            .config
            .sandbox
            .mounts_at(cachet_runtime::SCRATCH_GUEST_PATH);
        let invocation = invocation.filter(|_| self.cache.is_some() && own_tmp);
        match invocation {
            Some(inv) => {
                self.config.framework = Some(artifact.framework);
                self.config.run = inv.run.clone();
                self.config.failfast = inv.failfast;
                if self.config.sandbox.timeout.is_none() {
                    self.config.sandbox.timeout = Some(inv.timeout);
                }
                self.config.flags = RunFlags {
                    short: inv.short,
                    parallel: inv.parallel,
                };
                self.config.mode = inv.mode;
                self.per_case(artifact.framework, inv)
            }
            None => self.direct(&artifact),
        }
    }

    /// The scratch dir and the runtime, as `cachet test` makes them.
    fn setup(&self) -> Result<(crate::workdir::Workdir, Arc<LazyRuntime>), SetupError> {
        let scratch = crate::workdir::Workdir::create().map_err(SetupError::scratch)?;
        Ok((
            scratch,
            Arc::new(crate::job::runtime_for(&self.config, false)),
        ))
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
                with_signals(rt, || rt.run(&module, &policy)).map_err(|e| SetupError::Run {
                    file: self.program.clone(),
                    error: Arc::new(e),
                })
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
        let Layout::Exec { cwd, guest_cwd, .. } = &self.config.layout else {
            unreachable!("exec's layout")
        };
        let package = Package::wasm(guest_cwd.clone(), cwd.clone(), vec![self.module.clone()]);
        let Some(native) = framework.harness().native() else {
            unreachable!("a harness with invocations prints them")
        };
        let mut printer = Printer::new(native, inv);
        let out = std::io::stdout();
        crate::scheduler::run(
            Arc::new(self.config),
            vec![package],
            runtime.clone(),
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
            let (apart, servers) = runtime.stats().map_or((0, 0), |s| (s.apart, s.servers));
            if apart > 0 {
                let s = if apart == 1 { "" } else { "s" };
                let es = if servers == 1 { "" } else { "es" };
                eprintln!(
                    "cachet exec: {apart} run{s} apart in {servers} child process{es} (on code without time checks)"
                );
            }
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

    #[test]
    fn the_go_runner_is_known_by_its_name() {
        assert!(is_go_runner_name(Path::new("/usr/bin/go_wasip1_wasm_exec")));
        assert!(!is_go_runner_name(Path::new("/usr/bin/cachet")));
    }
}
