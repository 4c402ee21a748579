//! o5 topics: application services declared with the o5 option forms
//! (`(pentops.messaging.v1.config)`, `(j5.messaging.v1.service|config)`,
//! `(o5.messaging.v1.config)`), each call wrapped into an o5 `Message` and
//! published on the o5 exchange as the o5 bridge publishes; and services
//! whose messaging option the sidecar does not know, refused at start.

use super::o5::o5_exchange;
use super::*;
use outbox_relay::grpc::o5::{VERSION_HEADER, j5json};
use outbox_relay::proto::o5::messaging::v1::message::{Event, Extension, Reply, Request};
use outbox_relay::proto::o5::messaging::v1::{Any, Message};
use prost::Message as _;
use tonic::Code;

pub const O5_DESCRIPTORS: &str = concat!(env!("OUT_DIR"), "/o5_descriptors.bin");
pub const O5_LEGACY_DESCRIPTORS: &str = concat!(env!("OUT_DIR"), "/o5_legacy_descriptors.bin");
pub const UNKNOWN_DESCRIPTORS: &str = concat!(env!("OUT_DIR"), "/unknown_descriptors.bin");

/// The test protos' requests with one string field 1 (`foo.v1.BarMessage`,
/// `j5test.v1.Notice`, `j5test.v1.Job`, ...).
#[derive(Clone, PartialEq, prost::Message)]
struct Text {
    #[prost(string, tag = "1")]
    text: String,
}

/// `j5.messaging.v1.RequestMetadata`.
#[derive(Clone, PartialEq, prost::Message)]
struct RequestMetadata {
    #[prost(string, tag = "1")]
    reply_to: String,
    #[prost(bytes = "vec", tag = "2")]
    context: Vec<u8>,
}

/// `j5test.v1.GreetingMessage`, `GreetedMessage`, `QuoteRequest`: the
/// metadata in field 1, then a string.
#[derive(Clone, PartialEq, prost::Message)]
struct WithMetadata {
    #[prost(message, optional, tag = "1")]
    request: Option<RequestMetadata>,
    #[prost(string, tag = "2")]
    text: String,
}

fn text(text: &str) -> Vec<u8> {
    Text { text: text.into() }.encode_to_vec()
}

fn with_reply_to(reply_to: &str) -> Vec<u8> {
    WithMetadata {
        request: Some(RequestMetadata {
            reply_to: reply_to.into(),
            context: b"ctx".to_vec(),
        }),
        text: "hello".into(),
    }
    .encode_to_vec()
}

/// One call of an o5 topic and what its message must say.
struct Call {
    path: &'static str,
    input: &'static str,
    body: Vec<u8>,
    topic: &'static str,
    extension: Option<Extension>,
    id: String,
}

fn call(
    path: &'static str,
    input: &'static str,
    body: Vec<u8>,
    topic: &'static str,
    extension: Option<Extension>,
) -> Call {
    Call {
        path,
        input,
        body,
        topic,
        extension,
        id: uuid::Uuid::new_v4().to_string(),
    }
}

impl Call {
    /// `(service, method)` of the path.
    fn names(&self) -> (&str, &str) {
        self.path[1..].split_once('/').unwrap()
    }

    async fn send(&self, ch: &Channel) -> Result<(), tonic::Status> {
        let mut request = tonic::Request::new(self.body.clone().into());
        request.metadata_mut().insert(
            outbox_relay::grpc::MESSAGE_ID_METADATA,
            self.id.parse().unwrap(),
        );
        grpc::call_raw(ch.clone(), self.path, request).await
    }

    /// The message a call becomes, before the bridge stamps it.
    fn expected(&self) -> Message {
        let (service, method) = self.names();
        Message {
            message_id: self.id.clone(),
            grpc_service: service.into(),
            grpc_method: method.into(),
            body: Some(Any {
                type_url: format!("type.googleapis.com/{}", self.input),
                value: self.body.clone(),
                encoding: 0,
            }),
            destination_topic: self.topic.into(),
            extension: self.extension.clone(),
            ..Default::default()
        }
    }
}

fn request(reply_to: &str) -> Option<Extension> {
    Some(Extension::Request(Request {
        reply_to: reply_to.into(),
    }))
}

/// One call of every o5 topic of the test sets; requests are stamped with
/// `stamped_reply_to`.
fn every_form(stamped_reply_to: &str) -> Vec<Call> {
    vec![
        call(
            "/foo.v1.FooTopic/Bar",
            "foo.v1.BarMessage",
            text("bar"),
            "foo",
            None,
        ),
        call(
            "/j5test.v1.NoticeTopic/Posted",
            "j5test.v1.Notice",
            text("notice"),
            "notices",
            None,
        ),
        call(
            "/j5test.v1.GreetingRequestTopic/Greeting",
            "j5test.v1.GreetingMessage",
            with_reply_to(""),
            "greeting",
            request(stamped_reply_to),
        ),
        call(
            "/j5test.v1.GreetingReplyTopic/Greeted",
            "j5test.v1.GreetedMessage",
            with_reply_to("test/billing"),
            "",
            Some(Extension::Reply(Reply {
                reply_to: "test/billing".into(),
            })),
        ),
        call(
            "/j5test.v1.ThingPublishTopic/Thing",
            "j5test.v1.ThingEvent",
            text("thing-1"),
            "",
            Some(Extension::Event(Event {
                entity_name: "j5test.v1.thing".into(),
            })),
        ),
        call(
            "/j5test.v1.JobTopic/Run",
            "j5test.v1.Job",
            text("job-1"),
            "jobs",
            None,
        ),
        call(
            "/j5test.v1.QuoteRequestTopic/Quote",
            "j5test.v1.QuoteRequest",
            with_reply_to(""),
            "quote_request",
            request(stamped_reply_to),
        ),
        call(
            "/o5test.v1.LegacyTopic/Sent",
            "o5test.v1.Legacy",
            text("old"),
            "legacy",
            None,
        ),
    ]
}

fn o5_sets() -> Vec<&'static str> {
    vec![
        "--descriptor-set",
        O5_DESCRIPTORS,
        "--descriptor-set",
        O5_LEGACY_DESCRIPTORS,
    ]
}

/// The delivery of `call`, checked for what every o5 topic message shares.
fn delivery_of<'a>(
    got: &'a [lapin::message::Delivery],
    call: &Call,
    exchange: &str,
) -> &'a lapin::message::Delivery {
    let d = got
        .iter()
        .find(|d| common::message_id(d) == call.id)
        .unwrap_or_else(|| panic!("{} arrives", call.path));
    let (service, method) = call.names();
    assert_eq!(d.exchange.as_str(), exchange, "{}", call.path);
    assert_eq!(
        d.routing_key.as_str(),
        outbox_relay::grpc::method_route(service, method)
    );
    assert_eq!(header(d, "grpc-service").as_deref(), Some(service));
    assert_eq!(header(d, "grpc-method").as_deref(), Some(method));
    d
}

#[tokio::test]
async fn calls_of_each_o5_option_form_arrive_on_the_o5_exchange_as_stamped_o5_messages_in_j5_json()
{
    let env = TestEnv::new("grpc_o5_forms").await;
    let exchange = o5_exchange(&env).await;
    let o5 = [
        "--o5-exchange",
        &exchange,
        "--o5-app",
        "shop",
        "--o5-env",
        "test",
    ];
    let relay = sidecar(&env, &[&o5_sets()[..], &o5].concat()).await;
    let ch = channel(&relay).await;
    let calls = every_form("test/shop");
    for call in &calls {
        call.send(&ch).await.expect(call.path);
    }
    let got = env.consume(calls.len(), WITHIN, LINGER).await;
    relay.stop().await.unwrap();
    assert_eq!(got.len(), calls.len(), "one message per call");
    for call in &calls {
        let d = delivery_of(&got, call, &exchange);
        assert_eq!(content_type(d).as_deref(), Some("application/o5-message"));
        let mut body = j5json::decode(&d.data).expect("the body is J5 JSON");
        assert!(
            body.timestamp.take().is_some(),
            "{}: a timestamp",
            call.path
        );
        let mut want = call.expected();
        want.source_app = "shop".into();
        want.source_env = "test".into();
        want.headers
            .insert(VERSION_HEADER.into(), env!("CARGO_PKG_VERSION").into());
        assert_eq!(body, want, "{}", call.path);
    }
    env.drop_schema().await;
}

#[tokio::test]
async fn with_the_protobuf_wire_an_o5_topic_call_is_published_as_an_encoded_o5_message() {
    let env = TestEnv::new("grpc_o5_forms_pb").await;
    let exchange = o5_exchange(&env).await;
    let o5 = ["--o5-exchange", &exchange, "--o5-wire", "protobuf"];
    let relay = sidecar(&env, &[&o5_sets()[..], &o5].concat()).await;
    let ch = channel(&relay).await;
    // Without --o5-app / --o5-env and on this wire nothing is stamped: the
    // request keeps the reply_to of its RequestMetadata.
    let calls: Vec<Call> = every_form("")
        .into_iter()
        .filter(|c| c.path.contains("FooTopic") || c.path.contains("Greet"))
        .collect();
    for call in &calls {
        call.send(&ch).await.expect(call.path);
    }
    let got = env.consume(calls.len(), WITHIN, LINGER).await;
    relay.stop().await.unwrap();
    assert_eq!(got.len(), calls.len());
    for call in &calls {
        let d = delivery_of(&got, call, &exchange);
        assert_eq!(content_type(d).as_deref(), Some("application/protobuf"));
        let mut body = Message::decode(d.data.as_slice()).expect("an o5 Message");
        assert!(body.timestamp.take().is_some());
        assert_eq!(body, call.expected(), "{}", call.path);
    }
    let reply = got
        .iter()
        .find(|d| header(d, "grpc-method").as_deref() == Some("Greeted"))
        .unwrap();
    assert_eq!(
        header(reply, "o5-reply-reply-to").as_deref(),
        Some("test/billing")
    );
    env.drop_schema().await;
}

#[tokio::test]
async fn o5_topic_calls_are_stored_once_per_message_id_and_bad_ones_are_refused() {
    let env = TestEnv::new("grpc_o5_forms_bad").await;
    let relay = sidecar(&env, &o5_sets()).await;
    let ch = channel(&relay).await;
    let bar = call(
        "/foo.v1.FooTopic/Bar",
        "foo.v1.BarMessage",
        text("x"),
        "foo",
        None,
    );
    bar.send(&ch).await.expect("stored");
    bar.send(&ch).await.expect("a retry answers OK too");
    assert_eq!(rows(&env).await, 1, "a retried call is stored once");

    let nobody = call(
        "/j5test.v1.GreetingReplyTopic/Greeted",
        "j5test.v1.GreetedMessage",
        with_reply_to(""),
        "",
        None,
    );
    let e = nobody.send(&ch).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("request.reply_to"), "{e:?}");
    let undecodable = Call {
        body: vec![0x0a, 0x7f, 0x41],
        ..call("/foo.v1.FooTopic/Bar", "", vec![], "", None)
    };
    let e = undecodable.send(&ch).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let ordinary = call("/j5test.v1.Lookup/Find", "", vec![], "", None);
    let e = ordinary.send(&ch).await.unwrap_err();
    assert_eq!(
        e.code(),
        Code::Unimplemented,
        "a service without a messaging option is not served: {e:?}"
    );
    assert_eq!(rows(&env).await, 1, "nothing refused was stored");
    relay.stop().await.unwrap();
    env.drop_schema().await;
}

#[tokio::test]
async fn a_non_uuid_message_id_metadata_is_stored_once_and_is_the_id_of_the_properties_and_the_j5_body()
 {
    let env = TestEnv::new("grpc_o5_forms_text_id").await;
    let exchange = o5_exchange(&env).await;
    let relay = sidecar(
        &env,
        &[&o5_sets()[..], &["--o5-exchange", &exchange]].concat(),
    )
    .await;
    let ch = channel(&relay).await;
    let bar = |body: &str, id: String| Call {
        id,
        ..call(
            "/foo.v1.FooTopic/Bar",
            "foo.v1.BarMessage",
            text(body),
            "foo",
            None,
        )
    };
    let named = bar("named", format!("Bar {}/v2", unique("b")));
    named.send(&ch).await.expect("stored");
    named.send(&ch).await.expect("a retry answers OK too");
    assert_eq!(
        rows_with_id(&env, &named.id).await,
        1,
        "stored once, verbatim"
    );
    let unnamed = bar("unnamed", String::new());
    unnamed
        .send(&ch)
        .await
        .expect("an empty message-id is none");
    let e = bar("overlong", "m".repeat(256))
        .send(&ch)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(rows(&env).await, 2);
    let got = env.consume(2, WITHIN, LINGER).await;
    relay.stop().await.unwrap();
    assert_eq!(got.len(), 2, "each call once");
    for d in &got {
        let body = j5json::decode(&d.data).expect("J5 JSON");
        assert_eq!(
            common::message_id(d),
            body.message_id,
            "body and properties agree"
        );
        let sent = if body.body.as_ref().unwrap().value == text("named") {
            named.id.clone()
        } else {
            assert!(uuid::Uuid::parse_str(&body.message_id).is_ok(), "generated");
            body.message_id.clone()
        };
        assert_eq!(body.message_id, sent);
        assert_eq!(rows_with_id(&env, &sent).await, 1);
    }
    env.drop_schema().await;
}

#[tokio::test]
async fn o5_topics_read_from_the_applications_reflection_are_served() {
    let env = TestEnv::new("grpc_o5_forms_reflect").await;
    let exchange = o5_exchange(&env).await;
    let app_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_url = format!("http://{}", app_listener.local_addr().unwrap());
    let descriptors = std::fs::read(O5_DESCRIPTORS).unwrap();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(&descriptors)
        .build_v1()
        .unwrap();
    let app_stop = tokio_util::sync::CancellationToken::new();
    let app = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(reflection)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(app_listener),
                app_stop.clone().cancelled_owned(),
            ),
    );
    let relay = sidecar(
        &env,
        &[
            "--descriptor-reflection",
            &app_url,
            "--o5-exchange",
            &exchange,
        ],
    )
    .await;
    let ch = channel(&relay).await;
    let bar = call(
        "/foo.v1.FooTopic/Bar",
        "foo.v1.BarMessage",
        text("r"),
        "foo",
        None,
    );
    let served = wait_until(WITHIN, || {
        let (bar, ch) = (&bar, &ch);
        async move { bar.send(ch).await.is_ok() }
    })
    .await;
    assert!(served, "served once the application's reflection answered");
    let got = env.consume(1, WITHIN, LINGER).await;
    let d = delivery_of(&got, &bar, &exchange);
    let body = j5json::decode(&d.data).unwrap();
    assert_eq!(body.destination_topic, "foo");
    assert_eq!(body.body.unwrap().value, text("r"));
    app_stop.cancel();
    app.await.unwrap().unwrap();
    relay.stop().await.unwrap();
    env.drop_schema().await;
}

/// A descriptor set file holding service `hand.v1.Topic` whose
/// ServiceOptions are `options`, written as bytes, so that any option can be
/// written, even one no .proto defines.
fn hand_made_set(options: &[u8]) -> std::path::PathBuf {
    use prost::encoding::{WireType, encode_key, encode_varint};
    let embed = |number: u32, bytes: &[u8], out: &mut Vec<u8>| {
        encode_key(number, WireType::LengthDelimited, out);
        encode_varint(bytes.len() as u64, out);
        out.extend_from_slice(bytes);
    };
    let empty = ".google.protobuf.Empty".to_owned();
    let mut service = prost_types::ServiceDescriptorProto {
        name: Some("Topic".into()),
        method: vec![prost_types::MethodDescriptorProto {
            name: Some("Send".into()),
            input_type: Some(empty.clone()),
            output_type: Some(empty),
            ..Default::default()
        }],
        ..Default::default()
    }
    .encode_to_vec();
    embed(3, options, &mut service);
    let mut file = prost_types::FileDescriptorProto {
        name: Some("hand/v1/topic.proto".into()),
        package: Some("hand.v1".into()),
        dependency: vec!["google/protobuf/empty.proto".into()],
        syntax: Some("proto3".into()),
        ..Default::default()
    }
    .encode_to_vec();
    embed(6, &service, &mut file);
    let mut set = Vec::new();
    embed(1, &file, &mut set);
    let path = std::env::temp_dir().join(format!("{}.binpb", unique("hand")));
    std::fs::write(&path, set).unwrap();
    path
}

/// What `run` says on stderr with `set`, after checking it exits 2.
fn run_refused(env: &TestEnv, set: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
        .args(["run", "--schema", &env.schema, "--grpc-addr", "127.0.0.1:0"])
        .args(["--descriptor-set", set])
        .env_remove("OUTBOX_GRPC_ADDR")
        .env("OUTBOX_HTTP_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    stderr
}

#[tokio::test]
async fn a_messaging_option_the_sidecar_does_not_know_stops_run_naming_the_service_and_option() {
    let env = TestEnv::new("grpc_o5_unknown").await;
    let e = outbox_relay::App::build(env.run_args(&["--descriptor-set", UNKNOWN_DESCRIPTORS]))
        .await
        .err()
        .expect("refused");
    assert!(
        e.downcast_ref::<outbox_relay::grpc::TopologyError>()
            .is_some(),
        "{e:#}"
    );
    let stderr = run_refused(&env, UNKNOWN_DESCRIPTORS);
    assert!(stderr.contains("acme.v1.OrderQueue"), "{stderr}");
    assert!(stderr.contains("acme.messaging.v1.route"), "{stderr}");

    // A known option with a field this sidecar does not know: role 15 = {}.
    let mut options = Vec::new();
    prost::encoding::encode_key(
        93_563_435,
        prost::encoding::WireType::LengthDelimited,
        &mut options,
    );
    options.extend([0x02, 0x7a, 0x00]);
    let set = hand_made_set(&options);
    let stderr = run_refused(&env, set.to_str().unwrap());
    assert!(stderr.contains("hand.v1.Topic"), "{stderr}");
    assert!(
        stderr.contains("(j5.messaging.v1.service) sets field 15"),
        "{stderr}"
    );
    let _ = std::fs::remove_file(set);
    env.drop_schema().await;
}
