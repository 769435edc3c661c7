//! Building cargo packages' tests for wasm32-wasip1 or -wasip2 with `cargo test
//! --no-run`: on the host, outside the sandbox (a package's build scripts
//! and proc macros are host programs; `--prebuilt` turns this off), made
//! independent of the checkout's location so that every clone builds the
//! same module bytes, and with the test crates (only they) built for
//! libtest's child mode so that `#[should_panic]` tests run (see
//! [`wrap_rustc`]).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use crate::discover::{Package, RustTarget};

/// Builds the tests of the cargo package in `dir` for `target`, running
/// cargo in `dir` as `cargo test` there would run (its `.cargo/config.toml`
/// applies).
pub(crate) fn build(name: String, dir: &Path, target: RustTarget) -> Package {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = std::path::absolute(dir.join("Cargo.toml")).unwrap_or(dir.join("Cargo.toml"));
    let target = target.triple();
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(dir)
        .args([
            "test",
            "--no-run",
            "--quiet",
            "--target",
            target,
            "--message-format=json",
            "--manifest-path",
        ])
        .arg(&manifest);
    if let Some(root) = workspace_root(&cargo, &manifest) {
        portable(&mut cmd, &root, target);
    }
    child_mode(&mut cmd);
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
            format!("the {target} target is not installed; run `rustup target add {target}`")
        } else {
            eprint!("{stderr}");
            format!(
                "cargo could not build the tests of {} for {target} (errors above)",
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
    let mut p = Package::wasm(name, dir.to_path_buf(), modules);
    p.cargo = true;
    p
}

/// Set (to the user's own workspace wrapper, or empty) when cargo runs
/// cachet as its `RUSTC_WORKSPACE_WRAPPER`.
const WRAPPING: &str = "CACHET_WRAPS_RUSTC";

/// Builds the workspace's test crates with `-Zpanic-abort-tests`: cargo
/// runs cachet itself as the workspace wrapper (members only, never
/// dependencies), which adds the flag to `--test` compiles for wasm (see
/// [`wrap_rustc`]). A wrapper the user set is kept and runs inside.
fn child_mode(cmd: &mut Command) {
    let Ok(me) = std::env::current_exe() else {
        return;
    };
    let user = std::env::var_os("RUSTC_WORKSPACE_WRAPPER").unwrap_or_default();
    cmd.env(WRAPPING, user).env("RUSTC_WORKSPACE_WRAPPER", me);
}

/// When cargo runs cachet as its workspace wrapper (`cachet RUSTC ARGS`,
/// with [`WRAPPING`] set), runs the compile and returns its exit status.
/// A test crate for wasm gets `-Zpanic-abort-tests` (the target panics
/// with abort already), which links libtest's `test_main_static_abort`:
/// its child mode runs one named test, `#[should_panic]` ones included.
/// The flag is unstable: `RUSTC_BOOTSTRAP=1` allows it, for that compile
/// only, so no dependency sees a nightly compiler.
pub fn wrap_rustc(args: &[OsString]) -> Option<ExitCode> {
    let inner = std::env::var_os(WRAPPING)?;
    let (rustc, rest) = args.get(1..)?.split_first()?;
    let mut cmd = if inner.is_empty() {
        Command::new(rustc)
    } else {
        let mut c = Command::new(&inner);
        c.arg(rustc);
        c
    };
    cmd.args(rest).env_remove(WRAPPING);
    let test_crate = rest.iter().any(|a| a == "--test");
    let wasm = rest
        .windows(2)
        .any(|w| w[0] == "--target" && w[1].to_string_lossy().starts_with("wasm32-"));
    if test_crate && wasm {
        cmd.arg("-Zpanic-abort-tests").env("RUSTC_BOOTSTRAP", "1");
    }
    Some(match cmd.status() {
        Ok(s) => ExitCode::from(s.code().map_or(1, |c| c as u8)),
        Err(e) => {
            eprintln!("cachet: cannot run {}: {e}", rustc.to_string_lossy());
            ExitCode::from(1)
        }
    })
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
/// the remaps go in as `target.<triple>.rustflags` config, which joins
/// that key's values from config files (but takes precedence over
/// `build.rustflags`).
fn portable(cmd: &mut Command, root: &Path, target: &str) {
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
                .arg(format!("target.{target}.rustflags=[{}]", list.join(",")));
        }
    }
    let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
        // Cargo runs in the package dir: a relative dir is cachet's.
        Some(t) => {
            let dir = PathBuf::from(t).join("cachet");
            std::path::absolute(&dir).unwrap_or(dir)
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_strings_are_quoted() {
        assert_eq!(toml_string(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
