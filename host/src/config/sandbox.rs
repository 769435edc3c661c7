//! One `SandboxConfig` from flag to key: the validated sandbox settings
//! (`cli/sandbox.rs`'s `SandboxArgs`, from flags, a `cachet.toml` profile
//! or a per-package override), layered in that order, and put into a
//! run's `Policy` by [`SandboxConfig::apply`]. The cache key reads the
//! policy, so every setting that reaches a run reaches its key (a test
//! below checks each one). Mount syntax and the logical names mounts have
//! in input logs live here too.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use cachet_runtime::Policy;

use super::parse::size_flag;
use super::ConfigError;
use crate::cli::SandboxArgs;
use crate::units::parse_duration;

/// Logical name of the package mount in input logs.
pub const PACKAGE_MOUNT: &str = "pkg";
/// Logical names of a Go package's module and of GOROOT in input logs.
pub const GO_MODULE_MOUNT: &str = "mod";
pub const GOROOT_MOUNT: &str = "goroot";
/// Logical name of the devices mount (`/dev`, holding `null`) in input logs.
pub const DEV_MOUNT: &str = "dev";

/// A time limit long enough to be none.
pub const NO_TIME_LIMIT: Duration = Duration::from_secs(u64::MAX / 4);

/// Validated sandbox settings; `None` (or empty) leaves the policy's default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SandboxConfig {
    /// `Some(None)`: no time limit (`--timeout 0`).
    pub timeout: Option<Option<Duration>>,
    pub env: BTreeMap<String, String>,
    pub mounts: Vec<ExtraMount>,
    pub memory: Option<u64>,
    /// The wasm stack of every case: one engine setting for the whole run.
    pub stack: Option<usize>,
    pub output_limit: Option<usize>,
    pub tmp_limit: Option<u64>,
    pub open_files: Option<u32>,
    /// `--hermetic`: the seed of the virtual run.
    pub hermetic: Option<u64>,
}

/// An extra `--mount` (or `cachet exec --dir`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtraMount {
    /// Logical name in input logs: the guest path without slashes.
    pub name: String,
    pub host: PathBuf,
    pub guest: String,
    pub writable: bool,
}

/// How a command reads `--mount`: `cachet test` keeps `/` and `/tmp` for
/// itself; `cachet exec` mounts only what it is asked to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MountRules {
    Test,
    Exec,
}

impl SandboxConfig {
    pub fn from_args(args: &SandboxArgs, rules: MountRules) -> Result<Self, ConfigError> {
        let timeout = args
            .timeout
            .as_ref()
            .map(|t| {
                parse_duration(t)
                    .map(|d| (!d.is_zero()).then_some(d))
                    .ok_or_else(|| ConfigError::Duration("timeout", t.clone()))
            })
            .transpose()?;
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
        let mounts = args
            .mount
            .iter()
            .map(|m| parse_mount(m, rules))
            .collect::<Result<Vec<_>, _>>()?;
        check_distinct(&mounts)?;
        Ok(SandboxConfig {
            timeout,
            env,
            mounts,
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

    /// `over`'s settings on top of these (a per-package override): each
    /// one it gives wins; its variables and mounts are added.
    pub fn overlay(&mut self, over: &SandboxConfig) {
        if over.timeout.is_some() {
            self.timeout = over.timeout;
        }
        self.env
            .extend(over.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.mounts.extend(over.mounts.iter().cloned());
        self.memory = over.memory.or(self.memory);
        self.stack = over.stack.or(self.stack);
        self.output_limit = over.output_limit.or(self.output_limit);
        self.tmp_limit = over.tmp_limit.or(self.tmp_limit);
        self.open_files = over.open_files.or(self.open_files);
        self.hermetic = over.hermetic.or(self.hermetic);
    }

    /// Puts every setting into `p`: the time limit, the limits, the clock
    /// mode, the mounts and the variables (after the layout's own, so a
    /// `--env` wins). The wasm stack is the engine's (see
    /// [`SandboxConfig::stack_bytes`]) and is in the key from there.
    pub fn apply(&self, p: &mut Policy) {
        match self.timeout {
            Some(Some(t)) => p.timeout(t),
            Some(None) => p.timeout(NO_TIME_LIMIT),
            None => p,
        };
        if let Some(m) = self.memory {
            p.memory_limit(m);
        }
        if let Some(o) = self.output_limit {
            p.output_limit(o);
        }
        if let Some(t) = self.tmp_limit {
            p.scratch_limit(t);
        }
        if let Some(n) = self.open_files {
            p.open_files(n);
        }
        if let Some(seed) = self.hermetic {
            p.hermetic(seed);
        }
        for m in &self.mounts {
            if m.writable {
                p.mount_read_write(&m.name, &m.host, &[m.guest.as_str()]);
            } else {
                p.mount_read_only(&m.name, &m.host, &[m.guest.as_str()]);
            }
        }
        for (k, v) in &self.env {
            p.env(k, v);
        }
    }

    /// The wasm stack every case gets.
    pub fn stack_bytes(&self) -> usize {
        self.stack.unwrap_or(cachet_runtime::MAX_WASM_STACK)
    }

    /// Whether a mount sits at `guest`.
    pub fn mounts_at(&self, guest: &str) -> bool {
        self.mounts.iter().any(|m| m.guest == guest)
    }
}

/// `--mount HOST:GUEST[:rw]`.
pub fn parse_mount(spec: &str, rules: MountRules) -> Result<ExtraMount, ConfigError> {
    let (rest, writable) = strip_mode(spec);
    let (host, guest) = rest
        .rsplit_once(':')
        .filter(|(h, _)| !h.is_empty())
        .ok_or_else(|| ConfigError::Mount(spec.to_string()))?;
    let guest = normal_guest(guest).ok_or_else(|| ConfigError::Mount(spec.to_string()))?;
    if rules == MountRules::Test && (guest == "/" || guest == "/tmp") {
        return Err(ConfigError::MountReserved(spec.to_string(), guest));
    }
    extra_mount(host, guest, writable)
}

/// `--dir HOST[::GUEST][:rw]`, as the wasmtime CLI's `--dir` (read-only
/// unless `:rw`); GUEST defaults to HOST's absolute path and may be `/`.
pub fn parse_dir(spec: &str) -> Result<ExtraMount, ConfigError> {
    let (rest, writable) = strip_mode(spec);
    let (host, guest) = match rest.split_once("::") {
        Some((h, g)) => (h, g.to_string()),
        None => {
            let abs = std::path::absolute(rest).map_err(|_| ConfigError::Dir(spec.into()))?;
            let abs = abs.to_str().ok_or(ConfigError::Dir(spec.into()))?;
            (rest, abs.to_string())
        }
    };
    let guest = normal_guest(&guest).ok_or(ConfigError::Dir(spec.into()))?;
    if host.is_empty() {
        return Err(ConfigError::Dir(spec.into()));
    }
    extra_mount(host, guest, writable)
}

fn strip_mode(spec: &str) -> (&str, bool) {
    match spec.strip_suffix(":rw") {
        Some(r) => (r, true),
        None => (spec.strip_suffix(":ro").unwrap_or(spec), false),
    }
}

/// A mount of `host` at the normalized `guest` path.
fn extra_mount(host: &str, guest: String, writable: bool) -> Result<ExtraMount, ConfigError> {
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
pub fn normal_guest(guest: &str) -> Option<String> {
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
const RESERVED_NAMES: [&str; 5] = [
    PACKAGE_MOUNT,
    GO_MODULE_MOUNT,
    GOROOT_MOUNT,
    DEV_MOUNT,
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
pub fn check_distinct(mounts: &[ExtraMount]) -> Result<(), ConfigError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::KeyParts;

    #[test]
    fn mounts() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().to_str().unwrap();
        let test = |s: &str| parse_mount(s, MountRules::Test);
        let m = test(&format!("{host}:/data/set:rw")).unwrap();
        assert_eq!(
            (m.name.as_str(), m.guest.as_str(), m.writable),
            ("data-set", "/data/set", true)
        );
        assert!(!test(&format!("{host}:/data")).unwrap().writable);
        assert_eq!(
            test(&format!("{host}:relative")),
            Err(ConfigError::Mount(format!("{host}:relative")))
        );
        assert_eq!(
            test("/nonexistent-cachet:/x"),
            Err(ConfigError::MountMissing("/nonexistent-cachet".into()))
        );
        assert!(matches!(
            test(&format!("{host}:/")),
            Err(ConfigError::MountReserved(..))
        ));
        assert!(parse_mount(&format!("{host}:/"), MountRules::Exec).is_ok());
        assert_eq!(test(&format!("{host}:/a//b/./")).unwrap().guest, "/a/b");
        assert!(test(&format!("{host}:/a/../b")).is_err());
        let twice = [
            test(&format!("{host}:/x")).unwrap(),
            test(&format!("{host}:/x/")).unwrap(),
        ];
        assert!(matches!(
            check_distinct(&twice),
            Err(ConfigError::MountTwice { .. })
        ));
    }

    #[test]
    fn dirs_are_parsed_as_wasmtime_does() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().to_str().unwrap();
        let m = parse_dir(host).unwrap();
        assert_eq!((m.guest.as_str(), m.writable), (host, false));
        let root = parse_dir(&format!("{host}::/:rw")).unwrap();
        assert_eq!((root.guest.as_str(), root.writable), ("/", true));
        assert!(parse_dir(&format!("{host}::relative")).is_err());
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
        assert_eq!(mount_name("/data/set"), "data-set");
        for n in &names {
            assert!(!n.contains('/') && !n.is_empty(), "{n}");
            assert!(!RESERVED_NAMES.contains(&n.as_str()), "{n}");
        }
    }

    /// Every sandbox setting, given as a flag, changes what a run gets:
    /// its cache key, or (the environment, the time limit, which are not in
    /// the key by design) the policy itself. A field added to `SandboxArgs`
    /// and forgotten in `from_args` or `apply` fails here.
    #[test]
    fn every_setting_reaches_the_policy_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().to_str().unwrap().to_string();
        let base = SandboxArgs::default();
        let changed: Vec<(&str, SandboxArgs)> = vec![
            (
                "env",
                SandboxArgs {
                    env: vec!["A=1".into()],
                    ..base.clone()
                },
            ),
            (
                "mount",
                SandboxArgs {
                    mount: vec![format!("{host}:/data")],
                    ..base.clone()
                },
            ),
            (
                "timeout",
                SandboxArgs {
                    timeout: Some("3s".into()),
                    ..base.clone()
                },
            ),
            (
                "memory",
                SandboxArgs {
                    memory: Some("64MiB".into()),
                    ..base.clone()
                },
            ),
            (
                "stack",
                SandboxArgs {
                    stack: Some("1MiB".into()),
                    ..base.clone()
                },
            ),
            (
                "output-limit",
                SandboxArgs {
                    output_limit: Some("1MiB".into()),
                    ..base.clone()
                },
            ),
            (
                "tmp-limit",
                SandboxArgs {
                    tmp_limit: Some("1MiB".into()),
                    ..base.clone()
                },
            ),
            (
                "open-files",
                SandboxArgs {
                    open_files: Some(7),
                    ..base.clone()
                },
            ),
            (
                "hermetic",
                SandboxArgs {
                    hermetic: true,
                    ..base.clone()
                },
            ),
            (
                "seed",
                SandboxArgs {
                    hermetic: true,
                    seed: Some(9),
                    ..base.clone()
                },
            ),
        ];
        // Every flag of SandboxArgs is in the list above.
        let flags: Vec<String> = <SandboxArgs as clap::Args>::augment_args(clap::Command::new("t"))
            .get_arguments()
            .filter_map(|a| a.get_long().map(str::to_string))
            .collect();
        for f in &flags {
            assert!(
                changed.iter().any(|(n, _)| n == f),
                "--{f} is not checked here"
            );
        }
        let seen = |args: &SandboxArgs| {
            let config = SandboxConfig::from_args(args, MountRules::Test).unwrap();
            let mut p = Policy::new();
            config.apply(&mut p);
            let key = KeyParts::new(
                cachet_runtime::ModuleDigest(cachet_runtime::Sha256Digest::of(b"m")),
                cachet_runtime::Wasi::P1,
                "plain",
                "c",
                &[],
                &p,
                config.stack_bytes(),
            )
            .key();
            (key, p.timeout_duration(), p.world().env_observation("A"))
        };
        let plain = seen(&base);
        let hermetic = seen(&changed[8].1);
        for (name, args) in &changed {
            let now = seen(args);
            assert_ne!(now, plain, "--{name} changes nothing");
            if *name == "seed" {
                assert_ne!(now, hermetic, "--seed changes nothing");
            }
        }
    }
}
