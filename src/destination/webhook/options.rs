//! A webhook destination's URL: the target the relay POSTs to, and the
//! relay's options for it, which live in the URL's fragment:
//! `https://hooks.example/in?tenant=7#secret_file=/run/secrets/hook&timeout=3s`.
//!
//! A fragment is never sent over HTTP, so the split is clean both ways: the
//! receiver gets its URL as written (path and query string verbatim, the
//! fragment removed), and nothing of the receiver's query is taken for an
//! option.
//!
//! Invariants owned here:
//! - an option the relay does not know, or one given twice, is refused: a
//!   typo never silently means the default;
//! - a webhook is signed unless the URL says `unsigned=true`: a missing
//!   `secret_file` is an error, not unsigned traffic;
//! - errors name the option, never its value, the URL's password or its
//!   query string.

use std::path::PathBuf;
use std::time::Duration;
use url::Url;

/// Calls in flight to one destination unless `max_in_flight` says otherwise.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 32;
const MAX_MAX_IN_FLIGHT: usize = 1024;
/// One call's bound unless `timeout` says otherwise: below the relay's
/// default confirm timeout (10 s), so a slow receiver answers Timeout
/// before the batch's own bound.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_TIMEOUT: Duration = Duration::from_secs(300);

/// The options a fragment may hold.
const KNOWN: &[&str] = &[
    "secret_file",
    "unsigned",
    "max_in_flight",
    "timeout",
    "path",
    "ca_file",
];

/// Where a message is POSTed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathMode {
    /// To the target URL as written.
    Fixed,
    /// To the target URL with `/<routing key>` appended (one path segment,
    /// percent-encoded).
    RoutingKey,
}

/// A parsed webhook URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The receiver's URL, fragment removed, query string kept.
    pub target: Url,
    /// The Standard Webhooks secret(s); `None` only with `unsigned=true`.
    pub secret_file: Option<PathBuf>,
    pub max_in_flight: usize,
    pub timeout: Duration,
    pub path: PathMode,
    /// Roots to verify an https receiver with, instead of the system's.
    pub ca_file: Option<PathBuf>,
}

impl Options {
    pub fn parse(url: &Url) -> Result<Self, String> {
        let mut target = url.clone();
        target.set_fragment(None);
        let mut options = Self {
            target,
            secret_file: None,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            timeout: DEFAULT_TIMEOUT,
            path: PathMode::Fixed,
            ca_file: None,
        };
        let mut unsigned = false;
        let mut seen = Vec::new();
        let fragment = url.fragment().unwrap_or_default();
        for (key, value) in url::form_urlencoded::parse(fragment.as_bytes()) {
            if !KNOWN.contains(&key.as_ref()) {
                return Err(unknown(&key));
            }
            if seen.contains(&key) {
                return Err(format!("option {key} is given twice"));
            }
            match key.as_ref() {
                "secret_file" => options.secret_file = Some(file(&key, &value)?),
                "ca_file" => options.ca_file = Some(file(&key, &value)?),
                "unsigned" => unsigned = flag(&key, &value)?,
                "max_in_flight" => options.max_in_flight = max_in_flight(&value)?,
                "timeout" => options.timeout = timeout(&value)?,
                "path" => options.path = path_mode(&value)?,
                _ => unreachable!("every known option is matched"),
            }
            seen.push(key);
        }
        match (&options.secret_file, unsigned) {
            (Some(_), true) => Err("secret_file and unsigned=true contradict each other".into()),
            (None, false) => Err(missing_secret(url)),
            _ => Ok(options),
        }
    }
}

fn unknown(key: &str) -> String {
    // The key is the user's text: quote a bounded, escaped part of it.
    let shown: String = key.chars().take(40).collect();
    format!(
        "unknown option {shown:?} in the URL's fragment (the relay's options: {})",
        KNOWN.join(", ")
    )
}

fn missing_secret(url: &Url) -> String {
    let in_query = url
        .query_pairs()
        .any(|(key, _)| KNOWN.contains(&key.as_ref()));
    let hint = if in_query {
        " (the query string holds one of the relay's options: the query goes to the \
         receiver as it is, the relay's options go after #)"
    } else {
        ""
    };
    format!(
        "webhooks are signed: add #secret_file=PATH (a Standard Webhooks secret, whsec_…) \
         to the URL, or #unsigned=true{hint}"
    )
}

fn file(key: &str, value: &str) -> Result<PathBuf, String> {
    if value.is_empty() {
        return Err(format!("option {key} needs a file path"));
    }
    Ok(PathBuf::from(value))
}

fn flag(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "" | "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("option {key} is true or false")),
    }
}

fn max_in_flight(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if (1..=MAX_MAX_IN_FLIGHT).contains(&n) => Ok(n),
        _ => Err(format!(
            "option max_in_flight is a whole number from 1 to {MAX_MAX_IN_FLIGHT}"
        )),
    }
}

fn timeout(value: &str) -> Result<Duration, String> {
    match humantime::parse_duration(value) {
        Ok(d) if !d.is_zero() && d <= MAX_TIMEOUT => Ok(d),
        _ => Err(format!(
            "option timeout is a duration above zero and at most {MAX_TIMEOUT:?} (e.g. 500ms, 5s)"
        )),
    }
}

fn path_mode(value: &str) -> Result<PathMode, String> {
    match value {
        "routing_key" => Ok(PathMode::RoutingKey),
        _ => Err("option path takes one value: routing_key".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<Options, String> {
        Options::parse(&Url::parse(url).unwrap())
    }

    #[test]
    fn options_come_from_the_fragment_and_the_receivers_query_survives() {
        let options = parse(
            "https://u:pw@hooks.test/in?tenant=7&timeout=x#secret_file=/s/hook&max_in_flight=16\
             &timeout=750ms&path=routing_key&ca_file=/ca.pem",
        )
        .unwrap();
        assert_eq!(
            options.target.as_str(),
            "https://u:pw@hooks.test/in?tenant=7&timeout=x"
        );
        assert_eq!(options.secret_file, Some(PathBuf::from("/s/hook")));
        assert_eq!(options.max_in_flight, 16);
        assert_eq!(options.timeout, Duration::from_millis(750));
        assert_eq!(options.path, PathMode::RoutingKey);
        assert_eq!(options.ca_file, Some(PathBuf::from("/ca.pem")));
    }

    #[test]
    fn defaults_apply_when_the_fragment_sets_only_the_secret() {
        let options = parse("http://127.0.0.1:9/in#secret_file=/s").unwrap();
        assert_eq!(options.max_in_flight, DEFAULT_MAX_IN_FLIGHT);
        assert_eq!(options.timeout, DEFAULT_TIMEOUT);
        assert_eq!(options.path, PathMode::Fixed);
        assert_eq!(options.target.fragment(), None);
    }

    #[test]
    fn a_webhook_without_a_secret_must_say_unsigned() {
        let error = parse("http://127.0.0.1:9/in").unwrap_err();
        assert!(error.contains("secret_file=PATH"), "{error}");
        let hinted = parse("http://127.0.0.1:9/in?secret_file=/s").unwrap_err();
        assert!(hinted.contains("after #"), "{hinted}");
        let unsigned = parse("http://127.0.0.1:9/in#unsigned=true").unwrap();
        assert_eq!(unsigned.secret_file, None);
        assert!(parse("http://127.0.0.1:9/in#unsigned=true&secret_file=/s").is_err());
        assert!(parse("http://127.0.0.1:9/in#unsigned=false").is_err());
    }

    #[test]
    fn unknown_repeated_or_bad_options_are_refused_without_quoting_values() {
        let unknown = parse("http://h/#secret_file=/s&max_inflight=3").unwrap_err();
        assert!(
            unknown.contains("\"max_inflight\"") && unknown.contains("max_in_flight"),
            "{unknown}"
        );
        assert!(
            parse("http://h/#secret_file=/s&secret_file=/t")
                .unwrap_err()
                .contains("twice")
        );
        for bad in [
            "max_in_flight=0",
            "max_in_flight=99999",
            "max_in_flight=s3cret",
            "timeout=0s",
            "timeout=s3cret",
            "timeout=1h",
            "path=s3cret",
            "unsigned=s3cret",
        ] {
            let error =
                parse(&format!("http://u:pw@h/?q=s3cret#secret_file=/s&{bad}")).unwrap_err();
            assert!(
                !error.contains("s3cret") && !error.contains("pw"),
                "{bad}: {error}"
            );
        }
        assert!(parse("http://h/#secret_file=").is_err());
    }
}
