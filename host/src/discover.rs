//! Discovery: from command-line patterns to packages, building cargo packages
//! for wasm32-wasip1 on the way.
//!
//! - `x.wasm`: one package, the module alone; its dir is the file's dir.
//! - `dir`: a cargo package if it has a `Cargo.toml` with `[package]` (its
//!   test binaries, built with `cargo test --no-run`), else the `.wasm`
//!   files directly in it.
//! - `dir/...`: every such package at or below `dir` (skipping `target`,
//!   hidden directories and `node_modules`).
//!
//! A package that cannot be set up carries its error; the others still run.
//!
//! Building runs cargo on the host, outside the sandbox: a package's build
//! scripts and proc macros are ordinary host programs. With `--prebuilt`
//! nothing is built and a cargo package is an error that says so.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A package to test.
#[derive(Clone, Debug)]
pub struct Package {
    /// Its path relative to the current directory, as reports show it.
    pub name: String,
    /// The directory its tests read from, mounted read-only.
    pub dir: PathBuf,
    pub modules: Vec<PathBuf>,
    /// Built by cargo (the framework is then libtest).
    pub cargo: bool,
    /// Why it cannot run, as one line.
    pub error: Option<String>,
}

impl Package {
    fn failed(name: String, dir: PathBuf, error: String) -> Self {
        Package {
            name,
            dir,
            modules: Vec::new(),
            cargo: false,
            error: Some(error),
        }
    }
}

const TARGET: &str = "wasm32-wasip1";

/// Whether discovery may run host tools (cargo) to build packages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Build {
    Allowed,
    /// `--prebuilt`: only existing `.wasm` files.
    Never,
}

/// Expands every pattern, in order; a pattern that matches nothing yields one
/// failed package naming it.
pub fn discover(patterns: &[String], build: Build) -> Vec<Package> {
    let mut out: Vec<Package> = Vec::new();
    for pattern in patterns {
        let found = expand(pattern, build);
        for p in found {
            if !out
                .iter()
                .any(|o| o.dir == p.dir && o.modules == p.modules && o.error.is_none())
            {
                out.push(p);
            }
        }
    }
    out
}

fn expand(pattern: &str, build: Build) -> Vec<Package> {
    if let Some(root) = pattern
        .strip_suffix("/...")
        .or((pattern == "...").then_some("."))
    {
        let root = if root.is_empty() { "." } else { root };
        let base = Path::new(root);
        if !base.is_dir() {
            return vec![Package::failed(
                display_name(root),
                base.to_path_buf(),
                format!("{root}: no such directory"),
            )];
        }
        let mut dirs = Vec::new();
        walk(base, &mut dirs);
        let found: Vec<Package> = dirs
            .into_iter()
            .filter_map(|d| package_at(&d, false, build))
            .collect();
        if found.is_empty() {
            return vec![Package::failed(display_name(pattern), base.to_path_buf(), format!("{pattern} matched no packages (no Cargo.toml with [package] and no .wasm files)"))];
        }
        return found;
    }
    let path = Path::new(pattern);
    if path.is_file() {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        return vec![Package {
            name: display_name(pattern),
            dir,
            modules: vec![path.to_path_buf()],
            cargo: false,
            error: None,
        }];
    }
    if path.is_dir() {
        return vec![package_at(path, true, build).expect("explicit dirs always yield a package")];
    }
    vec![Package::failed(
        display_name(pattern),
        path.to_path_buf(),
        format!("{pattern}: no such file or directory"),
    )]
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut subdirs: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            !(n.starts_with('.') || n == "target" || n == "node_modules")
        })
        .map(|e| e.path())
        .collect();
    subdirs.sort();
    for d in subdirs {
        walk(&d, out);
    }
}

/// The package in `dir`, if any; `explicit` dirs always give one (possibly
/// with no test files).
fn package_at(dir: &Path, explicit: bool, build: Build) -> Option<Package> {
    let name = display_name(&dir.to_string_lossy());
    let manifest = dir.join("Cargo.toml");
    if std::fs::read_to_string(&manifest).is_ok_and(|m| m.lines().any(|l| l.trim() == "[package]"))
    {
        if build == Build::Never {
            return Some(Package::failed(
                name,
                dir.to_path_buf(),
                format!("is a cargo package, and --prebuilt never runs cargo (its build scripts would run on the host, unsandboxed); build its tests yourself and pass the .wasm files (target/{TARGET}/debug/deps/*.wasm)"),
            ));
        }
        return Some(build_cargo(name, dir));
    }
    let mut modules: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wasm") && p.is_file())
        .collect();
    modules.sort();
    if modules.is_empty() && !explicit {
        return None;
    }
    Some(Package {
        name,
        dir: dir.to_path_buf(),
        modules,
        cargo: false,
        error: None,
    })
}

fn build_cargo(name: String, dir: &Path) -> Package {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = dir.join("Cargo.toml");
    let mut cmd = Command::new(&cargo);
    cmd.args([
        "test",
        "--no-run",
        "--quiet",
        "--target",
        TARGET,
        "--message-format=json",
        "--manifest-path",
    ])
    .arg(&manifest);
    if let Some(root) = workspace_root(&cargo, &manifest) {
        portable(&mut cmd, &root);
    }
    let output = cmd.output();
    let output = match output {
        Ok(o) => o,
        Err(e) => {
            return Package::failed(
                name,
                dir.to_path_buf(),
                format!(
                    "cannot run cargo to build {}: {e}; install Rust with rustup",
                    dir.display()
                ),
            )
        }
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        let error = if stderr.contains("target may not be installed")
            || stderr.contains("can't find crate for `core`")
        {
            format!("the {TARGET} target is not installed; run `rustup target add {TARGET}`")
        } else {
            eprint!("{stderr}");
            format!(
                "cargo could not build the tests of {} for {TARGET} (errors above)",
                dir.display()
            )
        };
        return Package::failed(name, dir.to_path_buf(), error);
    }
    let want = std::fs::canonicalize(&manifest).unwrap_or(manifest.clone());
    let mut modules = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true {
            continue;
        }
        let (Some(exe), Some(m)) = (msg["executable"].as_str(), msg["manifest_path"].as_str())
        else {
            continue;
        };
        if std::fs::canonicalize(m).unwrap_or_else(|_| m.into()) == want {
            modules.push(PathBuf::from(exe));
        }
    }
    modules.sort();
    Package {
        name,
        dir: dir.to_path_buf(),
        modules,
        cargo: true,
        error: None,
    }
}

/// The root of the cargo workspace `manifest` belongs to.
fn workspace_root(cargo: &str, manifest: &Path) -> Option<PathBuf> {
    let out = Command::new(cargo)
        .args(["locate-project", "--workspace", "--message-format", "plain"])
        .arg("--manifest-path")
        .arg(manifest)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let path = PathBuf::from(text.trim());
    out.status
        .success()
        .then(|| path.parent().map(Path::to_path_buf))
        .flatten()
}

/// Makes the build independent of where the checkout is, so a fresh clone
/// or a copy builds the same module bytes and hits the same cache entries:
/// the workspace root and the cargo home are remapped in every path the
/// compiler writes (debug info, panic locations), and the build gets its own
/// target dir (`target/cachet`), so that these flags do not make cargo
/// rebuild the user's own `cargo test` artifacts each time. Rust flags the
/// user set (`RUSTFLAGS`, `CARGO_ENCODED_RUSTFLAGS`) are kept; without them,
/// the remaps go in as `target.wasm32-wasip1.rustflags` config, which joins
/// that key's values from config files (but takes precedence over
/// `build.rustflags`).
fn portable(cmd: &mut Command, root: &Path) {
    let mut flags = vec![format!("--remap-path-prefix={}=.", root.display())];
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    if let Some(home) = cargo_home {
        flags.insert(0, format!("--remap-path-prefix={}=/cargo", home.display()));
    }
    let encoded = std::env::var("CARGO_ENCODED_RUSTFLAGS").ok();
    let plain = std::env::var("RUSTFLAGS").ok();
    match (encoded, plain) {
        (Some(e), _) => {
            let mut all: Vec<String> = e
                .split('\x1f')
                .filter(|f| !f.is_empty())
                .map(String::from)
                .collect();
            all.extend(flags);
            cmd.env("CARGO_ENCODED_RUSTFLAGS", all.join("\x1f"));
        }
        (None, Some(p)) => {
            let mut all: Vec<String> = p.split_whitespace().map(String::from).collect();
            all.extend(flags);
            cmd.env_remove("RUSTFLAGS")
                .env("CARGO_ENCODED_RUSTFLAGS", all.join("\x1f"));
        }
        (None, None) => {
            let list: Vec<String> = flags.iter().map(|f| toml_string(f)).collect();
            cmd.arg("--config")
                .arg(format!("target.{TARGET}.rustflags=[{}]", list.join(",")));
        }
    }
    let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => PathBuf::from(t).join("cachet"),
        None => root.join("target").join("cachet"),
    };
    cmd.arg("--target-dir").arg(target_dir);
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `./a/b/` -> `a/b`; `.` stays `.`.
fn display_name(p: &str) -> String {
    let mut s = p;
    while let Some(rest) = s.strip_prefix("./") {
        s = rest;
    }
    let s = s.trim_end_matches('/');
    if s.is_empty() {
        ".".to_string()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_relative_paths() {
        assert_eq!(
            display_name("./fixtures/demo/greet/"),
            "fixtures/demo/greet"
        );
        assert_eq!(display_name("."), ".");
        assert_eq!(display_name("./"), ".");
        assert_eq!(display_name("a.wasm"), "a.wasm");
    }

    #[test]
    fn toml_strings_are_quoted() {
        assert_eq!(toml_string(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn missing_paths_and_empty_patterns_are_package_errors() {
        let got = discover(&["/nonexistent/cachet/x.wasm".to_string()], Build::Allowed);
        assert_eq!(
            got[0].error.as_deref(),
            Some("/nonexistent/cachet/x.wasm: no such file or directory")
        );
        let dir = tempfile::tempdir().unwrap();
        let pattern = format!("{}/...", dir.path().display());
        assert!(discover(&[pattern], Build::Allowed)[0]
            .error
            .as_deref()
            .unwrap()
            .contains("matched no packages"));
    }

    #[test]
    fn dirs_hold_their_wasm_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/target")).unwrap();
        std::fs::write(dir.path().join("a/x.wasm"), b"").unwrap();
        std::fs::write(dir.path().join("a/target/y.wasm"), b"").unwrap();
        std::fs::create_dir_all(dir.path().join("b")).unwrap();
        let got = discover(&[format!("{}/...", dir.path().display())], Build::Allowed);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].modules, [dir.path().join("a/x.wasm")]);
        let empty = discover(
            &[dir.path().join("b").display().to_string()],
            Build::Allowed,
        );
        assert!(empty[0].modules.is_empty() && empty[0].error.is_none());
    }
}
