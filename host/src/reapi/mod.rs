//! Bazel's Remote Execution API (REAPI v2) over gRPC, as BuildGrid,
//! Buildbarn, NativeLink and BuildBuddy serve it: the connection
//! (`grpc://`, `grpcs://`, an instance name, a bearer token), the content
//! store ([`cas`]), input trees ([`tree`]), and the Remote Workers API that
//! lets `cachet worker` serve a BuildGrid farm ([`bots`]). The messages and
//! clients are `bazel-remote-apis`' (generated ahead, no protoc); only the
//! Remote Workers messages, which it lacks, are written out here.

pub mod bots;
pub mod cas;
pub mod exec;
pub mod store;
pub mod tree;

use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint as TonicEndpoint};

pub use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
pub use bazel_remote_apis::google::{bytestream, longrunning, protobuf, rpc};

/// How long a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A server named on the command line or in cachet.toml, not yet dialled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `http://host:port` or `https://host:port`: tonic's spelling.
    uri: String,
    tls: bool,
    /// REAPI's instance name (`""` for a server's default instance).
    pub instance: String,
    /// A bearer token, sent as `authorization: Bearer ...`.
    token: Option<String>,
    /// PEM certificates trusted besides the web's roots (a private CA).
    ca: Option<Vec<u8>>,
}

/// A server address that cannot be used, in words that say how to fix it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct EndpointError(String);

impl Endpoint {
    /// `grpc://HOST:PORT` (plain) or `grpcs://HOST:PORT` (TLS), the
    /// spelling Bazel's `--remote_executor` takes.
    pub fn parse(url: &str, instance: &str, token: Option<String>) -> Result<Self, EndpointError> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("grpc://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("grpcs://") {
            (true, r)
        } else {
            return Err(EndpointError(format!(
                "{url}: a REAPI server is grpc://HOST:PORT or grpcs://HOST:PORT"
            )));
        };
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') || rest.contains(char::is_whitespace) {
            return Err(EndpointError(format!(
                "{url}: a REAPI server is grpc://HOST:PORT or grpcs://HOST:PORT, with no path (the instance name is --remote-instance)"
            )));
        }
        let scheme = if tls { "https" } else { "http" };
        let uri = format!("{scheme}://{rest}");
        uri.parse::<tonic::transport::Uri>()
            .map_err(|e| EndpointError(format!("{url}: {e}")))?;
        if let Some(t) = &token {
            MetadataValue::try_from(format!("Bearer {t}")).map_err(|_| {
                EndpointError("the REAPI token holds characters a header cannot".into())
            })?;
        }
        Ok(Endpoint {
            uri,
            tls,
            instance: instance.to_string(),
            token,
            ca: None,
        })
    }

    /// `url` with what this machine's environment adds: a bearer token
    /// (`CACHET_REMOTE_EXECUTOR_TOKEN`) and a private CA's certificates,
    /// a PEM file (`CACHET_REMOTE_EXECUTOR_CA`), trusted besides the web's
    /// roots for `grpcs://`.
    pub fn configured(url: &str, instance: &str) -> Result<Self, EndpointError> {
        let token = std::env::var("CACHET_REMOTE_EXECUTOR_TOKEN").ok();
        let mut endpoint = Endpoint::parse(url, instance, token)?;
        if let Some(path) = std::env::var_os("CACHET_REMOTE_EXECUTOR_CA") {
            let pem = std::fs::read(&path).map_err(|e| {
                EndpointError(format!(
                    "CACHET_REMOTE_EXECUTOR_CA={}: {e}; name a PEM file of the farm's CA certificates",
                    std::path::Path::new(&path).display()
                ))
            })?;
            endpoint.ca = Some(pem);
        }
        Ok(endpoint)
    }

    /// The address as the user wrote it, for messages.
    pub fn display(&self) -> String {
        let scheme = if self.tls { "grpcs" } else { "grpc" };
        let host = self.uri.split_once("://").map_or("", |(_, h)| h);
        format!("{scheme}://{host}")
    }

    /// A lazily connecting channel: the first request dials, and a broken
    /// connection is dialled again by the next. Call it in a tokio runtime.
    pub fn connect(&self) -> Result<Conn, EndpointError> {
        let mut ep = TonicEndpoint::from_shared(self.uri.clone())
            .map_err(|e| EndpointError(format!("{}: {e}", self.display())))?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        if self.tls {
            let mut tls = ClientTlsConfig::new().with_webpki_roots();
            if let Some(pem) = &self.ca {
                tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
            }
            ep = ep
                .tls_config(tls)
                .map_err(|e| EndpointError(format!("{}: TLS: {e}", self.display())))?;
        }
        let auth = self
            .token
            .as_ref()
            .and_then(|t| MetadataValue::try_from(format!("Bearer {t}")).ok());
        Ok(Conn {
            channel: ep.connect_lazy(),
            instance: self.instance.clone(),
            auth,
            display: self.display(),
        })
    }
}

/// One server's channel (cheap to clone: every clone shares it).
#[derive(Clone, Debug)]
pub struct Conn {
    pub channel: Channel,
    pub instance: String,
    auth: Option<MetadataValue<tonic::metadata::Ascii>>,
    display: String,
}

impl Conn {
    /// A request carrying the credentials, with a deadline.
    pub fn request<T>(&self, message: T, timeout: Duration) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        r.set_timeout(timeout);
        if let Some(a) = &self.auth {
            r.metadata_mut().insert("authorization", a.clone());
        }
        r
    }

    /// The server, as the user named it.
    pub fn display(&self) -> &str {
        &self.display
    }
}

/// A digest in REAPI's form.
pub fn digest_of(bytes: &[u8]) -> re::Digest {
    re::Digest {
        hash: cachet_runtime::Sha256Digest::of(bytes).hex(),
        size_bytes: bytes.len() as i64,
    }
}

/// Attempts of a call the server refused for being at its limit
/// (RESOURCE_EXHAUSTED) before it counts as a failure: about a minute.
pub const MAX_BUSY: u32 = 64;

/// The wait before the `n`th attempt of a refused call: 20 ms doubling,
/// at most a second, spread so waiters do not come back together.
pub fn backoff(n: u32) -> Duration {
    let base = Duration::from_millis(20u64 << n.min(6)).min(Duration::from_secs(1));
    let spread = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() % 1000);
    base + base * spread / 2000
}

/// A host file's digest: from the stat memo when it knows the file
/// unchanged, else read and hashed (and remembered).
pub fn digest_file(
    path: &std::path::Path,
    memo: Option<&dyn cachet_runtime::DigestMemo>,
) -> std::io::Result<re::Digest> {
    let meta = std::fs::metadata(path)?;
    let id = cachet_runtime::FileId::of(&meta);
    if let Some(d) = memo.and_then(|m| m.get(&id)) {
        return Ok(re::Digest {
            hash: d.hex(),
            size_bytes: meta.len() as i64,
        });
    }
    let bytes = std::fs::read(path)?;
    let digest = cachet_runtime::Sha256Digest::of(&bytes);
    if let Some(m) = memo.filter(|_| bytes.len() as u64 == meta.len()) {
        m.put(id, digest);
    }
    Ok(re::Digest {
        hash: digest.hex(),
        size_bytes: bytes.len() as i64,
    })
}

/// Whether a gRPC failure is worth another attempt (the server or the
/// network, not the request).
pub fn transient(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::ResourceExhausted
            | Code::Internal
            | Code::Unknown
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_as_bazel_spells_them() {
        let e = Endpoint::parse("grpc://127.0.0.1:50051", "main", None).unwrap();
        assert_eq!(e.display(), "grpc://127.0.0.1:50051");
        assert_eq!(e.uri, "http://127.0.0.1:50051");
        let e = Endpoint::parse("grpcs://farm.example:443/", "", Some("t".into())).unwrap();
        assert!(e.tls);
        for bad in ["http://x:1", "grpc://", "grpc://h:1/inst", "farm:50051"] {
            let err = Endpoint::parse(bad, "", None).unwrap_err().to_string();
            assert!(err.contains("grpc://HOST:PORT"), "{bad}: {err}");
        }
        let err = Endpoint::parse("grpc://h:1", "", Some("a\nb".into())).unwrap_err();
        assert!(err.to_string().contains("token"), "{err}");
    }
}
