//! `cachet.toml`: a project's settings, found upward from the current
//! directory, in profiles chosen with `--profile NAME` (or
//! `CACHET_PROFILE`). `[profile.default]` applies to every run; another
//! profile inherits from it, field by field. Flags win over the file.
//! Per-package `[[profile.NAME.overrides]]` change the sandbox of the
//! packages they name. Relative host paths (mounts, `junit`) are relative
//! to the file's directory.
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

use crate::cli::TestArgs;

pub const FILE_NAME: &str = "cachet.toml";

/// The settings a profile may hold; each is also a flag of `cachet test`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    timeout: Option<String>,
    retries: Option<u32>,
    fail_flaky: Option<bool>,
    env: Option<Vec<String>>,
    mount: Option<Vec<String>>,
    memory: Option<String>,
    stack: Option<String>,
    output_limit: Option<String>,
    tmp_limit: Option<String>,
    open_files: Option<u32>,
    hermetic: Option<bool>,
    seed: Option<u64>,
    remote_cache: Option<String>,
    remote_cache_read_only: Option<bool>,
    partition: Option<String>,
    junit: Option<String>,
    /// `-p`
    parallel: Option<usize>,
    failfast: Option<bool>,
    short: Option<bool>,
    prebuilt: Option<bool>,
    #[serde(default)]
    overrides: Vec<OverrideSettings>,
}

/// What a per-package override may change.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct OverrideSettings {
    /// A package name, or `DIR/...` for every package below `DIR`.
    pub packages: String,
    pub timeout: Option<String>,
    pub retries: Option<u32>,
    pub env: Option<Vec<String>>,
    pub mount: Option<Vec<String>>,
    pub memory: Option<String>,
    pub output_limit: Option<String>,
    pub tmp_limit: Option<String>,
    pub open_files: Option<u32>,
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
pub fn load(start: &Path, profile: Option<&str>) -> Result<Project, String> {
    let Some(path) = start
        .ancestors()
        .map(|d| d.join(FILE_NAME))
        .find(|p| p.is_file())
    else {
        return match profile {
            Some(p) if p != "default" => Err(format!(
                "--profile {p}: there is no {FILE_NAME} here or in any parent directory"
            )),
            _ => Ok(Project::default()),
        };
    };
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{shown}: cannot read: {e}"))?;
    let file: File = toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let message = e
            .message()
            .lines()
            .next()
            .unwrap_or("invalid TOML")
            .to_string();
        match line {
            Some(n) => format!("{shown}:{n}: {message}"),
            None => format!("{shown}: {message}"),
        }
    })?;
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let default = file.profile.get("default").cloned().unwrap_or_default();
    let settings = match profile.unwrap_or("default") {
        "default" => default,
        name => {
            let chosen = file.profile.get(name).cloned().ok_or_else(|| {
                let known: Vec<&str> = file.profile.keys().map(String::as_str).collect();
                format!(
                    "--profile {name}: {shown} has no [profile.{name}] (it has: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )
            })?;
            chosen.inherit(default)
        }
    };
    Ok(Project { dir, settings })
}

impl Settings {
    /// These settings, each missing one taken from `base`; overrides of
    /// both (`base`'s first, so these win).
    fn inherit(self, base: Settings) -> Settings {
        let mut overrides = base.overrides;
        overrides.extend(self.overrides);
        Settings {
            timeout: self.timeout.or(base.timeout),
            retries: self.retries.or(base.retries),
            fail_flaky: self.fail_flaky.or(base.fail_flaky),
            env: self.env.or(base.env),
            mount: self.mount.or(base.mount),
            memory: self.memory.or(base.memory),
            stack: self.stack.or(base.stack),
            output_limit: self.output_limit.or(base.output_limit),
            tmp_limit: self.tmp_limit.or(base.tmp_limit),
            open_files: self.open_files.or(base.open_files),
            hermetic: self.hermetic.or(base.hermetic),
            seed: self.seed.or(base.seed),
            remote_cache: self.remote_cache.or(base.remote_cache),
            remote_cache_read_only: self.remote_cache_read_only.or(base.remote_cache_read_only),
            partition: self.partition.or(base.partition),
            junit: self.junit.or(base.junit),
            parallel: self.parallel.or(base.parallel),
            failfast: self.failfast.or(base.failfast),
            short: self.short.or(base.short),
            prebuilt: self.prebuilt.or(base.prebuilt),
            overrides,
        }
    }
}

impl Project {
    /// Fills what the flags left unset from the profile. Lists (`env`,
    /// `mount`) come first from the file, then from the flags, so a flag
    /// wins for the same variable.
    pub fn apply(&self, args: &mut TestArgs) {
        let s = &self.settings;
        let or = |flag: &mut Option<String>, file: &Option<String>| {
            if flag.is_none() {
                flag.clone_from(file);
            }
        };
        or(&mut args.timeout, &s.timeout);
        or(&mut args.sandbox.memory, &s.memory);
        or(&mut args.sandbox.stack, &s.stack);
        or(&mut args.sandbox.output_limit, &s.output_limit);
        or(&mut args.sandbox.tmp_limit, &s.tmp_limit);
        or(&mut args.remote_cache, &s.remote_cache);
        or(&mut args.partition, &s.partition);
        args.retries = args.retries.or(s.retries);
        args.sandbox.open_files = args.sandbox.open_files.or(s.open_files);
        args.sandbox.seed = args.sandbox.seed.or(s.seed);
        args.parallel = args.parallel.or(s.parallel);
        args.fail_flaky |= s.fail_flaky.unwrap_or(false);
        args.sandbox.hermetic |= s.hermetic.unwrap_or(false);
        args.remote_cache_read_only |= s.remote_cache_read_only.unwrap_or(false);
        args.failfast |= s.failfast.unwrap_or(false);
        args.short |= s.short.unwrap_or(false);
        args.prebuilt |= s.prebuilt.unwrap_or(false);
        if args.junit.is_none() {
            args.junit = s.junit.as_ref().map(|j| self.dir.join(j));
        }
        if let Some(env) = &s.env {
            let flags = std::mem::take(&mut args.sandbox.env);
            args.sandbox.env = env.iter().cloned().chain(flags).collect();
        }
        if let Some(mounts) = &s.mount {
            let flags = std::mem::take(&mut args.sandbox.mount);
            args.sandbox.mount = mounts
                .iter()
                .map(|m| self.mount_path(m))
                .chain(flags)
                .collect();
        }
    }

    /// A mount spec with its host path made relative to the file's dir.
    pub fn mount_path(&self, spec: &str) -> String {
        match spec.split_once(':') {
            Some((host, rest)) if Path::new(host).is_relative() => {
                format!("{}:{rest}", self.dir.join(host).display())
            }
            _ => spec.to_string(),
        }
    }

    pub fn overrides(&self) -> &[OverrideSettings] {
        &self.settings.overrides
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
        assert_eq!(ci.settings.timeout.as_deref(), Some("2m"), "inherited");
        assert_eq!(ci.overrides().len(), 1);
        let default = load(&below, None).unwrap();
        assert_eq!(default.settings.retries, Some(1));
        let missing = load(&below, Some("nightly")).unwrap_err();
        assert!(
            missing.contains("has no [profile.nightly] (it has: ci, default)"),
            "{missing}"
        );
    }

    #[test]
    fn a_bad_file_is_one_line_with_its_line_number() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "[profile.default]\ntimeout = \"2m\"\ntimout = \"3m\"\n",
        );
        let e = load(d.path(), None).unwrap_err();
        assert!(e.contains("cachet.toml:3: unknown field `timout`"), "{e}");
        assert_eq!(e.lines().count(), 1);
        write(d.path(), "[profile.default]\nretries = \"two\"\n");
        let e = load(d.path(), None).unwrap_err();
        assert!(e.contains("cachet.toml:2:"), "{e}");
        write(d.path(), "[profile.default\n");
        assert!(load(d.path(), None).unwrap_err().contains("cachet.toml:1:"));
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
