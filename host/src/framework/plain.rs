//! Any WASI command: one case (the module), exit status 0 passes. It is
//! what no other harness claims.

use super::Harness;

pub struct Plain;

impl Harness for Plain {
    fn name(&self) -> &'static str {
        "plain"
    }

    /// Never claimed by bytes: what is left when no harness claims a module.
    fn detect(&self, _module: &[u8]) -> bool {
        false
    }
}
