//! The test result cache. Design note: `docs/design/cache.md`.
//!
//! - `store.rs`: a content-addressed directory that knows nothing of tests.
//! - `key.rs`: the test key and the two-level lookup, explained once (a
//!   job's key is computed from its parts by `plan::job_key`).
//! - `entry.rs`: what is stored (logs, results, bundles, packs), as data.
//! - `local.rs`: [`Cache`], lookups and saves on this machine.
//! - `shared.rs`: lookups of a package's jobs, and the remote cache's part.
//! - `remote.rs`: the remote cache client (what to fetch, verification,
//!   uploads), over a [`transport::Transport`]: `http.rs` is Bazel's HTTP
//!   cache protocol; `pack.rs`: what came from it, one local file per module.
//! - `memo.rs`, `table.rs`: the stat memo and the tables beside it.
//!
//! Only passing runs are saved, and only when no input changed while the
//! test ran. The cache never prints; warnings come back as values.
//!
//! A test key keeps one log per package that holds its module (the same
//! `.wasm` copied into two packages reads different files there): a lookup
//! tries the package's own log first, then the others, so neither package's
//! runs push the other's log out.

mod entry;
mod http;
pub mod key;
mod local;
pub mod memo;
mod pack;
pub mod remote;
mod shared;
pub mod store;
mod table;
pub mod transport;

pub use entry::{CachedCase, CachedResult, EntryError, Lookup, Miss, ModuleFacts};
pub use key::{KeyParts, NameKey, TestKey, LIST_CASE};
pub use local::Cache;
pub use remote::RemoteConfig;
pub use shared::Query;
pub use store::Store;
