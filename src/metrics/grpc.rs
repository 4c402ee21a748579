//! The gRPC ingress's series: `outbox_relay_grpc_requests_total{method,code}`
//! and `outbox_relay_grpc_request_duration_seconds{method}`.
//!
//! `method` is the call's path (`/package.Service/Method`), bounded like the
//! exchange label: the first [`METHOD_LABELS`] paths that the sidecar serves
//! get their own series, later ones are `other`; a path it does not serve
//! (answered `UNIMPLEMENTED`) is `unknown`, so that a scanner cannot grow
//! the label set.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::collections::HashSet;
use std::sync::RwLock;
use std::time::Duration;
use tonic::Code;

/// Paths that get their own `method` label.
pub const METHOD_LABELS: usize = 100;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: String,
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: String,
}

#[derive(Debug)]
pub(super) struct GrpcSeries {
    requests: Family<CallLabels, Counter>,
    duration: Family<MethodLabel, Histogram>,
    methods: RwLock<HashSet<String>>,
}

impl GrpcSeries {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let requests = Family::<CallLabels, Counter>::default();
        registry.register(
            "grpc_requests",
            "gRPC calls answered by the ingress, by method (path) and status code",
            requests.clone(),
        );
        let duration = Family::<MethodLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register_with_unit(
            "grpc_request_duration",
            "From a gRPC call's arrival to its answer, by method (path)",
            Unit::Seconds,
            duration.clone(),
        );
        Self {
            requests,
            duration,
            methods: RwLock::new(HashSet::new()),
        }
    }

    pub(super) fn record(&self, path: &str, code: Code, elapsed: Duration) {
        let method = self.label(path, code);
        self.requests
            .get_or_create(&CallLabels {
                method: method.clone(),
                code: code_name(code),
            })
            .inc();
        self.duration
            .get_or_create(&MethodLabel { method })
            .observe(elapsed.as_secs_f64());
    }

    fn label(&self, path: &str, code: Code) -> String {
        if code == Code::Unimplemented {
            return "unknown".to_owned();
        }
        if self.methods.read().expect("poisoned").contains(path) {
            return path.to_owned();
        }
        let mut methods = self.methods.write().expect("poisoned");
        if methods.len() < METHOD_LABELS {
            methods.insert(path.to_owned());
            path.to_owned()
        } else {
            "other".to_owned()
        }
    }
}

/// The status code's canonical name (`OK`, `INVALID_ARGUMENT`, ...), as
/// gRPC's own metrics write it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
