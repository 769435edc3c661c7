//! Discovery: from command-line patterns to packages, building cargo packages
//! for wasm32-wasip1 or wasm32-wasip2 (`target.rs`) on the way.
//!
//! - `x.wasm`: one package, the module alone; its dir is the file's dir.
//! - `dir`: a cargo package if it has a `Cargo.toml` with `[package]` (its
//!   test binaries, built with `cargo test --no-run`), else the `.wasm`
//!   files directly in it.
//! - `dir` with `.go` files: a Go package, its test binary built with
//!   `go test -c` for wasip1 (`go.rs`) and reported by import path.
//! - `dir/...`: every such package at or below `dir` (skipping `target`,
//!   `testdata`, `vendor`, `node_modules` and directories starting with `.`
//!   or `_`).
//!
//! A package that cannot be set up carries its error; the others still run.
//!
//! Building runs cargo on the host, outside the sandbox: a package's build
//! scripts and proc macros are ordinary host programs. With `--prebuilt`
//! nothing is built and a cargo package is an error that says so.

mod cargo;
pub mod go;
mod target;

pub use cargo::wrap_rustc;
pub use target::RustTarget;

use std::path::{Path, PathBuf};

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
    /// A Go package (the framework is then go).
    pub go: Option<GoMeta>,
    /// Why it cannot run, as one line.
    pub error: Option<String>,
    /// The error is a failed build (`FAIL pkg [build failed]`).
    pub build_failed: bool,
    /// A Go test binary still to build: [`Package::build`] builds it.
    pub go_build: Option<go::GoBuild>,
}

/// Where a Go package sits, for its mounts: its module (or GOROOT) is
/// mounted read-only, and its directory is the guest's working directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoMeta {
    pub module_root: PathBuf,
    /// The module path (`std` for the standard library).
    pub module_path: String,
    /// The package dir below the module root (`strings`, `pkg/sub`, ``).
    pub rel: String,
    pub standard: bool,
    pub goroot: PathBuf,
}

impl Package {
    pub(crate) fn failed(name: String, dir: PathBuf, error: String) -> Self {
        Package {
            name,
            dir,
            modules: Vec::new(),
            cargo: false,
            go: None,
            error: Some(error),
            build_failed: false,
            go_build: None,
        }
    }

    /// A plain package: `.wasm` files in `dir`.
    pub fn wasm(name: String, dir: PathBuf, modules: Vec<PathBuf>) -> Self {
        Package {
            name,
            dir,
            modules,
            cargo: false,
            go: None,
            error: None,
            build_failed: false,
            go_build: None,
        }
    }
}

/// Whether discovery may run host tools (cargo) to build packages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Build {
    /// Cargo packages are built for `target` (`--target`), or for what
    /// their cargo configuration says ([`RustTarget::for_package`]).
    Allowed { target: Option<RustTarget> },
    /// `--prebuilt`: only existing `.wasm` files.
    Never,
}

/// Expands every pattern, in order; a pattern that matches nothing yields one
/// failed package naming it. Go packages are described, and their test
/// binaries left to build into `go_cache` ([`Package::build`], or
/// [`go::build_all`]).
pub fn discover(patterns: &[String], build: Build, go_cache: Option<&Path>) -> Vec<Package> {
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
    go::resolve(&mut out, go_cache);
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
            return vec![Package::failed(display_name(pattern), base.to_path_buf(), format!("{pattern} matched no packages (no Cargo.toml with [package], no Go files and no .wasm files)"))];
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
        return vec![Package::wasm(
            display_name(pattern),
            dir,
            vec![path.to_path_buf()],
        )];
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
            !(n.starts_with('.')
                || n.starts_with('_')
                || n == "target"
                || n == "testdata"
                || n == "vendor"
                || n == "node_modules")
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
                "is a cargo package, and --prebuilt never runs cargo (its build scripts would run on the host, unsandboxed); build its tests yourself and pass the .wasm files (target/wasm32-wasip1/debug/deps/*.wasm, or wasip2)".into(),
            ));
        }
        let Build::Allowed { target } = build else {
            unreachable!("Build::Never returned above")
        };
        return Some(cargo::build(
            name,
            dir,
            RustTarget::for_package(target, dir),
        ));
    }
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    if files
        .iter()
        .any(|p| p.extension().is_some_and(|x| x == "go"))
    {
        if build == Build::Never {
            return Some(Package::failed(
                name,
                dir.to_path_buf(),
                "is a Go package, and --prebuilt never runs the Go toolchain; build its test binary yourself (GOOS=wasip1 GOARCH=wasm go test -c) and pass the .wasm file".into(),
            ));
        }
        // Built, and named by import path, in `go::resolve`.
        let mut p = Package::wasm(name, dir.to_path_buf(), Vec::new());
        p.go = Some(GoMeta::pending());
        return Some(p);
    }
    let mut modules: Vec<PathBuf> = files
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
        .collect();
    modules.sort();
    if modules.is_empty() && !explicit {
        return None;
    }
    Some(Package::wasm(name, dir.to_path_buf(), modules))
}

impl GoMeta {
    /// A Go package not described yet.
    fn pending() -> Self {
        GoMeta {
            module_root: PathBuf::new(),
            module_path: String::new(),
            rel: String::new(),
            standard: false,
            goroot: PathBuf::new(),
        }
    }
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
    fn missing_paths_and_empty_patterns_are_package_errors() {
        let got = discover(
            &["/nonexistent/cachet/x.wasm".to_string()],
            Build::Allowed { target: None },
            None,
        );
        assert_eq!(
            got[0].error.as_deref(),
            Some("/nonexistent/cachet/x.wasm: no such file or directory")
        );
        let dir = tempfile::tempdir().unwrap();
        let pattern = format!("{}/...", dir.path().display());
        assert!(
            discover(&[pattern], Build::Allowed { target: None }, None)[0]
                .error
                .as_deref()
                .unwrap()
                .contains("matched no packages")
        );
    }

    #[test]
    fn dirs_hold_their_wasm_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/target")).unwrap();
        std::fs::write(dir.path().join("a/x.wasm"), b"").unwrap();
        std::fs::write(dir.path().join("a/target/y.wasm"), b"").unwrap();
        std::fs::create_dir_all(dir.path().join("b")).unwrap();
        let got = discover(
            &[format!("{}/...", dir.path().display())],
            Build::Allowed { target: None },
            None,
        );
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].modules, [dir.path().join("a/x.wasm")]);
        let empty = discover(
            &[dir.path().join("b").display().to_string()],
            Build::Allowed { target: None },
            None,
        );
        assert!(empty[0].modules.is_empty() && empty[0].error.is_none());
    }
}
