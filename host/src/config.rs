//! The validated configuration of `cachet test`, built from the parsed flags
//! before anything runs (regexes compiled, durations and sizes parsed, mounts
//! checked). Every error reads as one line saying what to fix.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;

use crate::cli::{FrameworkArg, IsolateArg, SandboxArgs, TestArgs};
use crate::framework::Framework;

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
    /// `cachet exec`: exactly the mounts asked for, then the current
    /// directory read-only at `guest_cwd` (its absolute path) and at `.`,
    /// and exactly the environment given.
    Exec { cwd: PathBuf, guest_cwd: String },
}

/// An extra `--mount`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtraMount {
    /// Logical name in input logs: the guest path without slashes.
    pub name: String,
    pub host: PathBuf,
    pub guest: String,
    pub writable: bool,
}

#[derive(Debug)]
pub struct TestConfig {
    pub run: Option<Regex>,
    pub list: Option<Regex>,
    pub failfast: bool,
    /// `None`: no time limit (`--timeout 0`).
    pub timeout: Option<Duration>,
    pub count: u32,
    pub env: BTreeMap<String, String>,
    pub mounts: Vec<ExtraMount>,
    pub memory: Option<u64>,
    /// The wasm stack of every case (one engine setting for the whole run).
    pub stack: Option<usize>,
    pub output_limit: Option<usize>,
    pub tmp_limit: Option<u64>,
    pub open_files: Option<u32>,
    /// `--hermetic`: the seed of the virtual run.
    pub hermetic: Option<u64>,
    /// `--prebuilt`: never run cargo or any other host tool.
    pub prebuilt: bool,
    /// `--short`, `--parallel`: Go's `-test.short` and `-test.parallel`.
    pub short: bool,
    pub go_parallel: Option<usize>,
    pub compile_timeout: Duration,
    pub compile_memory: u64,
    pub verbose: bool,
    pub json: bool,
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
    pub remote: Option<crate::cache::remote::RemoteConfig>,
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

/// `--partition count:K/N` or `hash:K/N`: shard K (1-based) of N.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partition {
    pub by_hash: bool,
    pub shard: u64,
    pub total: u64,
}

impl Partition {
    pub fn parse(spec: &str) -> Result<Partition, ConfigError> {
        let bad = || ConfigError::Partition(spec.to_string());
        let (kind, rest) = spec.split_once(':').ok_or_else(bad)?;
        let by_hash = match kind {
            "count" => false,
            "hash" => true,
            _ => return Err(bad()),
        };
        let (k, n) = rest.split_once('/').ok_or_else(bad)?;
        let (shard, total): (u64, u64) =
            (k.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
        if total == 0 || shard == 0 || shard > total {
            return Err(bad());
        }
        Ok(Partition {
            by_hash,
            shard,
            total,
        })
    }

    /// Whether the case at `index` (in the order of the whole unsharded
    /// run) of `package` named `case` belongs to this shard. By count:
    /// every Nth case, so shards get equal numbers; by hash: by the name
    /// alone, so a case stays in its shard as others come and go.
    pub fn selects(&self, index: usize, package: &str, case: &str) -> bool {
        let slot = if self.by_hash {
            let d = cachet_runtime::Sha256Digest::of(format!("{package}\0{case}").as_bytes());
            u64::from_le_bytes(d.0[..8].try_into().expect("8 bytes")) % self.total
        } else {
            index as u64 % self.total
        };
        slot == self.shard - 1
    }
}

/// What `cachet.toml` changes for some packages.
#[derive(Clone, Debug, Default)]
pub struct PackageOverride {
    pub packages: String,
    /// `Some(None)`: no time limit.
    pub timeout: Option<Option<Duration>>,
    pub retries: Option<u32>,
    pub env: BTreeMap<String, String>,
    pub mounts: Vec<ExtraMount>,
    pub memory: Option<u64>,
    pub output_limit: Option<usize>,
    pub tmp_limit: Option<u64>,
    pub open_files: Option<u32>,
}

impl PackageOverride {
    pub fn parse(
        o: &crate::project::OverrideSettings,
        project: &crate::project::Project,
    ) -> Result<PackageOverride, ConfigError> {
        let sandbox = SandboxArgs {
            env: o.env.clone().unwrap_or_default(),
            memory: o.memory.clone(),
            output_limit: o.output_limit.clone(),
            tmp_limit: o.tmp_limit.clone(),
            open_files: o.open_files,
            ..SandboxArgs::default()
        };
        let parsed = SandboxConfig::from_args(&sandbox)?;
        let timeout = o
            .timeout
            .as_ref()
            .map(|t| {
                parse_duration(t)
                    .map(|d| (!d.is_zero()).then_some(d))
                    .ok_or_else(|| ConfigError::Duration("timeout", t.clone()))
            })
            .transpose()?;
        let mounts = o
            .mount
            .iter()
            .flatten()
            .map(|m| parse_mount(&project.mount_path(m)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PackageOverride {
            packages: o.packages.clone(),
            timeout,
            retries: o.retries,
            env: parsed.env,
            mounts,
            memory: parsed.memory,
            output_limit: parsed.output_limit,
            tmp_limit: parsed.tmp_limit,
            open_files: parsed.open_files,
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
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
    #[error("{0}")]
    Remote(String),
}

impl TestConfig {
    pub fn from_args(args: TestArgs) -> Result<Self, ConfigError> {
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
        let timeout_text = args.timeout.clone().unwrap_or_else(|| "10m".into());
        let timeout = parse_duration(&timeout_text)
            .ok_or_else(|| ConfigError::Duration("timeout", timeout_text.clone()))?;
        let remote = args
            .remote_cache
            .as_deref()
            .filter(|u| !u.is_empty())
            .map(|u| crate::cache::remote::RemoteConfig::new(u, args.remote_cache_read_only))
            .transpose()
            .map_err(ConfigError::Remote)?;
        let partition = args
            .partition
            .as_deref()
            .map(Partition::parse)
            .transpose()?;
        let compile_timeout = match &args.compile_timeout {
            Some(t) => parse_duration(t)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| ConfigError::Duration("compile-timeout", t.clone()))?,
            None => cachet_runtime::DEFAULT_COMPILE_TIMEOUT,
        };
        let compile_memory = size_flag("compile-memory", &args.compile_memory)?
            .unwrap_or(cachet_runtime::DEFAULT_COMPILE_MEMORY);
        let sandbox = SandboxConfig::from_args(&args.sandbox)?;
        let mounts = args
            .sandbox
            .mount
            .iter()
            .map(|m| parse_mount(m))
            .collect::<Result<Vec<_>, _>>()?;
        check_distinct(&mounts)?;
        let parallel = args
            .parallel
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if parallel == 0 {
            return Err(ConfigError::Parallel(0));
        }
        if args.count == Some(0) {
            return Err(ConfigError::Count);
        }
        Ok(TestConfig {
            run: regex("run", args.run)?,
            list: regex("list", args.list)?,
            failfast: args.failfast,
            timeout: (!timeout.is_zero()).then_some(timeout),
            count: args.count.unwrap_or(1),
            env: sandbox.env,
            mounts,
            memory: sandbox.memory,
            stack: sandbox.stack,
            output_limit: sandbox.output_limit,
            tmp_limit: sandbox.tmp_limit,
            open_files: sandbox.open_files,
            hermetic: sandbox.hermetic,
            prebuilt: args.prebuilt,
            short: args.short,
            go_parallel: args.go_parallel,
            compile_timeout,
            compile_memory,
            verbose: args.verbose,
            json: args.json,
            parallel,
            framework: args.framework.map(|f| match f {
                FrameworkArg::Libtest => Framework::Libtest,
                FrameworkArg::Go => Framework::Go,
                FrameworkArg::Plain => Framework::Plain,
            }),
            isolate: args.isolate.map(|i| match i {
                IsolateArg::Test => Isolate::Test,
                IsolateArg::Module => Isolate::Module,
            }),
            packages: if args.packages.is_empty() {
                vec![".".to_string()]
            } else {
                args.packages
            },
            args: args.args,
            cache: args.count.is_none(),
            explain: args.explain,
            verify: args.verify,
            layout: Layout::Package,
            remote,
            partition,
            junit: args.junit,
            retries: args.retries.unwrap_or(0),
            fail_flaky: args.fail_flaky,
            overrides: Vec::new(),
        })
    }
}

/// The sandbox flags shared by `cachet test` and `cachet exec`, parsed
/// (mounts apart: each command places them its own way).
#[derive(Debug, Default)]
pub struct SandboxConfig {
    pub env: BTreeMap<String, String>,
    pub memory: Option<u64>,
    pub stack: Option<usize>,
    pub output_limit: Option<usize>,
    pub tmp_limit: Option<u64>,
    pub open_files: Option<u32>,
    pub hermetic: Option<u64>,
}

impl SandboxConfig {
    pub fn from_args(args: &SandboxArgs) -> Result<Self, ConfigError> {
        let memory = size_flag("memory", &args.memory)?;
        let stack = size_flag("stack", &args.stack)?;
        if let (Some(s), Some(text)) = (stack, &args.stack) {
            if !(64 << 10..=1 << 30).contains(&s) {
                return Err(ConfigError::Stack(text.clone()));
            }
        }
        let output_limit = size_flag("output-limit", &args.output_limit)?;
        let tmp_limit = size_flag("tmp-limit", &args.tmp_limit)?;
        if args.open_files == Some(0) {
            return Err(ConfigError::OpenFiles);
        }
        let mut env = BTreeMap::new();
        for e in &args.env {
            let (name, value) = match e.split_once('=') {
                Some((n, v)) => (n.to_string(), v.to_string()),
                None => (
                    e.clone(),
                    std::env::var(e).map_err(|_| ConfigError::EnvUnset(e.clone()))?,
                ),
            };
            if name.is_empty() || name.contains('\0') || value.contains('\0') {
                return Err(ConfigError::Env(e.clone()));
            }
            env.insert(name, value);
        }
        Ok(SandboxConfig {
            env,
            memory,
            stack: stack.map(|s| s as usize),
            output_limit: output_limit.map(|s| s as usize),
            tmp_limit,
            open_files: args.open_files,
            hermetic: args
                .hermetic
                .then(|| args.seed.unwrap_or(cachet_runtime::DEFAULT_SEED)),
        })
    }
}

impl TestConfig {
    /// What runs ask of the harness beyond which cases to run.
    pub fn run_flags(&self) -> crate::framework::RunFlags {
        use crate::framework::OutputMode;
        crate::framework::RunFlags {
            mode: if self.json {
                OutputMode::Json
            } else if self.verbose {
                OutputMode::Verbose
            } else {
                OutputMode::Quiet
            },
            short: self.short,
            parallel: self.go_parallel,
        }
    }

    /// The overrides that apply to `package`, in order.
    pub fn overrides_for<'a>(
        &'a self,
        package: &'a str,
    ) -> impl Iterator<Item = &'a PackageOverride> {
        self.overrides
            .iter()
            .filter(move |o| crate::project::matches(&o.packages, package))
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
        self.verbose
            && !self.json
            && (self.parallel == 1 || packages == 1)
            && self.layout == Layout::Package
    }

    /// The wasm stack every case gets.
    pub fn stack_bytes(&self) -> usize {
        self.stack.unwrap_or(cachet_runtime::MAX_WASM_STACK)
    }
}

fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn parse_mount(spec: &str) -> Result<ExtraMount, ConfigError> {
    let (rest, writable) = match spec.strip_suffix(":rw") {
        Some(r) => (r, true),
        None => (spec.strip_suffix(":ro").unwrap_or(spec), false),
    };
    let (host, guest) = rest
        .rsplit_once(':')
        .ok_or_else(|| ConfigError::Mount(spec.to_string()))?;
    let guest = normal_guest(guest).ok_or_else(|| ConfigError::Mount(spec.to_string()))?;
    if host.is_empty() {
        return Err(ConfigError::Mount(spec.to_string()));
    }
    if guest == "/" || guest == "/tmp" {
        return Err(ConfigError::MountReserved(spec.to_string(), guest));
    }
    extra_mount(host, guest, writable)
}

/// A mount of `host` at the normalized `guest` path.
pub(crate) fn extra_mount(
    host: &str,
    guest: String,
    writable: bool,
) -> Result<ExtraMount, ConfigError> {
    let host_path = PathBuf::from(host);
    if !host_path.is_dir() {
        return Err(ConfigError::MountMissing(host.to_string()));
    }
    Ok(ExtraMount {
        name: mount_name(&guest),
        host: host_path,
        guest,
        writable,
    })
}

/// An absolute guest path without `.`, empty or trailing components (`/`
/// stays `/`); `None` when it is relative or climbs with `..`.
pub(crate) fn normal_guest(guest: &str) -> Option<String> {
    if !guest.starts_with('/') {
        return None;
    }
    let mut parts = Vec::new();
    for part in guest.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            p if p.contains('\0') => return None,
            p => parts.push(p),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

/// Names cachet gives its own mounts in input logs.
const RESERVED_NAMES: [&str; 4] = [
    crate::plan::PACKAGE_MOUNT,
    crate::plan::GO_MODULE_MOUNT,
    crate::plan::GOROOT_MOUNT,
    cachet_runtime::SCRATCH_MOUNT_NAME,
];

/// The logical name of a mount at `guest` in input logs: the path without
/// its leading slash, `/` written `-` and a literal `-` or `%` escaped, so
/// two guest paths never share a name (`/a-b` is `a%2Db`, `/a/b` is
/// `a-b`); `/` is `%2F`, and a name cachet uses itself gets a `%` prefix.
pub fn mount_name(guest: &str) -> String {
    let trimmed = guest.trim_start_matches('/');
    if trimmed.is_empty() {
        return "%2F".into();
    }
    let mut name = String::new();
    for c in trimmed.chars() {
        match c {
            '/' => name.push('-'),
            '-' => name.push_str("%2D"),
            '%' => name.push_str("%25"),
            c => name.push(c),
        }
    }
    if RESERVED_NAMES.contains(&name.as_str()) {
        name.insert(0, '%');
    }
    name
}

/// Two mounts at one guest path: the guest could reach only one of them.
pub(crate) fn check_distinct(mounts: &[ExtraMount]) -> Result<(), ConfigError> {
    for (i, m) in mounts.iter().enumerate() {
        if let Some(other) = mounts[..i].iter().find(|o| o.guest == m.guest) {
            return Err(ConfigError::MountTwice {
                guest: m.guest.clone(),
                first: other.host.display().to_string(),
                second: m.host.display().to_string(),
            });
        }
    }
    Ok(())
}

/// Parses Go's duration syntax: a sequence of decimal numbers with units
/// `ns`, `us`/`µs`, `ms`, `s`, `m`, `h` (`1h30m`, `1.5s`, `0`).
pub fn parse_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).ok()
}

/// A size flag's value, if given: `Err` names the flag.
fn size_flag(flag: &'static str, v: &Option<String>) -> Result<Option<u64>, ConfigError> {
    v.as_deref()
        .map(|m| parse_size(m).ok_or_else(|| ConfigError::Size(flag, m.to_string())))
        .transpose()
}

/// Parses a byte size: `1048576`, `64KiB`, `512MiB`, `2GiB`, `64K`, `512M`, `2G`.
pub fn parse_size(s: &str) -> Option<u64> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..split].parse().ok()?;
    let scale: u64 = match s[split..].trim() {
        "" | "B" => 1,
        "K" | "KB" | "KiB" | "k" => 1 << 10,
        "M" | "MB" | "MiB" => 1 << 20,
        "G" | "GB" | "GiB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        for bad in ["", "10", "ten", "5 m", "1x", "-1s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Some(64 << 20));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("1TiB"), None);
    }

    #[test]
    fn mounts() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().to_str().unwrap();
        let m = parse_mount(&format!("{host}:/data/set:rw")).unwrap();
        assert_eq!(
            (m.name.as_str(), m.guest.as_str(), m.writable),
            ("data-set", "/data/set", true)
        );
        assert!(!parse_mount(&format!("{host}:/data")).unwrap().writable);
        assert_eq!(
            parse_mount(&format!("{host}:relative")),
            Err(ConfigError::Mount(format!("{host}:relative")))
        );
        assert_eq!(
            parse_mount("/nonexistent-cachet:/x"),
            Err(ConfigError::MountMissing("/nonexistent-cachet".into()))
        );
        assert!(matches!(
            parse_mount(&format!("{host}:/")),
            Err(ConfigError::MountReserved(..))
        ));
        assert_eq!(
            parse_mount(&format!("{host}:/a//b/./")).unwrap().guest,
            "/a/b"
        );
        assert!(parse_mount(&format!("{host}:/a/../b")).is_err());
        let twice = [
            parse_mount(&format!("{host}:/x")).unwrap(),
            parse_mount(&format!("{host}:/x/")).unwrap(),
        ];
        assert!(matches!(
            check_distinct(&twice),
            Err(ConfigError::MountTwice { .. })
        ));
    }

    #[test]
    fn mount_names_never_collide() {
        let guests = [
            "/a-b",
            "/a/b",
            "/a--b",
            "/a/-b",
            "/a-/b",
            "/pkg",
            "/tmp",
            "/mod",
            "/goroot",
            "/",
            "/%2F",
            "/a%2Db",
            "/%pkg",
            "/data/set",
        ];
        let names: Vec<String> = guests.iter().map(|g| mount_name(g)).collect();
        let unique: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        assert_eq!(
            mount_name("/data/set"),
            "data-set",
            "as before for plain paths"
        );
        for n in &names {
            assert!(!n.contains('/') && !n.is_empty(), "{n}");
            assert!(!RESERVED_NAMES.contains(&n.as_str()), "{n}");
        }
    }
}
