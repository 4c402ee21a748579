//! The message_id: a message's identity across retries, its AMQP
//! `message_id`, and the key the table stores a message once under.
//!
//! Invariants owned here:
//! - every id a sender gives (gRPC `message_id`, the `message-id` metadata,
//!   `POST /api/messages`, `send --message-id`) passes [`MessageId::parse`]:
//!   1 to [`MessageId::MAX_BYTES`] bytes of text (an AMQP short string) with
//!   no control character (which PostgreSQL cannot store, as NUL, or logs
//!   and the console cannot show faithfully);
//! - an id is kept verbatim: it is compared, stored and published byte for
//!   byte, never normalised (a UUID in capitals is another id than the same
//!   UUID in lowercase);
//! - a generated id is a random UUID in its canonical form (lowercase,
//!   hyphenated), the form the table's default and earlier versions use.

use bytes::BytesMut;
use std::fmt;
use std::str::FromStr;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

/// A message's id; the text is checked by [`MessageId::parse`], or is as
/// the table holds it ([`MessageId::stored`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct MessageId(String);

/// Why a sender's message_id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageIdError {
    #[error("message_id is empty")]
    Empty,
    #[error(
        "message_id is {0} bytes; at most {max} (an AMQP short string)",
        max = MessageId::MAX_BYTES
    )]
    TooLong(usize),
    #[error("message_id {text:?} holds a control character ({character:?}) at byte {at}")]
    Control {
        text: String,
        character: char,
        at: usize,
    },
}

impl MessageId {
    /// The AMQP `message_id` is a short string: at most 255 bytes.
    pub const MAX_BYTES: usize = 255;

    /// Checks a sender's id (see the module header); kept verbatim.
    pub fn parse(text: &str) -> Result<Self, MessageIdError> {
        if text.is_empty() {
            return Err(MessageIdError::Empty);
        }
        if text.len() > Self::MAX_BYTES {
            return Err(MessageIdError::TooLong(text.len()));
        }
        if let Some((at, character)) = text.char_indices().find(|(_, c)| c.is_control()) {
            return Err(MessageIdError::Control {
                text: text.to_owned(),
                character,
                at,
            });
        }
        Ok(Self(text.to_owned()))
    }

    /// A sender's optional id: empty means "none given" (one is generated
    /// when the message is admitted).
    pub fn optional(text: &str) -> Result<Option<Self>, MessageIdError> {
        match text {
            "" => Ok(None),
            text => Self::parse(text).map(Some),
        }
    }

    /// A new random id: a UUID, lowercase and hyphenated.
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().hyphenated().to_string())
    }

    /// An id read from the table, as it is there. Not re-checked: an
    /// application may have written any text (migration 0004's check
    /// bounds it to 1-255 bytes), and the relay publishes what is stored.
    pub fn stored(text: String) -> Self {
        Self(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `ids` comma-separated in one string, as spans record them
    /// (`messaging.message.ids`).
    pub fn join<'a>(ids: impl IntoIterator<Item = &'a MessageId>) -> String {
        let mut joined = String::new();
        for id in ids {
            if !joined.is_empty() {
                joined.push(',');
            }
            joined.push_str(&id.0);
        }
        joined
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for MessageId {
    type Err = MessageIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Bound as text (the column's type since migration 0004).
impl ToSql for MessageId {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        self.0.as_str().to_sql(ty, out)
    }

    fn accepts(ty: &Type) -> bool {
        <&str as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

impl AsRef<str> for MessageId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_text_up_to_255_bytes_is_an_id_kept_verbatim() {
        let long = "é".repeat(127) + "x"; // 255 bytes
        for text in [
            "order-42",
            "Order-42",
            "0B9D6F3E-4A7C-4D0E-9A51-3F2C8E7B1D20",
            "{0b9d6f3e-4a7c-4d0e-9a51-3f2c8e7b1d20}",
            " spaced / and: ünïcode ",
            "42",
            long.as_str(),
        ] {
            assert_eq!(MessageId::parse(text).unwrap().as_str(), text);
        }
    }

    #[test]
    fn empty_overlong_and_control_characters_are_refused() {
        assert_eq!(MessageId::parse(""), Err(MessageIdError::Empty));
        assert_eq!(
            MessageId::parse(&"x".repeat(256)),
            Err(MessageIdError::TooLong(256))
        );
        assert_eq!(
            MessageId::parse(&"é".repeat(128)),
            Err(MessageIdError::TooLong(256)),
            "bytes count, not characters"
        );
        for (text, at) in [("a\0b", 1), ("line\n", 4), ("\u{7f}", 0), ("é\u{85}", 2)] {
            let e = MessageId::parse(text).unwrap_err();
            assert!(
                matches!(e, MessageIdError::Control { at: a, .. } if a == at),
                "{text:?}: {e}"
            );
        }
    }

    #[test]
    fn an_empty_optional_id_is_none_and_a_generated_one_is_a_canonical_uuid() {
        assert_eq!(MessageId::optional(""), Ok(None));
        assert_eq!(MessageId::optional("m-1").unwrap().unwrap().as_str(), "m-1");
        let id = MessageId::generate();
        let uuid = uuid::Uuid::parse_str(id.as_str()).unwrap();
        assert_eq!(uuid.hyphenated().to_string(), id.as_str());
        assert!(MessageId::parse(id.as_str()).is_ok());
    }
}
