//! Command-line types (clap). Parsing does no I/O; `config` turns these into
//! a validated configuration before anything runs.

mod clean;
mod compile;
mod exec;
mod inputs;
mod sandbox;
mod test;
mod worker;

pub use clean::CleanArgs;
pub use compile::CompileArgs;
pub use exec::ExecArgs;
pub use inputs::InputsArgs;
pub use sandbox::SandboxArgs;
pub use test::{
    FrameworkArg, IsolateArg, LongRunsArg, RemoteCachetArg, TestArgs, TestFlags, TierArg,
};
pub use worker::WorkerArgs;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cachet",
    version,
    about = "Runs WebAssembly test binaries in a sandbox, like `go test`, with an exact input log"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Test packages: .wasm files, directories, DIR/... and cargo packages.
    Test(TestArgs),
    /// Run one module as if directly, sandboxed; test binaries' cases are
    /// served from and saved to the cache (as `go test -exec` or cargo's runner).
    Exec(ExecArgs),
    /// Print the input log recorded by each case's last passing run.
    Inputs(InputsArgs),
    /// Remove cached results (and compiled modules, without --results).
    Clean(CleanArgs),
    /// Serve a BuildGrid farm as one of its bots: run the actions it hands
    /// out (cachet's own and any other command).
    Worker(WorkerArgs),
    /// Run one remote action's case (a worker runs this itself).
    #[command(name = "__run-action", hide = true)]
    RunAction { manifest: std::path::PathBuf },
    /// Serve runs apart in a child process, each killed at its time limit:
    /// request directories on stdin, one a line (cachet runs this itself).
    #[command(name = "__run-apart", hide = true)]
    RunApart,
    /// Compile one module in a child process (cachet runs this itself).
    #[command(name = "__compile", hide = true)]
    Compile(CompileArgs),
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
