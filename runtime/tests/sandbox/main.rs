//! Runtime tests: each drives `cachet_runtime` through its API with the guest
//! fixtures of `fixtures/guests` and asserts on the outcome and the input log.
//! One test binary, one module per concern.

mod compile_cache;
mod escape;
mod fixtures;
mod hostile;
mod inputs;
mod limits;
mod tiers;
mod wat;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use cachet_runtime::{Module, Policy, RunOutcome, Runtime, RuntimeConfig};
use cachet_testkit::{copy_tree, fixture, fixture_for};

/// Content of the secret file next to every sandboxed package; it must never
/// appear in any output or log.
pub const SECRET: &str = "TOP-SECRET-7f3a9c: the guest must never see this";

/// One process-wide runtime, as the host has.
pub fn runtime() -> &'static Runtime {
    static RT: OnceLock<(Runtime, tempfile::TempDir)> = OnceLock::new();
    &RT.get_or_init(|| {
        let cache = tempfile::tempdir().unwrap();
        let rt = Runtime::new(RuntimeConfig {
            compiled_cache: Some(cache.path().to_path_buf()),
            ..Default::default()
        })
        .unwrap();
        (rt, cache)
    })
    .0
}

/// A process-wide runtime whose code is Winch's only.
pub fn winch_runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        Runtime::new(RuntimeConfig {
            tier: cachet_runtime::Tier::Winch,
            ..Default::default()
        })
        .unwrap()
    })
}

pub fn load(name: &str) -> Module {
    runtime().load_file(&fixture(name).wasm).unwrap()
}

/// A fixture built for `target` (a preview 1 module or a preview 2
/// component), loaded.
pub fn load_for(name: &str, target: &str) -> Module {
    runtime()
        .load_file(&fixture_for(name, target).wasm)
        .unwrap()
}

/// A fixture's package copied into a fresh directory, with a secret file and
/// a sentinel tree beside it (outside the package):
///
/// ```text
/// root/pkg/        the fixture's package, mounted read-only as `pkg` at `.`
/// root/secret.txt  SECRET
/// root/sentinel/   a tree no run may change
/// root/scratch/    where per-run scratch dirs are made
/// ```
pub struct Sandbox {
    pub root: tempfile::TempDir,
    pub pkg: PathBuf,
}

impl Sandbox {
    pub fn new(name: &str) -> Self {
        let root = tempfile::tempdir().unwrap();
        let pkg = root.path().join("pkg");
        copy_tree(&fixture(name).dir, &pkg).unwrap();
        std::fs::write(root.path().join("secret.txt"), SECRET).unwrap();
        std::fs::create_dir_all(root.path().join("sentinel/sub")).unwrap();
        std::fs::write(root.path().join("sentinel/a.txt"), "sentinel a").unwrap();
        std::fs::write(root.path().join("sentinel/sub/b.txt"), "sentinel b").unwrap();
        std::fs::create_dir(root.path().join("scratch")).unwrap();
        if name == "limit_fifo_open" {
            let status = std::process::Command::new("mkfifo")
                .arg(pkg.join("testdata/fifo"))
                .status()
                .unwrap();
            assert!(status.success(), "mkfifo failed");
        }
        if name == "escape_symlink_out" {
            std::os::unix::fs::symlink("../../secret.txt", pkg.join("testdata/out.txt")).unwrap();
            std::os::unix::fs::symlink("../../sentinel", pkg.join("testdata/outdir")).unwrap();
        }
        Sandbox { root, pkg }
    }

    pub fn secret_path(&self) -> PathBuf {
        self.root.path().join("secret.txt")
    }

    /// The policy every fixture runs under unless its table entry says more.
    /// `--nocapture`: libtest's capture would keep a panic message in guest
    /// memory, and on wasm32-wasip1 a panic aborts before it is printed.
    pub fn policy(&self) -> Policy {
        let mut p = Policy::new();
        p.args(&["--nocapture"])
            .mount_read_only("pkg", &self.pkg, &["."])
            .scratch(self.root.path().join("scratch"))
            .env("GREETING", "hello")
            .timeout(Duration::from_secs(60))
            .memory_limit(256 << 20);
        p
    }

    pub fn run(&self, name: &str, policy: &Policy) -> RunOutcome {
        runtime().run(&load(name), policy).unwrap()
    }

    /// [`Sandbox::run`] of the fixture built for `target`.
    pub fn run_for(&self, name: &str, policy: &Policy, target: &str) -> RunOutcome {
        runtime().run(&load_for(name, target), policy).unwrap()
    }
}

pub fn text(outcome: &RunOutcome) -> String {
    String::from_utf8_lossy(&outcome.output).into_owned()
}
