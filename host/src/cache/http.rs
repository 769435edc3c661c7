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
/// stores it under `ac/`: `stdout_raw` is field 5, `stdout_digest` field 6
/// (a `Digest`: `hash` 1, `size_bytes` 2).
fn encode(a: &ActionResult) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(raw) = &a.stdout_raw {
        field_bytes(&mut out, 5, raw);
    }
    if let Some((digest, size)) = &a.stdout_digest {
        let mut d = Vec::new();
        field_bytes(&mut d, 1, digest.hex().as_bytes());
        varint(&mut d, 2 << 3);
        varint(&mut d, *size);
        field_bytes(&mut out, 6, &d);
    }
    out
}

/// Reads the fields above, skipping every other; `None` if malformed.
fn decode(mut b: &[u8]) -> Option<ActionResult> {
    let mut a = ActionResult::default();
    while !b.is_empty() {
        let (field, value) = next_field(&mut b)?;
        match (field, value) {
            (5, Value::Bytes(raw)) => a.stdout_raw = Some(raw.to_vec()),
            (6, Value::Bytes(mut d)) => {
                let (mut hash, mut size) = (None, 0);
                while !d.is_empty() {
                    match next_field(&mut d)? {
                        (1, Value::Bytes(h)) => hash = Some(std::str::from_utf8(h).ok()?),
                        (2, Value::Varint(s)) => size = s,
                        _ => {}
                    }
                }
                let digest = Sha256Digest::parse_hex(&hash?.to_ascii_lowercase())?;
                a.stdout_digest = Some((digest, size));
            }
            _ => {}
        }
    }
    Some(a)
}

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

fn next_field<'a>(b: &mut &'a [u8]) -> Option<(u64, Value<'a>)> {
    let tag = read_varint(b)?;
    let value = match tag & 7 {
        0 => Value::Varint(read_varint(b)?),
        1 => {
            *b = b.get(8..)?;
            Value::Fixed
        }
        2 => {
            let len = usize::try_from(read_varint(b)?).ok()?;
            let (v, rest) = (b.get(..len)?, b.get(len..)?);
            *b = rest;
            Value::Bytes(v)
        }
        5 => {
            *b = b.get(4..)?;
            Value::Fixed
        }
        _ => return None,
    };
    Some((tag >> 3, value))
}

fn read_varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, (field << 3) | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
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
