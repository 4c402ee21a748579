//! Calling the worker application: one unary call per message, the request
//! sent as the raw bytes it arrived as, within `--worker-timeout`, and what
//! its answer means for the message ([`Verdict`]).
//!
//! | answer | verdict |
//! |---|---|
//! | OK | ack |
//! | no connection (refused, timed out: the call never reached the worker) | requeue, and stop consuming until the worker is back |
//! | INVALID_ARGUMENT, FAILED_PRECONDITION, UNIMPLEMENTED, PERMISSION_DENIED | dead-letter at once: sending it again cannot help |
//! | any other status (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, INTERNAL, ...) | retry later, up to `--max-attempts` |
//!
//! Invariant owned here: nothing in this module acks; it only says what the
//! worker answered (invariant 11 is kept by [`super::settle`]).

use crate::grpc::codec::BytesOut;
use bytes::Bytes;
use rustls::client::danger::ServerCertVerifier;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::metadata::MetadataMap;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};

/// Bounds connecting to the worker (a call's own deadline is longer).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the worker's answer means for the message.
#[derive(Debug)]
pub enum Verdict {
    Ok,
    /// A transient failure: try again later.
    Retry(Status),
    /// A permanent failure: the message goes to the dead-letter queue.
    Dead(Status),
    /// The worker could not be reached at all.
    Unreachable(Status),
    /// Not for this worker (an o5 reply to another application): acked
    /// without a call.
    NotOurs,
}

impl Verdict {
    /// The verdict of one call's result.
    pub fn of(result: Result<(), Status>) -> Self {
        let status = match result {
            Ok(()) => return Self::Ok,
            Err(status) => status,
        };
        if never_connected(&status) {
            return Self::Unreachable(status);
        }
        match status.code() {
            Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::Unimplemented
            | Code::PermissionDenied => Self::Dead(status),
            _ => Self::Retry(status),
        }
    }
}

/// Whether the call failed before reaching the worker: tonic's connect
/// error, or a refused TCP connection, anywhere in the error's causes
/// (tonic reports either as UNAVAILABLE, "transport error"). A connection
/// lost during a call is not this: the worker may have run it.
fn never_connected(status: &Status) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = cause {
        let refused = error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused);
        if refused || error.is::<tonic::ConnectError>() {
            return true;
        }
        cause = error.source();
    }
    false
}

/// Why connecting to the worker failed, with every cause, and the fix when
/// its TLS certificate was refused.
pub fn connect_failure(error: &tonic::transport::Error) -> String {
    let mut text = super::health::describe(error);
    if certificate_refused(error) {
        text.push_str(
            " (the worker's certificate is not trusted: --worker-ca-file must be the CA that signed it, and the certificate must name the --worker-addr host)",
        );
    }
    text
}

/// Whether rustls refused the worker's certificate, anywhere in the causes
/// (tokio-rustls wraps it in an `io::Error`, whose `source` skips it).
fn certificate_refused(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        let tls = e.downcast_ref::<rustls::Error>().or_else(|| {
            e.downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if matches!(tls, Some(rustls::Error::InvalidCertificate(_))) {
            return true;
        }
        cause = e.source();
    }
    false
}

/// The worker application's gRPC server.
#[derive(Debug, Clone)]
pub struct Worker {
    endpoint: Endpoint,
    channel: Channel,
    timeout: Duration,
}

impl Worker {
    /// A client of `addr` (connected on first use, and again after a
    /// failure); each call gets `timeout`. An https:// `addr` is called
    /// over TLS, the worker's certificate checked by `tls` (its handshake
    /// bounded like a connect); an http:// one in plaintext.
    pub fn new(
        addr: &str,
        timeout: Duration,
        tls: Option<Arc<dyn ServerCertVerifier>>,
    ) -> Result<Self, tonic::transport::Error> {
        let mut endpoint = Endpoint::from_shared(addr.to_owned())?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if let Some(verifier) = tls {
            let config = ClientTlsConfig::new().timeout(CONNECT_TIMEOUT);
            endpoint = endpoint.tls_config_with_verifier(config, verifier)?;
        }
        let channel = endpoint.connect_lazy();
        Ok(Self {
            endpoint,
            channel,
            timeout,
        })
    }

    /// Calls `path` with `body` as the encoded request; the answer is
    /// `google.protobuf.Empty`, whose bytes are ignored. Returns the result
    /// and how long the call took.
    pub async fn call(
        &self,
        path: &str,
        body: Bytes,
        metadata: MetadataMap,
    ) -> (Result<(), Status>, Duration) {
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, self.unary(path, body, metadata))
            .await
            .unwrap_or_else(|_| {
                Err(Status::deadline_exceeded(format!(
                    "the worker did not answer within --worker-timeout {:?}",
                    self.timeout
                )))
            });
        (result, started.elapsed())
    }

    async fn unary(&self, path: &str, body: Bytes, metadata: MetadataMap) -> Result<(), Status> {
        let path = path
            .parse()
            .map_err(|_| Status::unimplemented(format!("{path:?} is not a request path")))?;
        let mut request = Request::new(body);
        *request.metadata_mut() = metadata;
        request.set_timeout(self.timeout);
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready()
            .await
            .map_err(|e| Status::from_error(Box::new(e)))?;
        grpc.unary(request, path, BytesOut).await.map(|_| ())
    }

    /// Whether the worker accepts a connection now (an HTTP/2 handshake).
    pub async fn probe(&self) -> Result<(), tonic::transport::Error> {
        self.endpoint.connect().await.map(drop)
    }

    /// Where the worker is, with its TLS (for reading its reflection).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The worker's address, for logs.
    pub fn addr(&self) -> String {
        self.endpoint.uri().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_codes_go_dead_and_the_rest_are_retried() {
        for code in [
            Code::InvalidArgument,
            Code::FailedPrecondition,
            Code::Unimplemented,
            Code::PermissionDenied,
        ] {
            assert!(matches!(
                Verdict::of(Err(Status::new(code, ""))),
                Verdict::Dead(_)
            ));
        }
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::Aborted,
            Code::Internal,
            Code::Unknown,
        ] {
            assert!(matches!(
                Verdict::of(Err(Status::new(code, ""))),
                Verdict::Retry(_)
            ));
        }
        assert!(matches!(Verdict::of(Ok(())), Verdict::Ok));
    }

    #[tokio::test]
    async fn a_refused_connection_means_the_worker_is_unreachable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let worker = Worker::new(&format!("http://{addr}"), Duration::from_secs(5), None).unwrap();
        let (result, _) = worker
            .call("/x.v1.S/M", Bytes::new(), MetadataMap::new())
            .await;
        let verdict = Verdict::of(result);
        assert!(matches!(verdict, Verdict::Unreachable(_)), "{verdict:?}");
        assert!(worker.probe().await.is_err());
    }
}
