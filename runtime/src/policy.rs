//! `Policy`: everything one run's sandbox grants. It is plain data, built by the
//! host and read by [`crate::Runtime::run`]; nothing here touches wasmtime.
//!
//! A new policy grants nothing:
//!
//! - no mounts: the guest sees no file system at all (not even `/tmp` until
//!   [`Policy::scratch`] is set, which every host run does);
//! - no environment variables, nothing inherited from the host;
//! - no arguments beyond `argv[0]`;
//! - stdin closed (reads return end of file);
//! - no sockets and no network: cachet never grants them;
//! - stdout and stderr merged into one buffer capped at [`DEFAULT_OUTPUT_LIMIT`];
//! - [`DEFAULT_MEMORY_LIMIT`] of linear memory and [`DEFAULT_TIMEOUT`] of run time;
//! - [`DEFAULT_SCRATCH_LIMIT`] in its scratch dir and [`DEFAULT_OPEN_FILES`]
//!   open files;
//! - the real clocks and real random numbers (see [`Policy::hermetic`]).
//!
//! Every grant is an explicit builder method.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::observe::MountMode;

/// Linear memory one run may grow to. A test that needs more sets it; the
/// bound keeps one runaway test from taking a machine that runs `-p` of them.
pub const DEFAULT_MEMORY_LIMIT: u64 = 1 << 30;

/// Captured output one run may produce before it is stopped. Passing tests
/// can be chatty: one test of the `bytes` crate's own suite writes 120 MB to
/// stderr (docs/BENCHMARKS.md); 256 MiB lets that pass while a test that
/// floods without end still stops, and 2 cores' worth stay within memory.
pub const DEFAULT_OUTPUT_LIMIT: usize = 256 << 20;

/// Per-run timeout, as `go test -timeout`'s default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Bytes one run may keep in its scratch dir (`/tmp`): files' sizes plus one
/// block per file or directory (see `quota.rs`). Test temp files are small;
/// one test writing 2 GiB to `/tmp` filled a CI machine's disk (issue 7).
pub const DEFAULT_SCRATCH_LIMIT: u64 = 512 << 20;

/// Files one run may hold open at once. 1024 is the soft limit most systems
/// give a process, which real test suites live within; `-p` runs at once
/// then stay far below the host's own limit.
pub const DEFAULT_OPEN_FILES: u32 = 1024;

/// Seed of `--hermetic` random numbers when none is given.
pub const DEFAULT_SEED: u64 = 0;

/// Table elements one run may grow to. Rust and Go test binaries use a few
/// thousand; the bound only stops a guest that grows tables in a loop.
pub const DEFAULT_TABLE_LIMIT: u32 = 1 << 20;

/// Guest path of the per-run scratch directory, and the value of `TMPDIR`.
pub const SCRATCH_GUEST_PATH: &str = "/tmp";

/// Logical name of the scratch mount in logs (its paths are never inputs).
pub const SCRATCH_MOUNT_NAME: &str = "tmp";

/// A host directory granted to the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Logical name; the input log names paths as `name/relative/path`, never
    /// by host path, so a log stays valid in another checkout.
    pub name: String,
    /// The host directory.
    pub host: PathBuf,
    /// Guest paths it appears at (a package dir may need `.` and `/src/pkg`).
    pub guest: Vec<String>,
    pub mode: MountMode,
}

/// Receives the guest's output as it is written (within the cap), for live
/// streaming; the outcome still carries all of it.
#[derive(Clone)]
pub struct OutputTee(pub Arc<OutputCallback>);

/// What an [`OutputTee`] calls with each write.
pub type OutputCallback = dyn Fn(&[u8]) + Send + Sync;

impl fmt::Debug for OutputTee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OutputTee")
    }
}

/// What a run may see and use. See the module documentation for the defaults.
#[derive(Clone, Debug)]
pub struct Policy {
    pub(crate) mounts: Vec<Mount>,
    pub(crate) scratch_base: Option<PathBuf>,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) args: Vec<String>,
    pub(crate) program_name: String,
    pub(crate) output_limit: usize,
    pub(crate) output_tee: Option<OutputTee>,
    /// Called before a run starts over on Cranelift's code (`run.rs`): the
    /// tee's receiver forgets what the first start wrote. Without it, a run
    /// with a tee never starts over.
    pub(crate) tee_restart: Option<OutputTee>,
    pub(crate) memo: Option<crate::observe::SharedMemo>,
    pub(crate) memory_limit: u64,
    pub(crate) table_limit: u32,
    pub(crate) timeout: Duration,
    pub(crate) scratch_limit: u64,
    pub(crate) open_files: u32,
    pub(crate) hermetic: Option<u64>,
    pub(crate) collect: Option<String>,
    pub(crate) inherit_stdio: bool,
    pub(crate) devices: Option<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Self::new()
    }
}

impl Policy {
    /// A policy that grants nothing (see the module documentation).
    pub fn new() -> Self {
        Policy {
            mounts: Vec::new(),
            scratch_base: None,
            env: BTreeMap::new(),
            args: Vec::new(),
            program_name: "main.wasm".to_string(),
            output_limit: DEFAULT_OUTPUT_LIMIT,
            output_tee: None,
            tee_restart: None,
            memo: None,
            memory_limit: DEFAULT_MEMORY_LIMIT,
            table_limit: DEFAULT_TABLE_LIMIT,
            timeout: DEFAULT_TIMEOUT,
            scratch_limit: DEFAULT_SCRATCH_LIMIT,
            open_files: DEFAULT_OPEN_FILES,
            hermetic: None,
            collect: None,
            inherit_stdio: false,
            devices: None,
        }
    }

    /// Grants `host` read-only under the logical `name`, at each of `guest`.
    pub fn mount_read_only(
        &mut self,
        name: &str,
        host: impl Into<PathBuf>,
        guest: &[&str],
    ) -> &mut Self {
        self.mount(name, host, guest, MountMode::ReadOnly)
    }

    /// Grants `host` read-write under the logical `name`, at each of `guest`.
    pub fn mount_read_write(
        &mut self,
        name: &str,
        host: impl Into<PathBuf>,
        guest: &[&str],
    ) -> &mut Self {
        self.mount(name, host, guest, MountMode::ReadWrite)
    }

    fn mount(
        &mut self,
        name: &str,
        host: impl Into<PathBuf>,
        guest: &[&str],
        mode: MountMode,
    ) -> &mut Self {
        self.mounts.push(Mount {
            name: name.to_string(),
            host: host.into(),
            guest: guest.iter().map(|g| g.to_string()).collect(),
            mode,
        });
        self
    }

    /// Gives every run an empty directory of its own under `base`, mounted
    /// read-write at `/tmp` with `TMPDIR=/tmp`. After the run it is removed,
    /// or, when the run left it empty, kept for a later run (see `scratch.rs`).
    pub fn scratch(&mut self, base: impl Into<PathBuf>) -> &mut Self {
        self.scratch_base = Some(base.into());
        self.env
            .insert("TMPDIR".to_string(), SCRATCH_GUEST_PATH.to_string());
        self
    }

    /// Makes the empty files [`crate::DEVICE_FILES`] at the root of the
    /// read-only mount `mount` the guest's devices (`devices.rs`): `null`
    /// reads nothing and discards writes, `zero` reads zeros, `random` and
    /// `urandom` read the run's random bytes (seeded under `--hermetic`).
    /// Mounted at `/dev`, they are `/dev/null` (Go's `os.DevNull`) and the
    /// rest. Nothing of the mount is writable; an open is logged as the
    /// read of an empty file, the same on every machine.
    pub fn devices(&mut self, mount: &str) -> &mut Self {
        self.devices = Some(mount.to_string());
        self
    }

    /// Removes an environment variable (`scratch` sets `TMPDIR`).
    pub fn unset_env(&mut self, name: &str) -> &mut Self {
        self.env.remove(name);
        self
    }

    /// Gives the guest the host's stdin, stdout and stderr, as running it
    /// directly would (`cachet exec`): output is written through as it
    /// comes, stdout and stderr apart, not kept (the outcome's `output` is
    /// empty and the output limit does not apply).
    pub fn inherit_stdio(&mut self) -> &mut Self {
        self.inherit_stdio = true;
        self
    }

    /// Sets one environment variable the guest can read.
    pub fn env(&mut self, name: &str, value: &str) -> &mut Self {
        self.env.insert(name.to_string(), value.to_string());
        self
    }

    /// Sets `argv[0]`, the name the guest sees for itself.
    pub fn program_name(&mut self, name: &str) -> &mut Self {
        self.program_name = name.to_string();
        self
    }

    /// Appends arguments after `argv[0]`.
    pub fn args<S: AsRef<str>>(&mut self, args: &[S]) -> &mut Self {
        self.args
            .extend(args.iter().map(|a| a.as_ref().to_string()));
        self
    }

    /// Caps the merged stdout/stderr; past it the run stops as `OutputOverflow`.
    pub fn output_limit(&mut self, bytes: usize) -> &mut Self {
        self.output_limit = bytes;
        self
    }

    /// Remembers file digests in `memo` (for observations and re-observation).
    pub fn digest_memo(&mut self, memo: Arc<dyn crate::observe::DigestMemo>) -> &mut Self {
        self.memo = Some(crate::observe::SharedMemo(memo));
        self
    }

    /// Also hands every output write to `tee` as it happens.
    pub fn output_tee(&mut self, tee: OutputTee) -> &mut Self {
        self.output_tee = Some(tee);
        self
    }

    /// Lets a run with an output tee start over on Cranelift's code when it
    /// started on Winch's: `reset` is called (with no bytes) before the
    /// second start, and must make the tee's receiver forget the first.
    /// Give it only when nothing the tee received was shown yet.
    pub fn tee_restart(&mut self, reset: OutputTee) -> &mut Self {
        self.tee_restart = Some(reset);
        self
    }

    /// Caps linear memory; growth past it fails and the run is `MemoryLimit`.
    pub fn memory_limit(&mut self, bytes: u64) -> &mut Self {
        self.memory_limit = bytes;
        self
    }

    /// Caps table elements.
    pub fn table_limit(&mut self, elements: u32) -> &mut Self {
        self.table_limit = elements;
        self
    }

    /// Stops the run after `timeout` of wall time (checked at wasm loop heads
    /// and calls, to the runtime's tick of 10 ms).
    pub fn timeout(&mut self, timeout: Duration) -> &mut Self {
        self.timeout = timeout;
        self
    }

    /// Caps what the run may keep in its scratch dir; past it, writes fail
    /// with ENOSPC and a failing run is `ScratchLimit`.
    pub fn scratch_limit(&mut self, bytes: u64) -> &mut Self {
        self.scratch_limit = bytes;
        self
    }

    /// Caps files open at once; past it, opens fail with EMFILE.
    pub fn open_files(&mut self, n: u32) -> &mut Self {
        self.open_files = n;
        self
    }

    /// Hermetic run: a virtual clock (starting at 2025-01-01, advancing 1 µs
    /// per read; sleeps pass at once) and random numbers from `seed`, so the
    /// same inputs give the same output.
    pub fn hermetic(&mut self, seed: u64) -> &mut Self {
        self.hermetic = Some(seed);
        self
    }

    /// After the run, hands back the file the guest wrote at `name` in its
    /// scratch dir (`/tmp/name`), as [`crate::RunOutcome::collected`]: a
    /// harness's report, such as Go's `-test.testlogfile`.
    pub fn collect_scratch_file(&mut self, name: &str) -> &mut Self {
        self.collect = Some(name.to_string());
        self
    }

    /// The seed of a hermetic run, `None` when the run uses real time.
    pub fn hermetic_seed(&self) -> Option<u64> {
        self.hermetic
    }

    /// `argv[0]`: the name the guest sees for itself.
    pub fn program(&self) -> &str {
        &self.program_name
    }

    pub fn scratch_limit_bytes(&self) -> u64 {
        self.scratch_limit
    }

    pub fn open_files_limit(&self) -> u32 {
        self.open_files
    }

    pub fn timeout_duration(&self) -> Duration {
        self.timeout
    }

    pub fn mounts(&self) -> &[Mount] {
        &self.mounts
    }

    pub fn memory_limit_bytes(&self) -> u64 {
        self.memory_limit
    }

    pub fn output_limit_bytes(&self) -> usize {
        self.output_limit
    }

    /// The world the input log is observed in: the mounts by logical name and
    /// the environment. [`crate::reobserve`] evaluates a log against it.
    pub fn world(&self) -> crate::World {
        crate::World::new(
            self.mounts
                .iter()
                .map(|m| (m.name.clone(), m.host.clone(), m.mode)),
            self.env.clone(),
        )
        .with_memo(self.memo.clone())
    }
}
