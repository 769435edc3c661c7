//! The Execution service: an action submitted (`Execute`), followed until
//! its operation is done (`WaitExecution` when the stream breaks), and
//! cancelled (`CancelOperation`) when the run is.

use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2::execution_client::ExecutionClient;
use bazel_remote_apis::google::longrunning::operations_client::OperationsClient;

pub use tonic::Code;

use super::{longrunning, re, Conn};

/// A stream may stay open this long between messages (BuildGrid sends
/// the operation's state at least every keepalive period).
const STREAM_TIMEOUT: Duration = Duration::from_secs(3600);
const MAX_MESSAGE: usize = 64 << 20;
/// Reconnects to one operation before giving it up.
const MAX_WAITS: usize = 5;

const EXECUTE_RESPONSE: &str = "build.bazel.remote.execution.v2.ExecuteResponse";
const EXECUTE_METADATA: &str = "build.bazel.remote.execution.v2.ExecuteOperationMetadata";

/// Where an operation is, as far as the server said (in order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Not said, or still looked up in the action cache.
    Unknown,
    Queued,
    Executing,
    Completed,
}

/// Why an execution gave no result.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The server could not be reached or failed: worth running elsewhere.
    #[error("{0}")]
    Unavailable(String),
    /// The server is at its limit of calls (RESOURCE_EXHAUSTED): worth
    /// the same call again a little later.
    #[error("{0}")]
    Busy(String),
    /// The server answered, and its answer says the action failed
    /// (a timeout, a missing input, a refused command).
    #[error("{0}")]
    Failed(tonic::Status),
}

/// One server's Execution service.
#[derive(Clone, Debug)]
pub struct Executor {
    conn: Conn,
}

impl Executor {
    pub fn new(conn: Conn) -> Executor {
        Executor { conn }
    }

    /// Runs the action (uploaded before) and waits for its result;
    /// `on_update` hears the operation's name (to cancel it) and stage
    /// with each update the server sends.
    pub async fn execute(
        &self,
        action: re::Digest,
        skip_cache: bool,
        on_update: &(dyn Fn(&str, Stage) + Send + Sync),
    ) -> Result<re::ExecuteResponse, ExecError> {
        let mut client =
            ExecutionClient::new(self.conn.channel.clone()).max_decoding_message_size(MAX_MESSAGE);
        let req = re::ExecuteRequest {
            instance_name: self.conn.instance.clone(),
            skip_cache_lookup: skip_cache,
            action_digest: Some(action),
            digest_function: re::digest_function::Value::Sha256 as i32,
            ..Default::default()
        };
        let stream = client
            .execute(self.conn.request(req, STREAM_TIMEOUT))
            .await
            .map_err(unavailable_or_failed)?
            .into_inner();
        let mut name = String::new();
        let mut stream = Some(stream);
        let mut waits = 0;
        loop {
            let next = match stream.as_mut() {
                Some(s) => s.message().await,
                None => Ok(None),
            };
            match next {
                Ok(Some(op)) => {
                    if name.is_empty() && !op.name.is_empty() {
                        name = op.name.clone();
                    }
                    if !name.is_empty() {
                        on_update(&name, stage(&op));
                    }
                    if op.done {
                        return done(op);
                    }
                }
                // The stream ended or broke before the operation was done:
                // follow it again by name.
                Ok(None) | Err(_) if !name.is_empty() && waits < MAX_WAITS => {
                    waits += 1;
                    let req = re::WaitExecutionRequest { name: name.clone() };
                    stream = match client
                        .wait_execution(self.conn.request(req, STREAM_TIMEOUT))
                        .await
                    {
                        Ok(s) => Some(s.into_inner()),
                        Err(e) if super::transient(&e) => {
                            tokio::time::sleep(Duration::from_millis(200 << waits)).await;
                            None
                        }
                        Err(e) => return Err(unavailable_or_failed(e)),
                    };
                }
                Ok(None) => {
                    return Err(ExecError::Unavailable(
                        "the server ended the execution stream before the action was done".into(),
                    ))
                }
                Err(e) => return Err(unavailable_or_failed(e)),
            }
        }
    }

    /// Asks the server to cancel an operation (best effort).
    pub async fn cancel(&self, name: &str) {
        let mut client = OperationsClient::new(self.conn.channel.clone());
        let req = longrunning::CancelOperationRequest {
            name: name.to_string(),
        };
        let _ = client
            .cancel_operation(self.conn.request(req, Duration::from_secs(5)))
            .await;
    }
}

fn unavailable_or_failed(s: tonic::Status) -> ExecError {
    if s.code() == tonic::Code::ResourceExhausted {
        ExecError::Busy(s.message().to_string())
    } else if super::transient(&s) {
        ExecError::Unavailable(format!("{:?}: {}", s.code(), s.message()))
    } else {
        ExecError::Failed(s)
    }
}

/// The stage an operation's metadata names.
fn stage(op: &longrunning::Operation) -> Stage {
    use re::execution_stage::Value;
    let Some(m) = op
        .metadata
        .as_ref()
        .and_then(|any| super::bots::unpack::<re::ExecuteOperationMetadata>(EXECUTE_METADATA, any))
    else {
        return Stage::Unknown;
    };
    match Value::try_from(m.stage) {
        Ok(Value::Queued) => Stage::Queued,
        Ok(Value::Executing) => Stage::Executing,
        Ok(Value::Completed) => Stage::Completed,
        _ => Stage::Unknown,
    }
}

/// A finished operation's response, or why there is none.
fn done(op: longrunning::Operation) -> Result<re::ExecuteResponse, ExecError> {
    match op.result {
        Some(longrunning::operation::Result::Response(any)) => {
            let resp: re::ExecuteResponse = super::bots::unpack(EXECUTE_RESPONSE, &any)
                .ok_or_else(|| {
                    ExecError::Unavailable(format!(
                        "the operation's response is {}, not an ExecuteResponse",
                        any.type_url
                    ))
                })?;
            match &resp.status {
                Some(s) if s.code != 0 => Err(ExecError::Failed(tonic::Status::new(
                    tonic::Code::from(s.code),
                    s.message.clone(),
                ))),
                _ => Ok(resp),
            }
        }
        Some(longrunning::operation::Result::Error(s)) => Err(unavailable_or_failed(
            tonic::Status::new(tonic::Code::from(s.code), s.message),
        )),
        None => Err(ExecError::Unavailable(
            "the operation is done but holds no result".into(),
        )),
    }
}
