//! Runs apart: a long run in a child process, its time limit a kill.
//!
//! wasmtime stops a guest at its deadline through epoch checks compiled
//! into every loop and function entry. On the Go standard library's tight
//! loops they cost a third more CPU (docs/BENCHMARKS.md, "Cold runs"); the
//! stock runner compiles none, and `go test` enforces its time limit by
//! killing the test process. A run the host expects to be long
//! ([`Runtime::run_apart`]) does the same: it runs in a child process (this
//! binary, `RunGuard`) on Cranelift's code compiled without the checks,
//! and at its deadline the child is killed.
//!
//! What comes back is what a run here gives (status, output, log, collected
//! file), through files the child writes in a directory of its own. The
//! guest's output also streams through the child's stdout as it is
//! written: into the policy's tee (shown live), and it is the output of a
//! run killed at its deadline (`Status::Timeout`, without trap frames: a
//! kill has none). Ctrl-C kills the child (`Status::Interrupted`).
//!
//! The parent prepares the code (`Runtime::prepare_unchecked`: from the
//! compiled-module cache, the shared store, or a compile under the compile
//! limits), so the child never compiles and its time is the run's. Whatever
//! keeps a run from going apart (no compiled-module cache, a mount path
//! that cannot be named, a child that cannot start or did not finish) runs
//! it here instead, as before.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::abi::Wasi;
use crate::engine::{Compiler, ModuleDigest, Runtime, RuntimeConfig, Tier};
use crate::log::Sha256Digest;
use crate::outcome::{RunOutcome, Status};
use crate::policy::{OutputTee, Policy};
use crate::spec::{OutcomeSpec, PolicySpec};

/// What the child is asked to run, in `DIR/request.json`.
#[derive(Serialize, Deserialize)]
struct Request {
    /// The module's digest (hex): its code is in `compiled_cache`.
    digest: String,
    /// The policy; its mounts' directories are relative to `/`.
    policy: PolicySpec,
    stack: usize,
    compiled_cache: PathBuf,
    /// The parent's pid: a child whose parent died before it could ask to
    /// die with it does not run.
    parent: u32,
}

const REQUEST: &str = "request.json";
const OUTCOME: &str = "outcome.json";
const OUTPUT: &str = "output";
const COLLECTED: &str = "collected";
const SCRATCH: &str = "scratch";

/// The child's exit when the module's code was not in the cache (trimmed
/// meanwhile): the run goes here instead.
const NOT_READY: u8 = 3;

/// How often the parent looks at the child, its deadline and Ctrl-C.
const POLL: Duration = Duration::from_millis(5);

impl Runtime {
    /// Runs `policy` on the module `digest` names in a child process,
    /// killed at the policy's time limit (see the module docs); `bytes`
    /// gives the module's bytes if its code must be compiled. An error:
    /// the run did not go apart, or went and came back without an outcome,
    /// and should run here ([`Runtime::run`]).
    pub fn run_apart(
        &self,
        digest: ModuleDigest,
        wasi: Wasi,
        bytes: &dyn Fn() -> Option<Vec<u8>>,
        policy: &Policy,
    ) -> Result<RunOutcome, NotApart> {
        match self.try_run_apart(digest, wasi, bytes, policy) {
            Some(Ok(outcome)) => Ok(outcome),
            None => Err(NotApart::Unable),
            Some(Err(why)) => {
                // What it streamed is forgotten, as when a run starts over
                // on Cranelift's code.
                if let Some(reset) = &policy.tee_restart {
                    (reset.0)(&[]);
                }
                Err(NotApart::Lost(why))
            }
        }
    }

    /// `None`: it could not go apart; `Some(Err(why))`: the child ended
    /// without an outcome.
    fn try_run_apart(
        &self,
        digest: ModuleDigest,
        wasi: Wasi,
        bytes: &dyn Fn() -> Option<Vec<u8>>,
        policy: &Policy,
    ) -> Option<Result<RunOutcome, String>> {
        let guard = self.run_guard.as_ref()?;
        let cache = self.compiled_cache()?;
        if !self.shared.epochs || policy.inherit_stdio || self.interrupted() {
            return None;
        }
        let hosts: Vec<String> = policy
            .mounts
            .iter()
            .map(|m| below_root(&m.host))
            .collect::<Option<_>>()?;
        let spec = policy.spec(|i, _| hosts[i].clone());
        self.prepare_unchecked(digest, bytes).ok()?;
        let base = policy
            .scratch_base
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new()
            .prefix("cachet-apart-")
            .tempdir_in(&base)
            .ok()?;
        let request = Request {
            digest: digest.0.hex(),
            policy: spec,
            stack: self.shared.max_wasm_stack,
            compiled_cache: cache.to_path_buf(),
            parent: std::process::id(),
        };
        std::fs::write(dir.path().join(REQUEST), serde_json::to_vec(&request).ok()?).ok()?;
        let stderr = std::fs::File::create(dir.path().join("stderr")).ok()?;
        let start = Instant::now();
        let mut child = std::process::Command::new(&guard.program)
            .args(&guard.args)
            .arg(dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .spawn()
            .ok()?;
        let streamed = stream(child.stdout.take()?, policy.output_tee.clone());
        let end = loop {
            match child.try_wait() {
                Ok(Some(status)) if status.code() == Some(0) => break End::Ran,
                Ok(Some(status)) if status.code() == Some(NOT_READY.into()) => break End::NotReady,
                Ok(Some(status)) => break End::Lost(status.to_string()),
                Err(e) => break End::Lost(e.to_string()),
                Ok(None) if self.interrupted() => break End::Stopped(Status::Interrupted),
                Ok(None) if start.elapsed() >= policy.timeout => {
                    break End::Stopped(Status::Timeout(policy.timeout))
                }
                Ok(None) => std::thread::sleep(POLL),
            }
        };
        let _ = child.kill();
        let _ = child.wait();
        let output = streamed.join().unwrap_or_default();
        let status = match end {
            End::Ran => {
                let Some(outcome) = read_outcome(dir.path()) else {
                    return Some(Err("its outcome could not be read".into()));
                };
                self.compilers.apart.fetch_add(1, Ordering::Relaxed);
                return Some(Ok(outcome));
            }
            End::Lost(how) => {
                // Its own words, when it had any (the last line it wrote).
                let said = std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
                return Some(Err(
                    match said.lines().rev().find(|l| !l.trim().is_empty()) {
                        Some(line) => format!("{how}: {}", line.trim()),
                        None => how,
                    },
                ));
            }
            End::NotReady => return None,
            End::Stopped(status) => status,
        };
        self.compilers.apart.fetch_add(1, Ordering::Relaxed);
        let spec = OutcomeSpec {
            status,
            elapsed: start.elapsed(),
            log: Default::default(),
            changed_during_run: None,
            cleanup_error: None,
            compiler: Compiler::Cranelift,
            restarted: false,
            wasi,
            exit_frames: Vec::new(),
            collected: false,
        };
        Some(Ok(RunOutcome::from_spec(spec, output, None)))
    }
}

/// Why a run did not come back from apart with an outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotApart {
    /// It could not go (no child program or compiled-module cache, a mount
    /// outside `/`, its code could not be prepared, or was gone when the
    /// child looked): nothing of it ran.
    Unable,
    /// The child ended without an outcome (a crash, a kill from outside):
    /// how, and its last line. What it streamed was reset.
    Lost(String),
}

/// How a child ended.
enum End {
    /// By itself, its outcome written.
    Ran,
    /// Killed: at its deadline, or by Ctrl-C.
    Stopped(Status),
    /// Without an outcome (a crash, a kill from outside): how it ended.
    Lost(String),
    /// Before running: the code was not in the cache.
    NotReady,
}

/// A mount's host directory as the child names it: relative to `/`.
fn below_root(host: &Path) -> Option<String> {
    let normal = |p: &Path| {
        p.components()
            .skip(1)
            .all(|c| matches!(c, Component::Normal(_)))
    };
    let mut path = std::path::absolute(host).ok()?;
    if !normal(&path) {
        path = std::fs::canonicalize(&path).ok()?;
    }
    let name = path.to_str()?.strip_prefix('/')?;
    normal(&path).then(|| name.to_string())
}

/// Reads the child's stdout to its end on a thread of its own, into the
/// tee as it comes; the bytes, for a run stopped before its end.
fn stream(
    mut from: std::process::ChildStdout,
    tee: Option<OutputTee>,
) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = vec![0; 64 << 10];
        while let Ok(n @ 1..) = from.read(&mut buf) {
            if let Some(tee) = &tee {
                (tee.0)(&buf[..n]);
            }
            seen.extend_from_slice(&buf[..n]);
        }
        seen
    })
}

/// The outcome a child that ended by itself wrote.
fn read_outcome(dir: &Path) -> Option<RunOutcome> {
    let spec: OutcomeSpec = serde_json::from_slice(&std::fs::read(dir.join(OUTCOME)).ok()?).ok()?;
    let output = std::fs::read(dir.join(OUTPUT)).ok()?;
    let collected = match spec.collected {
        true => Some(std::fs::read(dir.join(COLLECTED)).ok()?),
        false => None,
    };
    Some(RunOutcome::from_spec(spec, output, collected))
}

/// The child: runs the request in `dir` (see [`Runtime::run_apart`]) and
/// writes its outcome there. Exit 0 when it ran (whatever its verdict),
/// [`NOT_READY`] when the code was not in the cache, 2 when it could not
/// run (the reason on stderr).
pub fn run_child(dir: &Path) -> u8 {
    match try_run_child(dir) {
        Ok(ran) => {
            if ran {
                0
            } else {
                NOT_READY
            }
        }
        Err(e) => {
            eprintln!("cachet: a run apart: {e}");
            2
        }
    }
}

fn try_run_child(dir: &Path) -> Result<bool, String> {
    // Nothing else would ever stop a guest in a loop without epoch checks
    // once its parent is gone (kill -9, a crash): it dies with the parent
    // (with the thread that waits for it, which lives as long).
    // SAFETY: prctl with these arguments only sets a flag of this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let at = |name: &str| dir.join(name);
    let show = |path: &Path, e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let bytes = std::fs::read(at(REQUEST)).map_err(|e| show(&at(REQUEST), &e))?;
    let request: Request = serde_json::from_slice(&bytes).map_err(|e| show(&at(REQUEST), &e))?;
    if std::os::unix::process::parent_id() != request.parent {
        return Err("its parent cachet is gone".into());
    }
    let digest = Sha256Digest::parse_hex(&request.digest)
        .map(ModuleDigest)
        .ok_or_else(|| format!("bad module digest {:?}", request.digest))?;
    std::fs::create_dir_all(at(SCRATCH)).map_err(|e| show(&at(SCRATCH), &e))?;
    let mut policy = Policy::from_spec(&request.policy, Path::new("/"), &at(SCRATCH))?;
    policy.output_tee(OutputTee(Arc::new(|bytes: &[u8]| {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(bytes);
        let _ = out.flush();
    })));
    let runtime = Runtime::new(RuntimeConfig {
        compiled_cache: Some(request.compiled_cache),
        max_wasm_stack: Some(request.stack),
        uninterruptible: true,
        tier: Tier::Cranelift,
        ..Default::default()
    })
    .map_err(|e| e.to_string())?;
    let Some(module) = runtime.load_ready(digest) else {
        return Ok(false);
    };
    let outcome = runtime.run(&module, &policy).map_err(|e| e.to_string())?;
    let (spec, output, collected) = outcome.into_spec();
    let write =
        |name: &str, bytes: &[u8]| std::fs::write(at(name), bytes).map_err(|e| show(&at(name), &e));
    write(OUTPUT, &output)?;
    if let Some(c) = collected {
        write(COLLECTED, &c)?;
    }
    write(
        OUTCOME,
        &serde_json::to_vec(&spec).map_err(|e| e.to_string())?,
    )?;
    Ok(true)
}
