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

use crate::ModuleDigest;

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
    /// (a run of `module`) sent to it (an idle server that died meanwhile
    /// is replaced once). A server that ran `module` last is taken first:
    /// its code is mapped already (runners on two packages keep to their
    /// own servers). `None`: no server could start.
    pub(crate) fn take_or_start(
        &self,
        guard: &RunGuard,
        module: ModuleDigest,
        request: &[u8],
    ) -> Option<Server> {
        let me = owner();
        let idle = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let mine = |(t, _): &(Option<ThreadId>, Server)| *t == me;
            let at = idle
                .iter()
                .position(|s| mine(s) && s.1.module == Some(module))
                .or_else(|| idle.iter().position(mine));
            at.map(|i| idle.swap_remove(i).1)
        };
        if let Some(mut server) = idle {
            if server.send(module, request) {
                return Some(server);
            }
        }
        let mut server = Server::start(guard)?;
        self.started.fetch_add(1, Ordering::Relaxed);
        server.send(module, request).then_some(server)
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
    /// The module of the last request sent.
    module: Option<ModuleDigest>,
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
            module: None,
        })
    }

    /// Sends a request line, a run of `module`; `false` when the child is
    /// gone.
    fn send(&mut self, module: ModuleDigest, request: &[u8]) -> bool {
        self.module = Some(module);
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
        // A kind that is not a frame's ends the reading before its length
        // is trusted.
        if ![OUTPUT_FRAME, END_FRAME].contains(&head[0]) {
            return;
        }
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
        // Read as it comes: a length that is garbage allocates only what
        // the child really wrote.
        let mut body = Vec::new();
        match (&mut from).take(len.into()).read_to_end(&mut body) {
            Ok(n) if n == len as usize => {}
            _ => return,
        }
        let frame = match head[0] {
            OUTPUT_FRAME => Frame::Output(body),
            _ => Frame::End(body),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Sha256Digest;
    use std::time::Duration;

    fn guard(script: &str) -> RunGuard {
        RunGuard {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
        }
    }

    fn module(n: u8) -> ModuleDigest {
        ModuleDigest(Sha256Digest([n; 32]))
    }

    #[test]
    fn an_idle_server_that_ran_the_module_is_taken_first() {
        let (servers, guard) = (Servers::default(), guard("exec sleep 60"));
        let a = servers.take_or_start(&guard, module(1), b"a\n").unwrap();
        let b = servers.take_or_start(&guard, module(2), b"b\n").unwrap();
        let (pid_a, pid_b) = (a.child.id(), b.child.id());
        // Put back in this order, any idle server would be `b`.
        servers.put_back(b);
        servers.put_back(a);
        let again = servers.take_or_start(&guard, module(1), b"a\n").unwrap();
        assert_eq!(again.child.id(), pid_a);
        // With none of its own idle, a module takes another's server.
        let other = servers.take_or_start(&guard, module(3), b"c\n").unwrap();
        assert_eq!(other.child.id(), pid_b);
        assert_eq!(servers.started(), 2);
    }

    #[test]
    fn frames_end_at_the_first_bytes_that_are_not_one() {
        let guard = guard(
            "read request; echo 'it broke' >&2; \
             printf 'O\\005\\000\\000\\000hello'; printf 'Zgarbage'; exec sleep 60",
        );
        let servers = Servers::default();
        let mut server = servers.take_or_start(&guard, module(1), b"a\n").unwrap();
        let first = server.frames.recv_timeout(Duration::from_secs(10));
        assert!(matches!(first, Ok(Frame::Output(b)) if b == b"hello"));
        let next = server.frames.recv_timeout(Duration::from_secs(10));
        assert!(matches!(next, Err(mpsc::RecvTimeoutError::Disconnected)));
        // The child lives on: it is killed, not waited for forever.
        assert_eq!(server.died(), "signal: 9 (SIGKILL): it broke");
    }

    #[test]
    fn a_frame_longer_than_what_the_child_wrote_ends_the_reading() {
        // A length of 4 GiB - 1, then three bytes and the end of stdout
        // (read as they come: no 4 GiB buffer first, which this test
        // cannot see).
        let guard = guard("read request; printf 'E\\377\\377\\377\\377abc'");
        let servers = Servers::default();
        let mut server = servers.take_or_start(&guard, module(1), b"a\n").unwrap();
        let end = server.frames.recv_timeout(Duration::from_secs(10));
        assert!(matches!(end, Err(mpsc::RecvTimeoutError::Disconnected)));
        assert_eq!(server.died(), "exit status: 0");
    }
}
