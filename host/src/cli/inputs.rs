//! `cachet inputs [flags] PKG [CASE] [-- args]`: takes every flag of
//! `cachet test` (and its `cachet.toml` profile), so the keys it looks up
//! are the ones the run with those flags stored.

use clap::Args;

use super::TestFlags;

#[derive(Debug, Args)]
pub struct InputsArgs {
    /// The same flags as the run had (those that shape the sandbox, choose
    /// the framework, isolation or Go's -test.short are in the cache keys).
    #[command(flatten)]
    pub flags: TestFlags,
    /// The package (a .wasm file, a directory, a cargo or Go package).
    pub package: String,
    /// Only this case (its exact name); all cases when omitted.
    pub case: Option<String>,
    /// As for `cachet test`: the arguments the runs had.
    #[arg(last = true)]
    pub args: Vec<String>,
}
