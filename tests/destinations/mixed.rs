//! One outbox table feeding RabbitMQ, NATS JetStream, Redis Streams and a
//! webhook at once: each row reaches the destination its exchange routes
//! to, and while the webhook receiver is down the other three keep flowing;
//! once it is back its rows arrive, none lost, none dead-lettered.

use crate::common::*;
use crate::webhook::fixture::Hooks;
use crate::{Count, WITHIN, insert};
use async_nats::jetstream::{self, stream};
use std::time::Duration;

/// The NATS stream for `exchange.>`, and its messages' `Nats-Msg-Id`s.
async fn nats_stream(exchange: &str) -> stream::Stream {
    let client = async_nats::connect("127.0.0.1:4222")
        .await
        .expect("nats-server reachable (deploy/local/services.sh)");
    jetstream::new(client)
        .create_stream(stream::Config {
            name: unique("MIXED"),
            subjects: vec![format!("{exchange}.>")],
            ..Default::default()
        })
        .await
        .expect("create a stream")
}

async fn nats_ids(stream: &mut stream::Stream) -> Vec<String> {
    let state = stream.info().await.expect("stream info").state.clone();
    let mut ids = Vec::new();
    if state.messages == 0 {
        return ids;
    }
    for sequence in state.first_sequence..=state.last_sequence {
        let message = stream.get_raw_message(sequence).await.expect("a message");
        let id = message
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_owned());
        ids.push(id.unwrap_or_default());
    }
    ids
}

async fn redis_ids(key: &str) -> Vec<String> {
    let entries = crate::redis::read_all("redis://127.0.0.1:6379/0", key).await;
    entries
        .iter()
        .map(|fields| crate::redis::text(fields, "message_id"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_table_feeds_four_destinations_and_a_down_one_holds_back_only_its_rows() {
    let hooks = Hooks::new("mixed").await;
    let env = &hooks.env;
    let bus = format!("events.{}", unique("m"));
    let mut stream = nats_stream(&bus).await;
    let log = unique("audit");
    let redis_key = format!("{log}:written");
    let nats_url = "bus=nats://127.0.0.1:4222".to_owned();
    let redis_url = "log=redis://127.0.0.1:6379/0".to_owned();
    let audit_route = format!("{log}=log");
    hooks.receiver.down().await;
    let relay = hooks
        .start(
            &hooks.url(""),
            &[
                "--destination",
                &nats_url,
                "--route",
                "events.*=bus",
                "--destination",
                &redis_url,
                "--route",
                &audit_route,
            ],
        )
        .await;

    let hook_ids = hooks.insert(100, "k").await;
    let nats_sent = insert(env, &bus, "created", 300).await;
    let redis_sent = insert(env, &log, "written", 300).await;
    env.insert_rows(300).await;

    // The webhook receiver is down: everything else is sent meanwhile.
    let others = wait_until(WITHIN, || async {
        hooks
            .count("exchange NOT LIKE 'orders.%' AND sent_at IS NOT NULL")
            .await
            == 900
    })
    .await;
    assert!(
        others,
        "AMQP, NATS and Redis rows sent while the webhook is down"
    );
    assert_eq!(
        hooks
            .count("exchange LIKE 'orders.%' AND sent_at IS NOT NULL")
            .await,
        0
    );
    let amqp = env.consume(300, WITHIN, Duration::ZERO).await;
    assert_eq!(amqp.len(), 300, "every AMQP row consumed from RabbitMQ");
    assert_eq!(
        Count::of(&nats_sent, nats_ids(&mut stream).await),
        Count {
            lost: 0,
            duplicates: 0,
            unknown: 0
        }
    );
    assert_eq!(Count::of(&redis_sent, redis_ids(&redis_key).await).lost, 0);

    // Its rows were tried (not skipped) and wait, uncounted.
    let tried = wait_until(WITHIN, || async {
        hooks
            .count("exchange LIKE 'orders.%' AND last_error IS NOT NULL")
            .await
            > 0
    })
    .await;
    assert!(
        tried,
        "the webhook rows were tried while their receiver was down"
    );
    hooks.receiver.up().await;
    assert!(
        hooks.settled(WITHIN).await,
        "the webhook rows arrive once it is back"
    );
    let accepted = hooks.receiver.accepted();
    assert_eq!(Count::of(&hook_ids, accepted.keys().cloned()).lost, 0);
    assert_eq!(
        hooks.count("dead_at IS NOT NULL").await,
        0,
        "nothing dead-lettered"
    );

    // Health names the destinations; the API says where each row went.
    let http = relay.http.expect("the HTTP port");
    let health = http_get(http, "/api/health", None).await;
    let health: serde_json::Value = serde_json::from_str(&health.body).expect("health JSON");
    let names: Vec<&str> = health["destinations"]
        .as_array()
        .expect("destinations")
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert_eq!(names, ["bus", "hooks", "log"]);
    let mut by_destination = std::collections::BTreeMap::<String, usize>::new();
    let mut path = "/api/messages?limit=500".to_owned();
    loop {
        let listed = http_get(http, &path, None).await;
        let listed: serde_json::Value = serde_json::from_str(&listed.body).expect("messages JSON");
        for item in listed["items"].as_array().expect("items") {
            let name = item["destination"]
                .as_str()
                .expect("a destination")
                .to_owned();
            *by_destination.entry(name).or_default() += 1;
        }
        match listed["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/messages?limit=500&cursor={cursor}"),
            None => break,
        }
    }
    let expected: std::collections::BTreeMap<String, usize> =
        [("amqp", 300), ("bus", 300), ("hooks", 100), ("log", 300)]
            .map(|(n, c)| (n.to_owned(), c))
            .into();
    assert_eq!(by_destination, expected);
    relay.stop().await.unwrap();
    hooks.finish().await;
}
