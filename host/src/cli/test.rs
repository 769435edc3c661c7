//! `cachet test [flags] [packages] [-- args for the test binary]`. Its
//! flags ([`TestFlags`]) are also every flag of `cachet inputs`, which
//! must build the same configuration to find what a run stored.

use clap::{Args, ValueEnum};

use super::SandboxArgs;

#[derive(Debug, Args)]
pub struct TestArgs {
    #[command(flatten)]
    pub flags: TestFlags,
    /// Packages: .wasm files, directories, DIR/... (every package below), cargo package dirs.
    pub packages: Vec<String>,
    /// Arguments passed to every test binary.
    #[arg(last = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Default, Args)]
pub struct TestFlags {
    /// Run only the cases whose name matches this regular expression (unanchored, as go test -run).
    #[arg(long, value_name = "REGEX")]
    pub run: Option<String>,
    /// List the cases matching this regular expression instead of running them.
    #[arg(long, value_name = "REGEX")]
    pub list: Option<String>,
    /// Start no new case after the first failure.
    #[arg(long)]
    pub failfast: bool,
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
    /// Say why each case ran instead of using its cached result.
    #[arg(long)]
    pub explain: bool,
    /// Run cached cases anyway and compare with the cached result; a
    /// difference means nondeterminism or an input cachet did not record.
    #[arg(long)]
    pub verify: bool,
    /// Go tests: run with -test.short.
    #[arg(long)]
    pub short: bool,
    /// Go tests: how many t.Parallel tests run at once inside a case (-test.parallel).
    #[arg(long = "parallel", value_name = "N")]
    pub go_parallel: Option<usize>,
    /// Rust target of cargo packages' tests: wasm32-wasip1 or wasm32-wasip2 (default: the package's cargo configuration, else wasm32-wasip1).
    #[arg(long, value_name = "TRIPLE", value_parser = rust_target)]
    pub target: Option<crate::discover::RustTarget>,
    /// Never run a host tool (cargo, go): only prebuilt .wasm modules, for trees you do not trust.
    #[arg(long, env = "CACHET_PREBUILT", value_parser = clap::builder::FalseyValueParser::new())]
    pub prebuilt: bool,
    /// Time limit of compiling one module (default 5m).
    #[arg(long, value_name = "DURATION")]
    pub compile_timeout: Option<String>,
    /// Address space limit of compiling one module (default 4GiB).
    #[arg(long, value_name = "SIZE")]
    pub compile_memory: Option<String>,
    /// Compilers: auto (Winch at once, Cranelift in the background; default), cranelift, winch.
    #[arg(long, value_enum, env = "CACHET_TIER")]
    pub tier: Option<TierArg>,
    /// Where a long run (one that took 1 s or more last time, or a module's
    /// cases in one instance) and every run of a Go test binary runs: apart
    /// (default: in a child process on code without time checks, killed at
    /// its time limit; faster) or here (in cachet's process, stopped by
    /// wasmtime's epoch checks).
    #[arg(long, value_enum, env = "CACHET_LONG_RUNS")]
    pub long_runs: Option<LongRunsArg>,
    /// Share results through a remote cache speaking Bazel's HTTP cache protocol (nginx WebDAV, bazel-remote, ...).
    #[arg(long, value_name = "URL", env = "CACHET_REMOTE_CACHE")]
    pub remote_cache: Option<String>,
    /// Read results from the remote cache but never upload (for untrusted branches).
    #[arg(long, env = "CACHET_REMOTE_CACHE_READ_ONLY", value_parser = clap::builder::FalseyValueParser::new())]
    pub remote_cache_read_only: bool,
    /// Also share compiled modules (native code) through the remote cache: only with a server you trust as you trust your build machines.
    #[arg(long, env = "CACHET_REMOTE_CACHE_COMPILED", value_parser = clap::builder::FalseyValueParser::new())]
    pub remote_cache_compiled: bool,
    /// Run the cases that miss every cache on a REAPI farm (grpc://HOST:PORT, grpcs:// for TLS): BuildGrid, Buildbarn, NativeLink, BuildBuddy.
    #[arg(long, value_name = "URL", env = "CACHET_REMOTE_EXECUTOR")]
    pub remote_executor: Option<String>,
    /// The REAPI instance name on the remote executor (default: the server's default instance).
    #[arg(long, value_name = "NAME", env = "CACHET_REMOTE_INSTANCE")]
    pub remote_instance: Option<String>,
    /// Runs in flight on the remote executor at once (default 256; up to
    /// 8 runs of one module travel in one action).
    #[arg(long, value_name = "N")]
    pub remote_jobs: Option<usize>,
    /// How workers get cachet: upload (default: this binary travels with
    /// the actions; a worker must be able to run it) or installed (only
    /// workers offering the platform property `cachet`, as every `cachet
    /// worker` does, take the actions; nothing is uploaded).
    #[arg(long, value_enum, value_name = "HOW", env = "CACHET_REMOTE_CACHET")]
    pub remote_cachet: Option<RemoteCachetArg>,
    /// Run only shard K of N: count:K/N (every Nth case in order) or hash:K/N (by case name).
    #[arg(long, value_name = "count:K/N|hash:K/N")]
    pub partition: Option<String>,
    /// Also write a JUnit XML report to FILE.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<std::path::PathBuf>,
    /// Run a failing case up to N more times; one that then passes is FLAKY.
    #[arg(long, value_name = "N")]
    pub retries: Option<u32>,
    /// Exit with status 1 when a case was flaky (default: flaky cases pass).
    #[arg(long)]
    pub fail_flaky: bool,
    /// The cachet.toml profile to use (default: `default`; also CACHET_PROFILE).
    #[arg(long, value_name = "NAME", env = "CACHET_PROFILE")]
    pub profile: Option<String>,
}

fn rust_target(s: &str) -> Result<crate::discover::RustTarget, String> {
    crate::discover::RustTarget::parse(s).ok_or_else(|| {
        format!("cachet runs tests built for wasm32-wasip1 or wasm32-wasip2, not {s}")
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FrameworkArg {
    Libtest,
    Go,
    Plain,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TierArg {
    Auto,
    Cranelift,
    Winch,
}

impl From<TierArg> for cachet_runtime::Tier {
    fn from(t: TierArg) -> Self {
        match t {
            TierArg::Auto => cachet_runtime::Tier::Auto,
            TierArg::Cranelift => cachet_runtime::Tier::Cranelift,
            TierArg::Winch => cachet_runtime::Tier::Winch,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LongRunsArg {
    Apart,
    Here,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RemoteCachetArg {
    Upload,
    Installed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum IsolateArg {
    Test,
    Module,
}
