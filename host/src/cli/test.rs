//! `cachet test [flags] [packages] [-- args for the test binary]`

use clap::{Args, ValueEnum};

use super::SandboxArgs;

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Run only the cases whose name matches this regular expression (unanchored, as go test -run).
    #[arg(long, value_name = "REGEX")]
    pub run: Option<String>,
    /// List the cases matching this regular expression instead of running them.
    #[arg(long, value_name = "REGEX")]
    pub list: Option<String>,
    /// Start no new case after the first failure.
    #[arg(long)]
    pub failfast: bool,
    /// Per-case time limit, in Go duration syntax (10m, 1m30s, 500ms); 0 means none.
    #[arg(long, value_name = "DURATION", default_value = "10m")]
    pub timeout: String,
    /// Run each case N times.
    #[arg(long, value_name = "N")]
    pub count: Option<u32>,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// Show every case's output and result, not just failures.
    #[arg(short = 'v')]
    pub verbose: bool,
    /// Print `go test -json` (test2json) events.
    #[arg(long)]
    pub json: bool,
    /// How many cases run at once (default: the number of cores).
    #[arg(short = 'p', value_name = "N")]
    pub parallel: Option<usize>,
    /// Test framework of every module, instead of detecting it.
    #[arg(long, value_enum)]
    pub framework: Option<FrameworkArg>,
    /// Run each case in its own instance (test), or each module in one (module).
    #[arg(long, value_enum)]
    pub isolate: Option<IsolateArg>,
    /// Packages: .wasm files, directories, DIR/... (every package below), cargo package dirs.
    pub packages: Vec<String>,
    /// Say why each case ran instead of using its cached result.
    #[arg(long)]
    pub explain: bool,
    /// Run cached cases anyway and compare with the cached result; a
    /// difference means nondeterminism or an input cachet did not record.
    #[arg(long)]
    pub verify: bool,
    /// Never run a host tool (cargo): only prebuilt .wasm modules, for trees you do not trust.
    #[arg(long, env = "CACHET_PREBUILT", value_parser = clap::builder::FalseyValueParser::new())]
    pub prebuilt: bool,
    /// Time limit of compiling one module (default 5m).
    #[arg(long, value_name = "DURATION")]
    pub compile_timeout: Option<String>,
    /// Address space limit of compiling one module (default 4GiB).
    #[arg(long, value_name = "SIZE")]
    pub compile_memory: Option<String>,
    /// Arguments passed to every test binary.
    #[arg(last = true)]
    pub args: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FrameworkArg {
    Libtest,
    Plain,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum IsolateArg {
    Test,
    Module,
}
