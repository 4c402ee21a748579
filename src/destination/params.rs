//! What a destination URL's query says: its parameters, the templates that
//! name where a row goes (a NATS subject, a Redis stream key), and the files
//! that hold its secrets.
//!
//! Invariants owned here:
//! - a parameter the destination does not know, or one given twice, is
//!   refused with an error naming it: a typo never silently falls back to a
//!   default (`maxlen` misspelt would leave a stream unbounded);
//! - errors name the parameter and, for files, the path; never a value,
//!   which may be a secret;
//! - a template holds only `{exchange}` and `{routing_key}` placeholders, so
//!   rendering it cannot fail: whether the result is a valid name is the
//!   destination's check, per message.

use std::path::PathBuf;

/// The query parameters of a destination URL not yet taken.
#[derive(Debug)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// The parameters of `url`, every one of them in `known`, none twice.
    pub fn of(url: &url::Url, known: &[&str]) -> Result<Self, String> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (name, value) in url.query_pairs() {
            if !known.contains(&name.as_ref()) {
                return Err(format!(
                    "unknown URL parameter {name:?} (this destination knows {})",
                    known.join(", ")
                ));
            }
            if pairs.iter().any(|(seen, _)| *seen == name) {
                return Err(format!("URL parameter {name} is given twice"));
            }
            pairs.push((name.into_owned(), value.into_owned()));
        }
        Ok(Self { pairs })
    }

    /// The value of `name`, if the URL gives it.
    pub fn take(&mut self, name: &str) -> Option<String> {
        let at = self.pairs.iter().position(|(n, _)| n == name)?;
        Some(self.pairs.remove(at).1)
    }

    /// `true`/`false` (also `1`/`0`, `yes`/`no`); `false` when absent.
    pub fn flag(&mut self, name: &str) -> Result<bool, String> {
        match self.take(name).as_deref() {
            None | Some("false" | "0" | "no") => Ok(false),
            Some("true" | "1" | "yes" | "") => Ok(true),
            Some(_) => Err(format!("URL parameter {name} must be true or false")),
        }
    }

    /// A whole number of at least `min`, if given.
    pub fn number(&mut self, name: &str, min: u64) -> Result<Option<u64>, String> {
        let Some(text) = self.take(name) else {
            return Ok(None);
        };
        match text.parse::<u64>() {
            Ok(n) if n >= min => Ok(Some(n)),
            _ => Err(format!(
                "URL parameter {name} must be a whole number of at least {min}"
            )),
        }
    }

    /// A file path, if given (not read here).
    pub fn path(&mut self, name: &str) -> Result<Option<PathBuf>, String> {
        match self.take(name) {
            None => Ok(None),
            Some(path) if path.is_empty() => Err(format!("URL parameter {name} names no file")),
            Some(path) => Ok(Some(PathBuf::from(path))),
        }
    }
}

/// Reads the secret in the file `path` that parameter `param` names,
/// without its surrounding whitespace; the error names both, never the
/// contents.
pub fn read_secret(param: &str, path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{param} {}: cannot read it ({})", path.display(), e.kind()))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(format!("{param} {}: the file is empty", path.display()));
    }
    Ok(secret.to_owned())
}

/// Where a row goes, from its exchange and routing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Naming {
    /// The non-empty ones of exchange and routing key, joined by the
    /// separator (`orders.created`; `created` for the default exchange).
    Joined(char),
    /// A template with `{exchange}` and `{routing_key}` placeholders.
    Template(Template),
}

impl Naming {
    /// The template that parameter `param` gives, else joined by `separator`.
    pub fn of(params: &mut Params, param: &str, separator: char) -> Result<Self, String> {
        match params.take(param) {
            None => Ok(Self::Joined(separator)),
            Some(text) => Template::parse(&text, param).map(Self::Template),
        }
    }

    pub fn name(&self, exchange: &str, routing_key: &str) -> String {
        match self {
            Self::Joined(separator) => match (exchange.is_empty(), routing_key.is_empty()) {
                (true, _) => routing_key.to_owned(),
                (false, true) => exchange.to_owned(),
                (false, false) => format!("{exchange}{separator}{routing_key}"),
            },
            Self::Template(template) => template.render(exchange, routing_key),
        }
    }
}

/// Text with `{exchange}` and `{routing_key}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Exchange,
    RoutingKey,
}

impl Template {
    /// Parses the template of parameter `param`: braces only around the
    /// two placeholders, at least one of them used.
    pub fn parse(text: &str, param: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find(['{', '}']) {
            if rest[open..].starts_with('}') {
                return Err(format!("URL parameter {param}: '}}' without '{{'"));
            }
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let Some(close) = rest[open..].find('}') else {
                return Err(format!("URL parameter {param}: '{{' without '}}'"));
            };
            parts.push(match &rest[open + 1..open + close] {
                "exchange" => Part::Exchange,
                "routing_key" => Part::RoutingKey,
                other => {
                    return Err(format!(
                        "URL parameter {param}: unknown placeholder {{{other}}} \
                         (use {{exchange}} and {{routing_key}})"
                    ));
                }
            });
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        if !parts.iter().any(|p| !matches!(p, Part::Text(_))) {
            return Err(format!(
                "URL parameter {param} must use {{exchange}} or {{routing_key}}, \
                 else every row goes to one place"
            ));
        }
        Ok(Self { parts })
    }

    pub fn render(&self, exchange: &str, routing_key: &str) -> String {
        let mut out = String::new();
        for part in &self.parts {
            out.push_str(match part {
                Part::Text(text) => text,
                Part::Exchange => exchange,
                Part::RoutingKey => routing_key,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(query: &str, known: &[&str]) -> Result<Params, String> {
        Params::of(&format!("nats://h/?{query}").parse().unwrap(), known)
    }

    #[test]
    fn unknown_and_repeated_parameters_are_refused_by_name() {
        let error = params("maxln=5", &["maxlen"]).unwrap_err();
        assert!(
            error.contains("\"maxln\"") && error.contains("maxlen"),
            "{error}"
        );
        let error = params("maxlen=5&maxlen=6", &["maxlen"]).unwrap_err();
        assert!(error.contains("twice"), "{error}");
    }

    #[test]
    fn values_are_parsed_and_errors_do_not_quote_them() {
        let mut p = params("n=12&f=true&bad=s3cret&g=s3cret", &["n", "f", "bad", "g"]).unwrap();
        assert_eq!(p.number("n", 1).unwrap(), Some(12));
        assert!(p.flag("f").unwrap());
        assert!(!p.flag("absent").unwrap());
        let error = p.number("bad", 1).unwrap_err();
        assert!(
            !error.contains("s3cret") && error.contains("bad"),
            "{error}"
        );
        let error = p.flag("g").unwrap_err();
        assert!(!error.contains("s3cret"), "{error}");
    }

    #[test]
    fn the_default_naming_joins_the_non_empty_parts() {
        let naming = Naming::Joined('.');
        assert_eq!(naming.name("orders", "created"), "orders.created");
        assert_eq!(naming.name("", "created"), "created");
        assert_eq!(naming.name("orders", ""), "orders");
        assert_eq!(naming.name("", ""), "");
    }

    #[test]
    fn a_template_renders_its_placeholders_and_refuses_others() {
        let t = Template::parse("app.{exchange}.{routing_key}.v1", "subject").unwrap();
        assert_eq!(t.render("orders", "created"), "app.orders.created.v1");
        assert_eq!(
            Template::parse("{routing_key}", "s")
                .unwrap()
                .render("x", "k"),
            "k"
        );
        for bad in ["{exchange", "a}", "{queue}", "fixed", "{}"] {
            assert!(Template::parse(bad, "subject").is_err(), "{bad}");
        }
    }

    #[test]
    fn a_secret_file_is_trimmed_and_its_errors_name_the_path_only() {
        let path = std::env::temp_dir().join(format!("secret-{}", std::process::id()));
        std::fs::write(&path, "  t0ken\n").unwrap();
        assert_eq!(read_secret("token_file", &path).unwrap(), "t0ken");
        std::fs::write(&path, "\n").unwrap();
        assert!(
            read_secret("token_file", &path)
                .unwrap_err()
                .contains("empty")
        );
        std::fs::remove_file(&path).unwrap();
        let error = read_secret("token_file", &path).unwrap_err();
        assert!(
            error.contains("token_file") && error.contains("secret-"),
            "{error}"
        );
    }
}
