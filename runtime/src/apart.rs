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
//! The child is a run server (`cachet __run-apart`): started when no idle
//! one is free ([`Servers`]), it runs one request after another
//! (a directory named on a line of its stdin), its engine made and each
//! module's code mapped once, so a run apart costs about what one here
//! does. What comes back is what a run here gives (status, output, log,
//! collected file), through files the child writes in the request's
//! directory. The guest's output streams through the child's stdout as it
//! is written, in frames (a kind byte, a length, the bytes) that end with
//! the run's end frame: into the policy's tee (shown live), and it is the
//! output of a run killed at its deadline (`Status::Timeout`, without trap
//! frames: a kill has none). At a deadline or Ctrl-C the server is killed;
//! the next run apart starts another.
//!
//! The parent prepares the code (`Runtime::prepare_unchecked`: from the
//! compiled-module cache, the shared store, or a compile under the compile
//! limits), so the child never compiles and its time is the run's. Whatever
//! keeps a run from going apart (no compiled-module cache, a mount path
//! that cannot be named, a child that cannot start or did not finish) runs
//! it here instead, as before.

use std::io::BufRead;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::abi::Wasi;
use crate::engine::{Compiler, ModuleDigest, Runtime, RuntimeConfig, Tier};
use crate::log::Sha256Digest;
use crate::outcome::{RunOutcome, Status};
use crate::policy::{OutputTee, Policy};
use crate::server::{write_frame, Frame, END_FRAME, FAILED, NOT_READY, OUTPUT_FRAME, RAN};
use crate::spec::{OutcomeSpec, PolicySpec};

/// What the child is asked to run, in `DIR/request.json`.
#[derive(Serialize, Deserialize)]
struct Request {
    /// The module's digest (hex): its code is in `compiled_cache`.
    digest: String,
    /// The policy; its mounts' directories are relative to `/`.
    policy: PolicySpec,
    /// The stack limit and compiled-module cache: the same for every
    /// request of one parent runtime; a server takes them from its first.
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
        let line = format!("{}\n", dir.path().to_str()?);
        let mut server = self.servers.take_or_start(guard, digest, line.as_bytes())?;
        let start = Instant::now();
        let mut output = Vec::new();
        let end = loop {
            let end = match server.frames.recv_timeout(POLL) {
                Ok(Frame::Output(bytes)) => {
                    if let Some(tee) = &policy.output_tee {
                        (tee.0)(&bytes);
                    }
                    output.extend_from_slice(&bytes);
                    None
                }
                Ok(Frame::End(answer)) => Some(match answer.split_first() {
                    Some((&RAN, _)) => End::Ran,
                    Some((&NOT_READY, _)) => End::NotReady,
                    Some((_, why)) => End::Lost(String::from_utf8_lossy(why).into_owned()),
                    None => End::Lost("an empty answer".into()),
                }),
                Err(mpsc::RecvTimeoutError::Disconnected) => Some(End::Lost(server.died())),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
            };
            let end = end.or_else(|| {
                if self.interrupted() {
                    Some(End::Stopped(Status::Interrupted))
                } else if start.elapsed() >= policy.timeout {
                    Some(End::Stopped(Status::Timeout(policy.timeout)))
                } else {
                    None
                }
            });
            if let Some(end) = end {
                break end;
            }
        };
        let status = match end {
            End::Ran => {
                self.servers.put_back(server);
                let Some(outcome) = read_outcome(dir.path()) else {
                    return Some(Err("its outcome could not be read".into()));
                };
                self.compilers.apart.fetch_add(1, Ordering::Relaxed);
                return Some(Ok(outcome));
            }
            End::NotReady => {
                self.servers.put_back(server);
                self.forget_unchecked(&digest);
                return None;
            }
            // The server is killed (dropped) with the run it was running.
            End::Lost(why) => return Some(Err(why)),
            End::Stopped(status) => status,
        };
        drop(server);
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

/// How a run apart ended.
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

/// The child, a run server: runs each request whose directory comes on a
/// line of stdin (see [`Runtime::run_apart`]), writes its outcome there,
/// and answers with an end frame: [`RAN`] when it ran (whatever its
/// verdict), [`NOT_READY`] when the code was not in the cache, [`FAILED`]
/// and why when it could not run. Ends when stdin does.
pub fn serve() -> u8 {
    // Nothing else would ever stop a guest in a loop without epoch checks
    // once its parent is gone (kill -9, a crash): it dies with the parent
    // (with the thread that started it, which sends it every request).
    // SAFETY: prctl with these arguments only sets a flag of this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let mut runtime = None;
    for line in std::io::stdin().lock().lines() {
        let Ok(dir) = line else { break };
        let answer = match run_request(Path::new(&dir), &mut runtime) {
            Ok(true) => vec![RAN],
            Ok(false) => vec![NOT_READY],
            Err(e) => [&[FAILED][..], e.as_bytes()].concat(),
        };
        write_frame(END_FRAME, &answer);
    }
    0
}

/// Runs one request on the server's runtime (made by the first one);
/// `false` when the module's code was not in the cache.
fn run_request(dir: &Path, runtime: &mut Option<Runtime>) -> Result<bool, String> {
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
        write_frame(OUTPUT_FRAME, bytes)
    })));
    let runtime = match runtime {
        Some(r) => r,
        None => runtime.insert(
            Runtime::new(RuntimeConfig {
                compiled_cache: Some(request.compiled_cache),
                max_wasm_stack: Some(request.stack),
                uninterruptible: true,
                tier: Tier::Cranelift,
                ..Default::default()
            })
            .map_err(|e| e.to_string())?,
        ),
    };
    // One module's code mapped at a time: a server runs one module's jobs
    // in a row, then the next module's.
    runtime.forget_others(&digest);
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
