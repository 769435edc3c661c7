//! A run as data that crosses machines (remote execution): a [`Policy`]
//! without its host paths or callbacks ([`PolicySpec`]: each mount names a
//! directory relative to the receiver's root), and a [`RunOutcome`] back
//! ([`OutcomeSpec`]). The receiver's policy is rebuilt from the spec and
//! its root, so a spec is the same on every machine for the same job.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::observe::MountMode;
use crate::outcome::{RunOutcome, Status};
use crate::policy::{Mount, Policy};

/// A mount of a [`PolicySpec`]: `dir` is relative to the receiver's root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    pub name: String,
    pub dir: String,
    pub guest: Vec<String>,
    pub mode: MountMode,
}

/// Everything of a policy that decides a run, but where its mounts are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySpec {
    pub mounts: Vec<MountSpec>,
    pub scratch: bool,
    pub env: BTreeMap<String, String>,
    pub args: Vec<String>,
    pub program_name: String,
    pub output_limit: usize,
    pub memory_limit: u64,
    pub table_limit: u32,
    pub timeout: Duration,
    pub scratch_limit: u64,
    pub open_files: u32,
    pub hermetic: Option<u64>,
    pub collect: Option<String>,
    pub devices: Option<String>,
}

impl Policy {
    /// The policy as data; `dir` says where each mount's directory will be
    /// under the receiver's root.
    pub fn spec(&self, dir: impl Fn(usize, &Mount) -> String) -> PolicySpec {
        PolicySpec {
            mounts: self
                .mounts
                .iter()
                .enumerate()
                .map(|(i, m)| MountSpec {
                    name: m.name.clone(),
                    dir: dir(i, m),
                    guest: m.guest.clone(),
                    mode: m.mode,
                })
                .collect(),
            scratch: self.scratch_base.is_some(),
            env: self.env.clone(),
            args: self.args.clone(),
            program_name: self.program_name.clone(),
            output_limit: self.output_limit,
            memory_limit: self.memory_limit,
            table_limit: self.table_limit,
            timeout: self.timeout,
            scratch_limit: self.scratch_limit,
            open_files: self.open_files,
            hermetic: self.hermetic,
            collect: self.collect.clone(),
            devices: self.devices.clone(),
        }
    }

    /// The policy a spec describes, its mounts under `root` and its scratch
    /// dir (if it has one) in `scratch`. `Err` names a mount directory
    /// that would leave `root`.
    pub fn from_spec(spec: &PolicySpec, root: &Path, scratch: &Path) -> Result<Policy, String> {
        let mut p = Policy::new();
        for m in &spec.mounts {
            let rel = Path::new(&m.dir);
            if rel.is_absolute()
                || rel
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(format!(
                    "mount {}: {} is not a path inside the action",
                    m.name, m.dir
                ));
            }
            p.mounts.push(Mount {
                name: m.name.clone(),
                host: root.join(rel),
                guest: m.guest.clone(),
                mode: m.mode,
            });
        }
        if spec.scratch {
            p.scratch_base = Some(scratch.to_path_buf());
        }
        p.env = spec.env.clone();
        p.args = spec.args.clone();
        p.program_name = spec.program_name.clone();
        p.output_limit = spec.output_limit;
        p.memory_limit = spec.memory_limit;
        p.table_limit = spec.table_limit;
        p.timeout = spec.timeout;
        p.scratch_limit = spec.scratch_limit;
        p.open_files = spec.open_files;
        p.hermetic = spec.hermetic;
        p.collect = spec.collect.clone();
        p.devices = spec.devices.clone();
        Ok(p)
    }
}

/// A run's outcome as data. `output` and `collected` travel beside it as
/// bytes (they are most of its size), not in it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutcomeSpec {
    pub status: Status,
    pub elapsed: Duration,
    pub log: crate::log::InputLog,
    pub changed_during_run: Option<String>,
    pub cleanup_error: Option<String>,
    pub compiler: crate::engine::Compiler,
    pub restarted: bool,
    pub wasi: crate::abi::Wasi,
    pub exit_frames: Vec<String>,
    /// Whether a collected file came back (its bytes travel beside).
    pub collected: bool,
}

impl RunOutcome {
    /// The outcome as data, and its output and collected file.
    pub fn into_spec(self) -> (OutcomeSpec, Vec<u8>, Option<Vec<u8>>) {
        let spec = OutcomeSpec {
            status: self.status,
            elapsed: self.elapsed,
            log: self.log,
            changed_during_run: self.changed_during_run,
            cleanup_error: self.cleanup_error,
            compiler: self.compiler,
            restarted: self.restarted,
            wasi: self.wasi,
            exit_frames: self.exit_frames,
            collected: self.collected.is_some(),
        };
        (spec, self.output, self.collected)
    }

    /// The outcome back from its parts.
    pub fn from_spec(spec: OutcomeSpec, output: Vec<u8>, collected: Option<Vec<u8>>) -> RunOutcome {
        RunOutcome {
            status: spec.status,
            output,
            elapsed: spec.elapsed,
            log: spec.log,
            changed_during_run: spec.changed_during_run,
            cleanup_error: spec.cleanup_error,
            collected: collected.filter(|_| spec.collected),
            compiler: spec.compiler,
            restarted: spec.restarted,
            wasi: spec.wasi,
            exit_frames: spec.exit_frames,
        }
    }
}
