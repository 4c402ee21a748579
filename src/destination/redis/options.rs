//! The Redis destination's URL: which server and database, and how rows
//! become stream entries.
//!
//! `redis://[user:password@]host[:6379][/db][?params]`, `rediss://` for TLS:
//! - `stream=` a template of `{exchange}` and `{routing_key}` for the stream
//!   key (default: the two joined by `:`, only the routing key for the
//!   default exchange);
//! - `maxlen=N`: `XADD … MAXLEN ~ N`, trimming each stream to about N entries;
//! - `wait=REPLICAS,TIMEOUT_MS`: `WAIT` after each batch; fewer replicas
//!   than asked within the timeout fail the batch (retried);
//! - `ca_file=PATH` (rediss:// only): a PEM CA bundle instead of the
//!   platform's trust store.
//!
//! Invariants owned here: the URL is checked when the relay starts (a bad
//! parameter, an unreadable CA file); the client is built without I/O from
//! the URL without its query; no error shows the password.

use crate::destination::params::{Naming, Params};

const KNOWN: &[&str] = &["stream", "maxlen", "wait", "ca_file"];

/// Everything the destination needs to connect and name streams.
pub struct Settings {
    pub client: redis::Client,
    /// `host:port/db`, for errors and logs.
    pub shown: String,
    pub naming: Naming,
    /// `MAXLEN ~ N` on every `XADD`.
    pub maxlen: Option<u64>,
    pub wait: Option<Wait>,
}

/// `WAIT replicas timeout_ms` after each batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    pub replicas: u64,
    pub timeout_ms: u64,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("server", &self.shown)
            .field("naming", &self.naming)
            .field("maxlen", &self.maxlen)
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

impl Settings {
    pub fn parse(url: &url::Url) -> Result<Self, String> {
        let mut params = Params::of(url, KNOWN)?;
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or("a Redis URL needs a host: redis://host:6379/0")?;
        if url.fragment().is_some() {
            return Err("a Redis URL has no #fragment".to_owned());
        }
        let db = match url.path().trim_matches('/') {
            "" => 0,
            path => path
                .parse::<u32>()
                .map_err(|_| "the Redis URL's path must be a database number: /0")?,
        };
        let shown = format!("{host}:{}/{db}", url.port().unwrap_or(6379));
        let naming = Naming::of(&mut params, "stream", ':')?;
        let maxlen = params.number("maxlen", 1)?;
        let wait = params.take("wait").map(|w| parse_wait(&w)).transpose()?;
        let ca_file = params.path("ca_file")?;
        let mut bare = url.clone();
        bare.set_query(None);
        let client = match ca_file {
            None => redis::Client::open(bare),
            Some(_) if url.scheme() != "rediss" => {
                return Err("ca_file needs TLS: use rediss://".to_owned());
            }
            Some(path) => {
                let pem = std::fs::read(&path).map_err(|e| {
                    format!("ca_file {}: cannot read it ({})", path.display(), e.kind())
                })?;
                let certificates = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                };
                redis::Client::build_with_tls(bare, certificates)
            }
        }
        // The client's own errors name a URL part, never the URL itself.
        .map_err(|e| format!("not a usable Redis URL: {e}"))?;
        Ok(Self {
            client,
            shown,
            naming,
            maxlen,
            wait,
        })
    }
}

/// `REPLICAS,TIMEOUT_MS`, both at least 1: `WAIT n 0` would block forever.
fn parse_wait(text: &str) -> Result<Wait, String> {
    let parsed = text
        .split_once(',')
        .and_then(|(n, t)| Some((n.trim().parse().ok()?, t.trim().parse().ok()?)));
    match parsed {
        Some((replicas, timeout_ms)) if replicas >= 1 && timeout_ms >= 1 => Ok(Wait {
            replicas,
            timeout_ms,
        }),
        _ => Err(
            "URL parameter wait must be REPLICAS,TIMEOUT_MS with both at least 1 (wait=1,500)"
                .to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<Settings, String> {
        Settings::parse(&url.parse().unwrap())
    }

    #[test]
    fn a_url_gives_the_server_database_and_stream_options() {
        let s = parse("redis://u:s3cret@127.0.0.1/3?maxlen=1000&wait=1,250").unwrap();
        assert_eq!(s.shown, "127.0.0.1:6379/3");
        assert_eq!(s.maxlen, Some(1000));
        assert_eq!(
            s.wait,
            Some(Wait {
                replicas: 1,
                timeout_ms: 250
            })
        );
        assert_eq!(s.naming.name("orders", "created"), "orders:created");
        assert!(!format!("{s:?}").contains("s3cret"));
        let s = parse("redis://h?stream=outbox:{routing_key}").unwrap();
        assert_eq!(s.naming.name("orders", "created"), "outbox:created");
    }

    #[test]
    fn bad_urls_are_refused_with_what_is_wrong_and_no_secret() {
        for (url, why) in [
            ("redis://u:s3cret@h?maxlen=0", "maxlen"),
            ("redis://u:s3cret@h?max_len=5", "\"max_len\""),
            ("redis://u:s3cret@h?wait=1", "REPLICAS,TIMEOUT_MS"),
            ("redis://u:s3cret@h?wait=1,0", "REPLICAS,TIMEOUT_MS"),
            ("redis://u:s3cret@h/x", "database number"),
            ("redis://u:s3cret@h?ca_file=/tmp/ca.pem", "rediss://"),
            (
                "rediss://u:s3cret@h?ca_file=/nonexistent/ca.pem",
                "/nonexistent/ca.pem",
            ),
            ("redis://u:s3cret@h?stream=fixed", "stream"),
        ] {
            let error = parse(url).unwrap_err();
            assert!(
                error.contains(why) && !error.contains("s3cret"),
                "{url}: {error}"
            );
        }
    }
}
