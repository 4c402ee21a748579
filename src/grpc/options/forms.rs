//! The strict readers of each accepted form's message: every field a form
//! defines is read, any other refuses the service, naming the option.

use super::wire::{self, Value};
use super::{O5Topic, OptionError, OutboxKind, Role};

/// The bytes of a length-delimited value (a string or an embedded message).
pub(super) fn message_bytes<'a>(
    value: &Value<'a>,
    option: &str,
    what: &str,
) -> Result<&'a [u8], OptionError> {
    match value {
        Value::Bytes(bytes) => Ok(bytes),
        other => Err(OptionError::WireType {
            option: option.to_owned(),
            what: what.to_owned(),
            found: other.kind(),
            expected: "length-delimited",
        }),
    }
}

/// Reads one form's message (and those inside it), naming `option` in errors.
pub(super) struct Reader<'a> {
    pub option: &'a str,
}

impl Reader<'_> {
    fn fields<'b>(&self, bytes: &'b [u8]) -> Result<Vec<wire::Field<'b>>, OptionError> {
        wire::fields(bytes).map_err(|e| OptionError::Malformed {
            option: self.option.to_owned(),
            reason: e.0,
        })
    }

    fn unknown(&self, field: u32, within: &str) -> OptionError {
        OptionError::UnknownField {
            option: self.option.to_owned(),
            field,
            within: if within.is_empty() {
                String::new()
            } else {
                format!(" of {within}")
            },
        }
    }

    fn string(&self, value: &Value<'_>, what: &str) -> Result<String, OptionError> {
        let bytes = message_bytes(value, self.option, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| OptionError::Malformed {
            option: self.option.to_owned(),
            reason: format!("{what} is not UTF-8"),
        })
    }

    /// A message whose one field is string field 1 (`within`.`name`).
    fn only_string(&self, bytes: &[u8], within: &str, name: &str) -> Result<String, OptionError> {
        let mut value = String::new();
        for field in self.fields(bytes)? {
            match field.number {
                1 => value = self.string(&field.value, &format!("{within}.{name}"))?,
                n => return Err(self.unknown(n, within)),
            }
        }
        Ok(value)
    }

    /// A message with no fields (`ServiceConfig.Publish`, ...).
    fn empty(&self, bytes: &[u8], within: &str) -> Result<(), OptionError> {
        match self.fields(bytes)?.first() {
            Some(field) => Err(self.unknown(field.number, within)),
            None => Ok(()),
        }
    }

    /// A message holding one oneof whose members are `members` (numbered
    /// from 1): the member set last, with its bytes merged.
    fn oneof(&self, bytes: &[u8], members: &[&str]) -> Result<(u32, Vec<u8>), OptionError> {
        let mut set: Option<(u32, Vec<u8>)> = None;
        for field in self.fields(bytes)? {
            let member = (field.number as usize).checked_sub(1);
            let Some(name) = member.and_then(|i| members.get(i)) else {
                return Err(self.unknown(field.number, ""));
            };
            let value = message_bytes(&field.value, self.option, name)?;
            match &mut set {
                Some((n, all)) if *n == field.number => all.extend_from_slice(value),
                _ => set = Some((field.number, value.to_vec())),
            }
        }
        set.ok_or_else(|| OptionError::NoKind {
            option: self.option.to_owned(),
        })
    }

    /// `(outbox.messaging.v1.config)`.
    pub(super) fn outbox(&self, bytes: &[u8]) -> Result<OutboxKind, OptionError> {
        const KINDS: [&str; 3] = ["broadcast", "unicast", "reply"];
        let (kind, inner) = self.oneof(bytes, &KINDS)?;
        Ok(match kind {
            1 => OutboxKind::Broadcast {
                topic_name: self.only_string(&inner, "broadcast", "topic_name")?,
            },
            2 => OutboxKind::Unicast {
                worker_name: self.only_string(&inner, "unicast", "worker_name")?,
            },
            _ => OutboxKind::Reply {
                reply_to_field: self.only_string(&inner, "reply", "reply_to_field")?,
            },
        })
    }

    /// `Config` of j5 / o5, and the pentops form (whose string is
    /// `topic_name`), upscaled as upstream's generator upscales `Config`.
    pub(super) fn config(&self, bytes: &[u8], name: &str) -> Result<O5Topic, OptionError> {
        const KINDS: [&str; 4] = ["broadcast", "unicast", "request", "reply"];
        let (kind, inner) = self.oneof(bytes, &KINDS)?;
        let within = KINDS[kind as usize - 1];
        let topic = self.only_string(&inner, within, name)?;
        Ok(match kind {
            1 | 2 => O5Topic {
                topic: Some(topic),
                role: Role::Publish,
            },
            3 => O5Topic {
                topic: Some(format!("{topic}_request")),
                role: Role::Request,
            },
            _ => O5Topic {
                topic: Some(format!("{topic}_reply")),
                role: Role::Reply,
            },
        })
    }

    /// `ServiceConfig` of j5 / o5.
    pub(super) fn service(&self, bytes: &[u8]) -> Result<O5Topic, OptionError> {
        let mut topic = None;
        let mut role: Option<(u32, Vec<u8>)> = None;
        for field in self.fields(bytes)? {
            match field.number {
                1 => topic = Some(self.string(&field.value, "topic_name")?),
                n @ 10..=14 => {
                    let value = message_bytes(&field.value, self.option, "role")?;
                    match &mut role {
                        Some((m, all)) if *m == n => all.extend_from_slice(value),
                        _ => role = Some((n, value.to_vec())),
                    }
                }
                n => return Err(self.unknown(n, "")),
            }
        }
        let Some((number, inner)) = role else {
            return Err(OptionError::NoKind {
                option: self.option.to_owned(),
            });
        };
        let role = match number {
            10 => self.empty(&inner, "publish").map(|()| Role::Publish)?,
            11 => self.empty(&inner, "request").map(|()| Role::Request)?,
            12 => self.empty(&inner, "reply").map(|()| Role::Reply)?,
            13 => Role::Event {
                entity_name: self.entity(&inner, "event")?,
            },
            _ => Role::Upsert {
                entity_name: self.entity(&inner, "upsert")?,
            },
        };
        Ok(O5Topic { topic, role })
    }

    fn entity(&self, bytes: &[u8], within: &'static str) -> Result<String, OptionError> {
        let name = self.only_string(bytes, within, "entity_name")?;
        if name.is_empty() {
            return Err(OptionError::Missing {
                option: self.option.to_owned(),
                field: if within == "event" {
                    "event.entity_name"
                } else {
                    "upsert.entity_name"
                },
            });
        }
        Ok(name)
    }
}
