//! Run servers: the child processes runs apart go to (`apart.rs`), and
//! the frames of their stdout.
//!
//! A server is `RunGuard`'s program (`cachet __run-apart`, which calls
//! [`crate::serve`]): it reads a request directory on each line of its
//! stdin and runs it. Its stdout carries frames (a kind byte, a
//! little-endian u32 length, the bytes): the guest's output as it is
//! written, then one end frame with its answer. Idle servers wait in
//! [`Servers`] for the next run apart; a server is killed when dropped.

use std::ffi::OsString;
use std::io::{Read, Seek, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Mutex};
use std::thread::ThreadId;

/// How to run runs apart (`apart.rs`): `program args...` must call
/// [`crate::serve`], a run server.
#[derive(Clone, Debug)]
pub struct RunGuard {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

/// A frame of the child's stdout: guest output, or a run's end (its first
/// byte [`RAN`], [`NOT_READY`] or [`FAILED`], then why it failed).
pub(crate) const OUTPUT_FRAME: u8 = b'O';
pub(crate) const END_FRAME: u8 = b'E';
pub(crate) const RAN: u8 = 0;
pub(crate) const FAILED: u8 = 2;

/// The child's answer when the module's code was not in the cache (trimmed
/// meanwhile): the run goes here instead.
pub(crate) const NOT_READY: u8 = 3;

/// The run servers that are idle, each with its owner: a child dies with
/// the thread that spawned it (`PR_SET_PDEATHSIG`). Guest threads live as
/// long as the runtime, so a server one of them started serves them all
/// (owner `None`); one started on another thread serves only that thread.
#[derive(Default)]
pub(crate) struct Servers {
    idle: Mutex<Vec<(Option<ThreadId>, Server)>>,
    started: std::sync::atomic::AtomicU64,
}

impl Servers {
    /// How many servers started.
    pub(crate) fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// An idle server this thread may use, or a new one, with `request`
    /// sent to it (an idle server that died meanwhile is replaced once).
    /// `None`: no server could start.
    pub(crate) fn take_or_start(&self, guard: &RunGuard, request: &[u8]) -> Option<Server> {
        let me = owner();
        let idle = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let at = idle.iter().position(|(t, _)| *t == me);
            at.map(|i| idle.swap_remove(i).1)
        };
        if let Some(mut server) = idle {
            if server.send(request) {
                return Some(server);
            }
        }
        let mut server = Server::start(guard)?;
        self.started.fetch_add(1, Ordering::Relaxed);
        server.send(request).then_some(server)
    }

    pub(crate) fn put_back(&self, server: Server) {
        let me = owner();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.push((me, server));
    }
}

/// Who may use a server the calling thread starts: any guest thread, or
/// this thread only.
fn owner() -> Option<ThreadId> {
    (!crate::guest_thread::on_guest_thread()).then(|| std::thread::current().id())
}

/// A run server: the child, its stdin for requests, its stdout's frames
/// (read on a thread of their own), its stderr (a file).
pub(crate) struct Server {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    pub(crate) frames: mpsc::Receiver<Frame>,
    stderr: std::fs::File,
}

/// What the child wrote on its stdout.
pub(crate) enum Frame {
    Output(Vec<u8>),
    End(Vec<u8>),
}

impl Server {
    fn start(guard: &RunGuard) -> Option<Server> {
        let stderr = tempfile::tempfile().ok()?;
        let mut child = std::process::Command::new(&guard.program)
            .args(&guard.args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(stderr.try_clone().ok()?)
            .spawn()
            .ok()?;
        let (stdin, stdout) = (child.stdin.take()?, child.stdout.take()?);
        let (tx, frames) = mpsc::channel();
        std::thread::spawn(move || read_frames(stdout, tx));
        Some(Server {
            child,
            stdin,
            frames,
            stderr,
        })
    }

    /// Sends a request line; `false` when the child is gone.
    fn send(&mut self, request: &[u8]) -> bool {
        matches!(self.child.try_wait(), Ok(None))
            && self.stdin.write_all(request).is_ok()
            && self.stdin.flush().is_ok()
    }

    /// How the child ended, with its last words when it had any.
    pub(crate) fn died(&mut self) -> String {
        // A child that closed its stdout (or wrote what is not a frame) but
        // lives on is killed first: waiting for it would never end. A child
        // that is gone keeps the status it ended with.
        let _ = self.child.kill();
        let how = match self.child.wait() {
            Ok(status) => status.to_string(),
            Err(e) => e.to_string(),
        };
        let mut said = String::new();
        let _ = self.stderr.rewind();
        let _ = self.stderr.read_to_string(&mut said);
        match said.lines().rev().find(|l| !l.trim().is_empty()) {
            Some(line) => format!("{how}: {}", line.trim()),
            None => how,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the child's frames until its stdout ends.
fn read_frames(mut from: std::process::ChildStdout, to: mpsc::Sender<Frame>) {
    loop {
        let mut head = [0u8; 5];
        if from.read_exact(&mut head).is_err() {
            return;
        }
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0; len];
        if from.read_exact(&mut body).is_err() {
            return;
        }
        let frame = match head[0] {
            OUTPUT_FRAME => Frame::Output(body),
            END_FRAME => Frame::End(body),
            _ => return,
        };
        if to.send(frame).is_err() {
            return;
        }
    }
}

/// Writes one frame on this process's stdout.
pub(crate) fn write_frame(kind: u8, body: &[u8]) {
    let mut out = std::io::stdout().lock();
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let _ = out.write_all(&[kind]);
    let _ = out.write_all(&len.to_le_bytes());
    let _ = out.write_all(&body[..len as usize]);
    let _ = out.flush();
}
