//! Destinations other than the default broker, each against its real server
//! (nats-server with JetStream, redis-server, an HTTP receiver in this
//! binary): every committed row arrives, refused rows are dead-lettered with
//! the reason, a down destination holds back only its own rows.
//!
//! The restart tests run servers of their own on free ports (`servers`), so
//! that the shared ones stay up for every other test.

#[path = "../common/mod.rs"]
mod common;
mod mixed;
mod nats;
mod redis;
mod servers;
mod webhook;

use common::*;
use outbox_relay::config::RunArgs;
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long a test waits for rows to arrive.
pub const WITHIN: Duration = Duration::from_secs(90);
const BIN: &str = env!("CARGO_BIN_EXE_outbox-relay");
/// The child relays' batches and workers.
pub const BATCH: usize = 100;
pub const CONCURRENCY: usize = 4;
/// What one crash may send twice (a destination that does not de-duplicate):
/// every batch claimed and not yet marked, two per worker.
pub const WINDOW: usize = BATCH * 2 * CONCURRENCY;

/// Inserts `n` rows for `exchange` / `routing_key`, each with a content type
/// and a header; returns their message ids.
pub async fn insert(env: &TestEnv, exchange: &str, routing_key: &str, n: usize) -> Vec<String> {
    let sql = format!(
        "INSERT INTO {} (exchange, routing_key, payload, content_type, headers) \
         SELECT $1, $2, convert_to('m' || g, 'UTF8'), 'text/plain', jsonb_build_object('seq', g) \
         FROM generate_series(1, $3) g RETURNING message_id::text",
        env.table()
    );
    env.pg
        .query(&sql, &[&exchange, &routing_key, &(n as i32)])
        .await
        .expect("insert rows")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// `run` on the test's schema with destination `bus` at `url` and
/// `events.*` routed to it, plus `extra`.
pub fn relay_args(env: &TestEnv, url: &str, extra: &[&str]) -> RunArgs {
    let destination = format!("bus={url}");
    let mut args = vec!["--destination", &destination, "--route", "events.*=bus"];
    args.extend_from_slice(extra);
    env.run_args(&args)
}

/// Waits until at least `n` rows are marked sent.
pub async fn wait_sent(env: &TestEnv, n: usize) -> bool {
    wait_until(WITHIN, || async { env.count_sent().await >= n as i64 }).await
}

/// What arrived against what was committed.
#[derive(Debug, PartialEq, Eq)]
pub struct Count {
    pub lost: usize,
    pub duplicates: usize,
    /// Arrived, but never committed by this test.
    pub unknown: usize,
}

impl Count {
    pub fn of(committed: &[String], arrived: impl IntoIterator<Item = String>) -> Self {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for id in arrived {
            *seen.entry(id).or_default() += 1;
        }
        let committed: std::collections::HashSet<&String> = committed.iter().collect();
        Self {
            lost: committed
                .iter()
                .filter(|id| !seen.contains_key(**id))
                .count(),
            duplicates: seen.values().map(|n| n - 1).sum(),
            unknown: seen.keys().filter(|id| !committed.contains(id)).count(),
        }
    }
}

/// `outbox-relay run` as a child process, to be killed like a crash would.
pub struct RelayChild(Child);

impl RelayChild {
    pub fn spawn(env: &TestEnv, url: &str) -> Self {
        let mut cmd = Command::new(BIN);
        for (key, _) in std::env::vars() {
            if key.starts_with("OUTBOX_") || key == "FAILPOINTS" {
                cmd.env_remove(key);
            }
        }
        let stderr = if std::env::var_os("TEST_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        };
        cmd.args(["run", "--schema", &env.schema, "--log-level", "warn"])
            .args(["--database-url", PG_URL, "--amqp-url", AMQP_URL])
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .args(["--batch-size", &BATCH.to_string()])
            .args(["--concurrency", &CONCURRENCY.to_string()])
            .args(["--poll-interval", "50ms", "--backoff-base", "20ms"])
            .args(["--backoff-max", "100ms", "--max-attempts", "1000"])
            .args(["--destination", &format!("bus={url}")])
            .args(["--route", "events.*=bus"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        Self(cmd.spawn().expect("spawn outbox-relay run"))
    }

    pub fn kill9(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for RelayChild {
    /// A failed test must not leave its relay running.
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Kills a relay `kills` times, each after it marked some more rows, and
/// leaves the last one running until every row is sent.
pub async fn kill_repeatedly(env: &TestEnv, url: &str, kills: usize, total: usize) {
    let mut relay = RelayChild::spawn(env, url);
    let mut sent = 0;
    for round in 0..kills {
        let by = fastrand::i64(BATCH as i64..(4 * BATCH) as i64);
        let target = (sent + by).min(total as i64);
        let progressed = wait_until(WITHIN, || async { env.count_sent().await >= target }).await;
        assert!(progressed, "round {round}: the relay made progress");
        sent = env.count_sent().await;
        relay.kill9();
        relay = RelayChild::spawn(env, url);
    }
    assert!(wait_sent(env, total).await, "every row marked sent");
    relay.kill9();
}

#[test]
fn the_count_tells_lost_duplicated_and_unknown_messages_apart() {
    // What the kill tests assert on must be able to fail.
    let committed = vec!["a".to_owned(), "b".to_owned()];
    let arrived = ["a", "a", "c"].map(str::to_owned);
    let count = Count::of(&committed, arrived);
    assert_eq!(
        count,
        Count {
            lost: 1,
            duplicates: 1,
            unknown: 1
        }
    );
}
