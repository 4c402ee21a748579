//! Golden tests: one per rule that pentops/j5's codec tests
//! (`internal/codec/codec_test.go`) pin for the types `Message` uses, each
//! naming the upstream case it follows, with values of our own.

use super::*;
use serde_json::{Value, json};

fn encoded(message: &Message) -> Value {
    serde_json::from_slice(&encode(message).expect("encodes")).expect("valid JSON")
}

fn decoded(json: Value) -> Message {
    decode(json.to_string().as_bytes()).expect("decodes")
}

fn any(type_url: &str, value: &[u8], encoding: WireEncoding) -> Any {
    Any {
        type_url: type_url.into(),
        value: value.to_vec(),
        encoding: encoding as i32,
    }
}

// TestUnmarshal "strings" and TestScalars "string": a string field is a JSON
// string under its proto JSON name (`s_string` -> `sString`).
#[test]
fn string_fields_are_json_strings_under_their_camel_case_json_names() {
    let message = Message {
        message_id: "0d4b5f7e-2c1a-4e8b-9f3d-6a7c8e9b0a1c".into(),
        grpc_service: "billing.v1.topic.InvoiceTopic".into(),
        grpc_method: "InvoiceIssued".into(),
        source_app: "billing".into(),
        source_env: "staging".into(),
        destination_topic: "invoices".into(),
        ..Default::default()
    };
    let want = json!({
        "messageId": "0d4b5f7e-2c1a-4e8b-9f3d-6a7c8e9b0a1c",
        "grpcService": "billing.v1.topic.InvoiceTopic",
        "grpcMethod": "InvoiceIssued",
        "sourceApp": "billing",
        "sourceEnv": "staging",
        "destinationTopic": "invoices",
    });
    assert_eq!(encoded(&message), want);
    assert_eq!(decoded(want), message);
}

// TestScalars "optional string" (no value set encodes as `{}`), and the
// codec README's table: an implicitly optional field with "", 0 or the zero
// enum value is not encoded.
#[test]
fn empty_strings_zero_numbers_the_zero_enum_and_empty_maps_are_left_out() {
    assert_eq!(encoded(&Message::default()), json!({}));
    let zeroes = Message {
        body: Some(any("", b"", WireEncoding::Unspecified)),
        delay_seconds: 0,
        headers: Default::default(),
        ..Default::default()
    };
    assert_eq!(encoded(&zeroes), json!({"body": {}}));
}

// TestUnmarshal "objects empty": a message field that is set but empty is
// still written, as `{}`, and reads back as set.
#[test]
fn a_set_but_empty_message_is_an_empty_object() {
    let message = Message {
        extension: Some(Extension::Request(Request::default())),
        ..Default::default()
    };
    assert_eq!(encoded(&message), json!({"request": {}}));
    assert_eq!(decoded(json!({"request": {}})), message);
}

// TestUnmarshal "objects null": an absent message field and `null` both read
// as unset; the same goes for scalars.
#[test]
fn null_reads_as_absent() {
    let all_null = json!({
        "body": null, "timestamp": null, "headers": null, "request": null,
        "messageId": null, "delaySeconds": null,
    });
    assert_eq!(decoded(all_null), Message::default());
    let body = decoded(json!({"body": {"typeUrl": null, "value": null, "encoding": null}}));
    assert_eq!(body.body, Some(Any::default()));
}

// TestUnmarshal "objects": a nested message is a JSON object whose keys are
// its own fields' JSON names (`bar_id` -> `barId`; here `type_url`,
// `reply_to`, `entity_name`).
#[test]
fn nested_messages_are_objects_with_their_own_json_names() {
    let message = Message {
        body: Some(any(
            "type.googleapis.com/billing.v1.Invoice",
            b"\x0a\x03inv",
            WireEncoding::Unspecified,
        )),
        extension: Some(Extension::Upsert(Upsert {
            entity_name: "billing.v1.invoice".into(),
        })),
        ..Default::default()
    };
    let want = json!({
        "body": {"typeUrl": "type.googleapis.com/billing.v1.Invoice", "value": "CgNpbnY="},
        "upsert": {"entityName": "billing.v1.invoice"},
    });
    assert_eq!(encoded(&message), want);
    assert_eq!(decoded(want), message);
}

// TestUnmarshal "anon oneof": the members of a oneof without j5's `expose`
// option sit in the message itself, under their own names, with no
// wrapper object and no "!type" key (that form, "exposed oneof", needs
// the option, which o5's `extension` does not carry).
#[test]
fn the_extension_oneof_is_flattened_into_the_message() {
    let cases = [
        (
            Extension::Request(Request {
                reply_to: "prod/shop".into(),
            }),
            json!({"request": {"replyTo": "prod/shop"}}),
        ),
        (
            Extension::Reply(Reply {
                reply_to: "prod/shop".into(),
            }),
            json!({"reply": {"replyTo": "prod/shop"}}),
        ),
        (
            Extension::Event(Event {
                entity_name: "shop.v1.order".into(),
            }),
            json!({"event": {"entityName": "shop.v1.order"}}),
        ),
        (
            Extension::Upsert(Upsert {
                entity_name: "shop.v1.cart".into(),
            }),
            json!({"upsert": {"entityName": "shop.v1.cart"}}),
        ),
    ];
    for (extension, want) in cases {
        let message = Message {
            extension: Some(extension),
            ..Default::default()
        };
        assert_eq!(encoded(&message), want);
        assert_eq!(decoded(want), message);
    }
}

// decoder.go decodeOneofInner: "multiple keys found in oneof". A flattened
// oneof gets the same refusal here rather than a last-one-wins guess.
#[test]
fn two_members_of_the_oneof_are_refused() {
    let both = json!({"request": {"replyTo": "a"}, "event": {"entityName": "b"}});
    let e = decode(both.to_string().as_bytes()).unwrap_err();
    assert!(
        matches!(
            &e,
            J5Error::Field {
                problem: Problem::SeveralExtensions,
                ..
            }
        ),
        "{e}"
    );
}

// TestUnmarshal "enum" and "long enums": an enum is written as its value
// name less the type's prefix (the zero value's name before UNSPECIFIED);
// the long name reads too.
#[test]
fn enums_are_short_names_and_long_names_read_too() {
    let message = Message {
        body: Some(any("", b"", WireEncoding::J5Json)),
        ..Default::default()
    };
    assert_eq!(encoded(&message), json!({"body": {"encoding": "J5_JSON"}}));
    for name in ["J5_JSON", "WIRE_ENCODING_J5_JSON"] {
        assert_eq!(decoded(json!({"body": {"encoding": name}})), message);
    }
    let raw = decoded(json!({"body": {"encoding": "RAW"}}));
    assert_eq!(raw.body.unwrap().encoding, WireEncoding::Raw as i32);
    let unspecified = decoded(json!({"body": {"encoding": "UNSPECIFIED"}}));
    assert_eq!(unspecified.body.unwrap().encoding, 0);
    let e = decode(br#"{"body":{"encoding":"GZIP"}}"#).unwrap_err();
    assert!(e.to_string().contains("GZIP"), "{e}");
}

// type_enum.go GetValue: "enum value %d not found" - a number the enum does
// not define cannot be written.
#[test]
fn an_enum_number_without_a_name_cannot_be_written() {
    let message = Message {
        body: Some(Any {
            encoding: 42,
            ..Default::default()
        }),
        ..Default::default()
    };
    let e = encode(&message).unwrap_err();
    assert!(
        matches!(
            &e,
            J5Error::Field {
                problem: Problem::UnknownEnumNumber(42),
                ..
            }
        ),
        "{e}"
    );
}

// TestUnmarshal "bytes": standard base64 with padding is written; the
// URL-safe alphabet reads too.
#[test]
fn bytes_are_standard_base64_and_url_safe_base64_reads_too() {
    let value = vec![0xfb, 0xff, 0xbf, 0x01];
    let message = Message {
        body: Some(any("", &value, WireEncoding::Raw)),
        ..Default::default()
    };
    assert_eq!(
        encoded(&message),
        json!({"body": {"value": "+/+/AQ==", "encoding": "RAW"}})
    );
    let url_safe = decoded(json!({"body": {"value": "-_-_AQ==", "encoding": "RAW"}}));
    assert_eq!(url_safe, message);
    let e = decode(br#"{"body":{"value":"not base64!"}}"#).unwrap_err();
    assert!(
        matches!(
            &e,
            J5Error::Field {
                problem: Problem::Base64(_),
                ..
            }
        ),
        "{e}"
    );
}

// TestUnmarshal "map": a map<string, string> is a JSON object of strings.
#[test]
fn maps_are_json_objects_of_strings() {
    let message = Message {
        headers: [
            ("tenant".to_owned(), "globex".to_owned()),
            ("x-trace".to_owned(), "7f3a".to_owned()),
        ]
        .into(),
        ..Default::default()
    };
    let want = json!({"headers": {"tenant": "globex", "x-trace": "7f3a"}});
    assert_eq!(encoded(&message), want);
    assert_eq!(decoded(want), message);
}

// TestUnmarshal "well known types": a google.protobuf.Timestamp is an RFC 3339
// string in UTC ("2020-01-01T00:00:00Z"); structure_encode.go writes it with
// time.RFC3339Nano, so a fraction keeps only its significant digits.
#[test]
fn timestamps_are_rfc3339_in_utc() {
    let at = |seconds, nanos| Message {
        timestamp: Some(prost_types::Timestamp { seconds, nanos }),
        ..Default::default()
    };
    // 2024-02-29T12:30:05Z
    let leap_day = 1_709_209_805;
    assert_eq!(
        encoded(&at(leap_day, 0)),
        json!({"timestamp": "2024-02-29T12:30:05Z"})
    );
    assert_eq!(
        encoded(&at(leap_day, 250_000_000)),
        json!({"timestamp": "2024-02-29T12:30:05.25Z"})
    );
    assert_eq!(
        decoded(json!({"timestamp": "2024-02-29T12:30:05.25Z"})),
        at(leap_day, 250_000_000)
    );
    // An offset is read and normalised to UTC.
    assert_eq!(
        decoded(json!({"timestamp": "2024-02-29T14:30:05+02:00"})),
        at(leap_day, 0)
    );
    let e = decode(br#"{"timestamp":"29/02/2024"}"#).unwrap_err();
    assert!(
        matches!(
            &e,
            J5Error::Field {
                problem: Problem::Timestamp(_),
                ..
            }
        ),
        "{e}"
    );
}

// structure_encode.go formats with Go's RFC3339Nano, which has four-digit
// years: a timestamp outside 0000-9999 has no RFC 3339 form.
#[test]
fn a_timestamp_beyond_year_9999_cannot_be_written() {
    let message = Message {
        timestamp: Some(prost_types::Timestamp {
            seconds: 253_402_300_800, // 10000-01-01
            nanos: 0,
        }),
        ..Default::default()
    };
    let e = encode(&message).unwrap_err();
    assert!(
        matches!(
            &e,
            J5Error::Field {
                problem: Problem::TimestampOutOfRange,
                ..
            }
        ),
        "{e}"
    );
}

// TestUnmarshal "integers": an int32 is a JSON number (`"sInt32": -1`);
// value_go.go's FORMAT_INT32 takes no strings and checks the range.
#[test]
fn int32_is_a_json_number() {
    let message = Message {
        delay_seconds: 45,
        ..Default::default()
    };
    assert_eq!(encoded(&message), json!({"delaySeconds": 45}));
    assert_eq!(decoded(json!({"delaySeconds": 45})), message);
    assert_eq!(decoded(json!({"delaySeconds": -3})).delay_seconds, -3);
    for bad in [json!("45"), json!(4.5), json!(2_147_483_648_i64)] {
        let input = json!({ "delaySeconds": bad });
        assert!(decode(input.to_string().as_bytes()).is_err(), "{input}");
    }
}

// decoder.go decodeObjectInner: a key the schema does not have is an error.
#[test]
fn an_unknown_key_is_an_error() {
    for input in [
        json!({"messageID": "x"}),
        json!({"body": {"type_url": "x"}}),
        json!({"request": {"replyTo": "a", "extra": 1}}),
        json!({"extension": {"!type": "request", "request": {}}}),
    ] {
        assert!(decode(input.to_string().as_bytes()).is_err(), "{input}");
    }
}

/// Every field set, once per kind of extension: encode then decode gives the
/// same message, field by field.
#[test]
fn a_full_message_survives_encode_then_decode_field_by_field() {
    let extensions = [
        Extension::Request(Request {
            reply_to: "staging/orders".into(),
        }),
        Extension::Reply(Reply {
            reply_to: "staging/orders".into(),
        }),
        Extension::Event(Event {
            entity_name: "orders.v1.order".into(),
        }),
        Extension::Upsert(Upsert {
            entity_name: "orders.v1.order".into(),
        }),
    ];
    for extension in extensions {
        let message = Message {
            message_id: "5e0c2b8a-9d41-4f6e-a3b7-1c2d3e4f5a6b".into(),
            grpc_service: "orders.v1.topic.OrderTopic".into(),
            grpc_method: "OrderPlaced".into(),
            body: Some(any(
                "type.googleapis.com/orders.v1.OrderPlacedMessage",
                "{\"orderId\":\"o-7\",\"note\":\"ünïcode \\\" \\u0000\"}".as_bytes(),
                WireEncoding::J5Json,
            )),
            source_app: "orders".into(),
            source_env: "staging".into(),
            destination_topic: "orders-topic".into(),
            timestamp: Some(prost_types::Timestamp {
                seconds: 1_767_225_600,
                nanos: 123_456_789,
            }),
            headers: [
                ("o5-sidecar-outbox-version".to_owned(), "0.1.0".to_owned()),
                ("quote\"key".to_owned(), "line\nbreak".to_owned()),
            ]
            .into(),
            delay_seconds: 900,
            extension: Some(extension),
        };
        let back = decode(&encode(&message).unwrap()).unwrap();
        assert_eq!(back.message_id, message.message_id);
        assert_eq!(back.grpc_service, message.grpc_service);
        assert_eq!(back.grpc_method, message.grpc_method);
        assert_eq!(back.body, message.body);
        assert_eq!(back.source_app, message.source_app);
        assert_eq!(back.source_env, message.source_env);
        assert_eq!(back.destination_topic, message.destination_topic);
        assert_eq!(back.timestamp, message.timestamp);
        assert_eq!(back.headers, message.headers);
        assert_eq!(back.delay_seconds, message.delay_seconds);
        assert_eq!(back.extension, message.extension);
        assert_eq!(back, message, "and nothing else differs");
    }
}
