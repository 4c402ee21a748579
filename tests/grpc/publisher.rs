//! `outbox.v1.Publisher`: stored before OK, delivered intact, idempotent,
//! delayed, refused with the right code, and both durability modes.

use super::*;
use common::proxy::FaultProxy;
use outbox_relay::proto::outbox::v1::publisher_client::PublisherClient;
use outbox_relay::proto::outbox::v1::{PublishBatchRequest, PublishRequest};
use tonic::Code;

fn to_queue(env: &TestEnv, payload: &[u8]) -> PublishRequest {
    PublishRequest {
        routing_key: env.queue.clone(),
        payload: payload.to_vec(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_published_message_arrives_with_payload_headers_and_message_id_intact() {
    let env = TestEnv::new("grpc_publish").await;
    let relay = sidecar(&env, &[]).await;
    let mut client = PublisherClient::new(channel(&relay).await);
    let id = uuid::Uuid::new_v4().to_string();
    let request = PublishRequest {
        content_type: "application/json".into(),
        headers: [("tenant".to_owned(), "acme".to_owned())].into(),
        message_id: id.clone(),
        ..to_queue(&env, br#"{"order":7}"#)
    };
    client.publish(request).await.expect("published");
    // OK means stored: the row is there before anything is consumed.
    assert_eq!(rows(&env).await, 1);

    let got = env.consume(1, WITHIN, LINGER).await;
    relay.stop().await.unwrap();
    assert_eq!(got.len(), 1);
    let d = &got[0];
    assert_eq!(d.data, br#"{"order":7}"#);
    assert_eq!(common::message_id(d), id);
    assert_eq!(content_type(d).as_deref(), Some("application/json"));
    assert_eq!(header(d, "tenant").as_deref(), Some("acme"));
    assert_eq!(*d.properties.delivery_mode(), Some(2), "persistent");
    env.drop_schema().await;
}

#[tokio::test]
async fn a_batch_is_stored_whole_or_not_at_all() {
    let env = TestEnv::new("grpc_batch").await;
    let relay = sidecar(&env, &[]).await;
    let mut client = PublisherClient::new(channel(&relay).await);
    let bad = PublishRequest {
        exchange: "x".repeat(300),
        ..to_queue(&env, b"never")
    };
    let refused = client
        .publish_batch(PublishBatchRequest {
            messages: vec![to_queue(&env, b"a"), bad, to_queue(&env, b"b")],
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("exchange"), "{refused:?}");
    assert_eq!(rows(&env).await, 0, "nothing of a refused batch is stored");

    let messages = (0..50)
        .map(|i| to_queue(&env, format!("m{i}").as_bytes()))
        .collect();
    client
        .publish_batch(PublishBatchRequest { messages })
        .await
        .expect("batch stored");
    assert_eq!(rows(&env).await, 50);
    let got = env.consume(50, WITHIN, LINGER).await;
    relay.stop().await.unwrap();
    assert_eq!(got.len(), 50);
    assert_eq!(tally(&got).len(), 50, "fifty distinct message_ids");
    env.drop_schema().await;
}

#[tokio::test]
async fn the_same_message_id_twice_is_stored_once_and_arrives_once() {
    let env = TestEnv::new("grpc_idem").await;
    let relay = sidecar(&env, &[]).await;
    let mut client = PublisherClient::new(channel(&relay).await);
    let request = PublishRequest {
        message_id: uuid::Uuid::new_v4().to_string(),
        ..to_queue(&env, b"once")
    };
    client.publish(request.clone()).await.expect("first");
    client
        .publish(request.clone())
        .await
        .expect("a retry is OK too");
    client
        .publish_batch(PublishBatchRequest {
            messages: vec![request.clone()],
        })
        .await
        .expect("and in a batch");
    assert_eq!(rows(&env).await, 1);
    let got = env.consume(1, WITHIN, Duration::from_millis(800)).await;
    relay.stop().await.unwrap();
    assert_eq!(got.len(), 1, "arrives once");
    assert_eq!(common::message_id(&got[0]), request.message_id);
    env.drop_schema().await;
}

#[tokio::test]
async fn a_non_uuid_message_id_is_stored_once_and_published_verbatim_and_an_empty_one_is_generated()
{
    let env = TestEnv::new("grpc_text_id").await;
    let relay = sidecar(&env, &[]).await;
    let mut client = PublisherClient::new(channel(&relay).await);
    let id = non_uuid_id();
    let longest = "ü".repeat(127) + "!"; // 255 bytes
    let request = PublishRequest {
        message_id: id.clone(),
        ..to_queue(&env, b"text id")
    };
    client.publish(request.clone()).await.expect("first");
    client.publish(request.clone()).await.expect("a retry");
    client
        .publish_batch(PublishBatchRequest {
            messages: vec![request.clone()],
        })
        .await
        .expect("a retry in a batch");
    assert_eq!(rows_with_id(&env, &id).await, 1, "stored once, verbatim");
    // The same id in other capitals is another message.
    let upper = PublishRequest {
        message_id: id.to_uppercase(),
        ..to_queue(&env, b"upper")
    };
    client.publish(upper).await.expect("stored");
    let generated = to_queue(&env, b"no id");
    client.publish(generated).await.expect("stored");
    let longest_request = PublishRequest {
        message_id: longest.clone(),
        ..to_queue(&env, b"longest")
    };
    client.publish(longest_request).await.expect("255 bytes");
    assert_eq!(rows(&env).await, 4);

    let got = env.consume(4, WITHIN, Duration::from_millis(800)).await;
    relay.stop().await.unwrap();
    assert_eq!(got.len(), 4, "each message once");
    let by_body = |body: &[u8]| {
        let d = got.iter().find(|d| d.data == body).expect("arrives");
        common::message_id(d)
    };
    assert_eq!(by_body(b"text id"), id);
    assert_eq!(by_body(b"upper"), id.to_uppercase());
    assert_eq!(by_body(b"longest"), longest);
    let made = by_body(b"no id");
    assert!(uuid::Uuid::parse_str(&made).is_ok(), "{made}");
    assert_eq!(
        rows_with_id(&env, &made).await,
        1,
        "the id sent is the one stored"
    );
    env.drop_schema().await;
}

#[tokio::test]
async fn a_delayed_message_is_not_published_before_its_delay() {
    let env = TestEnv::new("grpc_delay").await;
    let relay = sidecar(&env, &[]).await;
    let mut client = PublisherClient::new(channel(&relay).await);
    let sent = std::time::Instant::now();
    client
        .publish(PublishRequest {
            delay: Some(prost_types::Duration {
                seconds: 1,
                nanos: 500_000_000,
            }),
            ..to_queue(&env, b"later")
        })
        .await
        .expect("published");
    let scheduled = env
        .scalar("SELECT (extract(epoch FROM available_at - created_at) * 1000)::bigint FROM {t}")
        .await;
    assert!(
        (1450..=1600).contains(&scheduled),
        "available {scheduled} ms after creation"
    );
    let got = env.consume(1, WITHIN, LINGER).await;
    relay.stop().await.unwrap();
    assert_eq!(got.len(), 1);
    assert!(
        sent.elapsed() >= Duration::from_millis(1400),
        "arrived after {:?}",
        sent.elapsed()
    );
    env.drop_schema().await;
}

#[tokio::test]
async fn bad_requests_are_refused_with_their_code_and_store_nothing() {
    let env = TestEnv::new("grpc_bad").await;
    let relay = sidecar(
        &env,
        &[
            "--max-message-size",
            "2KiB",
            "--grpc-max-request-size",
            "16KiB",
        ],
    )
    .await;
    let mut client = PublisherClient::new(channel(&relay).await);
    let ok = to_queue(&env, b"x");
    let cases = [
        (
            PublishRequest {
                message_id: "m".repeat(256),
                ..ok.clone()
            },
            Code::InvalidArgument,
            "message_id is 256 bytes",
        ),
        (
            PublishRequest {
                routing_key: "k".repeat(256),
                ..ok.clone()
            },
            Code::InvalidArgument,
            "routing_key",
        ),
        (
            PublishRequest {
                routing_key: String::new(),
                ..ok.clone()
            },
            Code::InvalidArgument,
            "routing_key",
        ),
        (
            PublishRequest {
                headers: [("h".repeat(300), "v".into())].into(),
                ..ok.clone()
            },
            Code::InvalidArgument,
            "header name",
        ),
        (
            PublishRequest {
                delay: Some(prost_types::Duration {
                    seconds: -5,
                    nanos: 0,
                }),
                ..ok.clone()
            },
            Code::InvalidArgument,
            "negative",
        ),
        (
            PublishRequest {
                payload: vec![0; 4096],
                ..ok.clone()
            },
            Code::ResourceExhausted,
            "max-message-size",
        ),
        (
            PublishRequest {
                payload: vec![0; 32 << 10],
                ..ok.clone()
            },
            Code::ResourceExhausted,
            "",
        ),
    ];
    for (request, code, says) in cases {
        let e = client.publish(request).await.unwrap_err();
        assert_eq!(e.code(), code, "{e:?}");
        assert!(e.message().contains(says), "{e:?} should mention {says}");
    }
    let e = client
        .publish_batch(PublishBatchRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // Bytes that are no PublishRequest: field 1 (exchange) runs past the end.
    let ch = channel(&relay).await;
    let truncated = tonic::Request::new(bytes::Bytes::from_static(&[0x0a, 0x7f, 0x41]));
    let e = grpc::call_raw(ch, "/outbox.v1.Publisher/Publish", truncated)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "undecodable: {e:?}");
    assert!(e.message().contains("PublishRequest"), "{e:?}");
    assert_eq!(rows(&env).await, 0);
    // The server is unharmed: a good message still goes through.
    client
        .publish(ok)
        .await
        .expect("a good message after the bad ones");
    assert_eq!(env.consume(1, WITHIN, LINGER).await.len(), 1);
    relay.stop().await.unwrap();
    env.drop_schema().await;
}

#[tokio::test]
async fn a_call_whose_deadline_passes_gets_deadline_exceeded() {
    let env = TestEnv::new("grpc_deadline").await;
    let db = FaultProxy::start(PG_ADDR.parse().unwrap()).await;
    let pg = format!("postgres://root@{}/test", db.addr);
    let relay = Running::start(env.run_args_with(&pg, AMQP_URL, &[])).await;
    let mut client = PublisherClient::new(channel(&relay).await);
    db.stall();
    let mut request = tonic::Request::new(to_queue(&env, b"slow"));
    request.set_timeout(Duration::from_millis(400));
    let started = std::time::Instant::now();
    let e = client.publish(request).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered after {:?}",
        started.elapsed()
    );
    db.resume();
    // Once the database answers, the same call succeeds.
    client
        .publish(to_queue(&env, b"fast"))
        .await
        .expect("published");
    relay.stop().await.unwrap();
    env.drop_schema().await;
}

#[tokio::test]
async fn direct_mode_answers_after_the_ack_and_refuses_what_the_broker_would_not_take() {
    let env = TestEnv::new("grpc_direct").await;
    let broker = FaultProxy::start(AMQP_ADDR.parse().unwrap()).await;
    let amqp = format!("amqp://guest:guest@{}/%2f", broker.addr);
    let relay =
        Running::start(env.run_args_with(PG_URL, &amqp, &["--ingress-mode", "direct"])).await;
    let mut client = PublisherClient::new(channel(&relay).await);

    client
        .publish(to_queue(&env, b"direct"))
        .await
        .expect("acked");
    assert_eq!(rows(&env).await, 0, "direct mode does not use the table");
    let got = env.consume(1, WITHIN, LINGER).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, b"direct");

    let unroutable = PublishRequest {
        routing_key: unique("no_such_queue"),
        ..to_queue(&env, b"lost?")
    };
    let e = client.publish(unroutable).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let missing = PublishRequest {
        exchange: unique("no_such_exchange"),
        ..to_queue(&env, b"lost?")
    };
    let e = client.publish(missing).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    // Headers above the broker's frame size can never be sent: refused as
    // the caller's error (not UNAVAILABLE, which invites retries), before
    // the broker would close the connection over it.
    let huge = PublishRequest {
        headers: [("big".to_owned(), "x".repeat(200_000))].into(),
        ..to_queue(&env, b"too big")
    };
    let e = client.publish(huge).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    client
        .publish(to_queue(&env, b"after"))
        .await
        .expect("the connection survived the refused message");
    let got = env.consume(1, WITHIN, LINGER).await;
    assert_eq!(got.iter().filter(|d| d.data == b"after").count(), 1);

    broker.refuse(true);
    broker.reset().await;
    let e = client.publish(to_queue(&env, b"down")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    broker.refuse(false);
    let back = wait_until(WITHIN, || {
        let mut client = client.clone();
        let request = to_queue(&env, b"back");
        async move { client.publish(request).await.is_ok() }
    })
    .await;
    assert!(back, "direct mode recovers when the broker is back");
    let got = env.consume(1, WITHIN, LINGER).await;
    assert_eq!(got.iter().filter(|d| d.data == b"back").count(), 1);
    assert_eq!(rows(&env).await, 0);
    relay.stop().await.unwrap();
    env.drop_schema().await;
}

/// A relay that has found nothing since it started waits a random 50-100%
/// of the poll interval after its first empty claim; a stored call wakes
/// it in-process, so its message does not wait for the next poll (here at
/// least 30 s away, with the database trigger off).
#[tokio::test]
async fn an_accepted_call_wakes_the_idle_relay_instead_of_waiting_for_the_poll() {
    let env = TestEnv::new("grpc_wake").await;
    let app = unique("grpc_wake");
    let pg = format!("{PG_URL}?application_name={app}");
    let relay = Running::start(env.run_args_with(
        &pg,
        AMQP_URL,
        &["--poll-interval", "60s", "--wakeup", "off"],
    ))
    .await;
    // Its first claim (empty) has committed: from now on it waits a poll.
    let claimed = wait_until(WITHIN, || async {
        env.pg
            .query_opt(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = $1 AND query = 'COMMIT' LIMIT 1",
                &[&app],
            )
            .await
            .unwrap()
            .is_some()
    })
    .await;
    assert!(claimed, "the relay made its first claim");
    let mut client = PublisherClient::new(channel(&relay).await);
    client
        .publish(to_queue(&env, b"now"))
        .await
        .expect("stored");
    let got = env
        .consume(1, Duration::from_secs(10), Duration::ZERO)
        .await;
    assert_eq!(got.len(), 1, "delivered long before the next poll");
    assert_eq!(got[0].data, b"now");
    relay.stop().await.unwrap();
    env.drop_schema().await;
}

/// Concurrent calls share transactions (group commit); a call whose values
/// the database refuses (a NUL character, which neither text nor jsonb can
/// hold) fails alone, as INVALID_ARGUMENT, and the calls grouped with it are
/// stored.
#[tokio::test]
async fn one_call_the_database_refuses_fails_alone_among_concurrent_calls() {
    let env = TestEnv::new("grpc_group").await;
    let relay = sidecar(&env, &[]).await;
    let ch = channel(&relay).await;
    let calls = (0..60).map(|i| {
        let mut client = PublisherClient::new(ch.clone());
        let mut request = to_queue(&env, format!("m{i}").as_bytes());
        let poisoned = i % 10 == 3;
        if poisoned {
            request.headers = [("note".to_owned(), "nul\0here".to_owned())].into();
        }
        async move { (poisoned, client.publish(request).await) }
    });
    let results = futures::future::join_all(calls).await;
    for (poisoned, result) in &results {
        match (poisoned, result) {
            (false, Ok(_)) => {}
            (true, Err(e)) => assert_eq!(e.code(), Code::InvalidArgument, "{e:?}"),
            (_, other) => panic!("poisoned {poisoned}: {other:?}"),
        }
    }
    assert_eq!(rows(&env).await, 54, "every call but the six refused ones");
    let got = env.consume(54, WITHIN, LINGER).await;
    relay.stop().await.unwrap();
    assert_eq!(got.len(), 54);
    env.drop_schema().await;
}
