//! The relay's spans, made only while trace export is on (so that the
//! drain pays nothing for tracing nobody collects): one per phase of a
//! batch (`outbox.claim`, `outbox.publish` until the last confirm,
//! `outbox.mark`), with the message ids as an attribute, and one per
//! message (`outbox.send`), whose context is the `traceparent` the message
//! is published with.
//!
//! A message whose row carries a valid `traceparent` gets its span in the
//! sender's trace (child of the sender's span, linked to the batch); any
//! other message's span is a child of the batch's publish span.

use crate::outbox::{Claimed, MessageId, OutboxRow};
use crate::telemetry::{TraceContext, otel};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The span of publishing `rows` until their last confirm.
pub(super) fn publishing(rows: &[Claimed]) -> Span {
    if !otel::enabled() {
        return Span::none();
    }
    tracing::info_span!("outbox.publish", otel.kind = "producer",
        messaging.system = "rabbitmq", messaging.operation.type = "publish",
        messaging.batch.message_count = rows.len(), messaging.message.ids = %message_ids(rows))
}

/// The span of marking a batch and committing its claim.
pub(super) fn marking(rows: &[Claimed]) -> Span {
    if !otel::enabled() {
        return Span::none();
    }
    tracing::info_span!("outbox.mark", otel.kind = "internal",
        messaging.batch.message_count = rows.len(), messaging.message.ids = %message_ids(rows))
}

/// The claim's own span: its rows are not known before it ends.
pub(super) fn claiming() -> Span {
    if !otel::enabled() {
        return Span::none();
    }
    tracing::info_span!(
        "outbox.claim",
        otel.kind = "internal",
        messaging.batch.message_count = tracing::field::Empty
    )
}

/// One message's span (a child of the current span, the batch's publish
/// span, unless the row names a parent) and the context to publish it with.
/// `None` without export: the row's own headers then travel verbatim.
pub(super) fn message(row: &OutboxRow) -> Option<(Span, TraceContext)> {
    if !otel::enabled() {
        return None;
    }
    let span = tracing::info_span!("outbox.send", otel.kind = "producer",
        messaging.system = "rabbitmq", messaging.message.id = %row.message_id,
        messaging.destination.name = %row.exchange,
        messaging.rabbitmq.destination.routing_key = %row.routing_key);
    if let Some(sender) = TraceContext::from_json(&row.headers) {
        let batch = Span::current().context();
        let _ = span.set_parent(sender.context());
        use opentelemetry::trace::TraceContextExt;
        span.add_link(batch.span().span_context().clone());
    }
    let context = TraceContext::of(&span.context())?;
    Some((span, context))
}

/// The trace id a row's headers name, for its log lines.
pub(super) fn trace_id(claimed: &Claimed) -> Option<String> {
    match claimed {
        Claimed::Row(row) => TraceContext::from_json(&row.headers).map(|t| t.trace_id().to_owned()),
        Claimed::Defect(_) => None,
    }
}

fn message_ids(rows: &[Claimed]) -> String {
    MessageId::join(rows.iter().filter_map(|claimed| match claimed {
        Claimed::Row(row) => Some(&row.message_id),
        _ => None,
    }))
}
