//! [`TestConfig`]: what `cachet test` runs with, and `cachet inputs` looks
//! up with: the flags, then what they leave unset from `cachet.toml`'s
//! profile, validated; the per-package overrides of the profile.

use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;

use super::parse::{one_line, size_flag};
use super::project::{self, OverrideSettings};
use super::sandbox::{MountRules, SandboxConfig};
use super::{ConfigError, Partition};
use crate::cli::{FrameworkArg, IsolateArg, TestFlags};
use crate::framework::{Framework, OutputMode, RunFlags};
use crate::units::parse_duration;

/// How jobs are cut: one instance per case, or one per module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isolate {
    Test,
    Module,
}

/// Where a package's files appear to its guest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    /// `cachet test`: the package read-only at `.` (a Go package's module
    /// and GOROOT at fixed paths, see `plan.rs`), `TMPDIR` set, `--mount`s.
    #[default]
    Package,
    /// `cachet exec`: exactly the mounts and the environment asked for, as
    /// under `wasmtime run`. A test binary (`test_binary`: a libtest or Go
    /// module, which cargo's runner and `go test -exec` run) also gets what
    /// those runners assume: the current directory
    /// read-only at `guest_cwd` (its absolute path) and at `.`, `PWD`, and
    /// a scratch `/tmp`.
    Exec {
        cwd: PathBuf,
        guest_cwd: String,
        test_binary: bool,
    },
}

/// What `cachet.toml` changes for some packages.
#[derive(Clone, Debug, Default)]
pub struct PackageOverride {
    pub packages: String,
    pub retries: Option<u32>,
    pub sandbox: SandboxConfig,
}

#[derive(Debug, Default)]
pub struct TestConfig {
    pub run: Option<Regex>,
    pub list: Option<Regex>,
    pub failfast: bool,
    pub count: u32,
    /// The sandbox of every case (before per-package overrides).
    pub sandbox: SandboxConfig,
    /// `--prebuilt`: never run cargo or any other host tool.
    pub prebuilt: bool,
    /// `--target`: the Rust target of cargo packages' tests.
    pub target: Option<crate::discover::RustTarget>,
    /// `--short`, `--parallel`: Go's `-test.short` and `-test.parallel`.
    pub flags: RunFlags,
    pub compile_timeout: Duration,
    pub compile_memory: u64,
    /// `--tier`: which compilers make a module's code.
    pub tier: cachet_runtime::Tier,
    /// `--long-runs apart`: long runs and Go's runs go to a child process
    /// whose time limit is a kill (`job::run_local`).
    pub runs_apart: bool,
    pub mode: OutputMode,
    pub parallel: usize,
    pub framework: Option<Framework>,
    pub isolate: Option<Isolate>,
    pub packages: Vec<String>,
    pub args: Vec<String>,
    /// Results may come from and go to the cache (off with `--count`, as
    /// `go test -count=1`).
    pub cache: bool,
    pub explain: bool,
    pub verify: bool,
    pub layout: Layout,
    /// `--remote-cache`: shared results.
    pub remote: Option<crate::cache::RemoteConfig>,
    /// `--remote-executor`: where misses run, how many at once, and how
    /// the workers get cachet.
    pub executor: Option<ExecutorConfig>,
    /// `--partition`: only this shard's cases.
    pub partition: Option<Partition>,
    /// `--junit FILE`.
    pub junit: Option<PathBuf>,
    /// `--retries N`: attempts after a failure.
    pub retries: u32,
    /// `--fail-flaky`: a flaky case fails the run.
    pub fail_flaky: bool,
    /// Per-package settings from `cachet.toml`, in order (later wins).
    pub overrides: Vec<PackageOverride>,
}

/// `--remote-executor`, `--remote-jobs`, `--remote-cachet`.
#[derive(Clone, Debug)]
pub struct ExecutorConfig {
    pub endpoint: crate::reapi::Endpoint,
    /// Runs in flight at once.
    pub jobs: usize,
    pub cachet: WorkerCachet,
}

/// How an action's worker gets cachet (`--remote-cachet`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WorkerCachet {
    /// This binary is part of every action's input root (uploaded once).
    #[default]
    Upload,
    /// The worker's own: only workers offering the platform property
    /// `cachet=PROTOCOL` take the action, and nothing of cachet is uploaded.
    Installed,
}

impl From<crate::cli::RemoteCachetArg> for WorkerCachet {
    fn from(c: crate::cli::RemoteCachetArg) -> Self {
        match c {
            crate::cli::RemoteCachetArg::Upload => WorkerCachet::Upload,
            crate::cli::RemoteCachetArg::Installed => WorkerCachet::Installed,
        }
    }
}

/// Runs in flight on a remote executor: a farm's worth, not this
/// machine's cores (each waits on the network, not on a core here). Runs
/// of one module share actions, so this is 32 actions or more.
pub const DEFAULT_REMOTE_JOBS: usize = 256;

impl TestConfig {
    /// The configuration of `cachet test` (and `cachet inputs`): the
    /// flags, then what they leave unset from `cachet.toml`'s profile
    /// found from `cwd`, and the profile's overrides.
    pub fn load(
        mut flags: TestFlags,
        packages: Vec<String>,
        args: Vec<String>,
        cwd: &Path,
    ) -> Result<TestConfig, ConfigError> {
        let project = project::load(cwd, flags.profile.as_deref())?;
        project.apply(&mut flags);
        let mut config = TestConfig::from_flags(flags, packages, args)?;
        config.overrides = project
            .overrides()
            .iter()
            .map(|o| {
                PackageOverride::parse(o).map_err(|e| ConfigError::Override {
                    file: project::FILE_NAME,
                    packages: o.packages.clone(),
                    error: Box::new(e),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(config)
    }

    /// The configuration the flags alone give.
    pub fn from_flags(
        flags: TestFlags,
        packages: Vec<String>,
        args: Vec<String>,
    ) -> Result<Self, ConfigError> {
        let regex = |flag: &'static str, p: Option<String>| -> Result<Option<Regex>, ConfigError> {
            p.map(|p| {
                Regex::new(&p).map_err(|e| ConfigError::Regex {
                    flag,
                    reason: one_line(&e.to_string()),
                    pattern: p,
                })
            })
            .transpose()
        };
        let mut sandbox = SandboxConfig::from_args(&flags.sandbox, MountRules::Test)?;
        // `cachet test`'s default limit, as `go test`'s.
        sandbox.timeout.get_or_insert(Some(DEFAULT_TIMEOUT));
        let remote = flags
            .remote_cache
            .as_deref()
            .filter(|u| !u.is_empty())
            .map(|u| crate::cache::RemoteConfig::new(u, flags.remote_cache_read_only))
            .transpose()?
            .map(|r| r.sharing_compiled(flags.remote_cache_compiled));
        if flags.remote_cache_compiled && remote.is_none() {
            return Err(ConfigError::CompiledWithoutRemote);
        }
        let executor = match flags.remote_executor.as_deref().filter(|u| !u.is_empty()) {
            None => None,
            Some(url) => {
                let instance = flags.remote_instance.as_deref().unwrap_or("");
                let endpoint = crate::reapi::Endpoint::configured(url, instance)
                    .map_err(|e| ConfigError::Executor(e.to_string()))?;
                let jobs = flags.remote_jobs.unwrap_or(DEFAULT_REMOTE_JOBS);
                if jobs == 0 {
                    return Err(ConfigError::RemoteJobs);
                }
                Some(ExecutorConfig {
                    endpoint,
                    jobs,
                    cachet: flags
                        .remote_cachet
                        .map_or_else(Default::default, Into::into),
                })
            }
        };
        let partition = flags
            .partition
            .as_deref()
            .map(Partition::parse)
            .transpose()?;
        let compile_timeout = match &flags.compile_timeout {
            Some(t) => parse_duration(t)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| ConfigError::Duration("compile-timeout", t.clone()))?,
            None => cachet_runtime::DEFAULT_COMPILE_TIMEOUT,
        };
        let compile_memory = size_flag("compile-memory", &flags.compile_memory)?
            .unwrap_or(cachet_runtime::DEFAULT_COMPILE_MEMORY);
        let parallel = flags.parallel.unwrap_or_else(cores);
        if parallel == 0 {
            return Err(ConfigError::Parallel(0));
        }
        if flags.count == Some(0) {
            return Err(ConfigError::Count);
        }
        Ok(TestConfig {
            run: regex("run", flags.run)?,
            list: regex("list", flags.list)?,
            failfast: flags.failfast,
            count: flags.count.unwrap_or(1),
            sandbox,
            prebuilt: flags.prebuilt,
            target: flags.target,
            flags: RunFlags {
                short: flags.short,
                parallel: flags.go_parallel,
            },
            compile_timeout,
            compile_memory,
            tier: flags.tier.map_or(cachet_runtime::Tier::Auto, Into::into),
            runs_apart: flags.long_runs != Some(crate::cli::LongRunsArg::Here),
            mode: if flags.json {
                OutputMode::Json
            } else if flags.verbose {
                OutputMode::Verbose
            } else {
                OutputMode::Quiet
            },
            parallel,
            framework: flags.framework.map(|f| match f {
                FrameworkArg::Libtest => Framework::Libtest,
                FrameworkArg::Go => Framework::Go,
                FrameworkArg::Plain => Framework::Plain,
            }),
            isolate: flags.isolate.map(|i| match i {
                IsolateArg::Test => Isolate::Test,
                IsolateArg::Module => Isolate::Module,
            }),
            packages: if packages.is_empty() {
                vec![".".to_string()]
            } else {
                packages
            },
            args,
            cache: flags.count.is_none(),
            explain: flags.explain,
            verify: flags.verify,
            layout: Layout::Package,
            remote,
            executor,
            partition,
            junit: flags.junit,
            retries: flags.retries.unwrap_or(0),
            fail_flaky: flags.fail_flaky,
            overrides: Vec::new(),
        })
    }

    /// The sandbox of `package`'s cases: the run's, with the overrides that
    /// name the package on top, in order.
    pub fn sandbox_for(&self, package: &str) -> SandboxConfig {
        let mut s = self.sandbox.clone();
        for o in self.overrides_for(package) {
            s.overlay(&o.sandbox);
        }
        s
    }

    /// The overrides that apply to `package`, in order.
    fn overrides_for<'a>(&'a self, package: &'a str) -> impl Iterator<Item = &'a PackageOverride> {
        self.overrides
            .iter()
            .filter(move |o| project::matches(&o.packages, package))
    }

    /// Attempts after a failure for `package`'s cases.
    pub fn retries_for(&self, package: &str) -> u32 {
        self.overrides_for(package)
            .filter_map(|o| o.retries)
            .last()
            .unwrap_or(self.retries)
    }

    /// Whether results may go to a remote cache: not `cachet exec`'s, whose
    /// mount layout holds the current directory's host path.
    pub fn shares_results(&self) -> bool {
        self.layout == Layout::Package
    }

    /// Whether `-v` output streams as cases write it: as `go test`, with
    /// one package or `-p 1`; never for `cachet exec`, which prints cases
    /// whole, in order.
    pub fn live_output(&self, packages: usize) -> bool {
        self.mode == OutputMode::Verbose
            && (self.parallel == 1 || packages == 1)
            && self.layout == Layout::Package
    }

    /// What discovery may build, and for which target.
    pub fn build(&self) -> crate::discover::Build {
        match self.prebuilt {
            true => crate::discover::Build::Never,
            false => crate::discover::Build::Allowed {
                target: self.target,
            },
        }
    }

    /// Whether wasm runs without a time limit (`--timeout 0`).
    pub fn unlimited_time(&self) -> bool {
        self.sandbox.timeout == Some(None)
    }
}

/// `cachet test`'s time limit per case, as `go test`'s.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// The default of `-p`.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl PackageOverride {
    fn parse(o: &OverrideSettings) -> Result<PackageOverride, ConfigError> {
        if o.sandbox.stack.is_some() {
            return Err(ConfigError::OverrideStack(o.packages.clone()));
        }
        Ok(PackageOverride {
            packages: o.packages.clone(),
            retries: o.retries,
            sandbox: SandboxConfig::from_args(&o.sandbox, MountRules::Test)?,
        })
    }
}
