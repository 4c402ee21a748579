//! Which destination a row goes to: rules on the row's `exchange`, the first
//! that matches wins; a row no rule matches goes to the default broker
//! (`--amqp-url`), as does a rule naming [`DestinationName::DEFAULT`].

use globset::{Glob, GlobMatcher};
use std::fmt;
use std::sync::Arc;

/// A configured destination's name: also its metrics label, so the set is
/// bounded by configuration. Lowercase ASCII letters, digits, `-` and `_`,
/// starting with a letter, at most 32 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DestinationName(Arc<str>);

impl DestinationName {
    /// The default broker's name in rules and metrics.
    pub const DEFAULT: &'static str = "amqp";

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_default(&self) -> bool {
        &*self.0 == Self::DEFAULT
    }

    pub fn default_broker() -> Self {
        Self(Self::DEFAULT.into())
    }
}

impl std::str::FromStr for DestinationName {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        let valid_start = name.starts_with(|c: char| c.is_ascii_lowercase());
        let valid_rest = name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !valid_start || !valid_rest || name.len() > 32 {
            return Err(format!(
                "destination name {name:?} must start with a lowercase letter and hold only \
                 lowercase letters, digits, '-' and '_' (at most 32)"
            ));
        }
        Ok(Self(name.into()))
    }
}

impl fmt::Display for DestinationName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `PATTERN=NAME`: rows whose exchange matches PATTERN go to NAME. PATTERN is
/// an exchange name, or a glob where `*` matches any run of characters
/// (`orders.*`, `*-events`) and `?` one character.
#[derive(Debug, Clone)]
pub struct RouteRule {
    pub pattern: String,
    pub destination: DestinationName,
    matcher: GlobMatcher,
}

impl RouteRule {
    pub fn new(pattern: &str, destination: DestinationName) -> Result<Self, String> {
        let glob = globset::GlobBuilder::new(pattern)
            .literal_separator(false)
            .backslash_escape(true)
            .build()
            .map_err(|e| format!("route pattern {pattern:?}: {e}"))?;
        Ok(Self {
            pattern: pattern.to_owned(),
            destination,
            matcher: glob.compile_matcher(),
        })
    }

    pub fn matches(&self, exchange: &str) -> bool {
        self.matcher.is_match(exchange)
    }
}

impl std::str::FromStr for RouteRule {
    type Err = String;

    fn from_str(rule: &str) -> Result<Self, String> {
        let Some((pattern, name)) = rule.rsplit_once('=') else {
            return Err(format!("route {rule:?} must be PATTERN=DESTINATION"));
        };
        Self::new(pattern.trim(), name.trim().parse()?)
    }
}

// Globs compile to the same matcher for the same text.
impl PartialEq for RouteRule {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern && self.destination == other.destination
    }
}

/// The rules, in order; what they map an exchange to.
#[derive(Debug, Clone, Default)]
pub struct Router {
    rules: Vec<RouteRule>,
    /// Exact names are looked up without running a glob.
    exact: std::collections::HashMap<String, usize>,
}

impl Router {
    pub fn new(rules: Vec<RouteRule>) -> Self {
        let mut exact = std::collections::HashMap::new();
        for (index, rule) in rules.iter().enumerate() {
            if Glob::new(&rule.pattern).is_ok() && !rule.pattern.contains(['*', '?', '[', '{']) {
                exact.entry(rule.pattern.clone()).or_insert(index);
            }
        }
        Self { rules, exact }
    }

    pub fn rules(&self) -> &[RouteRule] {
        &self.rules
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The destination of a row with `exchange`; the default broker when no
    /// rule matches.
    pub fn route(&self, exchange: &str) -> Option<&DestinationName> {
        let exact = self.exact.get(exchange).copied();
        let first_glob = self
            .rules
            .iter()
            .take(exact.unwrap_or(self.rules.len()))
            .position(|rule| rule.matches(exchange));
        let index = first_glob.or(exact)?;
        let name = &self.rules[index].destination;
        (!name.is_default()).then_some(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(rules: &[&str]) -> Router {
        Router::new(rules.iter().map(|r| r.parse().unwrap()).collect())
    }

    #[test]
    fn the_first_matching_rule_wins_and_unmatched_rows_go_to_the_default() {
        let router = router(&[
            "orders.audit=amqp",
            "orders.*=hooks",
            "*-events=nats",
            "billing=redis",
        ]);
        let to = |exchange| router.route(exchange).map(DestinationName::as_str);
        assert_eq!(to("orders.created"), Some("hooks"));
        assert_eq!(to("orders.audit"), None, "a rule to the default broker");
        assert_eq!(to("user-events"), Some("nats"));
        assert_eq!(to("billing"), Some("redis"));
        assert_eq!(to("billing.x"), None);
        assert_eq!(to(""), None);
    }

    #[test]
    fn an_exact_rule_after_a_glob_that_matches_loses_to_the_glob() {
        let router = router(&["orders.*=hooks", "orders.paid=nats"]);
        assert_eq!(
            router.route("orders.paid").map(DestinationName::as_str),
            Some("hooks")
        );
    }

    #[test]
    fn bad_names_and_rules_are_refused_with_the_reason() {
        assert!("Upper".parse::<DestinationName>().is_err());
        assert!("a b".parse::<DestinationName>().is_err());
        assert!("x".repeat(33).parse::<DestinationName>().is_err());
        assert!(
            "no-equals"
                .parse::<RouteRule>()
                .unwrap_err()
                .contains("PATTERN=DESTINATION")
        );
        assert!("a[=hooks".parse::<RouteRule>().is_err());
    }
}
