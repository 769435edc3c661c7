//! The threads guests run on: a small pool of threads whose native stacks
//! hold the whole wasm stack limit plus room for the host calls made at its
//! deepest point.
//!
//! wasmtime checks the wasm stack limit against the stack pointer at entry,
//! so a guest that recurses to its limit on a thread with a smaller native
//! stack runs into the thread's guard page and aborts the whole process
//! (issue 7: tokio's 2 MiB blocking threads, with an 8 MiB wasm limit, were
//! killed by Go's own `encoding/json` tests). Running every guest here makes
//! that a `StackOverflow` outcome whatever thread called `Runtime::run`.
//!
//! Each thread enters the handle of a tokio runtime the pool owns (one
//! worker, timers and I/O enabled), so wasmtime-wasi's `in_tokio` blocks on
//! its future directly; outside any runtime it falls back to a global one
//! and a yield that cost ~50 µs per wrapped call (a 200,000-call module took
//! 12 s). A panic inside a run is caught here and becomes an error of that
//! run, not of the process.

use std::any::Any;
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc, Mutex};

/// Native stack beyond the wasm limit: host calls (wasmtime-wasi, cap-std,
/// the recorder) made from the deepest wasm frame use well under 1 MiB;
/// the rest is margin. Untouched stack pages cost no memory.
const HOST_STACK_MARGIN: usize = 8 << 20;

type Task = Box<dyn FnOnce() + Send>;

thread_local! {
    /// Set on guest threads: a run started here needs no thread switch.
    static ON_GUEST_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Whether the calling thread is a guest thread.
pub(crate) fn on_guest_thread() -> bool {
    ON_GUEST_THREAD.with(Cell::get)
}

/// Runs `f` here, turning a panic into [`Panicked`].
pub(crate) fn catching<T>(f: impl FnOnce() -> T) -> Result<T, Panicked> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| Panicked(message(&*p)))
}

/// Idle threads, each waiting on its own channel for the next task.
#[derive(Clone)]
pub(crate) struct GuestThreads {
    stack_size: usize,
    idle: Arc<Mutex<Vec<mpsc::Sender<Task>>>>,
    tokio: Arc<WasiRuntime>,
}

/// The tokio runtime the guest threads enter. Shut down without waiting when
/// dropped: the last `Runtime` may be dropped inside another tokio runtime's
/// task, where a blocking shutdown panics.
struct WasiRuntime(Option<tokio::runtime::Runtime>);

impl Drop for WasiRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// A panic inside a run, with its message.
#[derive(Debug)]
pub(crate) struct Panicked(pub String);

impl GuestThreads {
    pub fn new(max_wasm_stack: usize) -> std::io::Result<Self> {
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("cachet-wasi")
            .enable_all()
            .build()?;
        Ok(GuestThreads {
            stack_size: max_wasm_stack + HOST_STACK_MARGIN,
            idle: Arc::default(),
            tokio: Arc::new(WasiRuntime(Some(tokio))),
        })
    }

    /// Runs `f` on a guest thread and waits for it.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Panicked> {
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        self.spawn(move || {
            let _ = done_tx.send(catching(f));
        })?;
        done_rx
            .recv()
            .unwrap_or_else(|_| Err(Panicked("the guest thread exited".into())))
    }

    /// Runs `f` on a guest thread without waiting for it; a panic in it is
    /// caught and dropped (`f` reports its own result).
    pub fn spawn(&self, f: impl FnOnce() + Send + 'static) -> Result<(), Panicked> {
        self.dispatch(Box::new(move || {
            let _ = catching(f);
        }))
    }

    fn dispatch(&self, mut task: Task) -> Result<(), Panicked> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let Some(tx) = idle else { break };
            match tx.send(task) {
                Ok(()) => return Ok(()),
                // That thread is gone; try the next one.
                Err(mpsc::SendError(t)) => task = t,
            }
        }
        let (tx, rx) = mpsc::channel::<Task>();
        tx.send(task).expect("the receiver is alive");
        let idle = self.idle.clone();
        let tokio = self
            .tokio
            .0
            .as_ref()
            .expect("alive while the pool is")
            .handle()
            .clone();
        std::thread::Builder::new()
            .name("cachet-guest".into())
            .stack_size(self.stack_size)
            .spawn(move || {
                ON_GUEST_THREAD.with(|g| g.set(true));
                let _entered = tokio.enter();
                while let Ok(task) = rx.recv() {
                    task();
                    idle.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(tx.clone());
                }
            })
            .map(|_| ())
            .map_err(|e| Panicked(format!("cannot start a guest thread: {e}")))
    }
}

fn message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}
