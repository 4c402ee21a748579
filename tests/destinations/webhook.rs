//! HTTP webhooks through the whole relay, against a receiver in this binary
//! that verifies every Standard Webhooks signature on its own: what
//! arrives, what is dead-lettered or retried by status, a receiver down
//! for a minute holding back only its own rows, a slow receiver, and the
//! relay killed mid-stream.

pub mod fixture;
mod receiver;
mod tls;

use crate::common::*;
use fixture::Hooks;
use receiver::Answer;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::time::Instant;

const WITHIN: Duration = Duration::from_secs(30);
/// How long the isolation test keeps its receiver down: the minute the
/// issue asks for, long enough for the breaker's pause to reach its cap
/// (30 s) and the rows to be refused without I/O many times over.
const RECEIVER_DOWN: Duration = Duration::from_secs(60);
/// The longest pause the lane's breaker takes, plus a margin: the rows of a
/// receiver that is back arrive within it.
const BREAKER_CAP: Duration = Duration::from_secs(45);

#[tokio::test]
async fn every_committed_row_arrives_once_signed_with_its_id_content_type_and_headers() {
    let hooks = Hooks::new("wh_arrives").await;
    let ids = hooks.insert(200, "k/").await;
    let relay = hooks.start(&hooks.url("&path=routing_key"), &[]).await;
    assert!(hooks.settled(WITHIN).await, "every row sent");
    relay.stop().await.unwrap();

    assert_eq!(
        hooks.count("sent_at IS NOT NULL AND attempts = 0").await,
        200
    );
    let attempts = hooks.receiver.attempts();
    assert_eq!(attempts.len(), 200, "one attempt per row, no retry");
    let expected: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let seen: HashSet<&str> = attempts.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(seen, expected, "each row once, by webhook-id = message_id");
    for attempt in &attempts {
        assert!(attempt.signature_ok, "signature of {}", attempt.id);
        assert_eq!(attempt.idempotency_key, attempt.id);
        assert_eq!(attempt.content_type, "application/json");
        assert_eq!(attempt.headers["x-tenant"], "acme");
        let seq = attempt.headers["x-seq"].to_str().unwrap();
        assert_eq!(attempt.body, format!("{{\"n\":{seq}}}"));
        // The routing key `k/<seq>` is one segment; the receiver's query stays.
        assert_eq!(attempt.target, format!("/in/k%2F{seq}?tenant=t1"));
    }
    hooks.finish().await;
}

#[tokio::test]
async fn a_400_dead_letters_the_row_at_once_with_the_status_and_a_body_excerpt() {
    let hooks = Hooks::new("wh_400").await;
    hooks.receiver.set_plan(|_, _| Answer {
        body: format!("field 'amount' is required\n{}", "x".repeat(5000)),
        ..Answer::status(400)
    });
    hooks.insert(3, "k").await;
    let relay = hooks.start(&hooks.url(""), &["--max-attempts", "10"]).await;
    assert!(hooks.settled(WITHIN).await, "the rows are dead");
    relay.stop().await.unwrap();

    assert_eq!(hooks.count("dead_at IS NOT NULL AND attempts = 1").await, 3);
    let sql = format!("SELECT last_error FROM {}", hooks.env.table());
    for row in hooks.env.pg.query(&sql, &[]).await.unwrap() {
        let error: String = row.get(0);
        assert!(
            error.contains("HTTP 400 Bad Request: field 'amount' is required"),
            "{error}"
        );
        assert!(
            error.len() < 400 && !error.contains('\n'),
            "bounded: {error}"
        );
    }
    assert_eq!(hooks.receiver.attempts().len(), 3, "never retried");
    hooks.finish().await;
}

#[tokio::test]
async fn a_500_or_a_429_is_retried_and_429s_retry_after_is_honoured() {
    const RETRY_AFTER: Duration = Duration::from_secs(2);
    let hooks = Hooks::new("wh_retry").await;
    hooks.receiver.set_plan(|attempt, before| {
        let key = attempt.headers["x-seq"]
            .to_str()
            .unwrap()
            .parse::<u32>()
            .unwrap();
        match (before, key % 2) {
            (0, 0) => Answer::status(500),
            (0, _) => Answer {
                retry_after: Some(RETRY_AFTER.as_secs().to_string()),
                ..Answer::status(429)
            },
            _ => Answer::status(200),
        }
    });
    let ids = hooks.insert(20, "k").await;
    let relay = hooks.start(&hooks.url(""), &[]).await;
    assert!(hooks.settled(WITHIN).await, "every row sent");
    relay.stop().await.unwrap();

    assert_eq!(
        hooks.count("sent_at IS NOT NULL AND attempts = 1").await,
        20
    );
    let accepted = hooks.receiver.accepted();
    assert!(
        ids.iter().all(|id| accepted.get(id) == Some(&1)),
        "{accepted:?}"
    );
    let mut by_id: HashMap<String, Vec<receiver::Attempt>> = HashMap::new();
    for attempt in hooks.receiver.attempts() {
        by_id.entry(attempt.id.clone()).or_default().push(attempt);
    }
    for (id, attempts) in by_id {
        assert_eq!(attempts.len(), 2, "{id}: one failure, one success");
        if attempts[0].answered == 429 {
            let waited = attempts[1].arrived - attempts[0].arrived;
            assert!(waited >= RETRY_AFTER, "{id} retried after {waited:?}");
            assert!(
                attempts[1].timestamp > attempts[0].timestamp,
                "{id}: each attempt is signed when it starts"
            );
        }
    }
    hooks.finish().await;
}

#[tokio::test]
async fn a_receiver_down_for_a_minute_holds_back_only_its_own_rows() {
    const AMQP_EVERY: Duration = Duration::from_secs(1);
    const AMQP_BURST: usize = 50;
    let hooks = Hooks::new("wh_down").await;
    hooks.receiver.down().await;
    let went_down = Instant::now();
    let ids = hooks.insert(300, "k").await;
    // Three failed attempts would dead-letter a counted failure: a refused
    // connection must not count.
    let relay = hooks.start(&hooks.url(""), &["--max-attempts", "3"]).await;
    let consumer = {
        let (channel, queue) = (hooks.env.fresh_channel().await, hooks.env.queue.clone());
        tokio::spawn(async move {
            consume(&channel, &queue, usize::MAX, RECEIVER_DOWN, Duration::ZERO).await
        })
    };
    // AMQP rows all along the outage, but for its last five seconds.
    let mut amqp = 0;
    while went_down.elapsed() + AMQP_EVERY + Duration::from_secs(5) < RECEIVER_DOWN {
        hooks.env.insert_rows(AMQP_BURST).await;
        amqp += AMQP_BURST;
        tokio::time::sleep(AMQP_EVERY).await;
    }
    let amqp_sent = wait_until(
        RECEIVER_DOWN.saturating_sub(went_down.elapsed()),
        || async { hooks.count("exchange = '' AND sent_at IS NOT NULL").await == amqp as i64 },
    )
    .await;
    let amqp_done = went_down.elapsed();
    assert!(
        amqp_sent,
        "the AMQP rows were all sent while the receiver was down"
    );
    let slowest: f64 = hooks
        .env
        .pg
        .query_one(
            &format!(
                "SELECT extract(epoch FROM max(sent_at - created_at))::float8 FROM {} WHERE exchange = ''",
                hooks.env.table()
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    eprintln!("AMQP rows: {amqp}, done {amqp_done:?} into the outage, slowest {slowest:.3} s");
    assert!(
        slowest < 2.0,
        "AMQP rows kept their pace: slowest {slowest:.3} s"
    );
    assert_eq!(
        hooks.count("exchange <> '' AND sent_at IS NOT NULL").await,
        0
    );
    assert_eq!(
        hooks.count("dead_at IS NOT NULL").await,
        0,
        "none dead-lettered"
    );
    assert!(
        hooks
            .count("exchange <> '' AND last_error IS NOT NULL")
            .await
            > 0,
        "the rows were tried while the receiver was down"
    );
    assert_eq!(
        hooks.count("exchange <> '' AND attempts > 0").await,
        0,
        "an unreachable receiver uses up none of the rows' --max-attempts"
    );

    if let Some(left) = RECEIVER_DOWN.checked_sub(went_down.elapsed()) {
        tokio::time::sleep(left).await; // the outage's length is the scenario, not a sync
    }
    let deliveries = consumer.await.unwrap();
    assert_eq!(tally(&deliveries).len(), amqp, "every AMQP row consumed");
    hooks.receiver.up().await;
    assert!(
        hooks.settled(BREAKER_CAP).await,
        "the receiver's rows arrive once it is back"
    );
    relay.stop().await.unwrap();
    assert_eq!(
        hooks.count("dead_at IS NOT NULL").await,
        0,
        "none dead-lettered"
    );
    let accepted = hooks.receiver.accepted();
    let lost = ids.iter().filter(|id| !accepted.contains_key(*id)).count();
    assert_eq!(lost, 0, "no webhook lost");
    hooks.finish().await;
}

#[tokio::test]
async fn a_receiver_slower_than_the_call_timeout_times_out_and_its_rows_retry() {
    const SLOW: Duration = Duration::from_millis(1500);
    let hooks = Hooks::new("wh_slow").await;
    hooks.receiver.set_plan(|_, before| Answer {
        delay: if before == 0 { SLOW } else { Duration::ZERO },
        ..Answer::status(200)
    });
    let ids = hooks.insert(20, "k").await;
    let started = Instant::now();
    let relay = hooks.start(&hooks.url("&timeout=300ms"), &[]).await;
    assert!(hooks.settled(WITHIN).await, "every row sent");
    let took = started.elapsed();
    relay.stop().await.unwrap();

    assert_eq!(hooks.count("dead_at IS NOT NULL").await, 0);
    let sql = format!(
        "SELECT last_error FROM {} WHERE attempts > 0",
        hooks.env.table()
    );
    let timed_out = hooks.env.pg.query(&sql, &[]).await.unwrap();
    assert_eq!(timed_out.len(), 20, "each row's first attempt failed");
    for row in timed_out {
        let error: String = row.get(0);
        assert!(error.contains("no answer within 300ms"), "{error}");
    }
    let attempts = hooks.receiver.attempts();
    for id in &ids {
        let tries = attempts.iter().filter(|a| &a.id == id).count();
        assert!(tries >= 2, "{id} was retried after its timeout");
    }
    // Bounded by the call's timeout, not the relay's 10 s confirm timeout.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    hooks.finish().await;
}

#[tokio::test]
async fn a_relay_killed_mid_stream_loses_no_webhook_and_duplicates_at_most_its_window() {
    const BATCH: usize = 50;
    const CONCURRENCY: usize = 2;
    const KILLS: usize = 2;
    // Sent and not yet marked when killed: two batches per worker.
    const WINDOW: usize = BATCH * 2 * CONCURRENCY;
    let hooks = Hooks::new("wh_kill").await;
    hooks.receiver.set_plan(|_, _| Answer {
        delay: Duration::from_millis(2),
        ..Answer::status(200)
    });
    let ids = hooks.insert(3000, "k").await;
    let url = hooks.url("");
    let spawn = || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_outbox-relay"));
        for (key, _) in std::env::vars() {
            if key.starts_with("OUTBOX_") {
                command.env_remove(key);
            }
        }
        command
            .args(["run", "--schema", &hooks.env.schema, "--log-level", "error"])
            .args(["--database-url", PG_URL, "--amqp-url", AMQP_URL])
            .args(["--grpc-addr", "none", "--http-addr", "none"])
            .args(["--batch-size", &BATCH.to_string()])
            .args(["--concurrency", &CONCURRENCY.to_string()])
            .args(["--poll-interval", "50ms", "--backoff-base", "20ms"])
            .args(["--backoff-max", "100ms"])
            .args(hooks.args(&url, &[]))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn outbox-relay run")
    };
    for kill in 1..=KILLS {
        let mut child = spawn();
        let target = kill * 1000;
        let reached = wait_until(WITHIN, || async {
            hooks.receiver.accepted().len() >= target
        })
        .await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(reached, "kill {kill}: {target} webhooks arrived first");
    }
    let mut child = spawn();
    let settled = hooks.settled(WITHIN).await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(settled, "every row sent after the restarts");

    let accepted = hooks.receiver.accepted();
    let lost = ids.iter().filter(|id| !accepted.contains_key(*id)).count();
    let duplicates: usize = accepted.values().map(|n| n - 1).sum();
    eprintln!("killed {KILLS} times: lost {lost}, duplicates {duplicates}");
    assert_eq!(lost, 0, "no webhook lost");
    assert_eq!(accepted.len(), ids.len(), "no webhook from elsewhere");
    assert!(
        duplicates <= KILLS * WINDOW,
        "{duplicates} duplicates, above {KILLS} × {WINDOW}"
    );
    assert_eq!(hooks.count("dead_at IS NOT NULL").await, 0);
    hooks.finish().await;
}
