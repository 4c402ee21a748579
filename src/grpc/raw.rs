//! Topic services at their real paths, and the o5 bridge, served from raw
//! request bytes: requests are published exactly as the client encoded them.
//!
//! This service is the router's fallback, so it sees every path no compiled
//! service claims: a path in the catalog is decoded against its declared
//! request type (INVALID_ARGUMENT when it does not decode), routed by its
//! topology (an o5 topic's call is wrapped into an o5 `Message` and handed
//! to the o5 bridge) and stored; any other path is UNIMPLEMENTED. The
//! request size limit is enforced while reading (RESOURCE_EXHAUSTED).

use super::codec::BytesIn;
use super::o5;
use super::observe::CallTrace;
use super::publisher::ordering_key_of;
use super::sink::Sink;
use super::status::{IngressError, caller_timeout, within_deadline};
use super::topology::{Catalog, HEADER_METHOD, HEADER_SERVICE, HEADER_TYPE, PROTOBUF, Route};
use crate::outbox::{MessageId, NewMessage};
use bytes::Bytes;
use serde_json::Value;
use std::convert::Infallible;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::codegen::{BoxFuture, StdError, http};
use tonic::server::{Grpc, UnaryService};
use tonic::{Request, Response, Status};

/// Metadata key with which a caller of a topic service sets the message_id
/// (any text [`MessageId::parse`] accepts, kept verbatim), so that a
/// retried call is stored once. Empty or absent: one is generated.
pub const MESSAGE_ID_METADATA: &str = "message-id";

/// The catalog of topic services; `None` until the application's reflection
/// has answered.
#[derive(Debug, Clone)]
pub struct CatalogSlot(Arc<RwLock<Option<Arc<Catalog>>>>);

impl CatalogSlot {
    pub fn ready(catalog: Catalog) -> Self {
        Self(Arc::new(RwLock::new(Some(Arc::new(catalog)))))
    }

    pub fn pending() -> Self {
        Self(Arc::new(RwLock::new(None)))
    }

    pub fn set(&self, catalog: Arc<Catalog>) {
        *self.0.write().expect("poisoned") = Some(catalog);
    }

    pub fn get(&self) -> Option<Arc<Catalog>> {
        self.0.read().expect("poisoned").clone()
    }
}

/// The fallback service.
#[derive(Clone)]
pub struct TopicIngress {
    shared: Arc<Shared>,
}

struct Shared {
    sink: Arc<Sink>,
    catalog: CatalogSlot,
    o5: o5::Bridge,
    max_request: usize,
}

impl TopicIngress {
    pub fn new(sink: Arc<Sink>, catalog: CatalogSlot, o5: o5::Bridge, max_request: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                sink,
                catalog,
                o5,
                max_request,
            }),
        }
    }
}

impl<B> tonic::codegen::Service<http::Request<B>> for TopicIngress
where
    B: tonic::codegen::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let call = Call {
            shared: self.shared.clone(),
            path: req.uri().path().to_owned(),
        };
        let limit = self.shared.max_request;
        Box::pin(async move {
            let mut grpc = Grpc::new(BytesIn).apply_max_message_size_config(Some(limit), None);
            Ok(grpc.unary(call, req).await)
        })
    }
}

struct Call {
    shared: Arc<Shared>,
    path: String,
}

impl UnaryService<Bytes> for Call {
    type Response = ();
    type Future = BoxFuture<Response<()>, Status>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let shared = self.shared.clone();
        let path = std::mem::take(&mut self.path);
        Box::pin(async move {
            let timeout = caller_timeout(request.metadata().as_ref());
            let trace = CallTrace::of(request.extensions());
            let message = shared.to_new_message(&path, &request)?;
            within_deadline(timeout, shared.sink.accept(vec![message], &trace)).await?;
            Ok(Response::new(()))
        })
    }
}

impl Shared {
    fn to_new_message(
        &self,
        path: &str,
        request: &Request<Bytes>,
    ) -> Result<NewMessage, IngressError> {
        let bytes = request.get_ref();
        if path == o5::SEND_PATH {
            return self.o5.to_new_message(bytes);
        }
        let catalog = self.catalog.get().ok_or(IngressError::CatalogPending)?;
        let method = catalog
            .lookup(path)
            .ok_or_else(|| IngressError::Unimplemented(path.to_owned()))?;
        let decoded = prost_reflect::DynamicMessage::decode(method.input.clone(), bytes.clone())
            .map_err(|e| IngressError::Undecodable {
                type_name: method.input.full_name().to_owned(),
                reason: e.to_string(),
            })?;
        if let Route::O5(route) = &method.route {
            let names = (method.service.as_str(), method.method.as_str());
            let message = route.message_of(names, &decoded, bytes, message_id_of(request)?)?;
            let mut new = self.o5.publish(message, None)?;
            new.ordering_key = ordering_key_of(request.metadata())?;
            return Ok(new);
        }
        let destination =
            method
                .destination(&decoded)
                .ok_or_else(|| IngressError::NoRequester {
                    path: method.reply_path(),
                })?;
        let headers = [
            (HEADER_SERVICE, method.service.as_str()),
            (HEADER_METHOD, method.method.as_str()),
            (HEADER_TYPE, method.input.full_name()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
        .collect();
        Ok(NewMessage {
            message_id: message_id_of(request)?,
            exchange: destination.exchange,
            routing_key: destination.routing_key,
            payload: bytes.to_vec(),
            content_type: Some(PROTOBUF.to_owned()),
            headers,
            delay: std::time::Duration::ZERO,
            ordering_key: ordering_key_of(request.metadata())?,
        })
    }
}

fn message_id_of(request: &Request<Bytes>) -> Result<Option<MessageId>, IngressError> {
    let Some(value) = request.metadata().get(MESSAGE_ID_METADATA) else {
        return Ok(None);
    };
    // gRPC metadata is printable ASCII; UTF-8 beyond it is read as text too.
    let text = std::str::from_utf8(value.as_bytes()).map_err(|_| IngressError::MessageIdNotText)?;
    Ok(MessageId::optional(text)?)
}
