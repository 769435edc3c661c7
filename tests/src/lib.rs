//! Integration tests live in `cli/`; this crate has no library code.
