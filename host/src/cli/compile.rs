//! `cachet __compile IN OUT KEY STACK MEMORY`: the compile child process
//! (hidden). cachet runs it to compile a module under a time and memory
//! limit; see `cachet_runtime::CompileGuard`.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub struct CompileArgs {
    pub input: PathBuf,
    pub output: PathBuf,
    pub key: String,
    pub stack: usize,
    pub memory: u64,
}
