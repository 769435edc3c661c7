//! The content store: which blobs a server lacks (`FindMissingBlobs`),
//! uploads of what it lacks (small blobs batched, large ones streamed over
//! ByteStream: modules are often past the 4 MiB batch limit), and reads,
//! each checked against its digest: a blob from a server is data.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2::content_addressable_storage_client::ContentAddressableStorageClient;
use bazel_remote_apis::google::bytestream::byte_stream_client::ByteStreamClient;

use super::{bytestream, re, Conn};

/// A batch request's payload budget: under the 4 MiB gRPC message most
/// servers take (BuildGrid: 4,193,280 bytes), with room for the framing.
const BATCH_BYTES: usize = 3 << 20;
/// Blobs past this go over ByteStream, in chunks of this size.
const STREAM_CHUNK: usize = 1 << 20;
/// Digests per `FindMissingBlobs`.
const FIND_BATCH: usize = 10_000;
/// In-memory blobs up to this many bytes in all are sent without asking
/// the server which it lacks.
const BLIND_UPLOAD: i64 = 64 << 10;
/// The largest message cachet accepts from a server.
const MAX_MESSAGE: usize = 64 << 20;
/// The largest blob cachet reads (a module, a result bundle).
pub const MAX_BLOB: i64 = 1 << 30;
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Where a blob's bytes are: in memory, or a file read when uploaded.
#[derive(Clone, Debug)]
pub enum Source {
    Bytes(Vec<u8>),
    File(PathBuf),
}

/// A blob to upload.
#[derive(Clone, Debug)]
pub struct Blob {
    pub digest: re::Digest,
    pub source: Source,
}

impl Blob {
    pub fn bytes(bytes: Vec<u8>) -> Blob {
        Blob {
            digest: super::digest_of(&bytes),
            source: Source::Bytes(bytes),
        }
    }
}

/// Why a content-store call failed.
#[derive(Debug, thiserror::Error)]
pub enum CasError {
    #[error("{0}")]
    Status(#[from] tonic::Status),
    #[error("the server does not have blob {0}")]
    Missing(String),
    #[error("blob {0}: the server sent bytes of another digest")]
    Corrupt(String),
    #[error("{0}")]
    Io(String),
}

impl CasError {
    /// Worth another attempt.
    pub fn transient(&self) -> bool {
        match self {
            CasError::Status(s) => super::transient(s),
            _ => false,
        }
    }
}

/// What an upload did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Uploaded {
    pub blobs: usize,
    pub bytes: u64,
    /// Blobs the server already had.
    pub present: usize,
}

/// One server's content store.
#[derive(Clone, Debug)]
pub struct Cas {
    conn: Conn,
}

impl Cas {
    pub fn new(conn: Conn) -> Cas {
        Cas { conn }
    }

    fn client(&self) -> ContentAddressableStorageClient<tonic::transport::Channel> {
        ContentAddressableStorageClient::new(self.conn.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
    }

    fn streams(&self) -> ByteStreamClient<tonic::transport::Channel> {
        ByteStreamClient::new(self.conn.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }

    /// The digests among `digests` the server does not hold.
    pub async fn find_missing(&self, digests: &[re::Digest]) -> Result<Vec<re::Digest>, CasError> {
        patiently(|| self.find_missing_once(digests)).await
    }

    /// Uploads what the server lacks of `blobs` (duplicates once).
    pub async fn upload(&self, blobs: &[Blob]) -> Result<Uploaded, CasError> {
        patiently(|| self.upload_once(blobs)).await
    }

    /// One blob's bytes, checked against its digest.
    pub async fn read(&self, digest: &re::Digest) -> Result<Vec<u8>, CasError> {
        patiently(|| self.read_once(digest)).await
    }

    /// Small blobs' bytes, in the order asked, each checked.
    pub async fn read_batch(&self, digests: &[re::Digest]) -> Result<Vec<Vec<u8>>, CasError> {
        patiently(|| self.read_batch_once(digests)).await
    }

    async fn find_missing_once(&self, digests: &[re::Digest]) -> Result<Vec<re::Digest>, CasError> {
        let mut missing = Vec::new();
        for chunk in digests.chunks(FIND_BATCH) {
            let req = re::FindMissingBlobsRequest {
                instance_name: self.conn.instance.clone(),
                blob_digests: chunk.to_vec(),
                digest_function: re::digest_function::Value::Sha256 as i32,
            };
            let resp = self
                .client()
                .find_missing_blobs(self.conn.request(req, CALL_TIMEOUT))
                .await?;
            missing.extend(resp.into_inner().missing_blob_digests);
        }
        Ok(missing)
    }

    async fn upload_once(&self, blobs: &[Blob]) -> Result<Uploaded, CasError> {
        let mut unique: BTreeMap<String, &Blob> = BTreeMap::new();
        for b in blobs {
            unique.entry(b.digest.hash.clone()).or_insert(b);
        }
        let digests: Vec<re::Digest> = unique.values().map(|b| b.digest.clone()).collect();
        // A few small blobs in memory go up without asking first: asking
        // costs a round trip as long as sending them.
        let small = unique
            .values()
            .all(|b| matches!(b.source, Source::Bytes(_)))
            && digests.iter().map(|d| d.size_bytes).sum::<i64>() <= BLIND_UPLOAD;
        let missing = if small {
            digests
        } else {
            self.find_missing_once(&digests).await?
        };
        let mut done = Uploaded {
            present: unique.len() - missing.len(),
            ..Uploaded::default()
        };
        let mut batch: Vec<re::batch_update_blobs_request::Request> = Vec::new();
        let mut batch_bytes = 0;
        for d in missing {
            let Some(blob) = unique.get(&d.hash) else {
                continue; // a digest we never asked about: the server's mistake
            };
            let bytes = read(&blob.source).await?;
            if super::digest_of(&bytes) != blob.digest {
                return Err(CasError::Io(format!(
                    "{}: changed while it was uploaded",
                    describe(&blob.source)
                )));
            }
            done.blobs += 1;
            done.bytes += bytes.len() as u64;
            if bytes.len() > STREAM_CHUNK {
                self.write_stream(&blob.digest, bytes).await?;
                continue;
            }
            if batch_bytes + bytes.len() > BATCH_BYTES {
                self.write_batch(std::mem::take(&mut batch)).await?;
                batch_bytes = 0;
            }
            batch_bytes += bytes.len();
            batch.push(re::batch_update_blobs_request::Request {
                digest: Some(blob.digest.clone()),
                data: bytes,
                compressor: 0,
            });
        }
        if !batch.is_empty() {
            self.write_batch(batch).await?;
        }
        Ok(done)
    }

    async fn write_batch(
        &self,
        requests: Vec<re::batch_update_blobs_request::Request>,
    ) -> Result<(), CasError> {
        let req = re::BatchUpdateBlobsRequest {
            instance_name: self.conn.instance.clone(),
            requests,
            digest_function: re::digest_function::Value::Sha256 as i32,
        };
        let resp = self
            .client()
            .batch_update_blobs(self.conn.request(req, CALL_TIMEOUT))
            .await?
            .into_inner();
        for r in resp.responses {
            if let Some(s) = r.status.filter(|s| s.code != 0) {
                let hash = r.digest.map(|d| d.hash).unwrap_or_default();
                return Err(CasError::Status(tonic::Status::new(
                    tonic::Code::from(s.code),
                    format!("uploading blob {hash}: {}", s.message),
                )));
            }
        }
        Ok(())
    }

    async fn write_stream(&self, digest: &re::Digest, bytes: Vec<u8>) -> Result<(), CasError> {
        let resource = format!(
            "{}uploads/{}/blobs/{}/{}",
            instance_prefix(&self.conn.instance),
            upload_id(),
            digest.hash,
            digest.size_bytes
        );
        let total = bytes.len();
        let chunks: Vec<bytestream::WriteRequest> = bytes
            .chunks(STREAM_CHUNK)
            .enumerate()
            .map(|(i, c)| bytestream::WriteRequest {
                resource_name: if i == 0 {
                    resource.clone()
                } else {
                    String::new()
                },
                write_offset: (i * STREAM_CHUNK) as i64,
                finish_write: (i + 1) * STREAM_CHUNK >= total,
                data: c.to_vec(),
            })
            .collect();
        let resp = self
            .streams()
            .write(self.conn.request(tokio_stream::iter(chunks), CALL_TIMEOUT))
            .await?
            .into_inner();
        if resp.committed_size != total as i64 && resp.committed_size != -1 {
            return Err(CasError::Status(tonic::Status::data_loss(format!(
                "uploading blob {}: the server committed {} of {total} bytes",
                digest.hash, resp.committed_size
            ))));
        }
        Ok(())
    }

    async fn read_once(&self, digest: &re::Digest) -> Result<Vec<u8>, CasError> {
        if !(0..=MAX_BLOB).contains(&digest.size_bytes) {
            return Err(CasError::Corrupt(digest.hash.clone()));
        }
        let bytes = if digest.size_bytes as usize <= STREAM_CHUNK {
            let mut all = self.read_batch_once(std::slice::from_ref(digest)).await?;
            all.pop().unwrap_or_default()
        } else {
            self.read_stream(digest).await?
        };
        Ok(bytes)
    }

    async fn read_batch_once(&self, digests: &[re::Digest]) -> Result<Vec<Vec<u8>>, CasError> {
        let mut found: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut start = 0;
        while start < digests.len() {
            let mut end = start;
            let mut size = 0;
            while end < digests.len()
                && (end == start || size + digests[end].size_bytes as usize <= BATCH_BYTES)
            {
                size += digests[end].size_bytes.max(0) as usize;
                end += 1;
            }
            let req = re::BatchReadBlobsRequest {
                instance_name: self.conn.instance.clone(),
                digests: digests[start..end].to_vec(),
                acceptable_compressors: Vec::new(),
                digest_function: re::digest_function::Value::Sha256 as i32,
            };
            let resp = self
                .client()
                .batch_read_blobs(self.conn.request(req, CALL_TIMEOUT))
                .await?
                .into_inner();
            for r in resp.responses {
                let Some(d) = r.digest else { continue };
                match r.status {
                    Some(s) if s.code == tonic::Code::NotFound as i32 => {
                        return Err(CasError::Missing(d.hash))
                    }
                    Some(s) if s.code != 0 => {
                        return Err(CasError::Status(tonic::Status::new(
                            tonic::Code::from(s.code),
                            s.message,
                        )))
                    }
                    _ => {}
                }
                if super::digest_of(&r.data) != d {
                    return Err(CasError::Corrupt(d.hash));
                }
                found.insert(d.hash, r.data);
            }
            start = end;
        }
        digests
            .iter()
            .map(|d| {
                found
                    .get(&d.hash)
                    .cloned()
                    .ok_or_else(|| CasError::Missing(d.hash.clone()))
            })
            .collect()
    }

    async fn read_stream(&self, digest: &re::Digest) -> Result<Vec<u8>, CasError> {
        let req = bytestream::ReadRequest {
            resource_name: format!(
                "{}blobs/{}/{}",
                instance_prefix(&self.conn.instance),
                digest.hash,
                digest.size_bytes
            ),
            read_offset: 0,
            read_limit: 0,
        };
        let mut stream = match self
            .streams()
            .read(self.conn.request(req, CALL_TIMEOUT))
            .await
        {
            Ok(s) => s.into_inner(),
            Err(s) if s.code() == tonic::Code::NotFound => {
                return Err(CasError::Missing(digest.hash.clone()))
            }
            Err(s) => return Err(s.into()),
        };
        let mut bytes = Vec::with_capacity(digest.size_bytes as usize);
        while let Some(chunk) = stream.message().await? {
            bytes.extend_from_slice(&chunk.data);
            if bytes.len() as i64 > digest.size_bytes {
                return Err(CasError::Corrupt(digest.hash.clone()));
            }
        }
        if super::digest_of(&bytes) != *digest {
            return Err(CasError::Corrupt(digest.hash.clone()));
        }
        Ok(bytes)
    }
}

/// `instance/` for ByteStream's resource names (nothing for the default).
fn instance_prefix(instance: &str) -> String {
    if instance.is_empty() {
        String::new()
    } else {
        format!("{instance}/")
    }
}

/// A fresh id for one ByteStream upload, in UUID form.
fn upload_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = format!(
        "{:?} {} {}",
        std::time::SystemTime::now(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let h = cachet_runtime::Sha256Digest::of(seed.as_bytes()).hex();
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// A call the server refused for being at its limit of calls
/// (RESOURCE_EXHAUSTED) is made again after a wait, up to
/// [`super::MAX_BUSY`] times: a busy server is not a failed one.
async fn patiently<T, F, Fut>(mut call: F) -> Result<T, CasError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, CasError>>,
{
    let mut busy = 0;
    loop {
        match call().await {
            Err(CasError::Status(s))
                if s.code() == tonic::Code::ResourceExhausted && busy < super::MAX_BUSY =>
            {
                busy += 1;
                tokio::time::sleep(super::backoff(busy)).await;
            }
            r => return r,
        }
    }
}

async fn read(source: &Source) -> Result<Vec<u8>, CasError> {
    match source {
        Source::Bytes(b) => Ok(b.clone()),
        Source::File(p) => tokio::fs::read(p)
            .await
            .map_err(|e| CasError::Io(format!("{}: {e}", p.display()))),
    }
}

fn describe(source: &Source) -> String {
    match source {
        Source::Bytes(_) => "a blob".into(),
        Source::File(p) => p.display().to_string(),
    }
}
