//! How the remote cache reaches its server: an action cache of entries
//! by key and a content store of blobs by digest, the two stores of
//! Bazel's remote caching. `remote.rs` does everything else (what to
//! fetch, verification, uploads, turning itself off); a transport only
//! moves bytes. The Bazel HTTP protocol is `http.rs`; another backend
//! (REAPI over gRPC) is one more file implementing [`Transport`].

use cachet_runtime::Sha256Digest;

/// The part of REAPI's `ActionResult` cachet uses: its entry inline, or
/// the digest and size of the blob in the content store that holds it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ActionResult {
    pub stdout_raw: Option<Vec<u8>>,
    pub stdout_digest: Option<(Sha256Digest, u64)>,
}

/// Why a request gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Worth another attempt: connection refused or reset, timeout, 5xx.
    #[error("{0}")]
    Transient(String),
    /// Not worth another: refused credentials, a malformed answer.
    #[error("{0}")]
    Fatal(String),
}

/// One server's two stores. `Ok(None)`: the server does not have it.
pub trait Transport: Send + Sync {
    fn get_action(&self, key: &Sha256Digest) -> Result<Option<ActionResult>, TransportError>;
    fn put_action(&self, key: &Sha256Digest, action: &ActionResult) -> Result<(), TransportError>;
    fn get_blob(&self, digest: &Sha256Digest) -> Result<Option<Vec<u8>>, TransportError>;
    fn put_blob(&self, digest: &Sha256Digest, bytes: &[u8]) -> Result<(), TransportError>;
}
