//! Flags that shape the sandbox, shared by `cachet test` and `cachet inputs`
//! (which must rebuild the same cache keys).

use clap::Args;

#[derive(Debug, Default, Args)]
pub struct SandboxArgs {
    /// Give the guest an environment variable: NAME=VALUE, or NAME for the host's value.
    #[arg(long = "env", value_name = "NAME[=VALUE]")]
    pub env: Vec<String>,
    /// Mount a host directory: HOST:GUEST, read-only unless :rw is added.
    #[arg(long = "mount", value_name = "HOST:GUEST[:rw]")]
    pub mount: Vec<String>,
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
