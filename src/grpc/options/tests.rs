//! The mapping table, on option bytes built by hand as protoc encodes them.

use super::wire::message_field;
use super::*;
use std::collections::HashMap;

/// Descriptors that name some extensions; 33, 34 and 999 are the standard
/// ServiceOptions fields.
#[derive(Default)]
struct Pool(HashMap<u32, Vec<&'static str>>);

impl Names for Pool {
    fn is_standard(&self, number: u32) -> bool {
        matches!(number, 33 | 34 | 999)
    }
    fn names(&self, number: u32) -> Vec<String> {
        let known = self.0.get(&number).cloned().unwrap_or_else(|| {
            FORMS
                .iter()
                .find(|f| f.number == number)
                .map(|f| f.names.to_vec())
                .unwrap_or_default()
        });
        known.into_iter().map(str::to_owned).collect()
    }
}

fn pool(names: &[(u32, &'static str)]) -> Pool {
    let mut pool = Pool::default();
    for (number, name) in names {
        pool.0.entry(*number).or_default().push(name);
    }
    pool
}

/// A message of length-delimited fields.
fn msg(fields: &[(u32, &[u8])]) -> Vec<u8> {
    fields
        .iter()
        .flat_map(|(n, v)| message_field(*n, v))
        .collect()
}

fn read_with(options: &[u8], names: &Pool) -> Result<Option<Found>, OptionError> {
    read(options, names)
}

fn messaging(options: &[u8]) -> Messaging {
    read_with(options, &Pool::default())
        .expect("readable")
        .expect("a messaging option")
        .messaging
}

fn o5(topic: Option<&str>, role: Role) -> Messaging {
    Messaging::O5(O5Topic {
        topic: topic.map(str::to_owned),
        role,
    })
}

/// `(option).<kind>.<string field 1> = value`.
fn kind(option: u32, kind: u32, value: &str) -> Vec<u8> {
    msg(&[(option, &msg(&[(kind, &msg(&[(1, value.as_bytes())]))]))])
}

#[test]
fn each_form_has_one_field_number_in_the_table() {
    let numbers: Vec<(u32, Form)> = FORMS.iter().map(|f| (f.number, f.form)).collect();
    assert_eq!(
        numbers,
        [
            (58501, Form::Outbox),
            (58502, Form::Pentops),
            (93_563_434, Form::Config),
            (93_563_435, Form::Service),
        ]
    );
}

#[test]
fn our_option_maps_onto_broadcast_unicast_and_reply() {
    assert_eq!(
        messaging(&kind(58501, 1, "orders")),
        Messaging::Outbox(OutboxKind::Broadcast {
            topic_name: "orders".into()
        })
    );
    assert_eq!(
        messaging(&kind(58501, 2, "billing")),
        Messaging::Outbox(OutboxKind::Unicast {
            worker_name: "billing".into()
        })
    );
    assert_eq!(
        messaging(&kind(58501, 3, "request.reply_to")),
        Messaging::Outbox(OutboxKind::Reply {
            reply_to_field: "request.reply_to".into()
        })
    );
}

#[test]
fn the_documented_pentops_form_maps_as_the_o5_config_does() {
    let found = read_with(&kind(58502, 1, "foo"), &Pool::default())
        .unwrap()
        .unwrap();
    assert_eq!(found.option, "pentops.messaging.v1.config");
    assert_eq!(found.messaging, o5(Some("foo"), Role::Publish));
    assert_eq!(
        messaging(&kind(58502, 2, "jobs")),
        o5(Some("jobs"), Role::Publish)
    );
    assert_eq!(
        messaging(&kind(58502, 3, "quote")),
        o5(Some("quote_request"), Role::Request)
    );
    assert_eq!(
        messaging(&kind(58502, 4, "quote")),
        o5(Some("quote_reply"), Role::Reply)
    );
}

#[test]
fn the_older_config_kinds_map_as_upstreams_generator_upscales_them() {
    let config = 93_563_434;
    assert_eq!(
        messaging(&kind(config, 1, "news")),
        o5(Some("news"), Role::Publish)
    );
    assert_eq!(
        messaging(&kind(config, 2, "jobs")),
        o5(Some("jobs"), Role::Publish)
    );
    assert_eq!(
        messaging(&kind(config, 3, "quote")),
        o5(Some("quote_request"), Role::Request)
    );
    assert_eq!(
        messaging(&kind(config, 4, "quote")),
        o5(Some("quote_reply"), Role::Reply)
    );
}

#[test]
fn the_service_config_roles_map_onto_o5_roles_with_their_topic_name() {
    let service = |fields: &[(u32, &[u8])]| msg(&[(93_563_435, &msg(fields))]);
    assert_eq!(
        messaging(&service(&[(1, b"greeting"), (11, b"")])),
        o5(Some("greeting"), Role::Request)
    );
    assert_eq!(messaging(&service(&[(10, b"")])), o5(None, Role::Publish));
    assert_eq!(messaging(&service(&[(12, b"")])), o5(None, Role::Reply));
    let entity = msg(&[(1, b"shop.v1.order")]);
    assert_eq!(
        messaging(&service(&[(13, &entity)])),
        o5(
            None,
            Role::Event {
                entity_name: "shop.v1.order".into()
            }
        )
    );
    assert_eq!(
        messaging(&service(&[(1, b"orders"), (14, &entity)])),
        o5(
            Some("orders"),
            Role::Upsert {
                entity_name: "shop.v1.order".into()
            }
        )
    );
    // A oneof set twice: the last member wins, as protobuf reads it.
    assert_eq!(
        messaging(&service(&[(10, b""), (12, b"")])),
        o5(None, Role::Reply)
    );
}

#[test]
fn the_name_shown_is_the_one_the_service_imports() {
    let names = pool(&[
        (93_563_435, "o5.messaging.v1.service"),
        (93_563_435, "j5.messaging.v1.service"),
    ]);
    let options = msg(&[(93_563_435, &msg(&[(10, b"")]))]);
    let found = read_with(&options, &names).unwrap().unwrap();
    assert_eq!(found.option, "o5.messaging.v1.service");
}

#[test]
fn the_service_form_wins_over_the_older_config_as_upstream_reads_them() {
    let mut options = kind(93_563_434, 1, "old");
    options.extend(msg(&[(93_563_435, &msg(&[(1, b"new"), (10, b"")]))]));
    assert_eq!(messaging(&options), o5(Some("new"), Role::Publish));
}

#[test]
fn two_different_forms_on_one_service_are_refused() {
    let mut options = kind(58501, 1, "orders");
    options.extend(kind(58502, 1, "orders"));
    let e = read_with(&options, &Pool::default()).unwrap_err();
    assert_eq!(
        e,
        OptionError::Several {
            first: "outbox.messaging.v1.config".into(),
            second: "pentops.messaging.v1.config".into(),
        }
    );
}

#[test]
fn a_field_the_option_does_not_define_is_refused_naming_it() {
    // A role j5 might add one day.
    let options = msg(&[(93_563_435, &msg(&[(15, b"")]))]);
    let e = read_with(&options, &Pool::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "(j5.messaging.v1.service) sets field 15, which this sidecar does not know (built against a newer option?)"
    );
    // Deeper: a second field inside broadcast.
    let inner = msg(&[(1, b"foo"), (2, b"x")]);
    let options = msg(&[(58502, &msg(&[(1, &inner)]))]);
    let e = read_with(&options, &Pool::default()).unwrap_err();
    assert_eq!(
        e,
        OptionError::UnknownField {
            option: "pentops.messaging.v1.config".into(),
            field: 2,
            within: " of broadcast".into(),
        }
    );
    // A fifth kind of ours, and a field inside an empty role.
    assert!(read_with(&kind(58501, 5, "x"), &Pool::default()).is_err());
    let options = msg(&[(93_563_435, &msg(&[(10, &msg(&[(1, b"x")]))]))]);
    assert!(matches!(
        read_with(&options, &Pool::default()),
        Err(OptionError::UnknownField { field: 1, .. })
    ));
}

#[test]
fn an_unknown_extension_in_a_messaging_package_is_refused_naming_it() {
    let names = pool(&[(77001, "acme.messaging.v1.route")]);
    let e = read_with(&kind(77001, 1, "orders"), &names).unwrap_err();
    assert_eq!(
        e,
        OptionError::Unknown {
            option: "acme.messaging.v1.route".into()
        }
    );
    // Ours, at a number that is not ours: a home-made copy of the docs.
    let names = pool(&[(50123, "pentops.messaging.v1.config")]);
    assert!(read_with(&kind(50123, 1, "foo"), &names).is_err());
    // Two extensions share a number: the one the service imports decides.
    let names = pool(&[
        (1049, "google.api.default_host"),
        (1049, "acme.messaging.v1.x"),
    ]);
    assert_eq!(read_with(&msg(&[(1049, b"h")]), &names), Ok(None));
}

#[test]
fn standard_options_and_extensions_outside_messaging_are_ignored() {
    let names = pool(&[
        (1049, "google.api.default_host"),
        (60001, "acme.auth.v1.policy"),
    ]);
    let mut options = vec![0x88, 0x02, 0x01]; // deprecated (33) = true
    options.extend(msg(&[(1049, b"api.example.com"), (60001, b"")]));
    assert_eq!(read_with(&options, &names), Ok(None));
    // ... also next to a messaging option.
    options.extend(kind(58502, 1, "foo"));
    assert_eq!(
        read_with(&options, &names).unwrap().unwrap().messaging,
        o5(Some("foo"), Role::Publish)
    );
}

#[test]
fn an_extension_the_descriptors_do_not_define_is_refused() {
    let e = read_with(&kind(70000, 1, "x"), &Pool::default()).unwrap_err();
    assert_eq!(e, OptionError::Undefined { number: 70000 });
}

#[test]
fn a_service_without_options_is_not_a_topic() {
    assert_eq!(read_with(&[], &Pool::default()), Ok(None));
}

#[test]
fn an_option_that_sets_no_kind_or_role_is_refused() {
    for number in [58501, 58502, 93_563_434, 93_563_435] {
        let e = read_with(&msg(&[(number, b"")]), &Pool::default()).unwrap_err();
        assert!(matches!(e, OptionError::NoKind { .. }), "{number}: {e}");
    }
    let topic_only = msg(&[(93_563_435, &msg(&[(1, b"t")]))]);
    assert!(matches!(
        read_with(&topic_only, &Pool::default()),
        Err(OptionError::NoKind { .. })
    ));
}

#[test]
fn an_event_or_upsert_without_its_entity_name_is_refused() {
    for role in [13, 14] {
        let options = msg(&[(93_563_435, &msg(&[(role, b"")]))]);
        let e = read_with(&options, &Pool::default()).unwrap_err();
        assert!(matches!(e, OptionError::Missing { .. }), "{e}");
    }
}

#[test]
fn values_of_the_wrong_wire_type_or_malformed_bytes_are_refused() {
    use prost::encoding::{WireType, encode_key, encode_varint};
    // The option as a varint.
    let mut options = Vec::new();
    encode_key(58502, WireType::Varint, &mut options);
    encode_varint(1, &mut options);
    let e = read_with(&options, &Pool::default()).unwrap_err();
    assert!(matches!(e, OptionError::WireType { .. }), "{e}");
    // topic_name as a varint.
    let options = msg(&[(93_563_435, &[0x08, 0x01])]);
    let e = read_with(&options, &Pool::default()).unwrap_err();
    assert!(matches!(e, OptionError::WireType { .. }), "{e}");
    // A truncated option.
    let mut options = kind(58502, 1, "foo");
    options.pop();
    let e = read_with(&options, &Pool::default()).unwrap_err();
    assert!(matches!(e, OptionError::Malformed { .. }), "{e}");
}
