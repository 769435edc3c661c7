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
    /// Never run cargo to find a cargo package's test binaries.
    #[arg(long, env = "CACHET_PREBUILT", value_parser = clap::builder::FalseyValueParser::new())]
    pub prebuilt: bool,
    /// As for `cachet test`: the arguments the runs had.
    #[arg(last = true)]
    pub args: Vec<String>,
}
