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
    /// Linear memory limit per case (bytes, or with KiB/MiB/GiB, K/M/G).
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
}
