//! The validated configuration of `cachet test`, built from the parsed flags
//! before anything runs (regexes compiled, durations and sizes parsed, mounts
//! checked). Every error reads as one line saying what to fix.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;

use crate::cli::{FrameworkArg, IsolateArg, TestArgs};
use crate::framework::Framework;

/// How jobs are cut: one instance per case, or one per module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isolate {
    Test,
    Module,
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
    #[error("--mount {0}: no such directory on the host")]
    MountMissing(String),
    #[error("invalid -p {0}: give at least 1")]
    Parallel(usize),
    #[error("invalid --count 0: give at least 1")]
    Count,
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
        let timeout = parse_duration(&args.timeout)
            .ok_or_else(|| ConfigError::Duration("timeout", args.timeout.clone()))?;
        let size = |flag: &'static str, v: &Option<String>| -> Result<Option<u64>, ConfigError> {
            v.as_deref()
                .map(|m| parse_size(m).ok_or_else(|| ConfigError::Size(flag, m.to_string())))
                .transpose()
        };
        let memory = size("memory", &args.sandbox.memory)?;
        let stack = size("stack", &args.sandbox.stack)?;
        if let (Some(s), Some(text)) = (stack, &args.sandbox.stack) {
            if !(64 << 10..=1 << 30).contains(&s) {
                return Err(ConfigError::Stack(text.clone()));
            }
        }
        let output_limit = size("output-limit", &args.sandbox.output_limit)?;
        let tmp_limit = size("tmp-limit", &args.sandbox.tmp_limit)?;
        if args.sandbox.open_files == Some(0) {
            return Err(ConfigError::OpenFiles);
        }
        let compile_timeout = match &args.compile_timeout {
            Some(t) => parse_duration(t)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| ConfigError::Duration("compile-timeout", t.clone()))?,
            None => cachet_runtime::DEFAULT_COMPILE_TIMEOUT,
        };
        let compile_memory = size("compile-memory", &args.compile_memory)?
            .unwrap_or(cachet_runtime::DEFAULT_COMPILE_MEMORY);
        let mut env = BTreeMap::new();
        for e in &args.sandbox.env {
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
        let mounts = args
            .sandbox
            .mount
            .iter()
            .map(|m| parse_mount(m))
            .collect::<Result<Vec<_>, _>>()?;
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
            env,
            mounts,
            memory,
            stack: stack.map(|s| s as usize),
            output_limit: output_limit.map(|s| s as usize),
            tmp_limit,
            open_files: args.sandbox.open_files,
            hermetic: args
                .sandbox
                .hermetic
                .then(|| args.sandbox.seed.unwrap_or(cachet_runtime::DEFAULT_SEED)),
            prebuilt: args.prebuilt,
            compile_timeout,
            compile_memory,
            verbose: args.verbose,
            json: args.json,
            parallel,
            framework: args.framework.map(|f| match f {
                FrameworkArg::Libtest => Framework::Libtest,
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
        })
    }
}

impl TestConfig {
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
    if host.is_empty() || !guest.starts_with('/') || guest == "/" || guest == "/tmp" {
        return Err(ConfigError::Mount(spec.to_string()));
    }
    let host_path = PathBuf::from(host);
    if !host_path.is_dir() {
        return Err(ConfigError::MountMissing(host.to_string()));
    }
    let name = guest.trim_matches('/').replace('/', "-");
    Ok(ExtraMount {
        name,
        host: host_path,
        guest: guest.to_string(),
        writable,
    })
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
    }
}
