//! The two WASI ABIs cachet runs, named once for the whole runtime: a
//! preview 1 core module or a preview 2 component. Its own file because
//! the run's state, its outcome and the code all name it.

/// The WASI version a binary targets, told by its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Wasi {
    /// A core module importing `wasi_snapshot_preview1`.
    P1,
    /// A component importing `wasi:cli` and the other preview 2 worlds.
    P2,
}

impl Wasi {
    /// How reports and keys name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Wasi::P1 => "preview1",
            Wasi::P2 => "preview2",
        }
    }
}
