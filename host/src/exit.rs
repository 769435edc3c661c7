//! Exit statuses, as `go test` uses them.

/// Every test passed (or was cached).
pub const PASSED: u8 = 0;
/// At least one test failed.
pub const TESTS_FAILED: u8 = 1;
/// Bad usage, or a package could not be set up (missing path, bad module,
/// build failure). Takes precedence over [`TESTS_FAILED`].
pub const SETUP_ERROR: u8 = 2;
/// Stopped by Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
pub const INTERRUPTED: u8 = 130;
