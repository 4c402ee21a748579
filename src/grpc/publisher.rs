//! `outbox.v1.Publisher`: the generic publisher, for senders that name the
//! exchange and routing key themselves. Its checks ([`parse_message_id`],
//! [`check_route`]) are the HTTP API's too.

use super::observe::CallTrace;
use super::sink::Sink;
use super::status::{IngressError, caller_timeout, within_deadline};
use crate::outbox::{MessageId, NewMessage};
use crate::proto::outbox::v1::publisher_server::Publisher;
use crate::proto::outbox::v1::{PublishBatchRequest, PublishRequest};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

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
        let message = to_new_message(request.into_inner())?;
        within_deadline(timeout, self.sink.accept(vec![message], &trace)).await?;
        Ok(Response::new(()))
    }

    async fn publish_batch(
        &self,
        request: Request<PublishBatchRequest>,
    ) -> Result<Response<()>, Status> {
        let timeout = caller_timeout(request.metadata().as_ref());
        let trace = CallTrace::of(request.extensions());
        let messages = request
            .into_inner()
            .messages
            .into_iter()
            .map(to_new_message)
            .collect::<Result<Vec<_>, _>>()?;
        within_deadline(timeout, self.sink.accept(messages, &trace)).await?;
        Ok(Response::new(()))
    }
}

fn to_new_message(request: PublishRequest) -> Result<NewMessage, IngressError> {
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
    };
    check_route(&message)?;
    Ok(message)
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
