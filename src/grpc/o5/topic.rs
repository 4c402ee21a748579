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
//! - `message_id`: the `message-id` metadata, else a new UUID;
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
        message_id: Option<uuid::Uuid>,
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
            message_id: message_id.unwrap_or_else(uuid::Uuid::new_v4).to_string(),
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
