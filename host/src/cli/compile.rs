//! `cachet __compile IN OUT KEY STACK MEMORY EPOCHS COMPILER`: the compile child process
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
    /// 1: code checks epochs (runs with a time limit); 0: it does not.
    pub epochs: u8,
    /// `cranelift` or `winch`.
    pub compiler: String,
}
