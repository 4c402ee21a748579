//! `--destination NAME=URL`, `--route PATTERN=NAME` and `--routing-file`:
//! destinations other than the default broker and the rules that send rows
//! to them. URLs may hold passwords or tokens: they are never printed
//! (`Debug` shows the scheme and host only).

use crate::destination::{DestinationName, RouteRule, Router};
use clap::Args;
use std::path::PathBuf;

/// The schemes a destination URL may have.
pub const SCHEMES: &[&str] = &["nats", "tls", "redis", "rediss", "http", "https"];

#[derive(Debug, Clone, Args, Default)]
#[command(next_help_heading = "Destinations")]
pub struct DestinationArgs {
    /// A destination besides the default broker: NAME=URL, repeatable
    /// (OUTBOX_DESTINATIONS: `;`-separated). nats://host:4222 (tls:// for
    /// TLS) publishes to NATS JetStream, redis://host:6379/0 (rediss://) adds
    /// to Redis Streams, http(s)://host/path POSTs webhooks; each scheme's
    /// options are query parameters of the URL, but for http(s), whose query
    /// is the receiver's: its options are in the fragment
    /// (`#secret_file=PATH&max_in_flight=16`; README, Destinations).
    /// NAME: lowercase letters, digits, - and _; `amqp` is the default broker.
    #[arg(
        long = "destination",
        env = "OUTBOX_DESTINATIONS",
        value_name = "NAME=URL",
        value_delimiter = ';',
        hide_env_values = true
    )]
    pub destinations: Vec<DestinationSpec>,
    /// Routes rows whose exchange matches PATTERN to destination NAME:
    /// PATTERN=NAME, repeatable (OUTBOX_ROUTES: `;`-separated). PATTERN is an
    /// exchange name or a glob (`orders.*`); the first matching rule wins;
    /// rows no rule matches go to the default broker (--amqp-url), as do
    /// rules naming `amqp`.
    #[arg(
        long = "route",
        env = "OUTBOX_ROUTES",
        value_name = "PATTERN=NAME",
        value_delimiter = ';'
    )]
    pub routes: Vec<RouteRule>,
    /// A TOML file of destinations and routes, for bigger setups:
    /// `[[destination]] name = "hooks"  url = "https://..."` and
    /// `[[route]] exchange = "orders.*"  destination = "hooks"`. Its entries
    /// come after --destination and --route.
    #[arg(long, env = "OUTBOX_ROUTING_FILE", value_name = "PATH")]
    pub routing_file: Option<PathBuf>,
}

/// `NAME=URL`.
#[derive(Clone, PartialEq, Eq)]
pub struct DestinationSpec {
    pub name: DestinationName,
    pub url: url::Url,
}

impl std::fmt::Debug for DestinationSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}={}://{}",
            self.name,
            self.url.scheme(),
            self.url.host_str().unwrap_or("")
        )
    }
}

impl DestinationSpec {
    pub fn new(name: DestinationName, url: &str) -> Result<Self, String> {
        if name.is_default() {
            return Err(format!(
                "destination name {:?} is the default broker's (--amqp-url)",
                DestinationName::DEFAULT
            ));
        }
        // The URL's text may hold a password: errors never quote it.
        let url = url::Url::parse(url)
            .map_err(|e| format!("destination {name}: not a valid URL ({e})"))?;
        if !SCHEMES.contains(&url.scheme()) {
            return Err(format!(
                "destination {name}: scheme {:?} is not one of {}",
                url.scheme(),
                SCHEMES.join(", ")
            ));
        }
        Ok(Self { name, url })
    }
}

impl std::str::FromStr for DestinationSpec {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let Some((name, url)) = spec.split_once('=') else {
            return Err("a destination must be NAME=URL".to_owned());
        };
        Self::new(name.trim().parse()?, url.trim())
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutingFile {
    #[serde(default)]
    destination: Vec<FileDestination>,
    #[serde(default)]
    route: Vec<FileRoute>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDestination {
    name: String,
    url: String,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoute {
    exchange: String,
    destination: String,
}

/// Destinations and rules, checked against each other.
#[derive(Debug, Clone, Default)]
pub struct Routing {
    pub destinations: Vec<DestinationSpec>,
    pub router: Router,
}

impl DestinationArgs {
    /// Reads the routes file, if any, and checks that names are unique and
    /// that every rule names a configured destination.
    pub fn resolve(&self) -> Result<Routing, String> {
        let mut destinations = self.destinations.clone();
        let mut rules = self.routes.clone();
        if let Some(path) = &self.routing_file {
            let (more, more_rules) = read_routing_file(path)?;
            destinations.extend(more);
            rules.extend(more_rules);
        }
        let mut names = std::collections::HashSet::new();
        for spec in &destinations {
            if !names.insert(spec.name.clone()) {
                return Err(format!("destination {} is defined twice", spec.name));
            }
        }
        for rule in &rules {
            if !rule.destination.is_default() && !names.contains(&rule.destination) {
                return Err(format!(
                    "route {}={} names no destination: define it with --destination {}=URL",
                    rule.pattern, rule.destination, rule.destination
                ));
            }
        }
        Ok(Routing {
            destinations,
            router: Router::new(rules),
        })
    }

    pub fn is_configured(&self) -> bool {
        !self.destinations.is_empty() || !self.routes.is_empty() || self.routing_file.is_some()
    }
}

fn read_routing_file(
    path: &std::path::Path,
) -> Result<(Vec<DestinationSpec>, Vec<RouteRule>), String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("--routing-file {shown}: {e}"))?;
    // toml's errors quote the offending line, which may hold a URL's
    // password: say where, not what.
    let file: RoutingFile = toml::from_str(&text).map_err(|e| {
        let at = e
            .span()
            .map(|s| format!(" at byte {}", s.start))
            .unwrap_or_default();
        format!(
            "--routing-file {shown}: not valid TOML of [[destination]] and [[route]] tables{at}: {}",
            e.message()
        )
    })?;
    let destinations = file
        .destination
        .into_iter()
        .map(|d| DestinationSpec::new(d.name.parse()?, &d.url))
        .collect::<Result<_, String>>()
        .map_err(|e| format!("--routing-file {shown}: {e}"))?;
    let rules = file
        .route
        .into_iter()
        .map(|r| RouteRule::new(&r.exchange, r.destination.parse()?))
        .collect::<Result<_, String>>()
        .map_err(|e| format!("--routing-file {shown}: {e}"))?;
    Ok((destinations, rules))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destination_url_never_shows_its_password() {
        let spec: DestinationSpec = "hooks=https://user:s3cret@example.test/in?token=t0k"
            .parse()
            .unwrap();
        let shown = format!("{spec:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("t0k"),
            "{shown}"
        );
        let error = "x=ftp://user:s3cret@h/"
            .parse::<DestinationSpec>()
            .unwrap_err();
        assert!(
            !error.contains("s3cret") && error.contains("ftp"),
            "{error}"
        );
    }

    #[test]
    fn routes_must_name_a_defined_destination_and_names_are_unique() {
        let args = DestinationArgs {
            destinations: vec!["hooks=http://127.0.0.1:1/".parse().unwrap()],
            routes: vec!["orders.*=nats".parse().unwrap()],
            routing_file: None,
        };
        assert!(
            args.resolve()
                .unwrap_err()
                .contains("--destination nats=URL")
        );
        let twice = DestinationArgs {
            destinations: vec![
                "hooks=http://127.0.0.1:1/".parse().unwrap(),
                "hooks=http://127.0.0.1:2/".parse().unwrap(),
            ],
            ..DestinationArgs::default()
        };
        assert!(twice.resolve().unwrap_err().contains("twice"));
        assert!(
            "amqp=nats://127.0.0.1:4222"
                .parse::<DestinationSpec>()
                .is_err()
        );
    }

    #[test]
    fn a_routing_file_adds_destinations_and_rules_after_the_flags() {
        let dir = std::env::temp_dir().join(format!("routes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("routes.toml");
        std::fs::write(
            &path,
            "[[destination]]\nname = \"bus\"\nurl = \"nats://127.0.0.1:4222\"\n\n\
             [[route]]\nexchange = \"events.*\"\ndestination = \"bus\"\n",
        )
        .unwrap();
        let args = DestinationArgs {
            routes: vec!["events.audit=amqp".parse().unwrap()],
            routing_file: Some(path.clone()),
            ..DestinationArgs::default()
        };
        let routing = args.resolve().unwrap();
        assert_eq!(routing.destinations.len(), 1);
        assert_eq!(
            routing.router.route("events.x").map(|n| n.as_str()),
            Some("bus")
        );
        assert_eq!(routing.router.route("events.audit"), None);
        std::fs::write(
            &path,
            "[[destination]]\nname = \"bus\"\nurl = \"nats://u:pw@h\"\nbad = 1\n",
        )
        .unwrap();
        let error = args.resolve().unwrap_err();
        assert!(!error.contains("pw@"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
