//! `cachet inputs PKG [CASE]`

use clap::Args;

#[derive(Debug, Args)]
pub struct InputsArgs {
    /// The package (a .wasm file, a directory, a cargo package).
    pub package: String,
    /// Only this case (its exact name); all cases when omitted.
    pub case: Option<String>,
    /// As for `cachet test`: the variables the runs had.
    #[arg(long = "env", value_name = "NAME[=VALUE]")]
    pub env: Vec<String>,
    /// As for `cachet test`: the mounts the runs had.
    #[arg(long = "mount", value_name = "HOST:GUEST[:rw]")]
    pub mount: Vec<String>,
    /// As for `cachet test`: the memory limit the runs had.
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// As for `cachet test`: the arguments the runs had.
    #[arg(last = true)]
    pub args: Vec<String>,
}
