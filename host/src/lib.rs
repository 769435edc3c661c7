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
pub mod cli;
pub mod config;
pub mod discover;
pub mod event;
pub mod exit;
pub mod framework;
pub mod plan;
pub mod reporter;
pub mod scheduler;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use cachet_runtime::{Runtime, RuntimeConfig};
use clap::Parser;

use crate::cli::{Cli, Command};
use crate::config::TestConfig;
use crate::reporter::{JsonFormat, Progress, Reporter, TextFormat};

/// Parses `args`, runs the command, and returns its exit status.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
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
            eprintln!("cachet: {first}; see `cachet test --help`");
            return ExitCode::from(exit::SETUP_ERROR);
        }
    };
    let code = match cli.command {
        Command::Test(args) => match TestConfig::from_args(args) {
            Ok(config) => test(config),
            Err(e) => {
                eprintln!("cachet: {e}");
                exit::SETUP_ERROR
            }
        },
    };
    ExitCode::from(code)
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

fn test(config: TestConfig) -> u8 {
    let packages = discover::discover(&config.packages);
    let runtime = match Runtime::new(RuntimeConfig {
        compiled_cache: cache_dir().map(|d| d.join("compiled")),
    }) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            eprintln!("cachet: {e}");
            return exit::SETUP_ERROR;
        }
    };
    let scratch = match tempfile::Builder::new().prefix("cachet-").tempdir() {
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
    let cache = cache_dir().and_then(|dir| match cache::Cache::open(&dir.join("results")) {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("cachet: warning: cannot open the result cache in {}: {e}; running without it (set CACHET_CACHE)", dir.display());
            None
        }
    });
    let names = packages.iter().map(|p| p.name.clone()).collect();
    let mut reporter = Reporter::new(
        format,
        names,
        Box::new(std::io::stdout()),
        Progress::new(!config.json),
    );
    scheduler::run(
        Arc::new(config),
        packages,
        runtime,
        cache,
        scratch.path(),
        |e| reporter.event(e),
    );
    reporter.finish()
}
