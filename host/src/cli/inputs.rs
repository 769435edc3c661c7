//! `cachet inputs PKG [CASE]`

use clap::Args;

use super::SandboxArgs;

#[derive(Debug, Args)]
pub struct InputsArgs {
    /// The package (a .wasm file, a directory, a cargo package).
    pub package: String,
    /// Only this case (its exact name); all cases when omitted.
    pub case: Option<String>,
    /// The same sandbox flags as the runs had (they are in the cache keys).
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// As for `cachet test`: the arguments the runs had.
    #[arg(last = true)]
    pub args: Vec<String>,
}
