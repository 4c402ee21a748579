//! The catalog built from the test descriptor sets of `build.rs`: which
//! services are served, and the route each option form gives them.

use super::*;
use crate::grpc::descriptors::pool_from_files;
use crate::grpc::options::Role;
use std::path::PathBuf;

fn set(name: &str) -> PathBuf {
    PathBuf::from(env!("OUT_DIR")).join(name)
}

fn catalog_of(sets: &[&str]) -> Result<Catalog, TopologyError> {
    let files: Vec<PathBuf> = sets.iter().map(|s| set(s)).collect();
    Catalog::from_pool(&pool_from_files(&files).expect("the set decodes"))
}

/// Topic, role and reply path of an o5 topic's method.
fn o5(catalog: &Catalog, path: &str) -> (Option<String>, Role, String) {
    match &catalog.lookup(path).expect(path).route {
        Route::O5(route) => (route.topic.clone(), route.role.clone(), route.reply_path()),
        other => panic!("{path}: not an o5 topic: {other:?}"),
    }
}

fn topic(name: &str) -> Option<String> {
    Some(name.to_owned())
}

#[test]
fn method_routes_use_slashes_inside_the_service_name() {
    assert_eq!(
        method_route("orders.v1.OrderEvents", "Created"),
        "service.orders/v1/OrderEvents.Created"
    );
    assert_eq!(method_route("Flat", "M"), "service.Flat.M");
}

#[test]
fn each_o5_option_form_becomes_an_o5_route_with_its_topic_and_role() {
    let catalog = catalog_of(&["o5_descriptors.bin", "o5_legacy_descriptors.bin"]).unwrap();
    let none = String::new();
    assert_eq!(
        o5(&catalog, "/foo.v1.FooTopic/Bar"),
        (topic("foo"), Role::Publish, none.clone())
    );
    assert_eq!(
        o5(&catalog, "/j5test.v1.NoticeTopic/Posted"),
        (topic("notices"), Role::Publish, none.clone())
    );
    assert_eq!(
        o5(&catalog, "/j5test.v1.GreetingRequestTopic/Greeting"),
        (topic("greeting"), Role::Request, "request.reply_to".into())
    );
    assert_eq!(
        o5(&catalog, "/j5test.v1.GreetingReplyTopic/Greeted"),
        (None, Role::Reply, "request.reply_to".into())
    );
    assert_eq!(
        o5(&catalog, "/j5test.v1.ThingPublishTopic/Thing"),
        (
            None,
            Role::Event {
                entity_name: "j5test.v1.thing".into()
            },
            none.clone()
        )
    );
    assert_eq!(
        o5(&catalog, "/j5test.v1.JobTopic/Run"),
        (topic("jobs"), Role::Publish, none.clone())
    );
    assert_eq!(
        o5(&catalog, "/j5test.v1.QuoteRequestTopic/Quote"),
        (
            topic("quote_request"),
            Role::Request,
            "request.reply_to".into()
        )
    );
    assert_eq!(
        o5(&catalog, "/o5test.v1.LegacyTopic/Sent"),
        (topic("legacy"), Role::Publish, none)
    );
    assert!(
        catalog.lookup("/j5test.v1.Lookup/Find").is_none(),
        "a service without a messaging option is not served"
    );
    assert_eq!(
        catalog.declarations(),
        Declarations::default(),
        "o5 topics publish to the o5 exchange only"
    );
}

#[test]
fn our_option_keeps_its_raw_routes_next_to_the_o5_forms() {
    let catalog = catalog_of(&["test_descriptors.bin", "o5_descriptors.bin"]).unwrap();
    let created = catalog.lookup("/test.v1.OrderEvents/Created").unwrap();
    assert!(matches!(&created.route, Route::Broadcast { topic } if topic == "test-orders"));
    assert!(catalog.lookup("/foo.v1.FooTopic/Bar").is_some());
    assert!(catalog.lookup("/test.v1.Unrelated/Ping").is_none());
}

#[test]
fn a_service_with_a_messaging_option_the_sidecar_does_not_know_is_refused_naming_both() {
    let e = catalog_of(&["unknown_descriptors.bin"]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "acme.v1.OrderQueue: carries (acme.messaging.v1.route), a messaging option this sidecar does not know; it reads (outbox.messaging.v1.config), (pentops.messaging.v1.config), (j5.messaging.v1.config|service) and (o5.messaging.v1.config|service)"
    );
}

#[test]
fn the_option_name_shown_is_the_one_the_service_file_imports() {
    // o5test imports the o5 annotations; the pool also holds j5's, which
    // share the number.
    let pool = pool_from_files(&[set("o5_legacy_descriptors.bin")]).unwrap();
    let service = pool.get_service_by_name("o5test.v1.LegacyTopic").unwrap();
    let found = options::of_service(&service).unwrap().unwrap();
    assert_eq!(found.option, "o5.messaging.v1.config");
    let pool = pool_from_files(&[set("o5_descriptors.bin")]).unwrap();
    let service = pool.get_service_by_name("j5test.v1.JobTopic").unwrap();
    let found = options::of_service(&service).unwrap().unwrap();
    assert_eq!(found.option, "j5.messaging.v1.config");
}

/// A pool holding, besides the contract, service `hand.v1.Topic` (one rpc
/// `Send(Req) returns (google.protobuf.Empty)`) whose ServiceOptions are the
/// bytes `options`: any option can be written, even one no .proto defines.
fn pool_with_service(
    options: &[u8],
    request: Vec<prost_types::FieldDescriptorProto>,
) -> DescriptorPool {
    use prost::Message as _;
    use prost::encoding::{WireType, encode_key, encode_varint};
    let embed = |number: u32, bytes: &[u8], out: &mut Vec<u8>| {
        encode_key(number, WireType::LengthDelimited, out);
        encode_varint(bytes.len() as u64, out);
        out.extend_from_slice(bytes);
    };
    let service = prost_types::ServiceDescriptorProto {
        name: Some("Topic".into()),
        method: vec![prost_types::MethodDescriptorProto {
            name: Some("Send".into()),
            input_type: Some(".hand.v1.Req".into()),
            output_type: Some(".google.protobuf.Empty".into()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut service = service.encode_to_vec();
    embed(3, options, &mut service); // ServiceDescriptorProto.options
    let file = prost_types::FileDescriptorProto {
        name: Some("hand/v1/topic.proto".into()),
        package: Some("hand.v1".into()),
        dependency: vec!["google/protobuf/empty.proto".into()],
        message_type: vec![prost_types::DescriptorProto {
            name: Some("Req".into()),
            field: request,
            ..Default::default()
        }],
        syntax: Some("proto3".into()),
        ..Default::default()
    };
    let mut file = file.encode_to_vec();
    embed(6, &service, &mut file); // FileDescriptorProto.service
    let mut set = Vec::new();
    embed(1, &file, &mut set);
    let mut pool = crate::grpc::descriptors::base_pool();
    pool.decode_file_descriptor_set(set.as_slice())
        .expect("the hand-made set decodes");
    pool
}

/// `(j5.messaging.v1.service)` with these ServiceConfig bytes.
fn j5_service(config: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_key(
        93_563_435,
        prost::encoding::WireType::LengthDelimited,
        &mut out,
    );
    prost::encoding::encode_varint(config.len() as u64, &mut out);
    out.extend_from_slice(config);
    out
}

#[test]
fn a_field_the_known_option_does_not_define_survives_the_pool_and_is_refused() {
    // role 15 = {}: a role a newer j5 might define.
    let pool = pool_with_service(&j5_service(&[0x7a, 0x00]), vec![]);
    let e = Catalog::from_pool(&pool).unwrap_err();
    assert_eq!(
        e.to_string(),
        "hand.v1.Topic: (j5.messaging.v1.service) sets field 15, which this sidecar does not know (built against a newer option?)"
    );
}

#[test]
fn a_request_topic_whose_request_has_no_request_metadata_is_refused() {
    // request = {} (field 11), and a Req with only a string field.
    let name = prost_types::FieldDescriptorProto {
        name: Some("name".into()),
        number: Some(1),
        r#type: Some(prost_types::field_descriptor_proto::Type::String.into()),
        label: Some(prost_types::field_descriptor_proto::Label::Optional.into()),
        json_name: Some("name".into()),
        ..Default::default()
    };
    let pool = pool_with_service(&j5_service(&[0x5a, 0x00]), vec![name]);
    let e = Catalog::from_pool(&pool).unwrap_err();
    assert!(
        matches!(&e, TopologyError::RequestMetadata { service, method, input }
            if service == "hand.v1.Topic" && method == "Send" && input == "hand.v1.Req"),
        "{e}"
    );
    // The same service as a publish topic needs none.
    let pool = pool_with_service(&j5_service(&[0x52, 0x00]), vec![]);
    assert!(
        Catalog::from_pool(&pool)
            .unwrap()
            .lookup("/hand.v1.Topic/Send")
            .is_some()
    );
}
