//! `cachet clean [--results]`

use clap::Args;

#[derive(Debug, Args)]
pub struct CleanArgs {
    /// Remove only test results and logs, keeping compiled modules.
    #[arg(long)]
    pub results: bool,
}
