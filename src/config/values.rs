//! Typed configuration values: URLs that keep their passwords out of
//! `Debug`, `Display` and logs, and the parsers clap uses for durations,
//! sizes and headers, each with an error that shows a valid example.

use super::tls::{AmqpTls, PgTls, SslMode, amqp_tls, split_pg_url};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A PostgreSQL URL; the password never appears in `Debug` or `Display`.
#[derive(Clone)]
pub struct DatabaseUrl {
    config: tokio_postgres::Config,
    tls: PgTls,
}

impl DatabaseUrl {
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The connector for every connection to this database: it encrypts
    /// as the URL's `sslmode` says (libpq's default, `prefer`, when silent).
    pub fn tls(&self) -> tokio_postgres_rustls::MakeRustlsConnect {
        self.tls.connector.clone()
    }

    pub fn ssl_mode(&self) -> SslMode {
        self.tls.mode
    }
}

impl FromStr for DatabaseUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !(s.starts_with("postgres://") || s.starts_with("postgresql://")) {
            return Err(
                "expected postgres://user[:password]@host[:port]/dbname (key=value strings are not accepted)"
                    .into(),
            );
        }
        reserved_in_userinfo(s)?;
        let (driver_url, tls) = split_pg_url(s)?;
        let config = tokio_postgres::Config::from_str(&driver_url)
            .map_err(|e| format!("{e}; expected postgres://user[:password]@host[:port]/dbname"))?;
        if config.get_hosts().is_empty() {
            return Err("the URL names no host".into());
        }
        Ok(Self { config, tls })
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        let host = match c.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => String::new(),
        };
        let port = c.get_ports().first().copied().unwrap_or(5432);
        let password = if c.get_password().is_some() {
            ":***"
        } else {
            ""
        };
        write!(
            f,
            "postgres://{}{password}@{host}:{port}/{}?sslmode={}",
            c.get_user().unwrap_or(""),
            c.get_dbname().unwrap_or(""),
            self.tls.mode
        )
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

/// An AMQP URL; the password never appears in `Debug` or `Display`.
#[derive(Clone)]
pub struct AmqpUrl {
    raw: String,
    redacted: String,
    tls: Option<AmqpTls>,
}

impl AmqpUrl {
    /// The URL with its password, for connecting only.
    pub fn expose(&self) -> &str {
        &self.raw
    }

    /// The TLS configuration of an amqps URL; `None` for amqp.
    pub fn tls(&self) -> Option<&AmqpTls> {
        self.tls.as_ref()
    }
}

impl FromStr for AmqpUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut url = url::Url::parse(s)
            .map_err(|e| format!("{e}; expected amqp://user:password@host:5672/vhost"))?;
        if url.scheme() != "amqp" && url.scheme() != "amqps" {
            return Err(format!(
                "scheme {:?} is not amqp or amqps; expected amqp://user:password@host:5672/vhost",
                url.scheme()
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("the URL names no host".into());
        }
        reserved_in_userinfo(s)?;
        // lapin's message may quote parts of the URL: not shown.
        lapin::uri::AMQPUri::from_str(s).map_err(|_| {
            "not a valid AMQP URL; expected amqp://user:password@host:5672/vhost".to_owned()
        })?;
        let tls = amqp_tls(&url)?;
        if url.password().is_some() {
            let _ = url.set_password(Some("***"));
        }
        Ok(Self {
            raw: s.to_owned(),
            redacted: url.to_string(),
            tls,
        })
    }
}

impl fmt::Display for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AmqpUrl({})", self.redacted)
    }
}

/// Refuses a user or password holding an unencoded `@`: parsers split
/// such a URL at different `@`s, and part of the password would then show as
/// the host in logs. (Other reserved characters make the URL fail to parse,
/// and parse errors never show the value.)
fn reserved_in_userinfo(url: &str) -> Result<(), String> {
    let Some((_, rest)) = url.split_once("://") else {
        return Ok(());
    };
    let before_query = &rest[..rest.find('?').unwrap_or(rest.len())];
    let Some(at) = before_query.rfind('@') else {
        return Ok(());
    };
    if before_query[..at].contains('@') {
        return Err(
            "the user or password holds an unencoded @: percent-encode it as %40 (and /, ?, # as %2F, %3F, %23)"
                .into(),
        );
    }
    Ok(())
}

/// Parses `500ms`, `10s`, `5m`, `7days` (humantime syntax).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 10s, 5m, 7days)"))
}

/// A byte size: a number with an optional binary unit (KiB, MiB, GiB).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let factor: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown unit {other:?} (examples: 65536, 512KiB, 16MiB)"
            ));
        }
    };
    let n: usize = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (examples: 65536, 512KiB, 16MiB)"))?;
    match n.checked_mul(factor) {
        Some(0) | None => Err(format!(
            "{s:?} must be between 1 byte and the address space"
        )),
        Some(bytes) => Ok(bytes),
    }
}

/// An AMQP queue name: 1 to 255 bytes (an AMQP short string).
pub(super) fn parse_queue_name(s: &str) -> Result<String, String> {
    match s.len() {
        1..=255 => Ok(s.to_owned()),
        len => Err(format!("a queue name is 1 to 255 bytes, this one is {len}")),
    }
}

pub(super) fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("{s:?} is not name=value")),
    }
}

/// A secret (a bearer token): never shown by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(
                "must be a non-empty string of visible ASCII characters (no spaces)".into(),
            );
        }
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// An ordering key for `send --ordering-key`: 1 to 256 bytes.
pub(super) fn parse_ordering_key(s: &str) -> Result<String, String> {
    crate::outbox::check_ordering_key(s)
        .map(|()| s.to_owned())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unencoded_at_in_a_password_is_refused_without_showing_it() {
        for url in [
            "postgres://app:p@ss@db:5432/app",
            "amqp://app:Pw1@Secret@mq:5672/%2f",
        ] {
            let e = if url.starts_with("postgres") {
                url.parse::<DatabaseUrl>().map(|_| ()).unwrap_err()
            } else {
                url.parse::<AmqpUrl>().map(|_| ()).unwrap_err()
            };
            assert!(e.contains("%40"), "{e}");
            assert!(!e.contains("ss@db") && !e.contains("Secret"), "{e}");
        }
        assert!(
            "postgres://app:p%40ss@db/app?application_name=a@b"
                .parse::<DatabaseUrl>()
                .is_ok()
        );
    }
}
