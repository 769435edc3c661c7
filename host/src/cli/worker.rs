//! `cachet worker --buildgrid grpc://HOST:PORT`

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The BuildGrid server whose Bots service hands out work
    /// (grpc://HOST:PORT, or grpcs:// for TLS).
    #[arg(long, value_name = "URL")]
    pub buildgrid: String,
    /// The REAPI instance name the bot serves ("" for the default).
    #[arg(long, value_name = "NAME", default_value = "")]
    pub remote_instance: String,
    /// Actions run at once (default: this machine's cores).
    #[arg(long, value_name = "N")]
    pub capacity: Option<usize>,
    /// Where actions' input roots are written and fetched blobs and
    /// compiled modules are kept (default: the cache directory's `worker/`).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// The most kept of fetched blobs (e.g. 512MiB, 20G; default 10G).
    #[arg(long, value_name = "SIZE", default_value = "10G")]
    pub store_size: String,
    /// The bot's id (default: HOSTNAME-PID).
    #[arg(long, value_name = "ID")]
    pub bot_id: Option<String>,
    /// A platform property the bot offers, KEY=VALUE (repeatable), besides
    /// `cachet=PROTOCOL`, which it always offers (for `cachet test
    /// --remote-cachet installed`).
    #[arg(long = "property", value_name = "KEY=VALUE")]
    pub properties: Vec<String>,
}
