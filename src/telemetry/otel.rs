//! OpenTelemetry trace export over OTLP/gRPC, off unless the standard
//! variables ask for it:
//! - `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`
//!   (e.g. `http://otel-collector:4317`) turns it on;
//! - `OTEL_SERVICE_NAME` names the service (default `outbox-relay`),
//!   `OTEL_RESOURCE_ATTRIBUTES` adds resource attributes;
//! - `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` keeps it off;
//! - `OTEL_EXPORTER_OTLP_PROTOCOL` may only be `grpc`: this binary carries
//!   the gRPC exporter alone, and sending gRPC to an HTTP endpoint would
//!   lose every span without a word, so another protocol fails the start.
//!
//! Spans are batched and exported by the SDK's background thread: a slow or
//! absent collector costs dropped spans, never a blocked worker. Whether
//! export is on is process-wide ([`enabled`]), like the subscriber: the relay
//! makes its per-batch and per-message spans only then, so that tracing
//! costs nothing when nobody collects it.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::sync::atomic::{AtomicBool, Ordering};

/// The instrumentation scope of every span the relay exports.
const SCOPE: &str = "outbox-relay";
/// The service name when `OTEL_SERVICE_NAME` does not give one.
const DEFAULT_SERVICE: &str = "outbox-relay";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// True once trace export has been set up for this process.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The export configuration read from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportConfig {
    /// For the start log; the exporter reads the variables itself.
    pub endpoint: String,
}

/// What the environment asks for: `Ok(None)` when export is off.
pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Option<ExportConfig>, String> {
    let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"))
    {
        return Ok(None);
    }
    let Some(endpoint) =
        set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"))
    else {
        return Ok(None);
    };
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(protocol) = set(name)
            && protocol.trim() != "grpc"
        {
            return Err(format!(
                "{name}={protocol} is not supported: outbox-relay exports traces over OTLP/gRPC only; set it to `grpc` and point the endpoint at the collector's gRPC port (4317)"
            ));
        }
    }
    Ok(Some(ExportConfig { endpoint }))
}

/// The installed exporter; flushes what is queued when dropped.
pub struct Export {
    provider: SdkTracerProvider,
}

impl Drop for Export {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "flushing the trace exporter failed; some spans are lost");
        }
    }
}

/// Builds the OTLP exporter and its tracer. Needs a Tokio runtime entered
/// (the gRPC channel runs on it).
pub fn install(
    config: &ExportConfig,
) -> anyhow::Result<(Export, opentelemetry_sdk::trace::SdkTracer)> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot set up the OTLP trace exporter for {}: {e}",
                config.endpoint
            )
        })?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(DEFAULT_SERVICE);
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer(SCOPE);
    ENABLED.store(true, Ordering::Relaxed);
    Ok((Export { provider }, tracer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn read(vars: &[(&str, &str)]) -> Result<Option<ExportConfig>, String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        from_env(|name| vars.get(name).cloned())
    }

    #[test]
    fn export_is_on_only_with_an_endpoint_and_not_disabled() {
        assert_eq!(read(&[]), Ok(None));
        assert_eq!(read(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]), Ok(None));
        let on = Some(ExportConfig {
            endpoint: "http://c:4317".to_owned(),
        });
        assert_eq!(
            read(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")]),
            Ok(on.clone())
        );
        assert_eq!(
            read(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:4317"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4317"),
            ]),
            Ok(on.clone())
        );
        assert_eq!(
            read(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_SDK_DISABLED", "TRUE"),
            ]),
            Ok(None)
        );
        assert_eq!(
            read(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_TRACES_EXPORTER", "none"),
            ]),
            Ok(None)
        );
        assert_eq!(
            read(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ]),
            Ok(on)
        );
    }

    #[test]
    fn a_protocol_other_than_grpc_is_refused_with_the_fix() {
        let e = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ])
        .unwrap_err();
        assert!(
            e.contains("OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf"),
            "{e}"
        );
        assert!(e.contains("4317"), "{e}");
    }
}
