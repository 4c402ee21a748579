//! The bridge without the services: what it makes of a request in each wire.

use super::*;
use crate::proto::o5::messaging::v1::message::{Event, Reply, Request};
use crate::proto::o5::messaging::v1::topic::SendMessage;

fn send(message: Message) -> Vec<u8> {
    SendMessage {
        message: Some(message),
    }
    .encode_to_vec()
}

fn bridge(wire: O5Wire, app: Option<&str>, env: Option<&str>) -> Bridge {
    Bridge {
        exchange: "o5".into(),
        app: app.map(Into::into),
        env: env.map(Into::into),
        wire,
    }
}

fn order_created() -> Message {
    Message {
        message_id: "6f1c1d2e-8a40-4a57-b3f4-3c1f0a8e5b21".into(),
        grpc_service: "orders.v1.OrderEvents".into(),
        grpc_method: "Created".into(),
        source_app: "sender-app".into(),
        source_env: "sender-env".into(),
        headers: [("tenant".to_owned(), "acme".to_owned())].into(),
        delay_seconds: 30,
        extension: Some(Extension::Request(Request {
            reply_to: "sender-reply".into(),
        })),
        ..Default::default()
    }
}

#[test]
fn with_the_protobuf_wire_the_body_is_the_message_bytes_the_client_sent() {
    let message = order_created();
    let bridge = bridge(O5Wire::Protobuf, Some("shop"), Some("prod"));
    let new = bridge.to_new_message(&send(message.clone())).unwrap();
    assert_eq!(new.payload, message.encode_to_vec());
    assert_eq!(new.content_type.as_deref(), Some(PROTOBUF));
    assert_eq!(new.routing_key, "service.orders/v1/OrderEvents.Created");
    assert_eq!(new.delay, Duration::from_secs(30));
    assert_eq!(new.headers["tenant"], "acme");
    assert_eq!(new.headers[HEADER_METHOD], "Created");
    assert_eq!(new.headers["o5-source-app"], "sender-app");
    assert_eq!(new.headers["o5-request-reply-to"], "sender-reply");
    assert!(!new.headers.contains_key(VERSION_HEADER));
}

#[test]
fn with_the_j5_wire_the_body_is_the_stamped_message_as_j5_json() {
    let new = bridge(O5Wire::J5json, Some("shop"), Some("prod"))
        .to_new_message(&send(order_created()))
        .unwrap();
    assert_eq!(new.content_type.as_deref(), Some(j5json::CONTENT_TYPE));
    let body = j5json::decode(&new.payload).unwrap();
    let mut want = order_created();
    want.source_app = "shop".into();
    want.source_env = "prod".into();
    want.headers
        .insert(VERSION_HEADER.into(), env!("CARGO_PKG_VERSION").into());
    want.extension = Some(Extension::Request(Request {
        reply_to: "prod/shop".into(),
    }));
    assert_eq!(body, want);
    assert_eq!(
        new.message_id.as_ref().map(MessageId::as_str),
        Some(want.message_id.as_str())
    );
    assert_eq!(new.routing_key, "service.orders/v1/OrderEvents.Created");
    assert_eq!(new.delay, Duration::from_secs(30));
    assert_eq!(new.headers["o5-source-app"], "shop");
    assert_eq!(new.headers["o5-source-env"], "prod");
    assert_eq!(new.headers["o5-request-reply-to"], "prod/shop");
    assert_eq!(new.headers[VERSION_HEADER], env!("CARGO_PKG_VERSION"));
}

#[test]
fn without_app_and_env_the_senders_values_pass_through() {
    for (app, env) in [(None, None), (Some("shop"), None), (None, Some("prod"))] {
        let new = bridge(O5Wire::J5json, app, env)
            .to_new_message(&send(order_created()))
            .unwrap();
        let body = j5json::decode(&new.payload).unwrap();
        assert_eq!(body.source_app, app.unwrap_or("sender-app"));
        assert_eq!(body.source_env, env.unwrap_or("sender-env"));
        let Some(Extension::Request(request)) = body.extension else {
            panic!("the request extension is kept")
        };
        assert_eq!(request.reply_to, "sender-reply", "{app:?} {env:?}");
        assert_eq!(body.headers[VERSION_HEADER], env!("CARGO_PKG_VERSION"));
    }
}

#[test]
fn only_a_request_gets_a_new_reply_to() {
    let bridge = bridge(O5Wire::J5json, Some("shop"), Some("prod"));
    for extension in [
        Extension::Reply(Reply {
            reply_to: "prod/billing".into(),
        }),
        Extension::Event(Event {
            entity_name: "orders.v1.order".into(),
        }),
    ] {
        let message = Message {
            extension: Some(extension.clone()),
            ..order_created()
        };
        let new = bridge.to_new_message(&send(message)).unwrap();
        let body = j5json::decode(&new.payload).unwrap();
        assert_eq!(body.extension, Some(extension));
    }
}

#[test]
fn a_message_sent_without_an_id_gets_one_in_its_body_and_its_properties() {
    let message = Message {
        message_id: String::new(),
        ..order_created()
    };
    let new = bridge(O5Wire::J5json, None, None)
        .to_new_message(&send(message))
        .unwrap();
    let body = j5json::decode(&new.payload).unwrap();
    let id = new.message_id.expect("an id is chosen");
    assert_eq!(body.message_id, id.as_str());
}

#[test]
fn on_the_protobuf_wire_a_generated_id_is_appended_to_the_bytes_as_sent() {
    let message = Message {
        message_id: String::new(),
        ..order_created()
    };
    let sent = message.encode_to_vec();
    let new = bridge(O5Wire::Protobuf, None, None)
        .to_new_message(&send(message.clone()))
        .unwrap();
    let id = new.message_id.expect("an id is chosen");
    assert!(new.payload.starts_with(&sent), "the sent bytes stay");
    let body = Message::decode(new.payload.as_slice()).unwrap();
    assert_eq!(body.message_id, id.as_str());
    assert_eq!(
        Message {
            message_id: String::new(),
            ..body
        },
        message
    );
}

#[test]
fn a_non_uuid_id_is_kept_verbatim_in_the_body_and_the_properties_on_either_wire() {
    let id = "Order-42/créé v2";
    let message = Message {
        message_id: id.into(),
        ..order_created()
    };
    let j5 = bridge(O5Wire::J5json, None, None)
        .to_new_message(&send(message.clone()))
        .unwrap();
    assert_eq!(j5.message_id.as_ref().map(MessageId::as_str), Some(id));
    assert_eq!(j5json::decode(&j5.payload).unwrap().message_id, id);
    let pb = bridge(O5Wire::Protobuf, None, None)
        .to_new_message(&send(message.clone()))
        .unwrap();
    assert_eq!(pb.message_id.as_ref().map(MessageId::as_str), Some(id));
    assert_eq!(pb.payload, message.encode_to_vec(), "byte for byte");
}

#[test]
fn a_body_that_has_no_j5_form_is_refused() {
    let message = Message {
        timestamp: Some(prost_types::Timestamp {
            seconds: i64::MAX / 2,
            nanos: 0,
        }),
        ..order_created()
    };
    let e = bridge(O5Wire::J5json, None, None)
        .to_new_message(&send(message))
        .unwrap_err();
    assert!(matches!(e, IngressError::O5Json(_)), "{e}");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
}

#[test]
fn bad_requests_are_refused_with_the_reason_in_either_wire() {
    let ok = Message {
        grpc_service: "a.B".into(),
        grpc_method: "C".into(),
        ..Default::default()
    };
    let cases = [
        (
            Message {
                delay_seconds: 901,
                ..ok.clone()
            },
            "delay",
        ),
        (
            Message {
                delay_seconds: -1,
                ..ok.clone()
            },
            "delay",
        ),
        (
            Message {
                message_id: "m".repeat(256),
                ..ok.clone()
            },
            "256 bytes",
        ),
        (
            Message {
                grpc_method: String::new(),
                ..ok.clone()
            },
            "grpc_method",
        ),
    ];
    for wire in [O5Wire::J5json, O5Wire::Protobuf] {
        let bridge = bridge(wire, Some("shop"), Some("prod"));
        for (message, expected) in cases.clone() {
            let e = bridge.to_new_message(&send(message)).unwrap_err();
            assert!(e.to_string().contains(expected), "{e}");
        }
        assert!(matches!(
            bridge.to_new_message(&[]),
            Err(IngressError::Missing { .. })
        ));
        assert!(matches!(
            bridge.to_new_message(&[0x0a, 0x05, 0x01]),
            Err(IngressError::Undecodable { .. })
        ));
    }
}
