//! Bazel's HTTP cache protocol: `GET`/`PUT` of `/ac/<sha256>` (an
//! `ActionResult` in protobuf's wire format) and `/cas/<sha256>` (a blob),
//! as bazel-remote, nginx with WebDAV and the hosted caches serve it.

use std::io::Read as _;
use std::sync::Mutex;
use std::time::Duration;

use cachet_runtime::Sha256Digest;
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};

use super::remote::RemoteConfig;
use super::transport::{ActionResult, Transport, TransportError};
use crate::reapi::re;

/// A response body larger than this is not a cachet entry.
const MAX_BODY: u64 = 64 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub struct HttpTransport {
    agent: ureq::Agent,
    /// `http://` or `https://`, without a trailing slash.
    url: String,
    /// The `Authorization` header, if any.
    auth: Option<String>,
}

impl HttpTransport {
    pub fn new(config: &RemoteConfig) -> HttpTransport {
        let http = ureq::Agent::config_builder()
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(REQUEST_TIMEOUT))
            .http_status_as_error(false)
            .max_idle_connections_per_host(32)
            .user_agent(concat!("cachet/", env!("CARGO_PKG_VERSION")))
            .build();
        let agent = ureq::Agent::with_parts(
            http,
            ureq::unversioned::transport::DefaultConnector::new(),
            OnceResolver::default(),
        );
        HttpTransport {
            agent,
            url: config.url.clone(),
            auth: config.auth.clone(),
        }
    }

    /// `GET`: the body, or `None` for 404.
    fn get(&self, path: &str) -> Result<Option<Vec<u8>>, TransportError> {
        let mut req = self.agent.get(format!("{}/{path}", self.url));
        if let Some(a) = &self.auth {
            req = req.header("Authorization", a);
        }
        let mut resp = req.call().map_err(unreachable)?;
        match resp.status().as_u16() {
            200 => {
                let mut body = Vec::new();
                resp.body_mut()
                    .as_reader()
                    .take(MAX_BODY + 1)
                    .read_to_end(&mut body)
                    .map_err(|e| TransportError::Transient(format!("reading {path}: {e}")))?;
                if body.len() as u64 > MAX_BODY {
                    return Err(TransportError::Fatal(format!(
                        "{path}: the body is too large"
                    )));
                }
                Ok(Some(body))
            }
            404 => Ok(None),
            s => Err(status(path, s)),
        }
    }

    fn put(&self, path: &str, body: &[u8]) -> Result<(), TransportError> {
        let mut req = self.agent.put(format!("{}/{path}", self.url));
        if let Some(a) = &self.auth {
            req = req.header("Authorization", a);
        }
        let resp = req.send(body).map_err(unreachable)?;
        match resp.status().as_u16() {
            200..=299 => Ok(()),
            s => Err(status(path, s)),
        }
    }
}

impl Transport for HttpTransport {
    fn get_action(&self, key: &Sha256Digest) -> Result<Option<ActionResult>, TransportError> {
        let path = format!("ac/{}", key.hex());
        match self.get(&path)? {
            None => Ok(None),
            Some(body) => decode(&body)
                .map(Some)
                .ok_or_else(|| TransportError::Fatal(format!("{path}: not an ActionResult"))),
        }
    }

    fn put_action(&self, key: &Sha256Digest, action: &ActionResult) -> Result<(), TransportError> {
        self.put(&format!("ac/{}", key.hex()), &encode(action))
    }

    fn get_blob(&self, digest: &Sha256Digest) -> Result<Option<Vec<u8>>, TransportError> {
        self.get(&format!("cas/{}", digest.hex()))
    }

    fn put_blob(&self, digest: &Sha256Digest, bytes: &[u8]) -> Result<(), TransportError> {
        self.put(&format!("cas/{}", digest.hex()), bytes)
    }
}

fn unreachable(e: ureq::Error) -> TransportError {
    TransportError::Transient(e.to_string())
}

fn status(path: &str, code: u16) -> TransportError {
    let msg = format!("{path}: the server answered {code}");
    match code {
        401 | 403 => TransportError::Fatal(format!(
            "{msg} (set CACHET_REMOTE_CACHE_TOKEN, or CACHET_REMOTE_CACHE_USER and CACHET_REMOTE_CACHE_PASSWORD)"
        )),
        500..=599 | 408 | 429 => TransportError::Transient(msg),
        _ => TransportError::Fatal(msg),
    }
}

/// Resolves the server's host once per run. ureq resolves on every request,
/// on a thread of its own when a timeout is set: a run with a lookup per
/// module started 200 threads for it.
#[derive(Debug, Default)]
struct OnceResolver {
    inner: ureq::unversioned::resolver::DefaultResolver,
    resolved: Mutex<Option<(String, ResolvedSocketAddrs)>>,
}

impl Resolver for OnceResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let at = format!("{:?} {:?}", uri.scheme(), uri.authority());
        if let Some((known, addrs)) = &*self.resolved.lock().expect("resolver") {
            if *known == at {
                return Ok(addrs.clone());
            }
        }
        let addrs = self.inner.resolve(uri, config, timeout)?;
        *self.resolved.lock().expect("resolver") = Some((at, addrs.clone()));
        Ok(addrs)
    }
}

/// REAPI's `ActionResult` in protobuf's wire format, as the HTTP protocol
/// stores it under `ac/`: only `stdout_raw` and `stdout_digest` are cachet's.
fn encode(a: &ActionResult) -> Vec<u8> {
    use prost::Message as _;
    re::ActionResult {
        stdout_raw: a.stdout_raw.clone().unwrap_or_default(),
        stdout_digest: a.stdout_digest.map(|(d, size)| re::Digest {
            hash: d.hex(),
            size_bytes: size as i64,
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Reads the fields above (every other is ignored); `None` if malformed.
fn decode(b: &[u8]) -> Option<ActionResult> {
    use prost::Message as _;
    let a = re::ActionResult::decode(b).ok()?;
    let stdout_digest = match a.stdout_digest {
        None => None,
        Some(d) => Some((
            Sha256Digest::parse_hex(&d.hash.to_ascii_lowercase())?,
            u64::try_from(d.size_bytes).ok()?,
        )),
    };
    Some(ActionResult {
        stdout_raw: (!a.stdout_raw.is_empty()).then_some(a.stdout_raw),
        stdout_digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_results_round_trip_and_skip_unknown_fields() {
        let inline = ActionResult {
            stdout_raw: Some(b"bundle".to_vec()),
            stdout_digest: None,
        };
        assert_eq!(decode(&encode(&inline)), Some(inline));
        let by_digest = ActionResult {
            stdout_raw: None,
            stdout_digest: Some((Sha256Digest::of(b"blob"), 12345)),
        };
        let mut bytes = vec![0x20, 0x07]; // exit_code = 7 (field 4, varint)
        bytes.extend(encode(&by_digest));
        assert_eq!(decode(&bytes), Some(by_digest));
        for garbage in [&b"\xff\xff\xff"[..], b"\x2a\x10short", b"\x07"] {
            assert_eq!(decode(garbage), None);
        }
    }
}
