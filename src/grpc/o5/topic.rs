//! o5 topics: application services carrying an o5 messaging option
//! (`(j5|o5.messaging.v1.service|config)`, `(pentops.messaging.v1.config)`),
//! served as o5's own sidecar serves them. Each call becomes an
//! `o5.messaging.v1.Message`, filled as upstream's generated senders fill it,
//! and is then published by the bridge ([`super::Bridge::publish`]) exactly
//! as a `MessageBridgeTopic/Send` of that message would be:
//!
//! - `grpc_service` / `grpc_method`: the called service and method;
//! - `body`: the request bytes as the client encoded them, `type_url`
//!   `type.googleapis.com/<request type>`, `encoding` protobuf (the zero
//!   value, `WIRE_ENCODING_UNSPECIFIED`);
//! - `message_id`: the `message-id` metadata, verbatim, else a new UUID;
//! - `destination_topic`: the option's topic name (unset when it names none);
//! - `timestamp`: now;
//! - the extension, by role: `publish` none; `request` `Request{reply_to}`
//!   with the request's RequestMetadata `reply_to` (the bridge's stamp then
//!   makes it `<env>/<app>` when both are configured); `reply`
//!   `Reply{reply_to}` from the request's RequestMetadata, which must name
//!   the requester (else INVALID_ARGUMENT: o5 routes replies by it);
//!   `event` / `upsert` `Event` / `Upsert{entity_name}`.

use super::super::options::{O5Topic, Role};
use super::super::status::IngressError;
use crate::outbox::MessageId;
use crate::proto::o5::messaging::v1::message::{Event, Extension, Reply, Request, Upsert};
use crate::proto::o5::messaging::v1::{Any, Message, WireEncoding};
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, Value,
};

/// The types a request/reply topic's request carries its reply address in:
/// j5's, and o5-messaging's before it.
const REQUEST_METADATA: [&str; 2] = [
    "j5.messaging.v1.RequestMetadata",
    "o5.messaging.v1.RequestMetadata",
];

/// One method of an o5 topic.
#[derive(Debug, Clone)]
pub struct O5Route {
    /// The messages' `destination_topic`.
    pub topic: Option<String>,
    pub role: Role,
    /// The request type's RequestMetadata field (request and reply roles).
    pub metadata: Option<FieldDescriptor>,
}

/// The route of a method whose request type is `input`; `None` when a
/// request or reply topic's request type lacks its one RequestMetadata
/// field (upstream's generator refuses such a service too).
pub fn route_of(topic: &O5Topic, input: &MessageDescriptor) -> Option<O5Route> {
    let metadata = match topic.role {
        Role::Request | Role::Reply => Some(metadata_field(input)?),
        Role::Publish | Role::Event { .. } | Role::Upsert { .. } => None,
    };
    Some(O5Route {
        topic: topic.topic.clone(),
        role: topic.role.clone(),
        metadata,
    })
}

fn metadata_field(input: &MessageDescriptor) -> Option<FieldDescriptor> {
    let mut found = input.fields().filter(|f| {
        !f.is_list()
            && !f.is_map()
            && matches!(f.kind(), Kind::Message(m) if REQUEST_METADATA.contains(&m.full_name()))
    });
    match (found.next(), found.next()) {
        (Some(field), None) => Some(field),
        _ => None,
    }
}

impl O5Route {
    /// Where a reply's requester is read, for messages.
    pub fn reply_path(&self) -> String {
        self.metadata
            .as_ref()
            .map(|f| format!("{}.reply_to", f.name()))
            .unwrap_or_default()
    }

    /// The o5 message of one call of `service`/`method`, whose request is
    /// `bytes`, decoded as `request`.
    pub fn message_of(
        &self,
        (service, method): (&str, &str),
        request: &DynamicMessage,
        bytes: &[u8],
        message_id: Option<MessageId>,
    ) -> Result<Message, IngressError> {
        let reply_to = self.metadata.as_ref().and_then(|f| reply_to_of(request, f));
        let extension = match &self.role {
            Role::Publish => None,
            Role::Request => Some(Extension::Request(Request {
                reply_to: reply_to.unwrap_or_default(),
            })),
            Role::Reply => Some(Extension::Reply(Reply {
                reply_to: reply_to.filter(|r| !r.is_empty()).ok_or_else(|| {
                    IngressError::NoRequester {
                        path: self.reply_path(),
                    }
                })?,
            })),
            Role::Event { entity_name } => Some(Extension::Event(Event {
                entity_name: entity_name.clone(),
            })),
            Role::Upsert { entity_name } => Some(Extension::Upsert(Upsert {
                entity_name: entity_name.clone(),
            })),
        };
        Ok(Message {
            message_id: message_id.unwrap_or_else(MessageId::generate).to_string(),
            grpc_service: service.to_owned(),
            grpc_method: method.to_owned(),
            body: Some(Any {
                type_url: format!("type.googleapis.com/{}", request.descriptor().full_name()),
                value: bytes.to_vec(),
                encoding: WireEncoding::Unspecified.into(),
            }),
            destination_topic: self.topic.clone().unwrap_or_default(),
            timestamp: Some(std::time::SystemTime::now().into()),
            extension,
            ..Message::default()
        })
    }
}

/// `reply_to` of the request's RequestMetadata field, when that is set.
fn reply_to_of(request: &DynamicMessage, field: &FieldDescriptor) -> Option<String> {
    if !request.has_field(field) {
        return None;
    }
    let Value::Message(metadata) = request.get_field(field).into_owned() else {
        return None;
    };
    match metadata.get_field_by_name("reply_to")?.as_ref() {
        Value::String(reply_to) => Some(reply_to.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::Catalog;
    use crate::grpc::topology::Route;
    use prost::Message as _;

    /// The catalog of the pentops and j5 test set, and a request of `path`
    /// whose RequestMetadata (if any) has `reply_to`.
    fn call(path: &str, reply_to: Option<&str>) -> (O5Route, DynamicMessage, Vec<u8>) {
        let set = std::path::PathBuf::from(env!("OUT_DIR")).join("o5_descriptors.bin");
        let pool = crate::grpc::descriptors::pool_from_files(&[set]).unwrap();
        let catalog = Catalog::from_pool(&pool).unwrap();
        let method = catalog.lookup(path).expect(path);
        let Route::O5(route) = &method.route else {
            panic!("{path} is not an o5 topic");
        };
        let mut request = DynamicMessage::new(method.input.clone());
        if let (Some(field), Some(reply_to)) = (&route.metadata, reply_to) {
            let Kind::Message(metadata) = field.kind() else {
                unreachable!()
            };
            let mut metadata = DynamicMessage::new(metadata);
            metadata.set_field_by_name("reply_to", Value::String(reply_to.into()));
            request.set_field(field, Value::Message(metadata));
        }
        let bytes = request.encode_to_vec();
        (route.clone(), request, bytes)
    }

    const ID: &str = "0b9d6f3e-4a7c-4d0e-9a51-3f2c8e7b1d20";

    #[test]
    fn a_call_becomes_a_message_with_its_names_its_bytes_as_a_protobuf_body_and_the_topic() {
        let (route, request, bytes) = call("/foo.v1.FooTopic/Bar", None);
        let id = MessageId::parse(ID).unwrap();
        let message = route
            .message_of(("foo.v1.FooTopic", "Bar"), &request, &bytes, Some(id))
            .unwrap();
        assert_eq!(message.message_id, ID);
        assert_eq!(message.grpc_service, "foo.v1.FooTopic");
        assert_eq!(message.grpc_method, "Bar");
        assert_eq!(
            message.body,
            Some(Any {
                type_url: "type.googleapis.com/foo.v1.BarMessage".into(),
                value: bytes,
                encoding: WireEncoding::Unspecified.into(),
            })
        );
        assert_eq!(message.destination_topic, "foo");
        assert!(message.timestamp.is_some());
        assert_eq!(message.extension, None);
        let other = route
            .message_of(("foo.v1.FooTopic", "Bar"), &request, &[], None)
            .unwrap();
        assert!(uuid::Uuid::parse_str(&other.message_id).is_ok(), "a new id");
    }

    #[test]
    fn requests_and_replies_carry_the_reply_to_of_their_request_metadata() {
        let names = ("j5test.v1.GreetingRequestTopic", "Greeting");
        let (route, request, bytes) = call("/j5test.v1.GreetingRequestTopic/Greeting", None);
        let message = route.message_of(names, &request, &bytes, None).unwrap();
        assert_eq!(
            message.extension,
            Some(Extension::Request(Request::default())),
            "the bridge's stamp fills it in"
        );
        let names = ("j5test.v1.GreetingReplyTopic", "Greeted");
        let (route, request, bytes) =
            call("/j5test.v1.GreetingReplyTopic/Greeted", Some("test/shop"));
        let message = route.message_of(names, &request, &bytes, None).unwrap();
        assert_eq!(
            message.extension,
            Some(Extension::Reply(Reply {
                reply_to: "test/shop".into()
            }))
        );
        for reply_to in [None, Some("")] {
            let (route, request, bytes) = call("/j5test.v1.GreetingReplyTopic/Greeted", reply_to);
            let e = route.message_of(names, &request, &bytes, None).unwrap_err();
            assert!(
                matches!(&e, IngressError::NoRequester { path } if path == "request.reply_to"),
                "{e}"
            );
        }
    }

    #[test]
    fn an_event_topic_names_its_entity() {
        let (route, request, bytes) = call("/j5test.v1.ThingPublishTopic/Thing", None);
        let message = route
            .message_of(
                ("j5test.v1.ThingPublishTopic", "Thing"),
                &request,
                &bytes,
                None,
            )
            .unwrap();
        assert_eq!(
            message.extension,
            Some(Extension::Event(Event {
                entity_name: "j5test.v1.thing".into()
            }))
        );
    }
}
