//! Integration tests: drive the real `cachet` binary in the repository and in
//! temp dirs, and check what a user sees: output (times normalized), exit
//! status, and stderr lines.

mod apart;
mod bad_input;
mod cache;
mod ci;
mod exactness;
mod exec;
mod go;
mod go_stdlib;
mod hostile;
mod house;
mod json;
mod preview2;
mod remote_exec;
mod report;
mod select;
mod should_panic;
mod tiers;

use std::path::Path;
use std::process::Output;

/// `cachet` run from the repository root (fresh results, shared compiled modules).
pub fn cachet(args: &[&str]) -> Output {
    cachet_in(&cachet_testkit::repo_root(), args)
}

pub fn cachet_in(dir: &Path, args: &[&str]) -> Output {
    cachet_with(dir, args, &[])
}

/// `cachet` in `dir` with extra environment. Unless `env` sets its own
/// `CACHET_CACHE`, each call gets fresh results (so reports show real runs)
/// and shares compiled modules with every other call (so nothing recompiles).
pub fn cachet_with(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let (mut cmd, _fresh) = cachet_command(dir, env);
    cmd.args(args).output().unwrap()
}

/// The `cachet` command as [`cachet_with`] runs it, to spawn by hand; the
/// returned dir holds its fresh results and must outlive the process.
pub fn cachet_command(
    dir: &Path,
    env: &[(&str, &str)],
) -> (std::process::Command, tempfile::TempDir) {
    static COMPILED: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let compiled = COMPILED.get_or_init(|| tempfile::tempdir().unwrap());
    let fresh = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(compiled.path(), fresh.path().join("compiled")).unwrap();
    let mut cmd = std::process::Command::new(cachet_bin());
    cmd.current_dir(dir)
        .env("CACHET_CACHE", fresh.path())
        .env("PATH", cachet_testkit::path_with_go())
        .env_remove("CI")
        .env_remove("CACHET_PREBUILT")
        .envs(env.iter().copied());
    (cmd, fresh)
}

/// The `cachet` binary under test, built and current, with the wasm target
/// installed for the fixtures.
pub fn cachet_bin() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    cachet_testkit::ensure_target().unwrap();
    // `cargo test -p cachet-tests` does not rebuild another package's binary;
    // make sure the one under test is current (a no-op when it is).
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .current_dir(cachet_testkit::repo_root())
            .args(["build", "--quiet", "-p", "cachet", "--bin", "cachet"])
            .status()
            .unwrap();
        assert!(status.success(), "building the cachet binary failed");
    });
    assert_cmd::cargo::cargo_bin("cachet")
}

/// Every final action (`pass`, `fail`, `skip`) of a `go test -json`
/// stream, in order: (package, test or "" for the package's own, action).
pub fn json_verdicts(json: &str) -> Vec<(String, String, String)> {
    json.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| matches!(e["Action"].as_str(), Some("pass" | "fail" | "skip")))
        .filter_map(|e| {
            Some((
                e["Package"].as_str().unwrap_or("").to_string(),
                e["Test"].as_str().unwrap_or("").to_string(),
                e["Action"].as_str()?.to_string(),
            ))
        })
        .collect()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Replaces durations (`0.012s`, `(0.01s)`) with `X.XXXs` / `(X.XXs)`.
pub fn normalize(s: &str) -> String {
    let re = regex::Regex::new(r"\b\d+\.(\d{2,3})s\b").unwrap();
    re.replace_all(
        s,
        |c: &regex::Captures| if c[1].len() == 3 { "X.XXXs" } else { "X.XXs" },
    )
    .into_owned()
}
