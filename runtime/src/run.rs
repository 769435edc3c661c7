//! One run: build the WASI context from a `Policy`, instantiate the module's
//! `InstancePre` in a fresh store with the policy's limits, call `_start` on
//! a guest thread (`guest_thread.rs`), and turn however it ended into a
//! `Status`. Only this file and `engine.rs` downcast wasmtime errors.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use wasmtime::{Store, Trap, UpdateDeadline, WasmBacktrace};
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use crate::abi::Wasi;
use crate::clock::{GuestClock, Stop};
use crate::code::Pre;
use crate::engine::{Module, Runtime, Shared};
use crate::error::first_line;
use crate::error::RunError;
use crate::intercept::NoMemoryExport;
use crate::observe::{MountMode, World};
use crate::outcome::{RunOutcome, Status};
use crate::output::{OutputOverflow, OutputSink};
use crate::policy::{Policy, SCRATCH_GUEST_PATH, SCRATCH_MOUNT_NAME};
use crate::quota::Quota;
use crate::random::SeededRandom;
use crate::recorder::Recorder;
use crate::state::{Limiter, RunState};

/// The first file descriptor WASI gives a preopen (0-2 are stdio).
const FIRST_PREOPEN_FD: u32 = 3;

/// Trap frames shown with a trap: enough to see where, few enough to read.
const TRAP_FRAMES: usize = 8;

/// Frames kept of a failing preview 2 exit's caller: enough to see which
/// function called `std::process::exit` under wasi-libc's three.
const EXIT_FRAMES: usize = 16;

impl Runtime {
    /// Runs `module` under `policy`. A test failure, trap or limit is a
    /// [`Status`] in the outcome; `Err` means the run could not be set up.
    ///
    /// The guest runs on one of the runtime's guest threads, whose stack
    /// holds the whole wasm stack limit: on this one when called from a
    /// guest thread ([`Runtime::spawn`]), else on another, waiting for it.
    ///
    /// A module loaded on Winch's code gets its Cranelift compile queued by
    /// its first run ([`Runtime::run_alone`] does not queue it).
    pub fn run(&self, module: &Module, policy: &Policy) -> Result<RunOutcome, RunError> {
        self.tier_up(module);
        self.run_alone(module, policy)
    }

    /// [`Runtime::run`] of a run that may be the module's only one here (a
    /// listing, whose cases then run apart or come from a cache): it does
    /// not queue the module's Cranelift compile.
    pub fn run_alone(&self, module: &Module, policy: &Policy) -> Result<RunOutcome, RunError> {
        let result = if crate::guest_thread::on_guest_thread() {
            crate::guest_thread::catching(|| run_here(&self.shared, module, policy))
        } else {
            let (shared, module, policy) = (self.shared.clone(), module.clone(), policy.clone());
            self.threads
                .run(move || run_here(&shared, &module, &policy))
        };
        result.unwrap_or_else(|p| Err(RunError::Internal(p.0)))
    }

    /// Runs `f` on a guest thread, without waiting: the runs it starts need
    /// no switch of thread (a switch cost ~40 µs a run on two cores). A
    /// panic in `f` is caught; `f` reports its own result.
    pub fn spawn(&self, f: impl FnOnce() + Send + 'static) -> Result<(), RunError> {
        self.threads.spawn(f).map_err(|p| RunError::Internal(p.0))
    }
}

/// Runs `module` here. A run that started on Winch's code starts over on
/// Cranelift's when that is ready, if nothing of it escaped the run (no
/// read-write mount but its scratch, output not streamed): a long test
/// then runs at full speed, and its verdict, output and log are those of
/// one run, with its whole time limit.
fn run_here(shared: &Shared, module: &Module, policy: &Policy) -> Result<RunOutcome, RunError> {
    let restartable = shared.epochs
        && !policy.inherit_stdio
        && (policy.output_tee.is_none() || policy.tee_restart.is_some())
        && policy.mounts.iter().all(|m| m.mode == MountMode::ReadOnly);
    let (first, tier_up) = run_once(shared, module, policy, restartable)?;
    if !tier_up {
        return Ok(first);
    }
    if let Some(reset) = &policy.tee_restart {
        (reset.0)(&[]);
    }
    let (mut again, _) = run_once(shared, module, policy, false)?;
    again.restarted = true;
    Ok(again)
}

fn run_once(
    shared: &Shared,
    module: &Module,
    policy: &Policy,
    restartable: bool,
) -> Result<(RunOutcome, bool), RunError> {
    let (pre, compiler) = module.inner.current();
    let scratch = match &policy.scratch_base {
        Some(base) => Some(
            shared
                .scratch
                .take(base)
                .map_err(|source| RunError::Scratch {
                    base: base.clone(),
                    source,
                })?,
        ),
        None => None,
    };

    let mut mounts: Vec<(String, std::path::PathBuf, MountMode, Vec<String>)> = policy
        .mounts
        .iter()
        .map(|m| (m.name.clone(), m.host.clone(), m.mode, m.guest.clone()))
        .collect();
    if let Some(dir) = &scratch {
        mounts.push((
            SCRATCH_MOUNT_NAME.into(),
            dir.path().to_path_buf(),
            MountMode::ReadWrite,
            vec![SCRATCH_GUEST_PATH.into()],
        ));
    }
    for (i, m) in mounts.iter().enumerate() {
        if mounts[..i].iter().any(|o| o.0 == m.0) {
            return Err(RunError::DuplicateMount(m.0.clone()));
        }
    }

    let sink = OutputSink::new(policy.output_limit, policy.output_tee.clone());
    let mut wasi = WasiCtxBuilder::new();
    let mut argv = vec![policy.program_name.clone()];
    argv.extend(policy.args.iter().cloned());
    wasi.args(&argv)
        .envs(&policy.env.iter().collect::<Vec<_>>())
        .allow_blocking_current_thread(true);
    if policy.inherit_stdio {
        wasi.inherit_stdin().inherit_stdout().inherit_stderr();
    } else {
        wasi.stdout(sink.clone()).stderr(sink.clone());
    }
    let mut preopens = Vec::new();
    for (index, (name, host, mode, guests)) in mounts.iter().enumerate() {
        let perms = match mode {
            MountMode::ReadOnly => FsPerms::ReadOnly,
            MountMode::ReadWrite => FsPerms::ReadWrite,
        };
        for guest in guests {
            wasi.preopened_dir(host, guest, perms)
                .map_err(|e| RunError::Mount {
                    name: name.clone(),
                    host: host.clone(),
                    reason: first_line(&e),
                })?;
            preopens.push(index);
        }
    }

    let world = World::new(
        mounts.iter().map(|(n, h, m, _)| (n.clone(), h.clone(), *m)),
        policy.env.clone(),
    )
    .with_memo(policy.memo.clone());
    let scratch_index = scratch.as_ref().map(|_| mounts.len() - 1);
    let mut recorder = Recorder::new(world, scratch_index);
    let wasi_version = pre.wasi();
    if wasi_version == Wasi::P1 {
        // A component learns its preopens from `get-directories`, and the
        // recorder learns them there (`preview2/`).
        for (i, mount) in preopens.iter().enumerate() {
            recorder.add_preopen(FIRST_PREOPEN_FD + i as u32, *mount);
        }
    }

    let device_mount = policy.devices.as_ref().and_then(|name| {
        mounts
            .iter()
            .position(|m| m.0 == *name && m.2 == MountMode::ReadOnly)
    });
    let start = Instant::now();
    let state = RunState {
        wasi: wasi.build_p1(),
        recorder,
        limiter: Limiter::new(policy.memory_limit, policy.table_limit, wasi_version),
        quota: Quota::new(policy.scratch_limit, policy.open_files),
        appending: HashSet::new(),
        clock: match policy.hermetic {
            Some(_) => GuestClock::Virtual(0),
            None => GuestClock::Real,
        },
        random: policy.hermetic.map(SeededRandom::new),
        interrupt: shared.interrupt.clone(),
        deadline: start.checked_add(policy.timeout),
        stop: None,
        tier_up: false,
        fuel: 0,
        listing: None,
        device_mount,
        devices: HashMap::new(),
        p2: crate::state::Preview2State::new(preopens),
        exit_trace: None,
    };
    let mut store = Store::new(pre.engine(), state);
    store.limiter(|s| &mut s.limiter);
    // Every tick, the store checks its deadline and the interrupt; a guest
    // in a host call is stopped by the call itself (`clock.rs`).
    if shared.epochs {
        store.set_epoch_deadline(1);
    }
    let upgrade =
        (restartable && compiler == crate::engine::Compiler::Winch).then(|| module.inner.clone());
    store.epoch_deadline_callback(move |mut cx| {
        let st = cx.data_mut();
        match st.interrupt.check(st.deadline) {
            Some(stop) => {
                st.stop = Some(stop);
                Ok(UpdateDeadline::Interrupt)
            }
            None if upgrade.as_ref().is_some_and(|m| m.upgraded.get().is_some()) => {
                st.tier_up = true;
                Ok(UpdateDeadline::Interrupt)
            }
            None => Ok(UpdateDeadline::Continue(1)),
        }
    });

    let status = match shared.interrupt.check(None) {
        Some(_) => Status::Interrupted,
        None => match pre {
            Pre::Core(pre) => match pre.instantiate(&mut store) {
                Err(e) => classify_instantiate(e, &store, &sink, policy),
                Ok(instance) => match instance.get_typed_func::<(), ()>(&mut store, "_start") {
                    Err(_) => Status::Invalid("the module exports no `_start` function; build it as a WASI command (a test binary), not a library".into()),
                    Ok(start_fn) => match start_fn.call(&mut store, ()) {
                        Ok(()) => Status::Exited(0),
                        Err(e) => classify(e, &store, &sink, policy),
                    },
                },
            },
            Pre::Component(pre) => match pre.instantiate(&mut store) {
                Err(e) => classify_instantiate(e, &store, &sink, policy),
                Ok(command) => match command.wasi_cli_run().call_run(&mut store) {
                    Ok(Ok(())) => Status::Exited(0),
                    // `run` returned its error result: exit status 1, as
                    // the wasmtime CLI reports it.
                    Ok(Err(())) => Status::Exited(1),
                    Err(e) => classify(e, &store, &sink, policy),
                },
            },
        },
    };
    let tier_up = store.data().tier_up;
    let exit_frames = match store.data_mut().exit_trace.take() {
        Some(trace) => backtrace_frames(&trace, EXIT_FRAMES),
        None => Vec::new(),
    };
    let status = limit_behind(status, &store, policy);
    let elapsed = start.elapsed();
    let output = sink.take();
    let (log, changed_during_run) = store.into_data().recorder.finish();
    let collected = match (&policy.collect, &scratch) {
        (Some(name), Some(dir)) => read_collected(dir.path(), name),
        _ => None,
    };
    let mut cleanup_error = None;
    if let Some(dir) = scratch {
        if let Err(e) = shared.scratch.give_back(dir) {
            cleanup_error = Some(format!("cannot remove the run's scratch dir: {e}"));
        }
    }
    let outcome = RunOutcome {
        status,
        output,
        elapsed,
        log,
        changed_during_run,
        cleanup_error,
        collected,
        compiler,
        restarted: false,
        wasi: wasi_version,
        exit_frames,
    };
    Ok((outcome, tier_up))
}

/// Collected files are reports, not data: more than this is cut.
const COLLECT_LIMIT: u64 = 16 << 20;

/// The regular file `name` in the scratch dir, read without following links
/// out of it.
fn read_collected(dir: &std::path::Path, name: &str) -> Option<Vec<u8>> {
    use std::io::Read;
    let dir = cap_std::fs::Dir::open_ambient_dir(dir, cap_std::ambient_authority()).ok()?;
    if !dir.symlink_metadata(name).ok()?.is_file() {
        return None;
    }
    let mut out = Vec::new();
    dir.open(name)
        .ok()?
        .take(COLLECT_LIMIT)
        .read_to_end(&mut out)
        .ok()?;
    Some(out)
}

/// A run that failed after a limit refused it a resource failed for that
/// limit: the refusal, not the guest's reaction to it, is the reason.
fn limit_behind(status: Status, store: &Store<RunState>, policy: &Policy) -> Status {
    if !matches!(status, Status::Exited(c) if c != 0) && !matches!(status, Status::Trapped { .. }) {
        return status;
    }
    let st = store.data();
    if st.quota.scratch_hit {
        Status::ScratchLimit(policy.scratch_limit)
    } else if st.quota.open_hit {
        Status::OpenFilesLimit(policy.open_files)
    } else {
        status
    }
}

/// A failed instantiation: the module's start function ran and failed (a
/// trap, a stop, an exit), which is reported as any run's end, with its
/// reason and frames; or the module could not be set up at all.
fn classify_instantiate(
    e: wasmtime::Error,
    store: &Store<RunState>,
    sink: &OutputSink,
    policy: &Policy,
) -> Status {
    let ran = e.downcast_ref::<Trap>().is_some()
        || e.downcast_ref::<WasmBacktrace>().is_some()
        || e.downcast_ref::<I32Exit>().is_some()
        || e.downcast_ref::<OutputOverflow>().is_some();
    if ran {
        return classify(e, store, sink, policy);
    }
    if store.data().limiter.memory_refused {
        return Status::MemoryLimit(policy.memory_limit);
    }
    Status::Invalid(first_line(&e))
}

fn classify(
    e: wasmtime::Error,
    store: &Store<RunState>,
    sink: &OutputSink,
    policy: &Policy,
) -> Status {
    if let Some(exit) = e.downcast_ref::<I32Exit>() {
        return Status::Exited(exit.0);
    }
    if sink.overflowed() || e.downcast_ref::<OutputOverflow>().is_some() {
        return Status::OutputOverflow(policy.output_limit);
    }
    if let Some(Trap::Interrupt) = e.downcast_ref::<Trap>() {
        return match store.data().stop {
            Some(Stop::Interrupted) => Status::Interrupted,
            _ => Status::Timeout(policy.timeout),
        };
    }
    if store.data().limiter.memory_refused {
        return Status::MemoryLimit(policy.memory_limit);
    }
    let frames = frames(&e);
    let catch_unwind = in_catch_unwind(&e);
    match e.downcast_ref::<Trap>() {
        Some(Trap::StackOverflow) => Status::StackOverflow {
            limit: crate::engine::MAX_WASM_STACK,
            frames,
        },
        Some(trap) => Status::Trapped {
            message: trap
                .to_string()
                .trim_start_matches("wasm trap: ")
                .to_string(),
            frames,
            catch_unwind,
        },
        None if e.downcast_ref::<NoMemoryExport>().is_some() => {
            Status::Invalid(NoMemoryExport.to_string())
        }
        None => Status::Trapped {
            message: e.root_cause().to_string(),
            frames,
            catch_unwind,
        },
    }
}

/// Whether any frame of a trap's wasm backtrace is in Rust's
/// `std::panic::catch_unwind` (`std::panicking::catch_unwind` inside it).
fn in_catch_unwind(e: &wasmtime::Error) -> bool {
    let Some(bt) = e.downcast_ref::<WasmBacktrace>() else {
        return false;
    };
    bt.frames().iter().any(|f| {
        f.func_name().is_some_and(|name| {
            // Most frames are not: demangle only the candidates.
            if !name.contains("catch_unwind") && !name.contains("panicking") {
                return false;
            }
            let name = format!("{:#}", rustc_demangle::demangle(name));
            name.starts_with("std::panic::catch_unwind")
                || name.starts_with("std::panicking::catch_unwind")
                || name.starts_with("std::panicking::try")
        })
    })
}

/// The innermost frames of a trap's wasm backtrace, with demangled names.
fn frames(e: &wasmtime::Error) -> Vec<String> {
    match e.downcast_ref::<WasmBacktrace>() {
        Some(bt) => backtrace_frames(bt, TRAP_FRAMES),
        None => Vec::new(),
    }
}

/// The innermost `n` frames of `bt`, with demangled names.
fn backtrace_frames(bt: &WasmBacktrace, n: usize) -> Vec<String> {
    bt.frames()
        .iter()
        .take(n)
        .map(|f| match f.func_name() {
            Some(name) => format!("{:#}", rustc_demangle::demangle(name)),
            None => format!("wasm function {}", f.func_index()),
        })
        .collect()
}
