//! Configuration: the validated settings of a run, built from the parsed
//! flags and `cachet.toml` before anything runs (regexes compiled,
//! durations and sizes parsed, mounts checked). Every error reads as one
//! line saying what to fix.
//!
//! - `test.rs`: [`TestConfig`], what `cachet test` and `cachet inputs` run with;
//! - `sandbox.rs`: [`SandboxConfig`], the sandbox from flag to policy;
//! - `project.rs`: `cachet.toml` profiles and per-package overrides;
//! - `parse.rs`, `partition.rs`: size flags and one-line messages, `--partition`
//!   (durations and sizes themselves are `crate::units`).

mod parse;
mod partition;
pub mod project;
mod sandbox;
mod test;

pub use parse::one_line;
pub use partition::Partition;
pub use sandbox::{
    check_distinct, mount_name, normal_guest, parse_dir, parse_mount, ExtraMount, MountRules,
    SandboxConfig, DEV_MOUNT, GOROOT_MOUNT, GO_MODULE_MOUNT, NO_TIME_LIMIT, PACKAGE_MOUNT,
};
pub use test::{cores, ExecutorConfig, Isolate, Layout, PackageOverride, TestConfig, WorkerCachet};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--remote-cache-compiled shares compiled modules through the remote cache: give --remote-cache URL too")]
    CompiledWithoutRemote,
    #[error("--remote-executor {0}")]
    Executor(String),
    #[error("--remote-jobs 0: give at least 1 action in flight")]
    RemoteJobs,
    #[error("invalid --{flag} regular expression {pattern:?}: {reason}")]
    Regex {
        flag: &'static str,
        pattern: String,
        reason: String,
    },
    #[error("invalid --{0} {1:?}: use Go duration syntax such as 10m, 1m30s or 500ms")]
    Duration(&'static str, String),
    #[error("invalid --{0} {1:?}: use bytes or a size such as 512MiB or 2G")]
    Size(&'static str, String),
    #[error("invalid --stack {0:?}: give between 64KiB and 1GiB")]
    Stack(String),
    #[error("invalid --open-files 0: give at least 1")]
    OpenFiles,
    #[error("invalid --env {0:?}: use NAME=VALUE, or NAME to pass the host's value")]
    Env(String),
    #[error("--env {0}: the variable is not set on the host; give a value with {0}=VALUE")]
    EnvUnset(String),
    #[error("invalid --mount {0:?}: use HOST:GUEST or HOST:GUEST:rw with an absolute GUEST path")]
    Mount(String),
    #[error("invalid --dir {0:?}: use HOST, HOST::GUEST with an absolute GUEST path, and :rw to make it writable")]
    Dir(String),
    #[error("--mount {0}: no such directory on the host")]
    MountMissing(String),
    #[error("invalid --mount {0:?}: {1} is cachet's own (the package's scratch dir or the root); mount at another guest path")]
    MountReserved(String, String),
    #[error("two mounts at {guest} ({first} and {second}); give each its own guest path")]
    MountTwice {
        guest: String,
        first: String,
        second: String,
    },
    #[error("invalid -p {0}: give at least 1")]
    Parallel(usize),
    #[error("invalid --count 0: give at least 1")]
    Count,
    #[error(
        "invalid --partition {0:?}: use count:K/N or hash:K/N with 1 <= K <= N, such as hash:1/4"
    )]
    Partition(String),
    #[error(transparent)]
    Remote(#[from] crate::cache::remote::RemoteConfigError),
    #[error(transparent)]
    Project(#[from] project::ProjectError),
    #[error("{file}: the override for {packages:?}: {error}")]
    Override {
        file: &'static str,
        packages: String,
        error: Box<ConfigError>,
    },
    #[error("the override for {0:?} sets the stack, which is one engine setting for the whole run; set it in the profile or with --stack")]
    OverrideStack(String),
    #[error("cannot read the current directory: {0}")]
    Cwd(String),
    #[error("the current directory's path is not UTF-8; run from another")]
    CwdNotUtf8,
    #[error("{0}: no such file")]
    NoModule(String),
}
