//! `outbox.v1.Publisher`: the generic publisher, for senders that name the
//! exchange and routing key themselves. Its checks ([`parse_message_id`],
//! [`check_route`], [`parse_ordering_key`]) are the HTTP API's too.
//!
//! An ordering key comes with a message (`PublishRequest.ordering_key`) or
//! for the whole call (metadata [`ORDERING_KEY_METADATA`], also read by the
//! topic services): a message's own key wins over the call's.

use super::observe::CallTrace;
use super::sink::Sink;
use super::status::{IngressError, caller_timeout, within_deadline};
use crate::outbox::{MessageId, NewMessage, check_ordering_key};
use crate::proto::outbox::v1::publisher_server::Publisher;
use crate::proto::outbox::v1::{PublishBatchRequest, PublishRequest};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

/// The call's ordering key, for every message of the call that does not
/// set its own (`PublishRequest.ordering_key`).
pub const ORDERING_KEY_METADATA: &str = "ordering-key";

pub struct PublisherService {
    sink: Arc<Sink>,
}

impl PublisherService {
    pub fn new(sink: Arc<Sink>) -> Self {
        Self { sink }
    }
}

#[tonic::async_trait]
impl Publisher for PublisherService {
    async fn publish(&self, request: Request<PublishRequest>) -> Result<Response<()>, Status> {
        let timeout = caller_timeout(request.metadata().as_ref());
        let trace = CallTrace::of(request.extensions());
        let key = ordering_key_of(request.metadata())?;
        let message = to_new_message(request.into_inner(), key.as_deref())?;
        within_deadline(timeout, self.sink.accept(vec![message], &trace)).await?;
        Ok(Response::new(()))
    }

    async fn publish_batch(
        &self,
        request: Request<PublishBatchRequest>,
    ) -> Result<Response<()>, Status> {
        let timeout = caller_timeout(request.metadata().as_ref());
        let trace = CallTrace::of(request.extensions());
        let key = ordering_key_of(request.metadata())?;
        let messages = request
            .into_inner()
            .messages
            .into_iter()
            .map(|m| to_new_message(m, key.as_deref()))
            .collect::<Result<Vec<_>, _>>()?;
        within_deadline(timeout, self.sink.accept(messages, &trace)).await?;
        Ok(Response::new(()))
    }
}

fn to_new_message(
    request: PublishRequest,
    call_key: Option<&str>,
) -> Result<NewMessage, IngressError> {
    let delay = match request.delay {
        None => Duration::ZERO,
        Some(d) => Duration::try_from(d).map_err(|_| IngressError::NegativeDelay)?,
    };
    let message = NewMessage {
        message_id: parse_message_id(&request.message_id)?,
        exchange: request.exchange,
        routing_key: request.routing_key,
        payload: request.payload,
        content_type: (!request.content_type.is_empty()).then_some(request.content_type),
        headers: request
            .headers
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect(),
        delay,
        ordering_key: match parse_ordering_key(&request.ordering_key)? {
            Some(own) => Some(own),
            None => call_key.map(str::to_owned),
        },
    };
    check_route(&message)?;
    Ok(message)
}

/// A message's `ordering_key` field: empty for none (proto3 cannot tell an
/// empty string from an unset one), else 1 to 256 bytes.
pub fn parse_ordering_key(key: &str) -> Result<Option<String>, IngressError> {
    if key.is_empty() {
        return Ok(None);
    }
    check_ordering_key(key)?;
    Ok(Some(key.to_owned()))
}

/// The call's `ordering-key` metadata, if sent: 1 to 256 bytes of text (an
/// empty value is refused: it was sent on purpose, and means nothing).
pub fn ordering_key_of(metadata: &MetadataMap) -> Result<Option<String>, IngressError> {
    let Some(value) = metadata.get(ORDERING_KEY_METADATA) else {
        return Ok(None);
    };
    // gRPC metadata is printable ASCII; UTF-8 beyond it is read as text too.
    let text =
        std::str::from_utf8(value.as_bytes()).map_err(|_| IngressError::OrderingKeyNotText)?;
    check_ordering_key(text)?;
    Ok(Some(text.to_owned()))
}

/// A sender's `message_id`: any text of 1 to 255 bytes without control
/// characters (kept verbatim), or empty for one generated on storing.
/// Shared with the HTTP API (`POST /api/messages`).
pub fn parse_message_id(id: &str) -> Result<Option<MessageId>, IngressError> {
    Ok(MessageId::optional(id)?)
}

/// The generic publisher's rule on where a message goes, whichever door
/// it came through (this service, `POST /api/messages`): the default
/// exchange routes by queue name, so it needs a routing key.
pub fn check_route(message: &NewMessage) -> Result<(), IngressError> {
    if message.exchange.is_empty() && message.routing_key.is_empty() {
        return Err(IngressError::Missing {
            field: "routing_key (the queue name, with the default exchange)".to_owned(),
        });
    }
    Ok(())
}
