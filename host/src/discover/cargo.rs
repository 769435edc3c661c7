//! Building cargo packages' tests for wasm32-wasip1 with `cargo test
//! --no-run`: on the host, outside the sandbox (a package's build scripts
//! and proc macros are host programs; `--prebuilt` turns this off), made
//! independent of the checkout's location so that every clone builds the
//! same module bytes.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::discover::{Package, TARGET};

pub(crate) fn build(name: String, dir: &Path) -> Package {
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
    let mut p = Package::wasm(name, dir.to_path_buf(), modules);
    p.cargo = true;
    p
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_strings_are_quoted() {
        assert_eq!(toml_string(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
