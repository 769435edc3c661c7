//! `cachet`: a test executor for WebAssembly test binaries.
//!
//! ```text
//! cli ──► config ──► discover (+cargo, go build) ──► plan ──► scheduler ──► job
//!                                                                 │        │  ▲
//!                                           events ◄──────────────┘   cache  runtime
//!                                              ▼                             (cachet-runtime)
//!                                           reporter (text | json | junit | native) ──► stdout
//! ```
//!
//! Each idea has one home: `framework/` (one file per harness), `config/`
//! (one `SandboxConfig` from flag to policy, `cachet.toml`), `cache/` (keys,
//! lookups, local and remote), `reporter/` (every output format). `main`
//! is the only place the pipeline is wired. Design notes:
//! `docs/design/architecture.md`, `sandbox.md`, `scheduler.md`, `cache.md`.

pub mod artifact;
pub mod cache;
pub mod cli;
pub mod config;
pub mod discover;
pub mod event;
pub mod exec;
pub mod exit;
pub mod framework;
pub mod home;
pub mod inputs;
pub mod job;
pub mod plan;
pub mod reapi;
pub mod remote_exec;
pub mod reporter;
pub mod scheduler;
pub mod units;
pub mod workdir;
pub mod worker;

use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::config::TestConfig;
use crate::framework::OutputMode;
use crate::reporter::{JsonFormat, Progress, Reporter, TextFormat};

/// Parses `args`, runs the command, and returns its exit status.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let mut args: Vec<OsString> = args.into_iter().collect();
    // Run by cargo as its rustc wrapper while cachet builds a package.
    if let Some(code) = discover::wrap_rustc(&args) {
        return code;
    }
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
                .filter(|s| ["exec", "inputs", "clean", "worker"].contains(s))
                .unwrap_or("test");
            eprintln!("cachet: {first}; see `cachet {sub} --help`");
            return ExitCode::from(exit::SETUP_ERROR);
        }
    };
    let code = match cli.command {
        Command::Exec(args) => exec::run(args),
        Command::Inputs(args) => inputs::run(args, home::open_cache()),
        Command::Clean(args) => home::clean(args.results),
        Command::RunAction { manifest } => remote_exec::run_action(&manifest),
        Command::RunApart => cachet_runtime::serve(),
        Command::Worker(args) => match worker_config(args) {
            Ok(config) => worker::run(config),
            Err(e) => {
                eprintln!("cachet worker: {e}");
                exit::SETUP_ERROR
            }
        },
        Command::Compile(a) => {
            match cachet_runtime::compile_child(
                &a.input,
                &a.output,
                &a.key,
                a.stack,
                a.memory,
                a.epochs != 0,
                a.compiler == "winch",
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
fn test_config(args: cli::TestArgs) -> Result<TestConfig, config::ConfigError> {
    let cwd = std::env::current_dir().map_err(|e| config::ConfigError::Cwd(e.to_string()))?;
    TestConfig::load(args.flags, args.packages, args.args, &cwd)
}

/// `cachet worker`'s flags, checked.
fn worker_config(args: cli::WorkerArgs) -> Result<worker::WorkerConfig, String> {
    let endpoint = reapi::Endpoint::configured(&args.buildgrid, &args.remote_instance)
        .map_err(|e| e.to_string())?;
    let mut properties = Vec::new();
    for p in &args.properties {
        let Some((k, v)) = p.split_once('=') else {
            return Err(format!("--property {p}: write it KEY=VALUE"));
        };
        if k == remote_exec::PROPERTY {
            return Err(format!(
                "--property {p}: the worker offers {k}={} itself (the protocol its cachet speaks)",
                remote_exec::protocol()
            ));
        }
        properties.push((k.to_string(), v.to_string()));
    }
    let capacity = match args.capacity {
        Some(0) => return Err("--capacity 0: a bot runs at least one action".into()),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let store_limit = units::parse_size(&args.store_size).ok_or_else(|| {
        format!(
            "--store-size {}: write a size such as 512MiB or 20G",
            args.store_size
        )
    })?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "cachet".into());
    Ok(worker::WorkerConfig {
        endpoint,
        capacity,
        work_dir: args.work_dir.unwrap_or_else(|| {
            home::cache_dir()
                .unwrap_or_else(|| std::env::temp_dir().join("cachet"))
                .join("worker")
        }),
        store_limit,
        bot_id: args
            .bot_id
            .unwrap_or_else(|| format!("{host}-{}", std::process::id())),
        properties,
    })
}

fn test(config: TestConfig) -> u8 {
    let build = config.build();
    let packages = discover::discover(
        &config.packages,
        build,
        home::cache_dir().map(|d| d.join("go-test")).as_deref(),
    );
    let scratch = match workdir::Workdir::create() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cachet: {}", job::SetupError::scratch(e));
            return exit::SETUP_ERROR;
        }
    };
    let json = config.mode == OutputMode::Json;
    let format: Box<dyn reporter::Format> = if json {
        Box::new(JsonFormat::default())
    } else {
        Box::new(TextFormat::new(config.mode == OutputMode::Verbose))
    };
    let remote = config.remote.clone().map(cache::remote::Remote::new);
    let cache = match (home::open_cache(), &remote) {
        (Some(c), Some(r)) => Some(c.with_remote(r.clone())),
        (c, _) => c,
    }
    .map(|c| c.with_explain(config.explain));
    let mut runtime = job::runtime_for(&config, config.unlimited_time());
    if let Some(r) = remote.as_ref().filter(|r| r.shares_compiled()) {
        let store = cache::remote::RemoteCompiled(r.clone());
        runtime = runtime.sharing_compiled(cachet_runtime::SharedCompiled(Arc::new(store)));
    }
    if let Some(c) = &cache {
        runtime = runtime.remembering_compiled(c.compiled_memo());
    }
    let runtime = Arc::new(runtime);
    let explain_modules = (config.explain && !json).then(|| runtime.clone());
    let names: Vec<String> = packages.iter().map(|p| p.name.clone()).collect();
    let mut junit = config
        .junit
        .clone()
        .map(|path| (path, reporter::junit::Junit::new(names.clone())));
    let mut reporter = Reporter::new(
        format,
        names,
        Box::new(std::io::stdout()),
        Progress::new(!json),
    )
    .fail_on_flaky(config.fail_flaky);
    let executed = scheduler::run(
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
    if let Some(line) = executed {
        eprintln!("cachet: {line}");
    }
    if let Some(s) = explain_modules.and_then(|r| r.stats()) {
        println!(
            "cachet: explain: modules: {} compiled by Cranelift ({} after starting on Winch), {} by Winch, {} from the local cache, {} from the remote cache",
            s.compiled, s.upgraded, s.winch, s.loaded_from_disk, s.fetched
        );
        println!(
            "cachet: explain: runs apart: {} in {} child process{} (on code without time checks)",
            s.apart,
            s.servers,
            if s.servers == 1 { "" } else { "es" }
        );
        if let Some(r) = &remote {
            let n = r
                .stats
                .timings_hits
                .load(std::sync::atomic::Ordering::Relaxed);
            let s = if n == 1 { "" } else { "s" };
            println!("cachet: explain: job timings from the remote cache: {n} package{s}");
        }
    }
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
