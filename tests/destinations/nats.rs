//! NATS JetStream against nats-server: rows arrive once (JetStream drops
//! re-publishes by `Nats-Msg-Id`), refused subjects are dead-lettered, a
//! missing stream is retried, and restarts of the server or the relay lose
//! nothing.

use crate::common::*;
use crate::servers::Server;
use crate::{Count, RelayChild, WITHIN, insert, kill_repeatedly, relay_args, wait_sent};
use async_nats::jetstream::{self, stream};

const SHARED: &str = "nats://127.0.0.1:4222";

/// A JetStream stream of this test's own, on file storage, taking every
/// subject under `exchange`.
async fn create_stream(url: &str, exchange: &str) -> stream::Stream {
    let client = async_nats::connect(url.trim_start_matches("nats://"))
        .await
        .expect("nats-server reachable (deploy/local/services.sh)");
    jetstream::new(client)
        .create_stream(stream::Config {
            name: unique("S"),
            subjects: vec![format!("{exchange}.>")],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .expect("create a stream")
}

/// Every message in `stream`: its `Nats-Msg-Id`, and the messages.
async fn read_all(stream: &mut stream::Stream) -> Vec<jetstream::message::StreamMessage> {
    let state = stream.info().await.expect("stream info").state.clone();
    let mut messages = Vec::new();
    for sequence in state.first_sequence..=state.last_sequence {
        if state.messages == 0 {
            break;
        }
        messages.push(stream.get_raw_message(sequence).await.expect("a message"));
    }
    messages
}

fn msg_id(message: &jetstream::message::StreamMessage) -> String {
    message
        .headers
        .get("Nats-Msg-Id")
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_committed_row_arrives_in_its_jetstream_stream_once_with_headers() {
    let env = TestEnv::new("nats_arrive").await;
    let exchange = format!("events.{}", unique("x"));
    let mut stream = create_stream(SHARED, &exchange).await;
    let ids = insert(&env, &exchange, "created", 500).await;
    let relay = Running::start(relay_args(&env, SHARED, &[])).await;
    assert!(wait_sent(&env, ids.len()).await, "every row marked sent");
    relay.stop().await.unwrap();

    let messages = read_all(&mut stream).await;
    let count = Count::of(&ids, messages.iter().map(msg_id));
    assert_eq!(
        count,
        Count {
            lost: 0,
            duplicates: 0,
            unknown: 0
        }
    );
    let first = &messages[0];
    assert_eq!(first.subject.as_str(), format!("{exchange}.created"));
    assert_eq!(
        first.headers.get("Content-Type").map(|v| v.as_str()),
        Some("text/plain")
    );
    assert!(first.headers.get("seq").is_some(), "the row's headers");
    assert!(first.payload.starts_with(b"m"));
    env.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_nats_cannot_take_is_dead_lettered_at_once_and_the_others_arrive() {
    let env = TestEnv::new("nats_refused").await;
    let exchange = format!("events.{}", unique("x"));
    let mut stream = create_stream(SHARED, &exchange).await;
    let good = insert(&env, &exchange, "ok", 20).await;
    let bad = insert(&env, &exchange, "has space", 3).await;
    let relay = Running::start(relay_args(&env, SHARED, &[])).await;
    assert!(wait_sent(&env, good.len()).await);
    let dead = wait_until(WITHIN, || async {
        env.scalar("SELECT count(*) FROM {t} WHERE dead_at IS NOT NULL")
            .await
            == 3
    })
    .await;
    relay.stop().await.unwrap();

    assert!(dead, "the bad rows are dead-lettered");
    let errors = env
        .pg
        .query(
            &format!(
                "SELECT attempts, last_error FROM {} WHERE dead_at IS NOT NULL",
                env.table()
            ),
            &[],
        )
        .await
        .unwrap();
    for row in errors {
        let (attempts, error): (i32, String) = (row.get(0), row.get(1));
        assert_eq!(attempts, 1, "dead at the first refusal");
        assert!(
            error.contains("whitespace") && error.contains("bus"),
            "{error}"
        );
    }
    let messages = read_all(&mut stream).await;
    assert_eq!(Count::of(&good, messages.iter().map(msg_id)).lost, 0);
    assert!(
        bad.iter()
            .all(|id| !messages.iter().any(|m| msg_id(m) == *id))
    );
    env.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_stream_is_retried_not_dead_lettered_and_the_rows_arrive_once_it_exists() {
    let env = TestEnv::new("nats_nostream").await;
    let exchange = format!("events.{}", unique("x"));
    let ids = insert(&env, &exchange, "later", 50).await;
    let relay = Running::start(relay_args(&env, SHARED, &["--max-attempts", "10000"])).await;
    let retried = wait_until(WITHIN, || async {
        env.scalar(
            "SELECT count(*) FROM {t} WHERE attempts >= 2 AND dead_at IS NULL \
             AND last_error LIKE '%no JetStream stream takes subject%'",
        )
        .await
            == ids.len() as i64
    })
    .await;
    assert!(retried, "every row retried with the reason, none dead");
    let mut stream = create_stream(SHARED, &exchange).await;
    assert!(
        wait_sent(&env, ids.len()).await,
        "sent once the stream exists"
    );
    relay.stop().await.unwrap();

    assert_eq!(
        env.scalar("SELECT count(*) FROM {t} WHERE dead_at IS NOT NULL")
            .await,
        0
    );
    let messages = read_all(&mut stream).await;
    let count = Count::of(&ids, messages.iter().map(msg_id));
    assert_eq!((count.lost, count.duplicates), (0, 0), "{count:?}");
    env.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_killed_and_restarted_mid_stream_loses_and_duplicates_nothing() {
    let env = TestEnv::new("nats_restart").await;
    let mut server = Server::nats("nats_restart").await;
    let url = format!("nats://127.0.0.1:{}", server.port);
    let exchange = format!("events.{}", unique("x"));
    let name = create_stream(&url, &exchange)
        .await
        .cached_info()
        .config
        .name
        .clone();
    let ids = insert(&env, &exchange, "r", 6_000).await;
    let relay = RelayChild::spawn(&env, &url);
    for round in 0..2 {
        let from = env.count_sent().await;
        let progressed = wait_until(WITHIN, || async {
            env.count_sent().await >= (from + 500).min(ids.len() as i64)
        })
        .await;
        assert!(progressed, "round {round}: the relay made progress");
        server.kill();
        server.restart().await;
    }
    assert!(wait_sent(&env, ids.len()).await, "every row marked sent");
    relay.kill9();

    let client = async_nats::connect(format!("127.0.0.1:{}", server.port))
        .await
        .unwrap();
    let js = jetstream::new(client);
    let mut stream = js.get_stream(&name).await.expect("the stream survived");
    let messages = read_all(&mut stream).await;
    let count = Count::of(&ids, messages.iter().map(msg_id));
    assert_eq!(
        count,
        Count {
            lost: 0,
            duplicates: 0,
            unknown: 0
        },
        "Nats-Msg-Id drops the re-publishes"
    );
    env.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_mid_stream_loses_nothing_and_jetstream_drops_its_duplicates() {
    let env = TestEnv::new("nats_sigkill").await;
    let exchange = format!("events.{}", unique("x"));
    let mut stream = create_stream(SHARED, &exchange).await;
    let ids = insert(&env, &exchange, "k", 6_000).await;
    kill_repeatedly(&env, SHARED, 3, ids.len()).await;

    let messages = read_all(&mut stream).await;
    let count = Count::of(&ids, messages.iter().map(msg_id));
    assert_eq!(
        count,
        Count {
            lost: 0,
            duplicates: 0,
            unknown: 0
        }
    );
    env.drop_schema().await;
}
