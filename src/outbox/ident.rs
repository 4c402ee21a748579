//! Validated SQL identifiers (invariant 7).
//!
//! Grammar: `[A-Za-z_][A-Za-z0-9_]*`, at most 63 bytes, not starting with
//! `pg_` (reserved by PostgreSQL for system schemas), and not
//! `information_schema` (the SQL standard's catalog views).
//!
//! Schema names come from configuration and end up inside SQL text, where a
//! bind parameter cannot go. They are therefore checked against a strict
//! grammar and always emitted double-quoted, so no configured value can change
//! the shape of a statement.

use std::fmt;
use std::str::FromStr;

/// PostgreSQL truncates identifiers longer than this (NAMEDATALEN - 1).
const MAX_LEN: usize = 63;

/// A schema (or other object) name that is safe to splice into SQL.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Identifier(String);

/// Why a configured identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentifierError {
    #[error("an identifier cannot be empty")]
    Empty,
    #[error("identifier {0:?} is longer than {MAX_LEN} bytes")]
    TooLong(String),
    #[error(
        "identifier {0:?} must start with a letter or '_' and contain only ASCII letters, digits and '_'"
    )]
    InvalidCharacter(String),
    #[error("{0:?} is a system schema (\"pg_*\", information_schema): choose your own schema")]
    Reserved(String),
}

impl Identifier {
    /// Checks `name` against the grammar in the module header.
    pub fn parse(name: &str) -> Result<Self, IdentifierError> {
        if name.is_empty() {
            return Err(IdentifierError::Empty);
        }
        if name.len() > MAX_LEN {
            return Err(IdentifierError::TooLong(name.to_owned()));
        }
        let mut chars = name.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(IdentifierError::InvalidCharacter(name.to_owned()));
        }
        let lower = name.to_ascii_lowercase();
        if lower.starts_with("pg_") || lower == "information_schema" {
            return Err(IdentifierError::Reserved(name.to_owned()));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as configured, unquoted (for logs and bind parameters).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name double-quoted for SQL text. The grammar admits no quote
    /// characters, so quoting needs no escaping.
    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }
}

impl FromStr for Identifier {
    type Err = IdentifierError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identifier({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ordinary_names_are_accepted_and_quoted() {
        let id = Identifier::parse("app_1").unwrap();
        assert_eq!(id.quoted(), "\"app_1\"");
        assert_eq!(Identifier::parse("_x").unwrap().as_str(), "_x");
    }

    #[test]
    fn hostile_names_are_refused() {
        for bad in [
            "",
            "1abc",
            "a-b",
            "a b",
            "a\"b",
            "a;drop table x",
            "é",
            "a.b",
        ] {
            assert!(Identifier::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(
            Identifier::parse(&"a".repeat(64)),
            Err(IdentifierError::TooLong("a".repeat(64)))
        );
    }

    proptest! {
        #[test]
        fn an_accepted_identifier_never_contains_sql_syntax(s in "\\PC{0,80}") {
            if let Ok(id) = Identifier::parse(&s) {
                prop_assert!(id.as_str().chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                prop_assert!(id.as_str().len() <= MAX_LEN);
                prop_assert_eq!(id.quoted(), format!("\"{s}\""));
            }
        }

        #[test]
        fn every_name_in_the_grammar_is_accepted(s in "[A-Za-z_][A-Za-z0-9_]{0,62}") {
            prop_assert_eq!(Identifier::parse(&s).is_ok(), !s.to_ascii_lowercase().starts_with("pg_"));
        }
    }
}
