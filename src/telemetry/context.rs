//! W3C trace context (`traceparent`, `tracestate`) carried from a gRPC
//! call into the row's headers, and from the row's headers into the AMQP
//! message.
//!
//! Without trace export the context travels verbatim: what the caller sent
//! is what the consumer receives. With export on ([`super::otel::enabled`])
//! each hop the relay makes is a span of its own, and the context passed on
//! names that span as the parent, with the caller's trace id.
//!
//! Parsing and formatting are OpenTelemetry's `TraceContextPropagator`'s, so
//! an invalid `traceparent` (wrong version, all-zero ids, bad hex) is not
//! carried: it would only break the consumer's tracing.

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::collections::HashMap;

/// The header (and gRPC metadata key) of the trace's position.
pub const TRACEPARENT: &str = "traceparent";
/// The header of vendor-specific trace state.
pub const TRACESTATE: &str = "tracestate";

/// A valid W3C trace context, as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: String,
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// Reads the two values through `get`, keeping them verbatim when the
    /// `traceparent` is valid; `None` otherwise.
    pub fn read<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Option<Self> {
        let traceparent = get(TRACEPARENT)?.trim();
        if !well_formed(traceparent) {
            return None;
        }
        let tracestate = get(TRACESTATE).map(str::trim).filter(|s| !s.is_empty());
        let carrier = Pair {
            traceparent,
            tracestate,
        };
        let cx = TraceContextPropagator::new().extract(&carrier);
        cx.span().span_context().is_valid().then(|| Self {
            traceparent: traceparent.to_owned(),
            tracestate: tracestate.map(str::to_owned),
        })
    }

    /// From a JSON headers object (a row's `headers`), when it holds a
    /// valid `traceparent` string.
    pub fn from_json(headers: &serde_json::Value) -> Option<Self> {
        Self::read(|key| headers.get(key).and_then(serde_json::Value::as_str))
    }

    /// The context of `cx`'s span, when it has a valid one.
    pub fn of(cx: &Context) -> Option<Self> {
        let mut carrier: HashMap<String, String> = HashMap::new();
        TraceContextPropagator::new().inject_context(cx, &mut carrier);
        let traceparent = carrier.remove(TRACEPARENT)?;
        Some(Self {
            traceparent,
            tracestate: carrier.remove(TRACESTATE).filter(|s| !s.is_empty()),
        })
    }

    /// As an OpenTelemetry parent context.
    pub fn context(&self) -> Context {
        TraceContextPropagator::new().extract(&Pair {
            traceparent: &self.traceparent,
            tracestate: self.tracestate.as_deref(),
        })
    }

    /// The 32 hex digits of the trace id (for log lines).
    pub fn trace_id(&self) -> &str {
        self.traceparent.get(3..35).unwrap_or_default()
    }

    /// Writes the context into a message's headers, unless they already
    /// carry a `traceparent` of their own (the sender's explicit choice).
    pub fn stamp(&self, headers: &mut serde_json::Map<String, serde_json::Value>) {
        if headers.contains_key(TRACEPARENT) {
            return;
        }
        headers.insert(TRACEPARENT.to_owned(), self.traceparent.clone().into());
        match &self.tracestate {
            Some(state) => {
                headers.insert(TRACESTATE.to_owned(), state.clone().into());
            }
            None => {
                headers.remove(TRACESTATE);
            }
        }
    }
}

/// The W3C field widths (version, trace id, span id, flags), lowercase hex:
/// the propagator parses the ids as numbers and would take a short one.
fn well_formed(traceparent: &str) -> bool {
    let widths = [2, 32, 16, 2];
    let fields: Vec<&str> = traceparent.split('-').collect();
    fields.len() >= widths.len()
        && fields.iter().zip(widths).all(|(field, width)| {
            field.len() == width
                && field
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
}

/// The two header values, for the propagator.
struct Pair<'a> {
    traceparent: &'a str,
    tracestate: Option<&'a str>,
}

impl Extractor for Pair<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => Some(self.traceparent),
            TRACESTATE => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

/// Only so that `Pair` is a complete carrier type; never injected into.
impl Injector for Pair<'_> {
    fn set(&mut self, _key: &str, _value: String) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_kept_verbatim_with_its_state() {
        let headers = json!({"traceparent": PARENT, "tracestate": "rojo=00f067aa0ba902b7"});
        let cx = TraceContext::from_json(&headers).unwrap();
        assert_eq!(cx.traceparent, PARENT);
        assert_eq!(cx.tracestate.as_deref(), Some("rojo=00f067aa0ba902b7"));
        assert_eq!(cx.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let again = TraceContext::of(&cx.context()).unwrap();
        assert_eq!(again, cx, "parsing and formatting round-trip");
    }

    #[test]
    fn an_invalid_traceparent_is_not_carried() {
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(
                TraceContext::from_json(&json!({ "traceparent": bad })),
                None,
                "{bad:?}"
            );
        }
        assert_eq!(TraceContext::from_json(&json!({ "traceparent": 7 })), None);
        assert_eq!(TraceContext::from_json(&json!({})), None);
    }

    #[test]
    fn stamping_leaves_a_senders_own_traceparent_alone() {
        let cx = TraceContext::read(|k| (k == TRACEPARENT).then_some(PARENT)).unwrap();
        let mut headers = serde_json::Map::new();
        cx.stamp(&mut headers);
        assert_eq!(headers[TRACEPARENT], PARENT);
        assert!(!headers.contains_key(TRACESTATE));

        let own = "00-11111111111111111111111111111111-2222222222222222-01";
        let mut headers = serde_json::Map::new();
        headers.insert(TRACEPARENT.to_owned(), own.into());
        cx.stamp(&mut headers);
        assert_eq!(headers[TRACEPARENT], own);
    }
}
