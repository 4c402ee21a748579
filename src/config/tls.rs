//! TLS settings carried in the service URLs, in the forms their users
//! already write: libpq's `sslmode`, `sslrootcert`, `sslcert`, `sslkey` for
//! PostgreSQL, and RabbitMQ's `cacertfile`, `certfile`, `keyfile`,
//! `verify`, `server_name_indication` for amqps. Each URL's TLS parameters
//! are taken out of it and turned into a rustls configuration when the
//! configuration is parsed; the rest goes to the driver unchanged.

use crate::tls::{ClientIdentity, Roots, TlsError, Verify, client_config};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// libpq's `sslmode`, with libpq's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "disable" => Self::Disable,
            // `allow` tries plaintext first; there is no reason to, here.
            "allow" | "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode={other:?} is not one of disable, prefer, require, verify-ca, verify-full"
                ));
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres itself knows: whether to try TLS and whether
    /// it is required.
    pub fn driver_mode(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Driver;
        match self {
            Self::Disable => Driver::Disable,
            Self::Prefer => Driver::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => Driver::Require,
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The TLS side of a PostgreSQL URL.
#[derive(Clone)]
pub struct PgTls {
    pub mode: SslMode,
    pub connector: tokio_postgres_rustls::MakeRustlsConnect,
}

/// Takes the TLS parameters out of a PostgreSQL URL: returns the URL the
/// driver gets (with `sslmode` reduced to what it knows) and the TLS side.
pub fn split_pg_url(url: &str) -> Result<(String, PgTls), String> {
    let (rest, taken) = take_params(url, &["sslmode", "sslrootcert", "sslcert", "sslkey"])?;
    let get = |key: &str| {
        taken
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let explicit = get("sslmode").map(SslMode::parse).transpose()?;
    let roots = match get("sslrootcert") {
        Some("system") => Some(Roots::System),
        Some(path) => Some(Roots::File(PathBuf::from(path))),
        None => default_pg_file("root.crt").map(Roots::File),
    };
    let mode = match (explicit, &roots) {
        // libpq: `system` roots are only worth something with the host checked.
        (None, Some(Roots::System)) => SslMode::VerifyFull,
        (Some(mode), Some(Roots::System)) if mode < SslMode::VerifyFull => {
            return Err(format!(
                "sslmode={mode} may not be used with sslrootcert=system (use verify-full)"
            ));
        }
        (mode, _) => mode.unwrap_or(SslMode::Prefer),
    };
    let verify = match mode {
        SslMode::Disable | SslMode::Prefer => Verify::Nothing,
        // libpq: `require` with a root certificate verifies the chain.
        SslMode::Require if roots.is_none() => Verify::Nothing,
        SslMode::Require | SslMode::VerifyCa => Verify::ChainOnly,
        SslMode::VerifyFull => Verify::Full,
    };
    if verify != Verify::Nothing && roots.is_none() {
        return Err(format!(
            "sslmode={mode} needs sslrootcert=<CA file> (or sslrootcert=system for the platform's roots)"
        ));
    }
    let identity = identity(get("sslcert"), get("sslkey"), "sslcert", "sslkey")?;
    let config = client_config(verify, roots.as_ref(), identity.as_ref()).map_err(describe)?;
    let rest = with_param(&rest, "sslmode", driver_mode_name(mode));
    Ok((
        rest,
        PgTls {
            mode,
            connector: tokio_postgres_rustls::MakeRustlsConnect::new(config),
        },
    ))
}

fn driver_mode_name(mode: SslMode) -> &'static str {
    match mode.driver_mode() {
        tokio_postgres::config::SslMode::Disable => "disable",
        tokio_postgres::config::SslMode::Require => "require",
        _ => "prefer",
    }
}

/// libpq's default file under `~/.postgresql`, when it exists.
fn default_pg_file(name: &str) -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var_os("HOME")?)
        .join(".postgresql")
        .join(name);
    path.is_file().then_some(path)
}

/// The TLS side of an amqps URL.
#[derive(Clone)]
pub struct AmqpTls {
    pub config: Arc<rustls::ClientConfig>,
    /// The name the certificate must carry and that is sent as SNI.
    pub server_name: String,
}

const AMQP_TLS_PARAMS: &[&str] = &[
    "cacertfile",
    "certfile",
    "keyfile",
    "verify",
    "server_name_indication",
];

/// Reads an AMQP URL's TLS parameters: `Some` for amqps, `None` for amqp
/// (where any TLS parameter is an error, so that nobody believes a
/// plaintext connection is encrypted).
pub fn amqp_tls(url: &url::Url) -> Result<Option<AmqpTls>, String> {
    let taken: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| AMQP_TLS_PARAMS.contains(&k.as_ref()))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let get = |key: &str| {
        taken
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let external = url
        .query_pairs()
        .any(|(k, v)| k == "auth_mechanism" && v.eq_ignore_ascii_case("external"));
    if url.scheme() != "amqps" {
        if let Some((key, _)) = taken.first() {
            return Err(format!(
                "{key} is a TLS setting but the URL is amqp://: use amqps:// to encrypt"
            ));
        }
        if external {
            return Err(
                "auth_mechanism=external needs an amqps:// URL with certfile and keyfile".into(),
            );
        }
        return Ok(None);
    }
    let verify = match get("verify") {
        None | Some("verify_peer") => Verify::Full,
        Some("verify_none") => Verify::Nothing,
        Some(other) => {
            return Err(format!(
                "verify={other:?} is not verify_peer or verify_none"
            ));
        }
    };
    let roots = match get("cacertfile") {
        Some(path) => Roots::File(PathBuf::from(path)),
        None => Roots::System,
    };
    let identity = identity(get("certfile"), get("keyfile"), "certfile", "keyfile")?;
    if external && identity.is_none() {
        return Err(
            "auth_mechanism=external needs certfile and keyfile (the client certificate)".into(),
        );
    }
    let host = url.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let (server_name, sni) = match get("server_name_indication") {
        None => (host.to_owned(), true),
        Some("disable") => (host.to_owned(), false),
        Some(name) => (name.to_owned(), true),
    };
    rustls::pki_types::ServerName::try_from(server_name.clone())
        .map_err(|_| format!("{server_name:?} is not a host name a certificate can carry"))?;
    let mut config = client_config(verify, Some(&roots), identity.as_ref()).map_err(describe)?;
    config.enable_sni = sni;
    Ok(Some(AmqpTls {
        config: Arc::new(config),
        server_name,
    }))
}

fn identity(
    cert: Option<&str>,
    key: Option<&str>,
    cert_name: &str,
    key_name: &str,
) -> Result<Option<ClientIdentity>, String> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Ok(Some(ClientIdentity {
            cert: cert.into(),
            key: key.into(),
        })),
        _ => Err(format!(
            "{cert_name} and {key_name} go together: give both or neither"
        )),
    }
}

fn describe(e: TlsError) -> String {
    e.to_string()
}

/// Splits `url` into itself without the `keys` query parameters and the
/// removed pairs (percent-decoded). The other parameters keep their exact
/// spelling, since the driver parses them itself.
fn take_params(url: &str, keys: &[&str]) -> Result<(String, Vec<(String, String)>), String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), Vec::new()));
    };
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(k)?;
        if keys.contains(&key.as_str()) {
            taken.push((key, decode(v)?));
        } else {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, taken))
}

fn with_param(url: &str, key: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{key}={value}")
}

fn decode(s: &str) -> Result<String, String> {
    percent_decode(s).ok_or_else(|| "a query parameter is not valid percent-encoded UTF-8".into())
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_leave_the_url_and_the_rest_keeps_its_spelling() {
        let (rest, tls) = split_pg_url(
            "postgres://u:p%40@h:5432/db?options=-c%20x%3D1&sslmode=require&application_name=a",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgres://u:p%40@h:5432/db?options=-c%20x%3D1&application_name=a&sslmode=require"
        );
        assert_eq!(tls.mode, SslMode::Require);
    }

    #[test]
    fn verifying_modes_need_roots_and_system_roots_need_verify_full() {
        let e = split_pg_url("postgres://h/db?sslmode=verify-full")
            .map(|_| ())
            .unwrap_err();
        assert!(e.contains("sslrootcert"), "{e}");
        let e = split_pg_url("postgres://h/db?sslmode=require&sslrootcert=system")
            .map(|_| ())
            .unwrap_err();
        assert!(e.contains("verify-full"), "{e}");
        let e = split_pg_url("postgres://h/db?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem")
            .map(|_| ())
            .unwrap_err();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let e = split_pg_url("postgres://h/db?sslmode=bogus")
            .map(|_| ())
            .unwrap_err();
        assert!(e.contains("verify-full"), "{e}");
        let e = split_pg_url("postgres://h/db?sslcert=/a.pem")
            .map(|_| ())
            .unwrap_err();
        assert!(e.contains("sslkey"), "{e}");
    }

    #[test]
    fn tls_settings_on_a_plaintext_amqp_url_are_refused() {
        for query in [
            "cacertfile=/ca.pem",
            "verify=verify_none",
            "auth_mechanism=external",
        ] {
            let url = url::Url::parse(&format!("amqp://h:5672/%2f?{query}")).unwrap();
            let e = amqp_tls(&url).map(|_| ()).unwrap_err();
            assert!(e.contains("amqps"), "{query}: {e}");
        }
        let url = url::Url::parse(
            "amqps://h/%2f?verify=verify_none&server_name_indication=mq.example.com",
        )
        .unwrap();
        let tls = amqp_tls(&url).unwrap().unwrap();
        assert_eq!(tls.server_name, "mq.example.com");
    }
}
