//! `cachet exec [flags] MODULE [ARGS...]`: run one module as if directly,
//! sandboxed; the runner behind `go test -exec` and cargo's
//! `CARGO_TARGET_WASM32_WASIP1_RUNNER`.

use std::path::PathBuf;

use clap::Args;

use super::SandboxArgs;

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Mount a host directory, wasmtime-style: HOST::GUEST (GUEST defaults to HOST's absolute path), read-only unless :rw is added; GUEST may be /.
    #[arg(long = "dir", value_name = "HOST[::GUEST][:rw]")]
    pub dir: Vec<String>,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// Always run the module directly: never serve or fill the cache.
    #[arg(long)]
    pub no_cache: bool,
    /// After a test invocation, say on stderr how many cases came from the cache.
    #[arg(long, env = "CACHET_EXEC_SUMMARY", value_parser = clap::builder::FalseyValueParser::new())]
    pub summary: bool,
    /// How many cases run at once when a test invocation runs per case (default: the number of cores).
    #[arg(short = 'p', value_name = "N")]
    pub parallel: Option<usize>,
    /// Where a test invocation's long runs and Go's runs run, as for `cachet test`: apart (default: in a child process on code without time checks, killed at its time limit) or here.
    #[arg(long, value_enum, env = "CACHET_LONG_RUNS")]
    pub long_runs: Option<super::LongRunsArg>,
    /// The WebAssembly module (a .wasm file, or a Go test binary such as pkg.test).
    pub module: PathBuf,
    /// Arguments for the module, passed as they are.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}
