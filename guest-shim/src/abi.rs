//! The guest <-> host ABI, defined once. The runtime includes this file with
//! `#[path]`, so both sides of every import read the same constants.
//!
//! `cachet.getenv(name_ptr, name_len, buf_ptr, buf_len) -> i32`
//!
//! - `name` is the variable's name, UTF-8, not NUL-terminated.
//! - Returns [`GETENV_UNSET`] when the variable is not in the sandbox's environment.
//! - Otherwise returns the value's length in bytes and copies
//!   `min(len, buf_len)` bytes of it to `buf`; a caller whose buffer was too small
//!   calls again with a larger one. Values contain no NUL byte (WASI forbids it).
//! - Returns [`GETENV_FAULT`] when a pointer/length pair lies outside memory.

/// Import module name of every cachet host function.
pub const MODULE: &str = "cachet";
/// `getenv`, as described in the module documentation.
pub const GETENV: &str = "getenv";
/// `getenv` result: the variable is not set.
pub const GETENV_UNSET: i32 = -1;
/// `getenv` result: a pointer or length was out of bounds.
pub const GETENV_FAULT: i32 = -2;
