//! The gRPC ingress against the real PostgreSQL and RabbitMQ, with real
//! tonic clients generated from the contract and from test protos (one
//! broadcast, one unicast and one reply service), and raw calls of the o5
//! topic protos (one per option form): what arrives, byte for byte, and
//! which status each failure gets. And the receiving side: delivery of
//! what arrives to a worker application's own gRPC server
//! (`tests/deliver/`).

#[path = "../common/mod.rs"]
mod common;
#[path = "../deliver/mod.rs"]
mod deliver;
mod group;
mod o5;
mod o5table;
mod o5topics;
mod publisher;
mod server;
mod topics;

use common::*;
use lapin::types::AMQPValue;
use std::time::Duration;
use tonic::transport::Channel;

/// Client code for the test protos (`tests/proto/test/v1/topics.proto`).
pub mod test_v1 {
    tonic::include_proto!("test.v1");
}

pub const TEST_DESCRIPTORS: &str = concat!(env!("OUT_DIR"), "/test_descriptors.bin");
pub const BAD_DESCRIPTORS: &str = concat!(env!("OUT_DIR"), "/bad_descriptors.bin");
pub const WITHIN: Duration = Duration::from_secs(20);
pub const LINGER: Duration = Duration::from_millis(300);

/// A relay with its gRPC ingress on a free port, for `env`'s schema.
pub async fn sidecar(env: &TestEnv, extra: &[&str]) -> Running {
    Running::start(env.run_args(extra)).await
}

pub async fn channel(relay: &Running) -> Channel {
    Channel::from_shared(relay.grpc_url())
        .unwrap()
        .connect()
        .await
        .expect("connect to the gRPC ingress")
}

/// A header of a delivery, as a string.
pub fn header(d: &lapin::message::Delivery, name: &str) -> Option<String> {
    let headers = d.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        other => Some(format!("{other:?}")),
    }
}

pub fn content_type(d: &lapin::message::Delivery) -> Option<String> {
    d.properties.content_type().as_ref().map(|c| c.to_string())
}

/// Rows in `env`'s outbox table.
pub async fn rows(env: &TestEnv) -> i64 {
    env.scalar("SELECT count(*) FROM {t}").await
}

/// How many rows hold exactly `message_id`.
pub async fn rows_with_id(env: &TestEnv, message_id: &str) -> i64 {
    let sql = format!("SELECT count(*) FROM {} WHERE message_id = $1", env.table());
    env.pg.query_one(&sql, &[&message_id]).await.unwrap().get(0)
}

/// A message_id that is no UUID, with what o5 senders put in theirs:
/// capitals, punctuation, spaces and non-ASCII text.
pub fn non_uuid_id() -> String {
    format!("Order-{}/v2: créé", unique("n"))
}
