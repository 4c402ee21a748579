//! HTTP webhooks: each message is POSTed to the destination's URL, signed
//! as Standard Webhooks specifies, and a 2xx answer is its confirm.
//!
//! `http(s)://host/path?receivers=query#secret_file=/run/secrets/hook`:
//! the relay's options are in the URL's fragment ([`options`]), the
//! signature is [`signing`]'s, the request [`request`]'s, and what an
//! answer means for the row is [`response`]'s one table.
//!
//! Invariants owned here:
//! - `send` resolves within its timeout with one result per message, in
//!   order: each call is bounded by the per-call `timeout` option and by
//!   what is left of the batch's bound, waiting for a slot included; a
//!   call that cannot start in time answers [`SendError::Timeout`];
//! - at most `max_in_flight` calls are in flight to the destination,
//!   across every batch and worker, on one keep-alive client (one
//!   connection pool) per destination;
//! - each attempt is signed when it starts (`webhook-timestamp` is the
//!   attempt's, so a receiver's replay window holds on retries too), with
//!   the same `webhook-id` and `Idempotency-Key` (the row's message_id)
//!   on every attempt: receivers de-duplicate on it;
//! - `open` does no network I/O (it reads the secret and, for https, the
//!   root certificates: a missing file is an error at start); redirects
//!   are not followed (a POST must not turn into a GET elsewhere);
//! - nothing here logs or returns the secret, the URL's password or its
//!   query string.

mod options;
mod request;
mod response;
mod signing;

use super::{Destination, Message, SendError};
use futures::future::BoxFuture;
use options::{Options, PathMode};
use signing::Signer;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// The most of a receiver's answer read; the rest is dropped (and its
/// connection with it).
const BODY_LIMIT: usize = 64 * 1024;
/// Idle connections are closed before a receiver's usual idle timeout
/// (Node.js: 5 s), so a request rarely meets a connection being closed.
const POOL_IDLE: Duration = Duration::from_secs(4);

/// One webhook destination: its client, its signer and its limit.
pub struct Webhook {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    target: url::Url,
    path: PathMode,
    signer: Option<Signer>,
    in_flight: Arc<Semaphore>,
    call_timeout: Duration,
}

/// Builds the destination of `url` (no network I/O).
pub fn open(url: &url::Url) -> Result<Webhook, String> {
    let options = Options::parse(url)?;
    let signer = options
        .secret_file
        .as_deref()
        .map(Signer::from_file)
        .transpose()?;
    let client = client(&options)?;
    Ok(Webhook {
        inner: Arc::new(Inner {
            client,
            target: options.target,
            path: options.path,
            signer,
            in_flight: Arc::new(Semaphore::new(options.max_in_flight)),
            call_timeout: options.timeout,
        }),
    })
}

/// The destination's one client: HTTP/1.1 keep-alive, rustls with ring.
fn client(options: &Options) -> Result<reqwest::Client, String> {
    let mut tls = match options.target.scheme() {
        "https" => {
            let roots = match &options.ca_file {
                Some(path) => crate::tls::Roots::File(path.clone()),
                None => crate::tls::Roots::System,
            };
            crate::tls::client_config(crate::tls::Verify::Full, Some(&roots), None)
                .map_err(|e| e.to_string())?
        }
        // Plain http never uses TLS (no redirects are followed): a
        // configuration that trusts nothing keeps the system's roots unread.
        _ => rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth(),
    };
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .http1_only()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(options.timeout)
        .pool_max_idle_per_host(options.max_in_flight)
        .pool_idle_timeout(POOL_IDLE)
        .user_agent(concat!("outbox-relay/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {}", e.without_url()))
}

impl Destination for Webhook {
    fn kind(&self) -> &'static str {
        "webhook"
    }

    fn send(
        &self,
        messages: Vec<Message>,
        timeout: Duration,
    ) -> BoxFuture<'static, Vec<Result<(), SendError>>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let deadline = Instant::now() + timeout;
            let calls = messages
                .into_iter()
                .map(|message| inner.clone().call(message, deadline));
            futures::future::join_all(calls).await
        })
    }
}

impl Inner {
    /// One message: a slot, then one POST and its answer, by `deadline`.
    async fn call(self: Arc<Self>, message: Message, deadline: Instant) -> Result<(), SendError> {
        let url = request::url_of(&self.target, self.path, &message)?;
        let mut headers = request::headers_of(&message)?;
        let Ok(Ok(_slot)) = tokio::time::timeout_at(deadline, self.in_flight.acquire()).await
        else {
            return Err(SendError::Timeout(self.call_timeout));
        };
        let limit = self
            .call_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        if limit.is_zero() {
            return Err(SendError::Timeout(self.call_timeout));
        }
        let now = SystemTime::now();
        let timestamp = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        headers.insert(request::WEBHOOK_TIMESTAMP, timestamp.into());
        if let Some(signer) = &self.signer {
            let signature = signer.signature(&message.message_id, timestamp, &message.payload);
            let value = http::HeaderValue::from_str(&signature)
                .map_err(|_| SendError::Refused("the signature is not a header value".into()))?;
            headers.insert(request::WEBHOOK_SIGNATURE, value);
        }
        let post = self
            .client
            .post(url)
            .headers(headers)
            .body(message.payload)
            .send();
        match tokio::time::timeout(limit, answer(post)).await {
            Ok(Ok((status, retry_after, body))) => {
                response::classify(status, retry_after.as_ref(), &body, SystemTime::now())
            }
            Ok(Err(error)) => Err(response::transport_error(error, limit)),
            Err(_) => Err(SendError::Timeout(limit)),
        }
    }
}

/// The status, `Retry-After` and the first [`BODY_LIMIT`] bytes of the
/// body of an answer. The status is the answer: a body cut short by the
/// receiver changes nothing.
async fn answer(
    post: impl Future<Output = reqwest::Result<reqwest::Response>>,
) -> reqwest::Result<(http::StatusCode, Option<http::HeaderValue>, Vec<u8>)> {
    let mut response = post.await?;
    let status = response.status();
    let retry_after = response.headers().get(http::header::RETRY_AFTER).cloned();
    let mut body = Vec::new();
    while body.len() < BODY_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    Ok((status, retry_after, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destination_opens_for_http_and_https_without_io() {
        let dir = std::env::temp_dir().join(format!("webhook-open-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("secret");
        std::fs::write(&secret, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
        let url = |base: &str| {
            url::Url::parse(&format!("{base}#secret_file={}", secret.display())).unwrap()
        };
        // Port 9 (discard) on a host nobody resolves: open must not connect.
        assert_eq!(
            open(&url("http://unresolvable.invalid:9/in"))
                .unwrap()
                .kind(),
            "webhook"
        );
        let missing = open(&url::Url::parse("http://h/#secret_file=/nonexistent/s").unwrap());
        assert!(missing.err().unwrap().contains("/nonexistent/s"));
        let bad_ca = url::Url::parse(&format!(
            "https://h/#secret_file={}&ca_file=/nonexistent/ca.pem",
            secret.display()
        ))
        .unwrap();
        assert!(open(&bad_ca).err().unwrap().contains("ca.pem"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
