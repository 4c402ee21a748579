//! The NATS destination's URL: which server, over TLS or not, with which
//! credentials, and how a row's subject is named.
//!
//! `nats://[user:password@]host[:4222][?params]`, `tls://…` for TLS:
//! - `subject=` a template of `{exchange}` and `{routing_key}` (default: the
//!   two joined by `.`, only the routing key for the default exchange);
//! - `tls=true`, `ca_file=PATH` (a PEM CA bundle; implies TLS; else the
//!   platform's trust store);
//! - `token_file=`, `creds_file=`, `nkey_file=`: credentials read from files
//!   (one way to authenticate, or user and password in the URL).
//!
//! Invariants owned here: everything that can be checked without the server
//! is checked when the relay starts (files read, TLS built, credentials
//! parsed), so a bad URL is a start error; the address given to the client
//! holds no credentials, and no error or `Debug` output shows a secret.

use crate::destination::params::{Naming, Params, read_secret};
use std::sync::Arc;
use std::time::Duration;

const KNOWN: &[&str] = &[
    "subject",
    "tls",
    "ca_file",
    "token_file",
    "creds_file",
    "nkey_file",
];

/// Everything the destination needs to connect and name subjects.
pub struct Settings {
    /// `nats://host:port`, without credentials.
    pub server: String,
    /// `host:port`, for errors and logs.
    pub shown: String,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub auth: Auth,
    pub naming: Naming,
}

/// How the relay authenticates.
pub enum Auth {
    None,
    UserPassword {
        user: String,
        password: String,
    },
    Token(String),
    /// A `.creds` file's text: a user JWT and its NKey seed.
    Credentials(String),
    /// A user NKey seed.
    NKey(String),
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = match self.auth {
            Auth::None => "none",
            Auth::UserPassword { .. } => "user and password",
            Auth::Token(_) => "token",
            Auth::Credentials(_) => "credentials",
            Auth::NKey(_) => "nkey",
        };
        f.debug_struct("Settings")
            .field("server", &self.shown)
            .field("tls", &self.tls.is_some())
            .field("auth", &auth)
            .field("naming", &self.naming)
            .finish()
    }
}

impl Settings {
    pub fn parse(url: &url::Url) -> Result<Self, String> {
        let mut params = Params::of(url, KNOWN)?;
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or("a NATS URL needs a host: nats://host:4222")?;
        if !matches!(url.path(), "" | "/") {
            return Err("a NATS URL has no path: nats://host:4222?subject=…".to_owned());
        }
        let shown = format!("{host}:{}", url.port().unwrap_or(4222));
        let naming = Naming::of(&mut params, "subject", '.')?;
        let ca_file = params.path("ca_file")?;
        let tls = if params.flag("tls")? || url.scheme() == "tls" || ca_file.is_some() {
            Some(Arc::new(tls_config(ca_file)?))
        } else {
            None
        };
        let auth = auth(url, &mut params)?;
        Ok(Self {
            server: format!("nats://{shown}"),
            shown,
            tls,
            auth,
            naming,
        })
    }

    /// The client's options for one connection attempt, which gives up after
    /// `within`. Once connected, the client reconnects by itself.
    pub fn connect_options(&self, within: Duration) -> async_nats::ConnectOptions {
        let options = async_nats::ConnectOptions::new()
            .name("outbox-relay")
            .connection_timeout(within.max(Duration::from_millis(100)))
            // The relay bounds every send itself: the client's own request
            // timeout only has to outlast it.
            .request_timeout(None);
        let options = match &self.tls {
            Some(config) => options
                .require_tls(true)
                .tls_client_config(config.as_ref().clone()),
            None => options,
        };
        match &self.auth {
            Auth::None => options,
            Auth::UserPassword { user, password } => {
                options.user_and_password(user.clone(), password.clone())
            }
            Auth::Token(token) => options.token(token.clone()),
            Auth::NKey(seed) => options.nkey(seed.clone()),
            // Parsed once already in `auth`: it cannot fail here.
            Auth::Credentials(creds) => match options.credentials(creds) {
                Ok(options) => options,
                Err(_) => async_nats::ConnectOptions::new(),
            },
        }
    }
}

fn tls_config(ca_file: Option<std::path::PathBuf>) -> Result<rustls::ClientConfig, String> {
    use crate::tls::{Roots, Verify, client_config};
    let roots = ca_file.map_or(Roots::System, Roots::File);
    client_config(Verify::Full, Some(&roots), None).map_err(|e| format!("TLS: {e}"))
}

/// The one way to authenticate the URL gives.
fn auth(url: &url::Url, params: &mut Params) -> Result<Auth, String> {
    let decode = |text: &str, what: &str| {
        percent_encoding::percent_decode_str(text)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| format!("the URL's {what} is not valid percent-encoded UTF-8"))
    };
    let mut ways = Vec::new();
    if !url.username().is_empty() {
        let user = decode(url.username(), "user")?;
        ways.push(match url.password() {
            Some(password) => Auth::UserPassword {
                user,
                password: decode(password, "password")?,
            },
            // nats://TOKEN@host, as the NATS tools read it.
            None => Auth::Token(user),
        });
    }
    if let Some(path) = params.path("token_file")? {
        ways.push(Auth::Token(read_secret("token_file", &path)?));
    }
    if let Some(path) = params.path("creds_file")? {
        let creds = read_secret("creds_file", &path)?;
        if async_nats::ConnectOptions::new()
            .credentials(&creds)
            .is_err()
        {
            return Err(format!(
                "creds_file {}: not a NATS credentials file (a user JWT and its NKey seed)",
                path.display()
            ));
        }
        ways.push(Auth::Credentials(creds));
    }
    if let Some(path) = params.path("nkey_file")? {
        let seed = read_secret("nkey_file", &path)?;
        if !seed.starts_with("SU") || seed.contains(char::is_whitespace) {
            return Err(format!(
                "nkey_file {}: not a user NKey seed (one line beginning with SU)",
                path.display()
            ));
        }
        ways.push(Auth::NKey(seed));
    }
    if ways.len() > 1 {
        return Err(
            "give one way to authenticate: user and password (or a token) in the URL, \
             token_file, creds_file or nkey_file"
                .to_owned(),
        );
    }
    Ok(ways.pop().unwrap_or(Auth::None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<Settings, String> {
        Settings::parse(&url.parse().unwrap())
    }

    #[test]
    fn a_plain_url_names_the_server_without_credentials() {
        let s = parse("nats://relay:p%40ss@127.0.0.1").unwrap();
        assert_eq!(s.server, "nats://127.0.0.1:4222");
        assert!(s.tls.is_none());
        assert!(matches!(&s.auth, Auth::UserPassword { user, password }
            if user == "relay" && password == "p@ss"));
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("p@ss") && !shown.contains("relay:"),
            "{shown}"
        );
        assert!(matches!(
            parse("nats://t0k@h:4333").unwrap().auth,
            Auth::Token(_)
        ));
    }

    #[test]
    fn tls_is_asked_for_by_scheme_parameter_or_ca_file() {
        assert!(parse("tls://127.0.0.1:4222").unwrap().tls.is_some());
        assert!(parse("nats://127.0.0.1?tls=true").unwrap().tls.is_some());
        let error = parse("nats://127.0.0.1?ca_file=/nonexistent/ca.pem").unwrap_err();
        assert!(error.contains("/nonexistent/ca.pem"), "{error}");
    }

    #[test]
    fn bad_urls_are_refused_with_what_is_wrong_and_no_secret() {
        let error = parse("nats://u:s3cret@h?subjet=x").unwrap_err();
        assert!(
            error.contains("subjet") && !error.contains("s3cret"),
            "{error}"
        );
        assert!(parse("nats://h/path").unwrap_err().contains("no path"));
        assert!(parse("nats://h?subject=fixed").is_err());
        let error = parse("nats://u:p@h?token_file=/nonexistent/token").unwrap_err();
        assert!(error.contains("token_file /nonexistent/token"), "{error}");
    }

    #[test]
    fn credentials_files_are_read_and_checked_at_start() {
        let dir = std::env::temp_dir().join(format!("nats-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let token = file("token", "s3cret\n");
        let s = parse(&format!("nats://h?token_file={token}")).unwrap();
        assert!(matches!(&s.auth, Auth::Token(t) if t == "s3cret"));
        let seed = file("seed", "not-a-seed");
        let error = parse(&format!("nats://h?nkey_file={seed}")).unwrap_err();
        assert!(
            error.contains("NKey seed") && !error.contains("not-a-seed"),
            "{error}"
        );
        let creds = file("creds", "-----BEGIN s3cret-----");
        let error = parse(&format!("nats://h?creds_file={creds}")).unwrap_err();
        assert!(
            error.contains("credentials") && !error.contains("s3cret"),
            "{error}"
        );
        let error = parse(&format!("nats://u:p@h?token_file={token}")).unwrap_err();
        assert!(error.contains("one way"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
