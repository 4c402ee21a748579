//! The o5 bridge, called with a client generated from the o5-compatible
//! protos: routed as o5 routes, published as o5 workers read it (J5 JSON,
//! stamped with --o5-app / --o5-env) or, with `--o5-wire protobuf`, byte for
//! byte, and buffered in the outbox while the broker is down.

use super::*;
use common::proxy::FaultProxy;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions};
use lapin::types::FieldTable;
use outbox_relay::grpc::o5::{VERSION_HEADER, j5json};
use outbox_relay::proto::o5::messaging::v1::message::{Event, Extension, Reply, Request};
use outbox_relay::proto::o5::messaging::v1::topic::SendMessage;
use outbox_relay::proto::o5::messaging::v1::topic::message_bridge_topic_client::MessageBridgeTopicClient;
use outbox_relay::proto::o5::messaging::v1::{Any, Message};
use prost::Message as _;
use tonic::Code;

fn o5_message(reply_to: Extension) -> Message {
    Message {
        message_id: uuid::Uuid::new_v4().to_string(),
        grpc_service: "greeting.v1.topic.GreetingRequestTopic".into(),
        grpc_method: "Greeting".into(),
        body: Some(Any {
            type_url: "type.googleapis.com/greeting.v1.GreetingMessage".into(),
            value: b"\x12\x05world".to_vec(),
            encoding: 0,
        }),
        source_app: "shop".into(),
        headers: [
            ("tenant".to_owned(), "acme".to_owned()),
            ("trace".to_owned(), "t-1".to_owned()),
        ]
        .into(),
        extension: Some(reply_to),
        ..Default::default()
    }
}

/// A topic exchange of this test's own, bound to the test queue.
pub async fn o5_exchange(env: &TestEnv) -> String {
    let exchange = unique("o5");
    bind_exchange(env, &exchange).await;
    exchange
}

/// Declares the topic exchange `exchange` and binds the test queue to it.
async fn bind_exchange(env: &TestEnv, exchange: &str) {
    let durable = ExchangeDeclareOptions {
        durable: true,
        auto_delete: true,
        ..Default::default()
    };
    env.channel
        .exchange_declare(
            exchange.into(),
            lapin::ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .unwrap();
    env.channel
        .queue_bind(
            env.queue.as_str().into(),
            exchange.into(),
            "service.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn with_the_protobuf_wire_an_o5_send_is_published_as_o5_routes_it_with_its_body_byte_for_byte()
 {
    let env = TestEnv::new("grpc_o5").await;
    let exchange = o5_exchange(&env).await;
    let relay = sidecar(&env, &["--o5-exchange", &exchange, "--o5-wire", "protobuf"]).await;
    let mut client = MessageBridgeTopicClient::new(channel(&relay).await);
    let request = o5_message(Extension::Request(Request {
        reply_to: "shop-1".into(),
    }));
    let reply = Message {
        grpc_service: "greeting.v1.topic.GreetingResponseTopic".into(),
        grpc_method: "Response".into(),
        ..o5_message(Extension::Reply(Reply {
            reply_to: "shop-1".into(),
        }))
    };
    for message in [&request, &reply, &request] {
        client
            .send(SendMessage {
                message: Some(message.clone()),
            })
            .await
            .expect("stored");
    }
    let got = env.consume(2, WITHIN, Duration::from_millis(800)).await;
    relay.stop().await.unwrap();
    assert_eq!(got.len(), 2, "the repeated message_id arrives once");
    let (first, second) = (&got[0], &got[1]);
    assert_eq!(first.exchange.as_str(), exchange);
    assert_eq!(
        first.routing_key.as_str(),
        "service.greeting/v1/topic/GreetingRequestTopic.Greeting"
    );
    assert_eq!(common::message_id(first), request.message_id);
    assert_eq!(first.data, request.encode_to_vec());
    assert_eq!(content_type(first).as_deref(), Some("application/protobuf"));
    assert_eq!(header(first, "tenant").as_deref(), Some("acme"));
    assert_eq!(header(first, "trace").as_deref(), Some("t-1"));
    assert_eq!(
        header(first, "o5-request-reply-to").as_deref(),
        Some("shop-1")
    );
    assert_eq!(header(first, "o5-source-app").as_deref(), Some("shop"));
    assert_eq!(header(first, "grpc-method").as_deref(), Some("Greeting"));
    assert_eq!(
        second.routing_key.as_str(),
        "service.greeting/v1/topic/GreetingResponseTopic.Response"
    );
    assert_eq!(second.data, reply.encode_to_vec());
    assert_eq!(
        header(second, "o5-reply-reply-to").as_deref(),
        Some("shop-1")
    );
    assert_eq!(header(second, "o5-request-reply-to"), None);
    assert_eq!(header(first, VERSION_HEADER), None, "nothing is stamped");
    env.drop_schema().await;
}

/// What o5's sidecar makes of `sent` when it leaves app `shop` in env `test`.
fn stamped(sent: &Message) -> Message {
    let mut want = sent.clone();
    want.source_app = "shop".into();
    want.source_env = "test".into();
    want.headers
        .insert(VERSION_HEADER.into(), env!("CARGO_PKG_VERSION").into());
    if let Some(Extension::Request(request)) = &mut want.extension {
        request.reply_to = "test/shop".into();
    }
    want
}

#[tokio::test]
async fn an_o5_send_arrives_as_an_o5_message_in_j5_json_stamped_with_the_app_and_env() {
    let env = TestEnv::new("grpc_o5_j5").await;
    let exchange = o5_exchange(&env).await;
    let o5 = [
        "--o5-exchange",
        &exchange,
        "--o5-app",
        "shop",
        "--o5-env",
        "test",
    ];
    let relay = sidecar(&env, &o5).await;
    let mut client = MessageBridgeTopicClient::new(channel(&relay).await);
    let request = Message {
        timestamp: Some(prost_types::Timestamp {
            seconds: 1_767_225_600,
            nanos: 500_000_000,
        }),
        delay_seconds: 0,
        destination_topic: "greetings".into(),
        ..o5_message(Extension::Request(Request {
            reply_to: "whatever-the-sender-said".into(),
        }))
    };
    let reply = o5_message(Extension::Reply(Reply {
        reply_to: "test/billing".into(),
    }));
    let event = Message {
        source_env: "the-sender-env".into(),
        ..o5_message(Extension::Event(Event {
            entity_name: "greeting.v1.greeting".into(),
        }))
    };
    let sent = [request, reply, event];
    for message in &sent {
        client
            .send(SendMessage {
                message: Some(message.clone()),
            })
            .await
            .expect("stored");
    }
    let got = env.consume(3, WITHIN, LINGER).await;
    relay.stop().await.unwrap();
    assert_eq!(got.len(), 3);
    for message in &sent {
        let delivery = got
            .iter()
            .find(|d| common::message_id(d) == message.message_id)
            .expect("each message arrives");
        assert_eq!(delivery.exchange.as_str(), exchange);
        assert_eq!(
            content_type(delivery).as_deref(),
            Some("application/o5-message")
        );
        let body = j5json::decode(&delivery.data).expect("the body is J5 JSON");
        assert_eq!(body, stamped(message));
        assert_eq!(header(delivery, "o5-source-app").as_deref(), Some("shop"));
        assert_eq!(header(delivery, "o5-source-env").as_deref(), Some("test"));
        assert_eq!(header(delivery, "tenant").as_deref(), Some("acme"));
        assert_eq!(
            header(delivery, VERSION_HEADER).as_deref(),
            Some(env!("CARGO_PKG_VERSION"))
        );
    }
    let request = got
        .iter()
        .find(|d| common::message_id(d) == sent[0].message_id)
        .unwrap();
    assert_eq!(
        header(request, "o5-request-reply-to").as_deref(),
        Some("test/shop")
    );
    env.drop_schema().await;
}

#[tokio::test]
async fn a_non_uuid_message_id_is_stored_once_and_is_the_message_id_of_the_properties_and_the_j5_body()
 {
    let env = TestEnv::new("grpc_o5_text_id").await;
    let exchange = o5_exchange(&env).await;
    let relay = sidecar(&env, &["--o5-exchange", &exchange]).await;
    let mut client = MessageBridgeTopicClient::new(channel(&relay).await);
    let named = Message {
        message_id: non_uuid_id(),
        ..o5_message(Extension::Event(Event {
            entity_name: "greeting.v1.greeting".into(),
        }))
    };
    let unnamed = Message {
        message_id: String::new(),
        ..o5_message(Extension::Request(Request {
            reply_to: "r".into(),
        }))
    };
    for message in [&named, &named, &unnamed] {
        client
            .send(SendMessage {
                message: Some(message.clone()),
            })
            .await
            .expect("stored");
    }
    assert_eq!(rows_with_id(&env, &named.message_id).await, 1);
    assert_eq!(rows(&env).await, 2, "the retry is stored once");
    let got = env.consume(2, WITHIN, LINGER).await;
    relay.stop().await.unwrap();
    assert_eq!(got.len(), 2, "each message once");
    for d in &got {
        let body = j5json::decode(&d.data).expect("J5 JSON");
        assert_eq!(
            common::message_id(d),
            body.message_id,
            "the body and the properties agree"
        );
        assert_eq!(rows_with_id(&env, &body.message_id).await, 1);
    }
    let ids = tally(&got);
    assert_eq!(ids.get(&named.message_id), Some(&1), "verbatim");
    let generated = ids
        .keys()
        .find(|id| **id != named.message_id)
        .expect("the unnamed message");
    assert!(uuid::Uuid::parse_str(generated).is_ok(), "{generated}");
    env.drop_schema().await;
}

#[tokio::test]
async fn with_o5_env_and_no_o5_exchange_the_bridge_publishes_to_o5_dot_env() {
    let env = TestEnv::new("grpc_o5_envx").await;
    let o5_env = unique("env");
    bind_exchange(&env, &format!("o5.{o5_env}")).await;
    let relay = sidecar(&env, &["--o5-env", &o5_env, "--o5-app", "shop"]).await;
    let mut client = MessageBridgeTopicClient::new(channel(&relay).await);
    let message = o5_message(Extension::Request(Request::default()));
    client
        .send(SendMessage {
            message: Some(message.clone()),
        })
        .await
        .expect("stored");
    let got = env.consume(1, WITHIN, Duration::ZERO).await;
    relay.stop().await.unwrap();
    assert_eq!(got.len(), 1, "published to o5.<env>, which is bound");
    assert_eq!(got[0].exchange.as_str(), format!("o5.{o5_env}"));
    let body = j5json::decode(&got[0].data).unwrap();
    assert_eq!(body.source_env, o5_env);
    assert_eq!(
        body.extension,
        Some(Extension::Request(Request {
            reply_to: format!("{o5_env}/shop"),
        }))
    );
    env.drop_schema().await;
}

#[tokio::test]
async fn o5_sends_that_break_its_rules_are_refused() {
    let env = TestEnv::new("grpc_o5_bad").await;
    let relay = sidecar(&env, &[]).await;
    let mut client = MessageBridgeTopicClient::new(channel(&relay).await);
    let ok = o5_message(Extension::Request(Request {
        reply_to: "x".into(),
    }));
    let cases = [
        Message {
            delay_seconds: 901,
            ..ok.clone()
        },
        Message {
            delay_seconds: -1,
            ..ok.clone()
        },
        Message {
            message_id: "m".repeat(256),
            ..ok.clone()
        },
        Message {
            grpc_service: String::new(),
            ..ok.clone()
        },
        Message {
            grpc_method: String::new(),
            ..ok.clone()
        },
    ];
    for message in cases {
        let e = client
            .send(SendMessage {
                message: Some(message),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }
    let e = client
        .send(SendMessage { message: None })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(rows(&env).await, 0);
    // delay_seconds within range: stored, due later.
    client
        .send(SendMessage {
            message: Some(Message {
                delay_seconds: 900,
                ..ok
            }),
        })
        .await
        .expect("a 900 s delay is allowed");
    let delay = env
        .scalar("SELECT extract(epoch FROM available_at - created_at)::bigint FROM {t}")
        .await;
    assert_eq!(delay, 900);
    relay.stop().await.unwrap();
    env.drop_schema().await;
}

#[tokio::test]
async fn with_the_broker_down_send_still_answers_ok_and_the_message_arrives_once_it_is_back() {
    let env = TestEnv::new("grpc_o5_down").await;
    let exchange = o5_exchange(&env).await;
    let broker = FaultProxy::start(AMQP_ADDR.parse().unwrap()).await;
    broker.refuse(true);
    let amqp = format!("amqp://guest:guest@{}/%2f", broker.addr);
    let relay =
        Running::start(env.run_args_with(PG_URL, &amqp, &["--o5-exchange", &exchange])).await;
    let mut client = MessageBridgeTopicClient::new(channel(&relay).await);
    let messages: Vec<Message> = (0..5)
        .map(|_| {
            o5_message(Extension::Request(Request {
                reply_to: "r".into(),
            }))
        })
        .collect();
    for message in &messages {
        client
            .send(SendMessage {
                message: Some(message.clone()),
            })
            .await
            .expect("outbox mode does not need the broker");
    }
    assert_eq!(rows(&env).await, 5);
    let early = env.consume(1, Duration::from_secs(1), Duration::ZERO).await;
    assert!(
        early.is_empty(),
        "nothing can be published while the broker is down"
    );

    broker.refuse(false);
    let got = env.consume(5, WITHIN, LINGER).await;
    relay.stop().await.unwrap();
    let ids = tally(&got);
    assert_eq!(got.len(), 5, "each message once");
    for message in &messages {
        assert_eq!(ids.get(&message.message_id), Some(&1));
    }
    assert_eq!(env.count_sent().await, 5);
    env.drop_schema().await;
}
