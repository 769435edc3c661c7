//! `cachet.toml`: a project's settings, found upward from the current
//! directory, in profiles chosen with `--profile NAME` (or
//! `CACHET_PROFILE`). `[profile.default]` applies to every run; another
//! profile inherits from it, field by field. Flags win over the file.
//! Per-package `[[profile.NAME.overrides]]` change the sandbox of the
//! packages they name. Relative host paths (mounts, `junit`) are relative
//! to the file's directory. Every sandbox setting (`cli/sandbox.rs`) is a
//! key of a profile and of an override, under its flag's name.
//!
//! ```toml
//! [profile.default]
//! timeout = "2m"
//! env = ["LANG=C"]
//!
//! [profile.ci]
//! retries = 2
//! remote-cache = "http://cache.internal:8080/cachet"
//! junit = "target/junit.xml"
//!
//! [[profile.ci.overrides]]
//! packages = "crates/slow/..."
//! timeout = "20m"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cli::{SandboxArgs, TestFlags};

pub const FILE_NAME: &str = "cachet.toml";

/// Why `cachet.toml` cannot be used; each names the file (and line).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProjectError {
    #[error("--profile {0}: there is no {FILE_NAME} here or in any parent directory")]
    NoFile(String),
    #[error("{file}: cannot read: {reason}")]
    Read { file: String, reason: String },
    /// `at` is `FILE:LINE` where the line is known.
    #[error("{at}: {message}")]
    Invalid { at: String, message: String },
    #[error("--profile {name}: {file} has no [profile.{name}] (it has: {known})")]
    NoProfile {
        name: String,
        file: String,
        known: String,
    },
}

/// The settings a profile may hold; each is also a flag of `cachet test`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Settings {
    #[serde(flatten)]
    sandbox: SandboxArgs,
    retries: Option<u32>,
    fail_flaky: Option<bool>,
    remote_cache: Option<String>,
    remote_cache_read_only: Option<bool>,
    remote_cache_compiled: Option<bool>,
    remote_executor: Option<String>,
    remote_instance: Option<String>,
    remote_jobs: Option<usize>,
    remote_cachet: Option<crate::cli::RemoteCachetArg>,
    partition: Option<String>,
    junit: Option<String>,
    /// `-p`
    parallel: Option<usize>,
    failfast: Option<bool>,
    short: Option<bool>,
    prebuilt: Option<bool>,
    tier: Option<crate::cli::TierArg>,
    long_runs: Option<crate::cli::LongRunsArg>,
    target: Option<crate::discover::RustTarget>,
    #[serde(default)]
    overrides: Vec<OverrideSettings>,
    /// Keys that are none of the above: an error naming them.
    #[serde(flatten)]
    unknown: BTreeMap<String, toml::Value>,
}

/// What a per-package override may change: the sandbox, and retries.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct OverrideSettings {
    /// A package name, or `DIR/...` for every package below `DIR`.
    pub packages: String,
    pub retries: Option<u32>,
    #[serde(flatten)]
    pub sandbox: SandboxArgs,
    #[serde(flatten)]
    unknown: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    profile: BTreeMap<String, Settings>,
}

/// The profile in effect, and where its file is.
#[derive(Debug, Default)]
pub struct Project {
    pub dir: PathBuf,
    pub settings: Settings,
}

/// Finds `cachet.toml` at or above `start`, and takes `profile` from it
/// (`default` when `None`). No file: the empty profile, unless a profile
/// was asked for by name.
pub fn load(start: &Path, profile: Option<&str>) -> Result<Project, ProjectError> {
    let Some(path) = start
        .ancestors()
        .map(|d| d.join(FILE_NAME))
        .find(|p| p.is_file())
    else {
        return match profile {
            Some(p) if p != "default" => Err(ProjectError::NoFile(p.to_string())),
            _ => Ok(Project::default()),
        };
    };
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(&path).map_err(|e| ProjectError::Read {
        file: shown.clone(),
        reason: e.to_string(),
    })?;
    let file = parse(&text, &shown)?;
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut settings = file.profile.get("default").cloned().unwrap_or_default();
    if let Some(name) = profile.filter(|p| *p != "default") {
        let chosen = file
            .profile
            .get(name)
            .cloned()
            .ok_or_else(|| ProjectError::NoProfile {
                name: name.to_string(),
                file: shown.clone(),
                known: match file.profile.keys().map(String::as_str).collect::<Vec<_>>() {
                    k if k.is_empty() => "none".to_string(),
                    k => k.join(", "),
                },
            })?;
        settings = chosen.inherit(settings);
    }
    let mut project = Project { dir, settings };
    project.rebase_paths();
    Ok(project)
}

/// Parses the file; every error is one line naming `FILE:LINE`.
fn parse(text: &str, shown: &str) -> Result<File, ProjectError> {
    let invalid = |line: Option<usize>, message: String| ProjectError::Invalid {
        at: match line {
            Some(n) => format!("{shown}:{n}"),
            None => shown.to_string(),
        },
        message,
    };
    let file: File = toml::from_str(text).map_err(|e| {
        let message = e
            .message()
            .lines()
            .next()
            .unwrap_or("invalid TOML")
            .to_string();
        // Errors inside flattened settings come without a place: find the key.
        let spanned = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let line = match e.span() {
            Some(s) if !s.is_empty() && s.start > 0 => spanned,
            _ => failing_sandbox_key(text)
                .and_then(|k| key_line(text, &k))
                .or(spanned),
        };
        invalid(line, message)
    })?;
    for s in file.profile.values() {
        let unknown = s
            .unknown
            .keys()
            .chain(s.overrides.iter().flat_map(|o| o.unknown.keys()))
            .next();
        if let Some(key) = unknown {
            return Err(invalid(
                key_line(text, key),
                format!("unknown field `{key}`"),
            ));
        }
    }
    Ok(file)
}

/// The first key whose value a sandbox setting cannot take, if any.
fn failing_sandbox_key(text: &str) -> Option<String> {
    let table: toml::Table = toml::from_str(text).ok()?;
    let profiles = table.get("profile")?.as_table()?;
    let mut tables: Vec<&toml::Table> = Vec::new();
    for p in profiles.values().filter_map(|p| p.as_table()) {
        tables.push(p);
        if let Some(overrides) = p.get("overrides").and_then(|o| o.as_array()) {
            tables.extend(overrides.iter().filter_map(|o| o.as_table()));
        }
    }
    tables.into_iter().flatten().find_map(|(k, v)| {
        let one: toml::Table = [(k.clone(), v.clone())].into_iter().collect();
        toml::Value::Table(one)
            .try_into::<SandboxArgs>()
            .is_err()
            .then(|| k.clone())
    })
}

/// The line where `key` is first set.
fn key_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

impl Settings {
    /// These settings, each missing one taken from `base`; lists and
    /// overrides of both (`base`'s first, so these win).
    fn inherit(self, base: Settings) -> Settings {
        let mut overrides = base.overrides;
        overrides.extend(self.overrides);
        Settings {
            sandbox: self.sandbox.over(&base.sandbox),
            retries: self.retries.or(base.retries),
            fail_flaky: self.fail_flaky.or(base.fail_flaky),
            remote_cache: self.remote_cache.or(base.remote_cache),
            remote_cache_read_only: self.remote_cache_read_only.or(base.remote_cache_read_only),
            remote_cache_compiled: self.remote_cache_compiled.or(base.remote_cache_compiled),
            remote_executor: self.remote_executor.or(base.remote_executor),
            remote_instance: self.remote_instance.or(base.remote_instance),
            remote_jobs: self.remote_jobs.or(base.remote_jobs),
            remote_cachet: self.remote_cachet.or(base.remote_cachet),
            partition: self.partition.or(base.partition),
            junit: self.junit.or(base.junit),
            parallel: self.parallel.or(base.parallel),
            failfast: self.failfast.or(base.failfast),
            short: self.short.or(base.short),
            prebuilt: self.prebuilt.or(base.prebuilt),
            tier: self.tier.or(base.tier),
            long_runs: self.long_runs.or(base.long_runs),
            target: self.target.or(base.target),
            overrides,
            unknown: BTreeMap::new(),
        }
    }
}

impl Project {
    /// Host paths of mounts and `junit` relative to the file's directory.
    fn rebase_paths(&mut self) {
        let dir = self.dir.clone();
        let rebase = |mounts: &mut Vec<String>| {
            for m in mounts.iter_mut() {
                *m = mount_path(&dir, m);
            }
        };
        rebase(&mut self.settings.sandbox.mount);
        for o in &mut self.settings.overrides {
            rebase(&mut o.sandbox.mount);
        }
        if let Some(j) = &mut self.settings.junit {
            *j = dir.join(&*j).display().to_string();
        }
    }

    /// Fills what the flags left unset from the profile; lists come first
    /// from the file, then from the flags, so a flag wins for the same
    /// variable.
    pub fn apply(&self, args: &mut TestFlags) {
        let s = &self.settings;
        args.sandbox = std::mem::take(&mut args.sandbox).over(&s.sandbox);
        if args.remote_cache.is_none() {
            args.remote_cache.clone_from(&s.remote_cache);
        }
        if args.partition.is_none() {
            args.partition.clone_from(&s.partition);
        }
        if args.remote_executor.is_none() {
            args.remote_executor.clone_from(&s.remote_executor);
        }
        if args.remote_instance.is_none() {
            args.remote_instance.clone_from(&s.remote_instance);
        }
        args.remote_jobs = args.remote_jobs.or(s.remote_jobs);
        args.remote_cachet = args.remote_cachet.or(s.remote_cachet);
        args.retries = args.retries.or(s.retries);
        args.parallel = args.parallel.or(s.parallel);
        args.fail_flaky |= s.fail_flaky.unwrap_or(false);
        args.remote_cache_read_only |= s.remote_cache_read_only.unwrap_or(false);
        args.remote_cache_compiled |= s.remote_cache_compiled.unwrap_or(false);
        args.failfast |= s.failfast.unwrap_or(false);
        args.short |= s.short.unwrap_or(false);
        args.prebuilt |= s.prebuilt.unwrap_or(false);
        args.tier = args.tier.or(s.tier);
        args.long_runs = args.long_runs.or(s.long_runs);
        args.target = args.target.or(s.target);
        if args.junit.is_none() {
            args.junit = s.junit.as_ref().map(PathBuf::from);
        }
    }

    pub fn overrides(&self) -> &[OverrideSettings] {
        &self.settings.overrides
    }
}

/// A mount spec with its host path made relative to `dir`.
fn mount_path(dir: &Path, spec: &str) -> String {
    match spec.split_once(':') {
        Some((host, rest)) if Path::new(host).is_relative() => {
            format!("{}:{rest}", dir.join(host).display())
        }
        _ => spec.to_string(),
    }
}

/// Whether `package` is named by `pattern`: the same name, `DIR/...` for
/// `DIR` and every package below it, `...` for all.
pub fn matches(pattern: &str, package: &str) -> bool {
    match pattern.strip_suffix("...") {
        Some("") => true,
        Some(prefix) => {
            let dir = prefix.trim_end_matches('/');
            package == dir || package.starts_with(prefix) && prefix.ends_with('/')
        }
        None => pattern.trim_end_matches('/') == package,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) {
        std::fs::write(dir.join(FILE_NAME), text).unwrap();
    }

    #[test]
    fn profiles_inherit_from_default_and_are_found_upward() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "[profile.default]\ntimeout = \"2m\"\nretries = 1\n\n[profile.ci]\nretries = 3\n\n[[profile.ci.overrides]]\npackages = \"slow/...\"\ntimeout = \"20m\"\n",
        );
        let below = d.path().join("a/b");
        std::fs::create_dir_all(&below).unwrap();
        let ci = load(&below, Some("ci")).unwrap();
        assert_eq!(ci.settings.retries, Some(3));
        assert_eq!(
            ci.settings.sandbox.timeout.as_deref(),
            Some("2m"),
            "inherited"
        );
        assert_eq!(ci.overrides().len(), 1);
        assert_eq!(ci.overrides()[0].sandbox.timeout.as_deref(), Some("20m"));
        let default = load(&below, None).unwrap();
        assert_eq!(default.settings.retries, Some(1));
        let missing = load(&below, Some("nightly")).unwrap_err().to_string();
        assert!(
            missing.contains("has no [profile.nightly] (it has: ci, default)"),
            "{missing}"
        );
    }

    #[test]
    fn a_bad_file_is_one_line_with_its_line_number() {
        let d = tempfile::tempdir().unwrap();
        let err = |text: &str| {
            write(d.path(), text);
            let e = load(d.path(), None).unwrap_err().to_string();
            assert_eq!(e.lines().count(), 1, "{e}");
            e
        };
        let e = err("[profile.default]\ntimeout = \"2m\"\ntimout = \"3m\"\n");
        assert!(e.contains("cachet.toml:3: unknown field `timout`"), "{e}");
        let e = err("[profile.default]\nretries = \"two\"\n");
        assert!(e.contains("cachet.toml:2:"), "{e}");
        let e = err("[profile.default]\nmemory = \"1G\"\nopen-files = \"x\"\n");
        assert!(e.contains("cachet.toml:3:"), "{e}");
        let e = err(
            "[profile.default]\n[[profile.default.overrides]]\npackages = \"a\"\nstak = \"1M\"\n",
        );
        assert!(e.contains("cachet.toml:4: unknown field `stak`"), "{e}");
        assert!(err("[profile.default\n").contains("cachet.toml:1:"));
    }

    /// Every sandbox flag is a key of a profile and of an override.
    #[test]
    fn every_sandbox_flag_is_a_profile_and_an_override_key() {
        let d = tempfile::tempdir().unwrap();
        let flags: Vec<String> = <SandboxArgs as clap::Args>::augment_args(clap::Command::new("t"))
            .get_arguments()
            .filter_map(|a| a.get_long().map(str::to_string))
            .collect();
        assert!(flags.len() >= 10, "{flags:?}");
        for f in flags {
            let value = match f.as_str() {
                "env" => "[\"A=1\"]",
                "mount" => "[\".:/data\"]",
                "open-files" | "seed" => "3",
                "hermetic" => "true",
                _ => "\"1M\"",
            };
            write(
                d.path(),
                &format!("[profile.default]\n{f} = {value}\n[[profile.default.overrides]]\npackages = \"x\"\n{f} = {value}\n"),
            );
            let p = load(d.path(), None).unwrap_or_else(|e| panic!("{f}: {e}"));
            let dflt = format!("{:?}", SandboxArgs::default());
            assert_ne!(
                format!("{:?}", p.settings.sandbox),
                dflt,
                "{f} in a profile"
            );
            assert_ne!(
                format!("{:?}", p.overrides()[0].sandbox),
                dflt,
                "{f} in an override"
            );
        }
    }

    #[test]
    fn package_patterns() {
        assert!(matches("...", "anything"));
        assert!(matches("slow/...", "slow"));
        assert!(matches("slow/...", "slow/a/b"));
        assert!(!matches("slow/...", "slower"));
        assert!(matches("fixtures/demo/calc", "fixtures/demo/calc"));
        assert!(!matches("fixtures/demo/calc", "fixtures/demo/calc2"));
    }
}
