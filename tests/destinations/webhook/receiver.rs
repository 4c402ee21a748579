//! A webhook receiver for the tests: it verifies each request's Standard
//! Webhooks signature on its own (ring's HMAC, not the relay's code),
//! records every attempt, answers as the test's [`Plan`] says (a status,
//! `Retry-After`, a delay), and goes down on demand: its listener and every
//! open connection closed, so the relay meets connection refused, as with a
//! crashed receiver. Over HTTPS too, with a certificate of the test's CA.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use ring::hmac;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the receiver answers to an attempt.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: String,
    /// Waits this long before answering.
    pub delay: Duration,
}

impl Answer {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            retry_after: None,
            body: String::new(),
            delay: Duration::ZERO,
        }
    }
}

/// Decides the answer to an attempt, given how many attempts of the same
/// webhook-id came before it.
pub type Plan = Box<dyn Fn(&Attempt, usize) -> Answer + Send + Sync>;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub id: String,
    pub idempotency_key: String,
    pub timestamp: i64,
    /// The signature verified against the test's secret, and the timestamp
    /// is within five minutes of now (what the libraries check).
    pub signature_ok: bool,
    pub content_type: String,
    pub headers: http::HeaderMap,
    /// Path and query, as sent (percent-encoding kept).
    pub target: String,
    pub body: Bytes,
    pub arrived: Instant,
    /// What the receiver answered.
    pub answered: u16,
}

struct State {
    key: Vec<u8>,
    /// Serves HTTPS with this, when set.
    tls: Option<tokio_rustls::TlsAcceptor>,
    plan: Mutex<Plan>,
    log: Mutex<Vec<Attempt>>,
}

/// The receiver: one port, up or down.
pub struct Receiver {
    pub port: u16,
    state: Arc<State>,
    serving: Mutex<Option<(CancellationToken, tokio::task::JoinHandle<()>)>>,
    /// While down: the port, bound but not listening (connections to it are
    /// refused), so that no other socket takes it meanwhile.
    held: Mutex<Option<tokio::net::TcpSocket>>,
}

impl Receiver {
    /// Listens on a port of its own; answers 200 until told otherwise.
    pub async fn start(key: Vec<u8>) -> Self {
        Self::start_with(key, None).await
    }

    /// Like `start`, serving HTTPS with a certificate and its key (PEM).
    pub async fn start_tls(key: Vec<u8>, cert_pem: &str, key_pem: &str) -> Self {
        use rustls::pki_types::pem::PemObject;
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let private = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, private)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        Self::start_with(key, Some(acceptor)).await
    }

    async fn start_with(key: Vec<u8>, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let state = Arc::new(State {
            key,
            tls,
            plan: Mutex::new(Box::new(|_, _| Answer::status(200))),
            log: Mutex::new(Vec::new()),
        });
        let listener = bind(0).await;
        let port = listener.local_addr().unwrap().port();
        let receiver = Self {
            port,
            state,
            serving: Mutex::new(None),
            held: Mutex::new(None),
        };
        receiver.serve(listener);
        receiver
    }

    pub fn set_plan(&self, plan: impl Fn(&Attempt, usize) -> Answer + Send + Sync + 'static) {
        *self.state.plan.lock().unwrap() = Box::new(plan);
    }

    /// Closes the listener and every connection: connection refused from now.
    pub async fn down(&self) {
        let serving = self.serving.lock().unwrap().take();
        if let Some((stop, task)) = serving {
            stop.cancel();
            let _ = task.await;
        }
        *self.held.lock().unwrap() = Some(reserve(self.port));
    }

    /// Listens again on the same port.
    pub async fn up(&self) {
        drop(self.held.lock().unwrap().take());
        let listener = bind(self.port).await;
        self.serve(listener);
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept(listener, self.state.clone(), stop.clone()));
        *self.serving.lock().unwrap() = Some((stop, task));
    }

    pub fn attempts(&self) -> Vec<Attempt> {
        self.state.log.lock().unwrap().clone()
    }

    /// How many times each webhook-id was answered 2xx.
    pub fn accepted(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for attempt in self.state.log.lock().unwrap().iter() {
            if (200..300).contains(&attempt.answered) {
                *counts.entry(attempt.id.clone()).or_insert(0) += 1;
            }
        }
        counts
    }
}

/// A listener on 127.0.0.1:`port` (0: any), reusable at once after `down`.
async fn bind(port: u16) -> tokio::net::TcpListener {
    reserve(port).listen(1024).unwrap()
}

/// A socket bound to 127.0.0.1:`port`, not listening.
fn reserve(port: u16) -> tokio::net::TcpSocket {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket
        .bind(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .expect("bind the receiver's port");
    socket
}

/// Serves connections until `stop`; then drops the listener and every
/// connection (aborting their tasks closes their sockets).
async fn accept(listener: tokio::net::TcpListener, state: Arc<State>, stop: CancellationToken) {
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let state = state.clone();
        connections.spawn(async move {
            match state.tls.clone() {
                None => serve_connection(stream, state).await,
                // A handshake the client refuses ends the connection.
                Some(tls) => {
                    if let Ok(stream) = tls.accept(stream).await {
                        serve_connection(stream, state).await;
                    }
                }
            }
        });
        while connections.try_join_next().is_some() {}
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

async fn serve_connection<S>(stream: S, state: Arc<State>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| handle(state.clone(), request));
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await;
}

async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut attempt = Attempt::of(&parts, body, &state.key);
    let answer = {
        let log = state.log.lock().unwrap();
        let before = log.iter().filter(|a| a.id == attempt.id).count();
        (state.plan.lock().unwrap())(&attempt, before)
    };
    attempt.answered = answer.status;
    state.log.lock().unwrap().push(attempt);
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    let mut response = Response::builder().status(answer.status);
    if let Some(after) = &answer.retry_after {
        response = response.header("retry-after", after);
    }
    Ok(response.body(Full::new(Bytes::from(answer.body))).unwrap())
}

impl Attempt {
    fn of(parts: &http::request::Parts, body: Bytes, key: &[u8]) -> Self {
        let text = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let id = text("webhook-id");
        let timestamp = text("webhook-timestamp").parse().unwrap_or(i64::MIN);
        let signature_ok = verify(key, &id, timestamp, &body, &text("webhook-signature"));
        Self {
            idempotency_key: text("idempotency-key"),
            content_type: text("content-type"),
            id,
            timestamp,
            signature_ok,
            headers: parts.headers.clone(),
            target: parts
                .uri
                .path_and_query()
                .map(ToString::to_string)
                .unwrap_or_default(),
            body,
            arrived: Instant::now(),
            answered: 0,
        }
    }
}

/// The Standard Webhooks check: some `v1,` signature of the header is the
/// HMAC-SHA256 of `{id}.{timestamp}.{body}`, and the timestamp is fresh.
fn verify(key: &[u8], id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    use base64::Engine as _;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    if id.is_empty() || (now - timestamp).abs() > 300 {
        return false;
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut signed = format!("{id}.{timestamp}.").into_bytes();
    signed.extend_from_slice(body);
    header.split(' ').any(|part| {
        part.strip_prefix("v1,")
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .is_some_and(|tag| hmac::verify(&key, &signed, &tag).is_ok())
    })
}

/// A new Standard Webhooks secret: the key, and the `whsec_` text of it.
pub fn secret() -> (Vec<u8>, String) {
    use base64::Engine as _;
    let mut key = vec![0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key).unwrap();
    let text = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(&key)
    );
    (key, text)
}
