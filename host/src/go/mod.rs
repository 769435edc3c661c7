//! Go test binaries (`GOOS=wasip1 GOARCH=wasm go test -c`): their harness's
//! flags and output (`harness.rs`), `go test -json` events (`test2json.rs`),
//! precise environment reads from the test log (`testlog.rs`), and building
//! Go packages with the Go toolchain (`build.rs`).

pub mod build;
pub mod harness;
pub mod test2json;
pub mod testlog;
