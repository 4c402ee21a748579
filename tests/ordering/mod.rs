//! Per-key ordered delivery (issue 24) against the real services: for every
//! key, the order in which a consumer first sees its messages is the key's
//! commit order, whatever the ids, however many relays; a failing key holds
//! back its own later rows only; a dead row blocks exactly its key until it
//! is replayed, or not at all with `--ordering-on-dead skip`.

use crate::common::*;
use outbox_relay::App;
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

const WITHIN: Duration = Duration::from_secs(60);

/// The key and seq of every row, by message_id.
async fn keys_of(env: &TestEnv) -> HashMap<String, (String, i64)> {
    let sql = format!(
        "SELECT message_id, ordering_key, ordering_seq FROM {} WHERE ordering_key IS NOT NULL",
        env.table()
    );
    env.pg
        .query(&sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect()
}

/// Each key's message_ids in the order the consumer first saw them.
fn first_seen_by_key(
    seen: &[String],
    keys: &HashMap<String, (String, i64)>,
) -> HashMap<String, Vec<i64>> {
    let mut first = std::collections::HashSet::new();
    let mut by_key: HashMap<String, Vec<i64>> = HashMap::new();
    for id in seen {
        if let Some((key, seq)) = keys.get(id)
            && first.insert(id.clone())
        {
            by_key.entry(key.clone()).or_default().push(*seq);
        }
    }
    by_key
}

/// Asserts that every key's first sightings are in seq order.
fn assert_in_order(by_key: &HashMap<String, Vec<i64>>) {
    for (key, seqs) in by_key {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "key {key} arrived out of its commit order: {seqs:?}"
        );
    }
}

/// Inserts one keyed row routed to `queue`; returns its message_id.
async fn insert_keyed(pg: &tokio_postgres::Client, table: &str, queue: &str, key: &str) -> String {
    let sql = format!(
        "INSERT INTO {table} (routing_key, payload, ordering_key) VALUES ($1, 'x', $2) RETURNING message_id"
    );
    pg.query_one(&sql, &[&queue, &key]).await.unwrap().get(0)
}

/// Eight producers commit transactions of one to five rows on random keys
/// of a thousand (each transaction inserts its keys in order: see
/// migration 0007 on deadlocks), a third of the rows without a key. The
/// identity hands each session its own block of ids (CACHE 1000), so ids
/// say nothing about the order in which a key's transactions commit. Three
/// relays drain the queue meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_keys_from_concurrent_producers_arrive_in_commit_order_through_three_relays() {
    let env = TestEnv::new("ordered").await;
    let table = env.table();
    env.pg
        .batch_execute(&format!(
            "ALTER TABLE {table} ALTER COLUMN id SET CACHE 1000"
        ))
        .await
        .unwrap();
    let args = ["--batch-size", "50", "--concurrency", "2"];
    let relays = [
        Running::start(env.run_args(&args)).await,
        Running::start(env.run_args(&args)).await,
        Running::start(env.run_args(&args)).await,
    ];
    let producers: Vec<_> = (0..8)
        .map(|_| {
            let (table, queue) = (table.clone(), env.queue.clone());
            tokio::spawn(async move {
                let mut pg = pg_client().await;
                let sql = format!(
                    "INSERT INTO {table} (routing_key, payload, ordering_key) VALUES ($1, 'x', $2)"
                );
                for _ in 0..200 {
                    let mut keys: Vec<Option<String>> = (0..fastrand::usize(1..=5))
                        .map(|_| {
                            (fastrand::u8(..3) > 0).then(|| format!("k{}", fastrand::u16(..1000)))
                        })
                        .collect();
                    keys.sort();
                    let tx = pg.transaction().await.unwrap();
                    for key in &keys {
                        tx.execute(&sql, &[&queue, key]).await.unwrap();
                    }
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(..3))).await;
                    tx.commit().await.unwrap();
                }
            })
        })
        .collect();
    for p in producers {
        p.await.unwrap();
    }
    let total = env.scalar("SELECT count(*) FROM {t}").await as usize;
    let got = env.consume(total, Duration::from_secs(120), LINGER).await;
    for relay in relays {
        relay.stop().await.unwrap();
    }
    let seen: Vec<String> = got.iter().map(message_id).collect();
    let counts = tally(&got);
    assert_eq!(counts.len(), total, "lost: every row arrived");
    let keys = keys_of(&env).await;
    let by_key = first_seen_by_key(&seen, &keys);
    assert!(by_key.len() >= 900, "{} keys", by_key.len());
    assert_in_order(&by_key);
    // The ids were no guide: within some key, a row with a higher id
    // committed first.
    let crossed = env
        .scalar(
            "SELECT count(*) FROM {t} a JOIN {t} b ON a.ordering_key = b.ordering_key
             AND a.ordering_seq < b.ordering_seq AND a.id > b.id",
        )
        .await;
    assert!(crossed > 0, "no key's commit order differed from its ids");
    env.drop_schema().await;
}

const LINGER: Duration = Duration::from_millis(300);

/// A key whose first row goes to a queue that does not exist (returned as
/// unroutable, retried with backoff) holds back its own later rows only:
/// rows of other keys, inserted after it, keep arriving while it fails;
/// once the queue exists, its rows follow in order.
#[tokio::test]
async fn a_failing_key_holds_back_only_its_own_later_rows() {
    let env = TestEnv::new("failing_key").await;
    let table = env.table();
    let missing = unique("q_not_yet");
    let first = insert_keyed(&env.pg, &table, &missing, "stuck").await;
    let mut stuck = vec![first];
    for _ in 0..5 {
        stuck.push(insert_keyed(&env.pg, &table, &env.queue, "stuck").await);
    }
    let relay = Running::start(env.run_args(&["--max-attempts", "1000"])).await;
    // While the head fails, other keys' rows, inserted now, arrive.
    let started = Instant::now();
    for round in 0..5 {
        for k in 0..20 {
            insert_keyed(&env.pg, &table, &env.queue, &format!("free{k}")).await;
        }
        let got = env.consume(20, WITHIN, Duration::ZERO).await;
        assert_eq!(got.len(), 20, "round {round}: the other keys flowed");
        assert!(
            got.iter().all(|d| !stuck.contains(&message_id(d))),
            "a row of the failing key overtook its head"
        );
    }
    let failing = format!(
        "SELECT attempts FROM {table} WHERE message_id = '{}' AND sent_at IS NULL",
        stuck[0]
    );
    let attempts: i32 = env.pg.query_one(&failing, &[]).await.unwrap().get(0);
    assert!(attempts >= 1, "the head failed meanwhile");
    assert!(started.elapsed() < WITHIN);
    // The queue appears: the key's rows go, in order, the head first.
    declare_queue(&env.channel, &missing, Default::default()).await;
    let head = consume(&env.channel, &missing, 1, WITHIN, Duration::ZERO).await;
    assert_eq!(head.len(), 1);
    let rest = env.consume(5, WITHIN, LINGER).await;
    relay.stop().await.unwrap();
    let rest: Vec<String> = rest.iter().map(message_id).collect();
    assert_eq!(rest, stuck[1..].to_vec(), "the rest of the key, in order");
    env.drop_schema().await;
}

/// A dead row stops exactly its key (`--ordering-on-dead block`, the
/// default) until it is replayed; with `skip`, its key goes on without it.
#[tokio::test]
async fn a_dead_row_blocks_exactly_its_key_until_replayed_and_skip_goes_on() {
    for skip in [false, true] {
        let env = TestEnv::new("dead_key").await;
        let table = env.table();
        let missing = unique("q_dead");
        let dead = insert_keyed(&env.pg, &table, &missing, "k").await;
        let mut after = Vec::new();
        for _ in 0..3 {
            after.push(insert_keyed(&env.pg, &table, &env.queue, "k").await);
        }
        let other = insert_keyed(&env.pg, &table, &env.queue, "other").await;
        let mode = if skip { "skip" } else { "block" };
        let app = App::build(env.run_args(&["--max-attempts", "1", "--ordering-on-dead", mode]))
            .await
            .unwrap();
        let mut relay = app.relay();
        let deadline = Instant::now() + WITHIN;
        while env
            .scalar("SELECT count(*) FROM {t} WHERE dead_at IS NOT NULL")
            .await
            == 0
        {
            assert!(Instant::now() < deadline, "the head died");
            relay.relay_batch().await.unwrap();
        }
        // Drain what may go: the other key, and with skip the dead row's key.
        let want = if skip { 4 } else { 1 };
        let mut got = Vec::new();
        while got.len() < want {
            assert!(Instant::now() < deadline, "{mode}: {got:?}");
            relay.relay_batch().await.unwrap();
            got.extend(
                env.consume(want - got.len(), Duration::from_millis(200), Duration::ZERO)
                    .await
                    .iter()
                    .map(message_id),
            );
        }
        relay.relay_batch().await.unwrap();
        got.extend(
            env.consume(1, Duration::from_millis(300), Duration::ZERO)
                .await
                .iter()
                .map(message_id),
        );
        let mut expected = vec![other.clone()];
        if skip {
            expected.extend(after.iter().cloned());
            got.sort_by_key(|id| usize::from(*id != other));
            assert_eq!(got, expected, "skip: the key went on without its dead row");
        } else {
            assert_eq!(got, expected, "block: only the other key went");
            assert_eq!(
                app.outbox().blocked_keys().await.unwrap().keys,
                1,
                "one key is blocked"
            );
            // Replayed once its queue exists, the dead row goes, then its key.
            declare_queue(&env.channel, &missing, Default::default()).await;
            app.outbox().replay(None).await.unwrap();
            let mut sent = Vec::new();
            while sent.len() < 3 {
                assert!(
                    Instant::now() < deadline,
                    "block: replay unblocked {sent:?}"
                );
                relay.relay_batch().await.unwrap();
                sent.extend(
                    env.consume(3 - sent.len(), Duration::from_millis(200), Duration::ZERO)
                        .await
                        .iter()
                        .map(message_id),
                );
            }
            assert_eq!(
                sent, after,
                "the key's rows after its replayed head, in order"
            );
            assert_eq!(
                consume(&env.channel, &missing, 1, WITHIN, Duration::ZERO)
                    .await
                    .len(),
                1,
                "the replayed row itself"
            );
            assert_eq!(app.outbox().blocked_keys().await.unwrap().keys, 0);
        }
        relay.close().await;
        env.drop_schema().await;
        let _ = dead;
    }
}

/// A queue that holds at most 20 messages and rejects the rest (the broker
/// nacks them) with a slow consumer: nacks come in the middle of batches,
/// and each key's rows are still first seen in order, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacked_rows_are_resent_without_reordering_their_key() {
    use futures::StreamExt;
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
    use lapin::types::{AMQPValue, FieldTable};
    let mut queue_args = FieldTable::default();
    queue_args.insert("x-max-length".into(), AMQPValue::LongInt(20));
    queue_args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    let env = TestEnv::with_queue_args("ordered_nack", queue_args).await;
    let table = env.table();
    let sql = format!(
        "INSERT INTO {table} (routing_key, payload, ordering_key)
         SELECT $1, 'x', 'k' || (g % 50) FROM generate_series(1, 500) g"
    );
    env.pg.execute(&sql, &[&env.queue]).await.unwrap();
    let relay = Running::start(env.run_args(&["--max-attempts", "1000"])).await;
    let channel = env.fresh_channel().await;
    channel
        .basic_qos(1, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            env.queue.as_str().into(),
            "slow".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.len() < 500 {
        let next = tokio::time::timeout_at(deadline, consumer.next()).await;
        let Ok(Some(Ok(delivery))) = next else { break };
        seen.push(message_id(&delivery));
        tokio::time::sleep(Duration::from_millis(2)).await;
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        if seen.len() == 500 {
            break;
        }
        // Stop counting duplicates once every id was seen.
        if seen.iter().collect::<std::collections::HashSet<_>>().len() == 500 {
            break;
        }
    }
    relay.stop().await.unwrap();
    let nacked = env
        .scalar("SELECT count(*) FROM {t} WHERE last_error LIKE '%negatively%'")
        .await;
    assert!(nacked > 0, "the broker nacked some rows");
    let keys = keys_of(&env).await;
    let by_key = first_seen_by_key(&seen, &keys);
    assert_eq!(
        by_key.values().map(Vec::len).sum::<usize>(),
        500,
        "lost none"
    );
    assert_in_order(&by_key);
    env.drop_schema().await;
}
