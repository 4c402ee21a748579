//! The gRPC ingress against the application's own inserts: `Publish` calls
//! (outbox mode) from concurrent callers, set against the same number of
//! connections inserting single rows straight into the table, each with the
//! relay draining what arrives. Also times each call (until OK, i.e. until
//! committed) and each message from the call's OK to the consumer.

use crate::scenarios::{DRAIN_DEADLINE, Latency, consume_into, epoch_ms};
use crate::support::{BenchQueue, RelayProcess, Schema, pg};
use outbox_relay::proto::outbox::v1::PublishRequest;
use outbox_relay::proto::outbox::v1::publisher_client::PublisherClient;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Mutex;
use tonic::transport::Channel;

/// What one ingress run measured.
pub struct IngressRun {
    pub rate: f64,
    pub call: Latency,
    pub to_consumer: Latency,
}

/// `callers` concurrent callers on one HTTP/2 connection, as fast as they
/// go, for `secs`.
pub async fn publish_rate(
    conn: &lapin::Connection,
    queue: &BenchQueue,
    secs: f64,
    payload: usize,
    callers: usize,
) -> IngressRun {
    let watcher = pg().await;
    let schema = Schema::create("ingress", false).await;
    let addr = free_local_addr();
    let relay = RelayProcess::spawn(&schema, &["--grpc-addr", &addr]);
    let channel = connect(&addr).await;
    let received: Arc<Mutex<HashMap<String, f64>>> = Arc::default();
    let consumer = tokio::spawn(consume_into(
        conn.create_channel().await.unwrap(),
        queue.name.clone(),
        received.clone(),
    ));
    let returned: Arc<Mutex<HashMap<String, f64>>> = Arc::default();
    let calls: Arc<Mutex<Vec<f64>>> = Arc::default();
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let mut client = PublisherClient::new(channel.clone());
            let (queue, returned, calls) = (queue.name.clone(), returned.clone(), calls.clone());
            tokio::spawn(async move {
                let end = Instant::now() + Duration::from_secs_f64(secs);
                while Instant::now() < end {
                    let id = uuid::Uuid::new_v4().to_string();
                    let request = PublishRequest {
                        routing_key: queue.clone(),
                        payload: vec![b'x'; payload],
                        message_id: id.clone(),
                        ..Default::default()
                    };
                    let call = Instant::now();
                    client.publish(request).await.expect("Publish");
                    let took = call.elapsed().as_secs_f64() * 1000.0;
                    calls.lock().await.push(took);
                    returned
                        .lock()
                        .await
                        .insert(id, epoch_ms(SystemTime::now()));
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let expected = returned.lock().await.len();
    let rate = expected as f64 / started.elapsed().as_secs_f64();
    schema.wait_drained(&watcher, DRAIN_DEADLINE).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.lock().await.len() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    consumer.abort();
    relay.stop();
    let returned = returned.lock().await;
    let received = received.lock().await;
    let to_consumer = returned
        .iter()
        .filter_map(|(id, at)| received.get(id).map(|t| (t - at).max(0.0)))
        .collect();
    let run = IngressRun {
        rate,
        call: Latency::of(std::mem::take(&mut *calls.lock().await)),
        to_consumer: Latency::of(to_consumer),
    };
    schema.drop_schema(&watcher).await;
    run
}

fn free_local_addr() -> String {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    probe.local_addr().unwrap().to_string()
}

/// Connects once the relay listens.
async fn connect(addr: &str) -> Channel {
    let endpoint = Channel::from_shared(format!("http://{addr}")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match endpoint.connect().await {
            Ok(channel) => return channel,
            Err(e) if Instant::now() >= deadline => panic!("the relay's gRPC ingress: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
