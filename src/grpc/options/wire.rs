//! Just enough of the protobuf wire format to read option bytes strictly:
//! the fields of one message, in order, with their raw values. Nothing here
//! knows what the fields mean.

use prost::bytes::Buf;
use prost::encoding::{WireType, decode_key, decode_varint};

/// One field occurrence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field<'a> {
    pub number: u32,
    pub value: Value<'a>,
}

/// A field's value as it was on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    Varint(u64),
    Fixed64,
    Fixed32,
    /// Bytes, a string or an embedded message.
    Bytes(&'a [u8]),
}

impl Value<'_> {
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Varint(_) => "a varint",
            Value::Fixed64 => "a 64-bit value",
            Value::Fixed32 => "a 32-bit value",
            Value::Bytes(_) => "length-delimited",
        }
    }
}

/// Why bytes are not a protobuf message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

/// The fields of the message encoded in `bytes`.
pub fn fields(mut bytes: &[u8]) -> Result<Vec<Field<'_>>, Malformed> {
    let bad = |e: &dyn std::fmt::Display| Malformed(e.to_string());
    let mut out = Vec::new();
    while bytes.has_remaining() {
        let (number, wire) = decode_key(&mut bytes).map_err(|e| bad(&e))?;
        let value = match wire {
            WireType::Varint => Value::Varint(decode_varint(&mut bytes).map_err(|e| bad(&e))?),
            WireType::SixtyFourBit => {
                take(&mut bytes, 8)?;
                Value::Fixed64
            }
            WireType::ThirtyTwoBit => {
                take(&mut bytes, 4)?;
                Value::Fixed32
            }
            WireType::LengthDelimited => {
                let len = decode_varint(&mut bytes).map_err(|e| bad(&e))?;
                Value::Bytes(take(
                    &mut bytes,
                    usize::try_from(len).unwrap_or(usize::MAX),
                )?)
            }
            WireType::StartGroup | WireType::EndGroup => {
                return Err(Malformed("groups are not supported".into()));
            }
        };
        out.push(Field { number, value });
    }
    Ok(out)
}

fn take<'a>(bytes: &mut &'a [u8], len: usize) -> Result<&'a [u8], Malformed> {
    if len > bytes.len() {
        return Err(Malformed("truncated field".into()));
    }
    let (head, tail) = bytes.split_at(len);
    *bytes = tail;
    Ok(head)
}

/// Encodes one length-delimited field (tests build option bytes with it).
#[cfg(test)]
pub fn message_field(number: u32, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_key(number, WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(value.len() as u64, &mut out);
    out.extend_from_slice(value);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_come_back_in_order_with_their_values() {
        let mut bytes = message_field(1, b"abc");
        bytes.extend([0x10, 0x96, 0x01]); // field 2, varint 150
        bytes.extend(message_field(93_563_435, &[]));
        let got = fields(&bytes).unwrap();
        assert_eq!(
            got,
            [
                Field {
                    number: 1,
                    value: Value::Bytes(b"abc")
                },
                Field {
                    number: 2,
                    value: Value::Varint(150)
                },
                Field {
                    number: 93_563_435,
                    value: Value::Bytes(&[])
                },
            ]
        );
    }

    #[test]
    fn a_length_past_the_end_is_malformed() {
        assert!(fields(&[0x0a, 0x05, b'a']).is_err());
        assert!(fields(&[0x0b]).is_err(), "a group");
    }
}
