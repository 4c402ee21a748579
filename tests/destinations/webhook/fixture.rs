//! One webhook test's world: a schema and queue of its own, a receiver on
//! a port of its own, a fresh Standard Webhooks secret in a file, and the
//! relay routing `orders.*` to that receiver.

use super::receiver::{self, Receiver};
use crate::common::*;
use std::path::PathBuf;
use std::time::Duration;

/// One test's schema and queue, its receiver and its secret.
pub struct Hooks {
    pub env: TestEnv,
    pub receiver: Receiver,
    secret_file: PathBuf,
}

impl Hooks {
    pub async fn new(name: &str) -> Self {
        Self::with_receiver(name, None).await
    }

    /// With an HTTPS receiver when `tls` gives its certificate and key.
    pub async fn with_receiver(name: &str, tls: Option<(&str, &str)>) -> Self {
        let env = TestEnv::new(name).await;
        let (key, text) = receiver::secret();
        let secret_file = std::env::temp_dir().join(format!("{}.whsec", env.schema));
        std::fs::write(&secret_file, format!("{text}\n")).unwrap();
        let receiver = match tls {
            None => Receiver::start(key).await,
            Some((cert, private)) => Receiver::start_tls(key, cert, private).await,
        };
        Self {
            env,
            receiver,
            secret_file,
        }
    }

    /// The destination URL: a receiver's query string to keep, and the
    /// relay's options (`extra`, `&`-joined) in the fragment.
    pub fn url(&self, extra: &str) -> String {
        self.url_of("http", extra)
    }

    pub fn url_of(&self, scheme: &str, extra: &str) -> String {
        format!(
            "{scheme}://127.0.0.1:{}/in?tenant=t1#secret_file={}{extra}",
            self.receiver.port,
            self.secret_file.display()
        )
    }

    /// `run` arguments routing `orders.*` to the receiver at `url`.
    pub fn args(&self, url: &str, extra: &[&str]) -> Vec<String> {
        let mut args = vec![
            "--destination".to_owned(),
            format!("hooks={url}"),
            "--route".to_owned(),
            "orders.*=hooks".to_owned(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    }

    pub async fn start(&self, url: &str, extra: &[&str]) -> Running {
        let args = self.args(url, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Running::start(self.env.run_args(&args)).await
    }

    /// `n` rows for the receiver, routing keys `{prefix}1`..; their message ids.
    pub async fn insert(&self, n: usize, prefix: &str) -> Vec<String> {
        let sql = format!(
            "INSERT INTO {} (exchange, routing_key, payload, content_type, headers)
             SELECT 'orders.created', $1 || g, convert_to('{{\"n\":' || g || '}}', 'UTF8'),
                    'application/json', jsonb_build_object('x-tenant', 'acme', 'x-seq', g)
             FROM generate_series(1, $2) g RETURNING message_id::text",
            self.env.table()
        );
        let rows = self.env.pg.query(&sql, &[&prefix, &(n as i32)]).await;
        rows.unwrap().iter().map(|r| r.get(0)).collect()
    }

    pub async fn pending(&self) -> i64 {
        self.env
            .scalar("SELECT count(*) FROM {t} WHERE sent_at IS NULL AND dead_at IS NULL")
            .await
    }

    pub async fn settled(&self, within: Duration) -> bool {
        wait_until(within, || async { self.pending().await == 0 }).await
    }

    pub async fn count(&self, condition: &str) -> i64 {
        self.env
            .scalar(&format!("SELECT count(*) FROM {{t}} WHERE {condition}"))
            .await
    }

    pub async fn finish(self) {
        let _ = std::fs::remove_file(&self.secret_file);
        self.env.drop_schema().await;
    }
}
