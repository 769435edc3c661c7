//! `cachet`: a test executor for WebAssembly test binaries.
//!
//! ```text
//! cli ──► config ──► discover (+cargo build) ──► scheduler ──► runtime (cachet-runtime)
//!                                                   │ events
//!                                                   ▼
//!                                                reporter (text | json) ──► stdout
//! ```
//!
//! `main` is the only place the pipeline is wired. Design notes:
//! `docs/design/sandbox.md`, `docs/design/scheduler.md`.

pub mod artifact;
pub mod cache;
pub mod cargo;
pub mod cli;
pub mod config;
pub mod discover;
pub mod event;
pub mod exec;
pub mod exit;
pub mod framework;
pub mod go;
pub mod inputs;
pub mod job;
pub mod plan;
pub mod project;
pub mod reporter;
pub mod scheduler;
pub mod workdir;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use cachet_runtime::RuntimeConfig;
use clap::Parser;

use crate::cli::{Cli, Command};
use crate::config::TestConfig;
use crate::reporter::{JsonFormat, Progress, Reporter, TextFormat};

/// Parses `args`, runs the command, and returns its exit status.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let mut args: Vec<OsString> = args.into_iter().collect();
    // Installed as Go's wasip1 runner, it is `cachet exec`.
    if args
        .first()
        .is_some_and(|a| exec::is_go_runner_name(std::path::Path::new(a)))
    {
        args.insert(1, "exec".into());
    }
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let text = e.to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            // The subcommand's own help, where there is one.
            let sub = args
                .get(1)
                .and_then(|a| a.to_str())
                .filter(|s| ["exec", "inputs", "clean"].contains(s))
                .unwrap_or("test");
            eprintln!("cachet: {first}; see `cachet {sub} --help`");
            return ExitCode::from(exit::SETUP_ERROR);
        }
    };
    let code = match cli.command {
        Command::Exec(args) => exec::run(args),
        Command::Inputs(args) => inputs::run(args, open_cache()),
        Command::Clean(args) => clean(args.results),
        Command::Compile(a) => {
            let epochs = a.epochs != 0;
            match cachet_runtime::compile_child(
                &a.input, &a.output, &a.key, a.stack, a.memory, epochs,
            ) {
                Ok(()) => exit::PASSED,
                Err(e) => {
                    eprintln!("{e}");
                    exit::SETUP_ERROR
                }
            }
        }
        Command::Test(args) => match test_config(args) {
            Ok(config) => test(config),
            Err(e) => {
                eprintln!("cachet: {e}");
                exit::SETUP_ERROR
            }
        },
    };
    ExitCode::from(code)
}

/// The configuration of `cachet test`: the flags, then what they leave
/// unset from `cachet.toml`'s profile.
fn test_config(mut args: cli::TestArgs) -> Result<TestConfig, String> {
    let cwd =
        std::env::current_dir().map_err(|e| format!("cannot read the current directory: {e}"))?;
    let project = project::load(&cwd, args.profile.as_deref())?;
    project.apply(&mut args);
    let mut config = TestConfig::from_args(args).map_err(|e| e.to_string())?;
    config.overrides = project
        .overrides()
        .iter()
        .map(|o| {
            config::PackageOverride::parse(o, &project).map_err(|e| {
                format!(
                    "{}: the override for {:?}: {e}",
                    project::FILE_NAME,
                    o.packages
                )
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(config)
}

/// Where cachet keeps its caches: `$CACHET_CACHE`, else the XDG cache dir.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("CACHET_CACHE") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("cachet"))
}

/// The result cache under [`cache_dir`], trimmed at most once a day; `None`
/// (with a warning) when it cannot be opened: tests then run uncached.
pub(crate) fn open_cache() -> Option<cache::Cache> {
    let dir = cache_dir()?.join("results");
    match cache::Cache::open(&dir) {
        Ok(c) => {
            trim_daily(&c);
            Some(c)
        }
        Err(e) => {
            eprintln!("cachet: warning: cannot open the result cache in {}: {e}; running without it (set CACHET_CACHE)", dir.display());
            None
        }
    }
}

/// Compiled modules kept: a Go test binary compiles to ~50 MB of native
/// code, a Rust one to a few MB; 4 GiB holds a large project's.
const MAX_COMPILED_BYTES: u64 = 4 << 30;

/// Trims the store when its marker is a day old (as Go's cache does).
fn trim_daily(cache: &cache::Cache) {
    let marker = cache.store().root().join("trimmed");
    let due = std::fs::metadata(&marker)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_none_or(|age| age > std::time::Duration::from_secs(24 * 3600));
    if due && std::fs::write(&marker, b"").is_ok() {
        let _ = cache
            .store()
            .trim(cache::store::MAX_AGE, cache::store::MAX_BYTES);
        if let Some(compiled) = cache_dir().map(|d| d.join("compiled")) {
            let _ =
                cachet_runtime::trim_compiled(&compiled, cache::store::MAX_AGE, MAX_COMPILED_BYTES);
        }
    }
}

/// `cachet clean`: removes the cache, or with `results_only` just results.
fn clean(results_only: bool) -> u8 {
    let Some(dir) = cache_dir() else {
        eprintln!("cachet: no cache directory (set CACHET_CACHE or HOME)");
        return exit::SETUP_ERROR;
    };
    let target = if results_only {
        dir.join("results")
    } else {
        dir
    };
    match std::fs::remove_dir_all(&target) {
        Ok(()) => {
            println!("removed {}", target.display());
            exit::PASSED
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => exit::PASSED,
        Err(e) => {
            eprintln!("cachet: cannot remove {}: {e}", target.display());
            exit::SETUP_ERROR
        }
    }
}

/// The runtime of a run, made when a case first needs it (a fully cached
/// run starts no engine); compiles run in a child process (this binary)
/// under the compile limits. `cachet test --timeout 0` runs wasm without
/// epoch checks (faster; Ctrl-C then stops a case at its next host call);
/// `cachet exec` keeps them, so Ctrl-C stops the program it runs.
pub(crate) fn runtime_for(config: &TestConfig, uninterruptible: bool) -> job::LazyRuntime {
    let compile = std::env::current_exe()
        .ok()
        .map(|program| cachet_runtime::CompileGuard {
            program,
            args: vec!["__compile".into()],
            timeout: config.compile_timeout,
            memory: config.compile_memory,
        });
    job::LazyRuntime::new(RuntimeConfig {
        compiled_cache: cache_dir().map(|d| d.join("compiled")),
        max_wasm_stack: config.stack,
        compile,
        uninterruptible,
    })
}

fn test(config: TestConfig) -> u8 {
    let build = if config.prebuilt {
        discover::Build::Never
    } else {
        discover::Build::Allowed
    };
    let packages = discover::discover(
        &config.packages,
        build,
        cache_dir().map(|d| d.join("go-test")).as_deref(),
    );
    let runtime = Arc::new(runtime_for(&config, config.timeout.is_none()));
    let scratch = match workdir::Workdir::create() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cachet: cannot create a scratch directory in {}: {e}; set TMPDIR to a writable directory", std::env::temp_dir().display());
            return exit::SETUP_ERROR;
        }
    };
    let format: Box<dyn reporter::Format> = if config.json {
        Box::new(JsonFormat::default())
    } else {
        Box::new(TextFormat::new(config.verbose))
    };
    let remote = config.remote.clone().map(cache::remote::Remote::new);
    let cache = match (open_cache(), &remote) {
        (Some(c), Some(r)) => Some(c.with_remote(r.clone())),
        (c, _) => c,
    }
    .map(|c| c.with_explain(config.explain));
    let names: Vec<String> = packages.iter().map(|p| p.name.clone()).collect();
    let mut junit = config
        .junit
        .clone()
        .map(|path| (path, reporter::junit::Junit::new(names.clone())));
    let mut reporter = Reporter::new(
        format,
        names,
        Box::new(std::io::stdout()),
        Progress::new(!config.json),
    )
    .fail_on_flaky(config.fail_flaky);
    scheduler::run(
        Arc::new(config),
        packages,
        runtime,
        cache.clone(),
        scratch.path(),
        |e| {
            if let Some((_, j)) = &mut junit {
                j.event(&e);
            }
            reporter.event(e)
        },
    );
    if let Some(c) = &cache {
        c.flush_packs(None);
        c.save_memo();
    }
    let mut code = reporter.finish();
    if let Some((path, j)) = junit {
        if let Err(e) = j.write(&path) {
            eprintln!("cachet: {e}");
            code = code.max(exit::SETUP_ERROR);
        }
    }
    // Uploads finish after the report, so they never hold it up.
    if let Some(c) = &cache {
        c.upload_packs();
    }
    if let Some(warning) = remote.and_then(|r| r.finish()) {
        eprintln!("cachet: warning: {warning}");
    }
    code
}
