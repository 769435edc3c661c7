//! Google's Remote Workers API (`google.devtools.remoteworkers.v1test2`),
//! the protocol BuildGrid's scheduler hands work to bots with: a bot opens
//! a session (`CreateBotSession`) and keeps it alive (`UpdateBotSession`),
//! receiving leases (an `Action` packed in an `Any`) and returning each as
//! `COMPLETED` with an `ActionResult` in `lease.result`. `bazel-remote-apis`
//! does not carry these messages; they are the fields BuildGrid 0.9 uses,
//! numbered as in the published `bots.proto` and `worker.proto`.

use std::time::Duration;

use tonic::codegen::http::uri::PathAndQuery;

use super::{protobuf, rpc, Conn};

#[derive(Clone, PartialEq, prost::Message)]
pub struct BotSession {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub bot_id: String,
    #[prost(enumeration = "BotStatus", tag = "3")]
    pub status: i32,
    #[prost(message, optional, tag = "4")]
    pub worker: Option<Worker>,
    #[prost(message, repeated, tag = "5")]
    pub leases: Vec<Lease>,
    #[prost(message, optional, tag = "6")]
    pub expire_time: Option<protobuf::Timestamp>,
    #[prost(string, tag = "7")]
    pub version: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum BotStatus {
    Unspecified = 0,
    Ok = 1,
    Unhealthy = 2,
    HostRebooting = 3,
    BotTerminating = 4,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum LeaseState {
    Unspecified = 0,
    Pending = 1,
    Active = 2,
    Completed = 4,
    Cancelled = 5,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Lease {
    #[prost(string, tag = "7")]
    pub id: String,
    #[prost(message, optional, tag = "8")]
    pub payload: Option<protobuf::Any>,
    #[prost(message, optional, tag = "9")]
    pub result: Option<protobuf::Any>,
    #[prost(enumeration = "LeaseState", tag = "2")]
    pub state: i32,
    #[prost(message, optional, tag = "3")]
    pub status: Option<rpc::Status>,
    #[prost(message, optional, tag = "5")]
    pub expire_time: Option<protobuf::Timestamp>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Worker {
    #[prost(message, repeated, tag = "1")]
    pub devices: Vec<Device>,
    #[prost(message, repeated, tag = "2")]
    pub properties: Vec<Property>,
    /// `capacity`: how many leases the bot runs at once.
    #[prost(message, repeated, tag = "3")]
    pub configs: Vec<Property>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Device {
    #[prost(string, tag = "1")]
    pub handle: String,
    #[prost(message, repeated, tag = "2")]
    pub properties: Vec<Property>,
}

/// `Worker.Property`, `Worker.Config` and `Device.Property` alike.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Property {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateBotSessionRequest {
    #[prost(string, tag = "1")]
    pub parent: String,
    #[prost(message, optional, tag = "2")]
    pub bot_session: Option<BotSession>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct UpdateBotSessionRequest {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub bot_session: Option<BotSession>,
}

const SERVICE: &str = "google.devtools.remoteworkers.v1test2.Bots";

/// The Bots service's two calls.
#[derive(Clone, Debug)]
pub struct BotsClient {
    conn: Conn,
}

impl BotsClient {
    pub fn new(conn: Conn) -> BotsClient {
        BotsClient { conn }
    }

    pub async fn create(
        &self,
        session: BotSession,
        timeout: Duration,
    ) -> Result<BotSession, tonic::Status> {
        let req = CreateBotSessionRequest {
            parent: self.conn.instance.clone(),
            bot_session: Some(session),
        };
        self.unary("CreateBotSession", req, timeout).await
    }

    pub async fn update(
        &self,
        session: BotSession,
        timeout: Duration,
    ) -> Result<BotSession, tonic::Status> {
        let req = UpdateBotSessionRequest {
            name: session.name.clone(),
            bot_session: Some(session),
        };
        self.unary("UpdateBotSession", req, timeout).await
    }

    async fn unary<Req: prost::Message + 'static>(
        &self,
        method: &'static str,
        message: Req,
        timeout: Duration,
    ) -> Result<BotSession, tonic::Status> {
        let mut grpc = tonic::client::Grpc::new(self.conn.channel.clone());
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("{}: {e}", self.conn.display())))?;
        let path = PathAndQuery::try_from(format!("/{SERVICE}/{method}"))
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        let codec = tonic_prost::ProstCodec::<Req, BotSession>::default();
        let resp = grpc
            .unary(self.conn.request(message, timeout), path, codec)
            .await?;
        Ok(resp.into_inner())
    }
}

/// An `Any` holding `message`, named as protobuf names its type.
pub fn pack<M: prost::Message>(full_name: &str, message: &M) -> protobuf::Any {
    protobuf::Any {
        type_url: format!("type.googleapis.com/{full_name}"),
        value: message.encode_to_vec(),
    }
}

/// The message in `any` if it is of type `full_name`.
pub fn unpack<M: prost::Message + Default>(full_name: &str, any: &protobuf::Any) -> Option<M> {
    let name = any.type_url.rsplit('/').next()?;
    (name == full_name)
        .then(|| M::decode(any.value.as_slice()).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn a_lease_reads_as_buildgrid_writes_it() {
        // BuildGrid 0.9's Lease(id="main/j1", state=ACTIVE, payload=Any(Action)):
        // id is field 7, state field 2, payload field 8.
        let action = super::super::re::Action {
            do_not_cache: true,
            ..Default::default()
        };
        let lease = Lease {
            id: "main/j1".into(),
            state: LeaseState::Active as i32,
            payload: Some(pack("build.bazel.remote.execution.v2.Action", &action)),
            ..Default::default()
        };
        let bytes = lease.encode_to_vec();
        assert_eq!(&bytes[..2], &[0x10, 0x02], "state first, field 2");
        let back = Lease::decode(bytes.as_slice()).unwrap();
        let a: super::super::re::Action = unpack(
            "build.bazel.remote.execution.v2.Action",
            back.payload.as_ref().unwrap(),
        )
        .unwrap();
        assert!(a.do_not_cache);
        assert!(unpack::<super::super::re::Digest>(
            "build.bazel.remote.execution.v2.Digest",
            back.payload.as_ref().unwrap()
        )
        .is_none());
    }
}
