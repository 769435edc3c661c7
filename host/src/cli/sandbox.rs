//! The sandbox settings, one struct from flag to `cachet.toml`: the flags
//! of `cachet test`, `cachet inputs` and `cachet exec`, and (the same
//! fields, kebab-case) the keys of a `cachet.toml` profile and of its
//! per-package overrides. `config/sandbox.rs` validates it into a
//! `SandboxConfig`, which sets up every run's `Policy`. A new limit is a
//! field here and its lines there.

use clap::Args;
use serde::Deserialize;

#[derive(Clone, Debug, Default, Args, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct SandboxArgs {
    /// Give the guest an environment variable: NAME=VALUE, or NAME for the host's value.
    #[arg(long = "env", value_name = "NAME[=VALUE]")]
    pub env: Vec<String>,
    /// Mount a host directory: HOST:GUEST, read-only unless :rw is added.
    #[arg(long = "mount", value_name = "HOST:GUEST[:rw]")]
    pub mount: Vec<String>,
    /// Per-case time limit, in Go duration syntax (10m, 1m30s, 500ms); 0 means none, and wasm then runs without time checks (faster; Ctrl-C stops a case at its next host call) (default 10m; cachet exec: none, or the test binary's own -test.timeout).
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// Linear memory limit per case (bytes, or with KiB/MiB/GiB, K/M/G; default 1GiB, 4GiB for Go packages and cachet exec).
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Wasm stack limit of every case (default 8MiB, what Go needs).
    #[arg(long, value_name = "SIZE")]
    pub stack: Option<String>,
    /// Output a case may write before it is stopped (default 256MiB).
    #[arg(long, value_name = "SIZE")]
    pub output_limit: Option<String>,
    /// What a case may keep in its /tmp (default 512MiB); past it writes fail with ENOSPC.
    #[arg(long, value_name = "SIZE")]
    pub tmp_limit: Option<String>,
    /// Files a case may hold open at once (default 1024); past it opens fail with EMFILE.
    #[arg(long, value_name = "N")]
    pub open_files: Option<u32>,
    /// A virtual clock and seeded random numbers: the same inputs give the same output.
    #[arg(long)]
    pub hermetic: bool,
    /// Seed of --hermetic random numbers (default 0).
    #[arg(long, value_name = "N", requires = "hermetic")]
    pub seed: Option<u64>,
}

impl SandboxArgs {
    /// These settings over `base`: each one given here wins; lists hold
    /// `base`'s entries first, so a later `--env` wins for its variable.
    pub fn over(self, base: &SandboxArgs) -> SandboxArgs {
        let list = |mine: Vec<String>, theirs: &[String]| -> Vec<String> {
            theirs.iter().cloned().chain(mine).collect()
        };
        SandboxArgs {
            env: list(self.env, &base.env),
            mount: list(self.mount, &base.mount),
            timeout: self.timeout.or_else(|| base.timeout.clone()),
            memory: self.memory.or_else(|| base.memory.clone()),
            stack: self.stack.or_else(|| base.stack.clone()),
            output_limit: self.output_limit.or_else(|| base.output_limit.clone()),
            tmp_limit: self.tmp_limit.or_else(|| base.tmp_limit.clone()),
            open_files: self.open_files.or(base.open_files),
            hermetic: self.hermetic || base.hermetic,
            seed: self.seed.or(base.seed),
        }
    }
}
