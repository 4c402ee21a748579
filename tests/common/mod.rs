//! Shared helpers for the integration tests: every test gets its own schema,
//! queue and exchange names, and waits on conditions with deadlines.
#![allow(dead_code)]

pub mod commit;
pub mod descriptors;
pub mod grpc;
pub mod proxy;

use clap::Parser;
use futures::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties};
use outbox_relay::App;
use outbox_relay::config::{Cli, Command, RunArgs};
use outbox_relay::outbox::{Identifier, migrate};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub const PG_URL: &str = "postgres://root@127.0.0.1:5432/test";
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const PG_ADDR: &str = "127.0.0.1:5432";
pub const AMQP_ADDR: &str = "127.0.0.1:5672";

/// How often `wait_until` re-checks its condition.
pub const POLL_EVERY: Duration = Duration::from_millis(25);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Logs only when TEST_LOG is set.
pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("TEST_LOG").unwrap_or_default())
            .with_test_writer()
            .try_init();
    }
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!(
        "{prefix}_{}_{n}_{:x}",
        std::process::id(),
        fastrand::u32(..)
    )
}

/// One test's private world: a migrated schema and a durable queue.
pub struct TestEnv {
    pub schema: String,
    pub queue: String,
    pub pg: tokio_postgres::Client,
    pub channel: Channel,
    _amqp: Connection,
}

impl TestEnv {
    pub async fn new(name: &str) -> Self {
        Self::with_queue_args(name, FieldTable::default()).await
    }

    /// Like `new`, with extra `x-` arguments for the queue.
    pub async fn with_queue_args(name: &str, args: FieldTable) -> Self {
        init_logs();
        let schema = unique(name);
        let pg = pg_client().await;
        let mut migrator = pg_client().await;
        migrate::migrate(&mut migrator, &Identifier::parse(&schema).unwrap())
            .await
            .expect("migrate");
        let amqp = Connection::connect(AMQP_URL, ConnectionProperties::default())
            .await
            .expect("amqp connect");
        let channel = amqp.create_channel().await.unwrap();
        let queue = unique(&format!("q_{name}"));
        declare_queue(&channel, &queue, args).await;
        Self {
            schema,
            queue,
            pg,
            channel,
            _amqp: amqp,
        }
    }

    /// A new channel on this test's connection (for calls that may close it).
    pub async fn fresh_channel(&self) -> Channel {
        self._amqp.create_channel().await.expect("open a channel")
    }

    pub fn table(&self) -> String {
        format!("\"{}\".outbox", self.schema)
    }

    /// Command-line style arguments for `run` on this schema, plus `extra`.
    pub fn run_args(&self, extra: &[&str]) -> RunArgs {
        self.run_args_with(PG_URL, AMQP_URL, extra)
    }

    pub fn run_args_with(&self, pg: &str, amqp: &str, extra: &[&str]) -> RunArgs {
        let mut argv = vec![
            "outbox-relay",
            "run",
            "--database-url",
            pg,
            "--amqp-url",
            amqp,
            "--schema",
            &self.schema,
            "--poll-interval",
            "50ms",
            "--backoff-base",
            "20ms",
            "--backoff-max",
            "100ms",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).expect("run args").command {
            Command::Run(args) => *args,
            _ => unreachable!(),
        }
    }

    /// Inserts `n` rows routed to this test's queue via the default exchange.
    pub async fn insert_rows(&self, n: usize) {
        let sql = format!(
            "INSERT INTO {} (routing_key, payload) SELECT $1, convert_to('m' || g, 'UTF8') FROM generate_series(1, $2) g",
            self.table()
        );
        self.pg
            .execute(&sql, &[&self.queue, &(n as i32)])
            .await
            .expect("insert rows");
    }

    pub async fn scalar(&self, sql: &str) -> i64 {
        let sql = sql.replace("{t}", &self.table());
        self.pg.query_one(&sql, &[]).await.expect(&sql).get(0)
    }

    pub async fn count_sent(&self) -> i64 {
        self.scalar("SELECT count(*) FROM {t} WHERE sent_at IS NOT NULL")
            .await
    }

    /// Every message_id in the table, as text.
    pub async fn all_message_ids(&self) -> Vec<String> {
        let sql = format!("SELECT message_id::text FROM {}", self.table());
        self.pg
            .query(&sql, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// Consumes until `expected` messages arrived or `within` passed; then
    /// keeps listening for `linger` to catch duplicates.
    pub async fn consume(
        &self,
        expected: usize,
        within: Duration,
        linger: Duration,
    ) -> Vec<lapin::message::Delivery> {
        consume(&self.channel, &self.queue, expected, within, linger).await
    }

    pub async fn drop_schema(self) {
        let _ = self
            .pg
            .batch_execute(&format!("DROP SCHEMA \"{}\" CASCADE", self.schema))
            .await;
    }
}

pub async fn pg_client() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(PG_URL, tokio_postgres::NoTls)
        .await
        .expect("postgres reachable (run deploy/local/services.sh)");
    tokio::spawn(conn);
    client
}

/// A durable queue that the broker removes 10 minutes after its last use.
pub async fn declare_queue(channel: &Channel, queue: &str, mut args: FieldTable) {
    args.insert("x-expires".into(), AMQPValue::LongInt(600_000));
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .expect("declare queue");
}

pub async fn consume(
    channel: &Channel,
    queue: &str,
    expected: usize,
    within: Duration,
    linger: Duration,
) -> Vec<lapin::message::Delivery> {
    let tag = unique("consumer");
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            tag.as_str().into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut got = Vec::new();
    let mut deadline = Instant::now() + within;
    let mut lingering = false;
    loop {
        match tokio::time::timeout_at(deadline, consumer.next()).await {
            Ok(Some(Ok(delivery))) => got.push(delivery),
            Ok(_) => break,
            Err(_) => break,
        }
        if got.len() >= expected && !lingering {
            lingering = true;
            deadline = Instant::now() + linger;
        }
    }
    let _ = channel
        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
        .await;
    got
}

pub fn message_id(d: &lapin::message::Delivery) -> String {
    d.properties
        .message_id()
        .as_ref()
        .expect("message_id set")
        .to_string()
}

/// How many times each message_id arrived.
pub fn tally(deliveries: &[lapin::message::Delivery]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for d in deliveries {
        *counts.entry(message_id(d)).or_insert(0) += 1;
    }
    counts
}

/// Polls `check` until it is true or `within` passes; returns whether it held.
pub async fn wait_until<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// A relay running in this process.
pub struct Running {
    pub stop: CancellationToken,
    /// The workers' health, as the probes see it.
    pub health: std::sync::Arc<outbox_relay::health::Health>,
    /// The gRPC ingress's address, when it listens.
    pub grpc: Option<std::net::SocketAddr>,
    /// The HTTP port's address (probes and metrics), when it listens.
    pub http: Option<std::net::SocketAddr>,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn start(args: RunArgs) -> Self {
        let app = App::build(args).await.expect("app builds");
        let grpc = app.grpc_addr();
        let http = app.http_addr();
        let health = app.health().clone();
        let stop = CancellationToken::new();
        let handle = tokio::spawn(app.run_until_stopped(stop.clone()));
        Self {
            stop,
            health,
            grpc,
            http,
            handle,
        }
    }

    /// `GET path` on the HTTP port, with an `Accept` header when given.
    pub async fn get(&self, path: &str, accept: Option<&str>) -> HttpReply {
        http_get(self.http.expect("the HTTP port listens"), path, accept).await
    }

    /// `http://<grpc address>`, for a tonic client.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc.expect("the gRPC ingress listens"))
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.handle.await.expect("relay task panicked")
    }
}

/// What an HTTP/1.1 server answered.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub content_type: String,
    pub body: String,
    /// Every header as sent (names as written by the server).
    pub headers: Vec<(String, String)>,
}

impl HttpReply {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Bounds one request to the relay's HTTP port.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// A plain HTTP/1.1 GET with `Connection: close` (the replies are small and
/// carry a Content-Length, so reading to EOF is the whole reply).
pub async fn http_get(addr: std::net::SocketAddr, path: &str, accept: Option<&str>) -> HttpReply {
    let headers: Vec<(&str, &str)> = accept.map(|a| ("Accept", a)).into_iter().collect();
    http_request(addr, "GET", path, &headers, None).await
}

/// One HTTP/1.1 request with `Connection: close`: `headers` are sent as
/// given, with `Host: <addr>` unless they name one, and `body` with its
/// Content-Length.
pub async fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> HttpReply {
    use std::fmt::Write as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        let _ = write!(head, "Host: {addr}\r\n");
    }
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    if let Some(body) = body {
        let _ = write!(head, "Content-Length: {}\r\n", body.len());
    }
    head.push_str("\r\n");
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(head.as_bytes()).await?;
        if let Some(body) = body {
            stream.write_all(body).await?;
        }
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        std::io::Result::Ok(raw)
    };
    let raw = tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .expect("the HTTP port answers in time")
        .expect("an HTTP exchange");
    let raw = String::from_utf8(raw).expect("a UTF-8 reply");
    let (head, body) = raw.split_once("\r\n\r\n").expect("headers end");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(name, value)| (name.to_owned(), value.trim().to_owned()))
        .collect();
    let mut reply = HttpReply {
        status,
        content_type: String::new(),
        body: body.to_owned(),
        headers,
    };
    reply.content_type = reply.header("content-type").unwrap_or_default().to_owned();
    reply
}

/// Collects a child's stderr lines as they come.
pub fn watch_stderr(child: &mut std::process::Child) -> std::sync::Arc<std::sync::Mutex<String>> {
    use std::io::BufRead;
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let stderr = child.stderr.take().expect("stderr piped");
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    log
}
