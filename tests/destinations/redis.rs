//! Redis Streams against redis-server: rows arrive as stream entries with
//! their fields, a key of another type dead-letters its rows, too few
//! replicas keep rows pending, and restarts of the server or the relay lose
//! nothing (Redis does not de-duplicate: duplicates stay within what was in
//! flight).

use crate::common::*;
use crate::servers::Server;
use crate::{Count, RelayChild, WINDOW, WITHIN, insert, kill_repeatedly, relay_args, wait_sent};
use std::collections::HashMap;

const SHARED: &str = "redis://127.0.0.1:6379/0";

type Fields = HashMap<String, Vec<u8>>;

async fn connection(url: &str) -> redis::aio::MultiplexedConnection {
    // No response timeout: the client's default (half a second) is less
    // than reading thousands of entries may take on a busy machine.
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("redis-server reachable (deploy/local/services.sh)")
}

/// Every entry of stream `key`, oldest first, and deletes the key.
pub async fn read_all(url: &str, key: &str) -> Vec<Fields> {
    let mut conn = connection(url).await;
    let entries: Vec<(String, Fields)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .expect("XRANGE");
    let _: i64 = redis::cmd("DEL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
    entries.into_iter().map(|(_, fields)| fields).collect()
}

pub fn text(fields: &Fields, name: &str) -> String {
    String::from_utf8_lossy(fields.get(name).map_or(&[][..], Vec::as_slice)).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_committed_row_arrives_in_its_redis_stream_once_with_its_fields() {
    let env = TestEnv::new("redis_arrive").await;
    let exchange = format!("events.{}", unique("x"));
    let ids = insert(&env, &exchange, "created", 500).await;
    let relay = Running::start(relay_args(&env, SHARED, &[])).await;
    assert!(wait_sent(&env, ids.len()).await, "every row marked sent");
    relay.stop().await.unwrap();

    let entries = read_all(SHARED, &format!("{exchange}:created")).await;
    let count = Count::of(&ids, entries.iter().map(|e| text(e, "message_id")));
    assert_eq!(
        count,
        Count {
            lost: 0,
            duplicates: 0,
            unknown: 0
        }
    );
    let first = &entries[0];
    assert!(text(first, "payload").starts_with('m'));
    assert_eq!(text(first, "content_type"), "text/plain");
    let headers: serde_json::Value = serde_json::from_str(&text(first, "headers")).unwrap();
    assert!(headers["seq"].is_string(), "{headers}");
    env.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_holding_another_type_dead_letters_its_rows_at_once_and_the_others_arrive() {
    let env = TestEnv::new("redis_wrongtype").await;
    let exchange = format!("events.{}", unique("x"));
    let taken = format!("{exchange}:taken");
    let mut conn = connection(SHARED).await;
    let _: () = redis::cmd("SET")
        .arg(&taken)
        .arg("a string")
        .query_async(&mut conn)
        .await
        .unwrap();
    let good = insert(&env, &exchange, "ok", 20).await;
    insert(&env, &exchange, "taken", 3).await;
    let relay = Running::start(relay_args(&env, SHARED, &[])).await;
    assert!(wait_sent(&env, good.len()).await);
    let dead = wait_until(WITHIN, || async {
        env.scalar("SELECT count(*) FROM {t} WHERE dead_at IS NOT NULL AND attempts = 1")
            .await
            == 3
    })
    .await;
    relay.stop().await.unwrap();

    assert!(
        dead,
        "the rows for the string key are dead at the first try"
    );
    let error: String = env
        .pg
        .query_one(
            &format!(
                "SELECT last_error FROM {} WHERE dead_at IS NOT NULL LIMIT 1",
                env.table()
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        error.contains("WRONGTYPE") && error.contains(&taken),
        "{error}"
    );
    let entries = read_all(SHARED, &format!("{exchange}:ok")).await;
    assert_eq!(
        Count::of(&good, entries.iter().map(|e| text(e, "message_id"))).lost,
        0
    );
    let _: i64 = redis::cmd("DEL")
        .arg(&taken)
        .query_async(&mut conn)
        .await
        .unwrap();
    env.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fewer_replicas_than_wait_asks_for_keep_the_rows_pending_with_the_reason() {
    let env = TestEnv::new("redis_wait").await;
    let exchange = format!("events.{}", unique("x"));
    insert(&env, &exchange, "w", 5).await;
    // The shared server has no replica: WAIT 1 answers 0 after 20 ms.
    let url = format!("{SHARED}?wait=1,20");
    let relay = Running::start(relay_args(&env, &url, &["--max-attempts", "10000"])).await;
    let retried = wait_until(WITHIN, || async {
        env.scalar(
            "SELECT count(*) FROM {t} WHERE attempts >= 2 AND sent_at IS NULL \
             AND dead_at IS NULL AND last_error LIKE '%0 of 1 replicas%'",
        )
        .await
            == 5
    })
    .await;
    relay.stop().await.unwrap();
    assert!(retried, "no row marked sent without its replica");
    read_all(SHARED, &format!("{exchange}:w")).await;
    env.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_server_killed_and_restarted_mid_stream_loses_nothing() {
    let env = TestEnv::new("redis_restart").await;
    let mut server = Server::redis("redis_restart").await;
    let url = format!("redis://127.0.0.1:{}/0", server.port);
    let exchange = format!("events.{}", unique("x"));
    let ids = insert(&env, &exchange, "r", 6_000).await;
    let relay = RelayChild::spawn(&env, &url);
    let kills = 2;
    for round in 0..kills {
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

    // appendfsync always: every entry Redis answered is in its log.
    let entries = read_all(&url, &format!("{exchange}:r")).await;
    let count = Count::of(&ids, entries.iter().map(|e| text(e, "message_id")));
    assert_eq!((count.lost, count.unknown), (0, 0), "{count:?}");
    assert!(count.duplicates <= kills * WINDOW, "{count:?}");
    env.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_mid_stream_loses_nothing_to_redis() {
    let env = TestEnv::new("redis_sigkill").await;
    let exchange = format!("events.{}", unique("x"));
    let ids = insert(&env, &exchange, "k", 6_000).await;
    let kills = 3;
    kill_repeatedly(&env, SHARED, kills, ids.len()).await;

    let entries = read_all(SHARED, &format!("{exchange}:k")).await;
    let count = Count::of(&ids, entries.iter().map(|e| text(e, "message_id")));
    assert_eq!((count.lost, count.unknown), (0, 0), "{count:?}");
    assert!(
        count.duplicates <= kills * WINDOW,
        "duplicates within what was in flight: {count:?}"
    );
    env.drop_schema().await;
}
