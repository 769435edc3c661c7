//! The binding layer of WASI preview 2: components get wasmtime-wasi's own
//! preview 2 host (`p2::add_to_linker_sync`), and then, with shadowing
//! allowed, cachet's hosts of the interfaces it records or limits, each
//! wrapping the stock one: `wasi:filesystem/types` and `preopens` (every
//! open, stat, listing, readlink and mutation observed before it acts, as
//! `intercept.rs` does for preview 1), `wasi:cli/environment`,
//! `wasi:clocks` and `wasi:random` (facts, and under `--hermetic` the
//! virtual clock and the seeded generator), and `wasi:io/poll` (a guest
//! waiting in the host stops at its deadline or Ctrl-C).
//!
//! A descriptor is known to the [`Recorder`] by its resource number, as a
//! preview 1 fd is by its number; the recorder, the quota, the clock and
//! the policy are the same under both ABIs. Where the interfaces differ,
//! docs/design/sandbox.md ("Preview 2") says what the log holds.
//!
//! - `linker.rs`: the linker, and the small hosts (`exit`, environment,
//!   socket creation);
//! - `filesystem.rs`: `wasi:filesystem`, the recorder's side of preview 2;
//! - `streams.rs`: `wasi:io/streams` (scratch quota, devices);
//! - `clocks.rs`: `wasi:clocks` and `wasi:io/poll`;
//! - `random.rs`: `wasi:random`.

mod clocks;
mod filesystem;
mod linker;
mod random;
mod streams;

pub(crate) use linker::add_to_linker;
