//! Which Rust target a cargo package's tests are built for: WASI preview 1
//! (`wasm32-wasip1`, core modules) or preview 2 (`wasm32-wasip2`,
//! components). Chosen as cargo would for `cargo test` in the package's
//! directory: `--target` (or `target` in cachet.toml), else
//! `CARGO_BUILD_TARGET`, else `build.target` of the nearest
//! `.cargo/config.toml` at or above the package, then of
//! `$CARGO_HOME/config.toml`; a target cachet does not run (a native
//! one) there is passed over, and preview 1 is the default.

use std::path::{Path, PathBuf};

/// A Rust target whose test binaries cachet runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
pub enum RustTarget {
    #[default]
    #[serde(rename = "wasm32-wasip1")]
    WasiP1,
    #[serde(rename = "wasm32-wasip2")]
    WasiP2,
}

impl RustTarget {
    pub const ALL: [RustTarget; 2] = [RustTarget::WasiP1, RustTarget::WasiP2];

    pub fn triple(self) -> &'static str {
        match self {
            RustTarget::WasiP1 => "wasm32-wasip1",
            RustTarget::WasiP2 => "wasm32-wasip2",
        }
    }

    pub fn parse(triple: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.triple() == triple)
    }

    /// The target of the package in `dir`: `explicit` when given, else
    /// what cargo's configuration says (see the module docs).
    pub fn for_package(explicit: Option<RustTarget>, dir: &Path) -> RustTarget {
        if let Some(t) = explicit {
            return t;
        }
        if let Some(t) = std::env::var("CARGO_BUILD_TARGET")
            .ok()
            .and_then(|t| Self::parse(t.trim()))
        {
            return t;
        }
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        let home = cargo_home();
        dir.ancestors()
            .map(|d| d.join(".cargo"))
            .chain(home)
            .find_map(|d| configured(&d))
            .unwrap_or_default()
    }
}

fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
}

/// `build.target` of the cargo configuration in `dir` (`config.toml`, or
/// the older `config`), when it names a target cachet runs. A list of
/// targets gives its first such one.
fn configured(dir: &Path) -> Option<RustTarget> {
    let text = ["config.toml", "config"]
        .iter()
        .find_map(|f| std::fs::read_to_string(dir.join(f)).ok())?;
    let value: toml::Table = toml::from_str(&text).ok()?;
    match value.get("build")?.get("target")? {
        toml::Value::String(s) => RustTarget::parse(s),
        toml::Value::Array(list) => list
            .iter()
            .filter_map(|v| v.as_str())
            .find_map(RustTarget::parse),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_package_config_names_its_target_and_a_native_one_is_passed_over() {
        let root = tempfile::tempdir().unwrap();
        let pkg = root.path().join("ws/pkg");
        std::fs::create_dir_all(pkg.join(".cargo")).unwrap();
        std::fs::create_dir_all(root.path().join("ws/.cargo")).unwrap();
        std::fs::write(
            root.path().join("ws/.cargo/config.toml"),
            "[build]\ntarget = \"wasm32-wasip2\"\n",
        )
        .unwrap();
        assert_eq!(
            configured(&root.path().join("ws/.cargo")),
            Some(RustTarget::WasiP2)
        );
        std::fs::write(
            pkg.join(".cargo/config.toml"),
            "[build]\ntarget = [\"x86_64-unknown-linux-gnu\", \"wasm32-wasip1\"]\n",
        )
        .unwrap();
        assert_eq!(configured(&pkg.join(".cargo")), Some(RustTarget::WasiP1));
        std::fs::write(
            pkg.join(".cargo/config.toml"),
            "[build]\ntarget = \"x86_64-unknown-linux-gnu\"\n",
        )
        .unwrap();
        assert_eq!(configured(&pkg.join(".cargo")), None);
        assert_eq!(
            RustTarget::for_package(Some(RustTarget::WasiP1), &pkg),
            RustTarget::WasiP1
        );
    }
}
