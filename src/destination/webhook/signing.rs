//! Standard Webhooks signatures: `webhook-signature: v1,<base64 of
//! HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}")>`, where
//! the key is the base64-decoded part of a `whsec_…` secret. Any Standard
//! Webhooks library verifies what this signs.
//!
//! Invariants owned here:
//! - the secret never leaves this module: no `Debug` of it, and errors
//!   name the file and what is wrong, never a byte of its content;
//! - a secret file may hold several secrets, one a line (rotation): each
//!   message is signed with every one of them, space-separated, as the
//!   specification allows, so receivers on the old or the new secret both
//!   verify while the change rolls out.

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use ring::hmac;
use std::path::Path;

/// The prefix of Standard Webhooks secrets.
const PREFIX: &str = "whsec_";
/// Shorter keys are refused (the specification recommends 24 to 64 bytes).
const MIN_KEY_BYTES: usize = 16;

/// Secrets are accepted with or without their base64 padding.
const SECRET_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Signs messages with one or more keys.
pub struct Signer {
    keys: Vec<hmac::Key>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({} key(s), redacted)", self.keys.len())
    }
}

impl Signer {
    /// Reads the secrets of `path`: one a line, blank lines ignored.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let shown = path.display();
        let bytes = std::fs::read(path).map_err(|e| format!("secret_file {shown}: {e}"))?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| format!("secret_file {shown} is not UTF-8 text"))?;
        Self::from_text(text).map_err(|e| format!("secret_file {shown}: {e}"))
    }

    /// Parses secrets, one a line: `whsec_<base64>` (the prefix may be left out).
    pub fn from_text(text: &str) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let encoded = line.strip_prefix(PREFIX).unwrap_or(line);
            let key = SECRET_BASE64
                .decode(encoded)
                .map_err(|_| format!("line {} is not whsec_ and base64", number + 1))?;
            if key.len() < MIN_KEY_BYTES {
                return Err(format!(
                    "line {}: the key is {} bytes, at least {MIN_KEY_BYTES} are needed",
                    number + 1,
                    key.len()
                ));
            }
            keys.push(hmac::Key::new(hmac::HMAC_SHA256, &key));
        }
        if keys.is_empty() {
            return Err("holds no secret".into());
        }
        Ok(Self { keys })
    }

    /// The `webhook-signature` value of a message.
    pub fn signature(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let timestamp = timestamp.to_string();
        let mut header = String::with_capacity(self.keys.len() * 48);
        for key in &self.keys {
            let mut context = hmac::Context::with_key(key);
            context.update(id.as_bytes());
            context.update(b".");
            context.update(timestamp.as_bytes());
            context.update(b".");
            context.update(body);
            if !header.is_empty() {
                header.push(' ');
            }
            header.push_str("v1,");
            STANDARD.encode_string(context.sign().as_ref(), &mut header);
        }
        header
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The specification's own example (standard-webhooks, the reference
    /// libraries' tests).
    #[test]
    fn the_signature_matches_the_specifications_example() {
        let signer = Signer::from_text("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signature = signer.signature(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn every_secret_of_the_file_signs_for_rotation() {
        let text =
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n\n  MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw  \n";
        let signature = Signer::from_text(text).unwrap().signature("m", 1, b"x");
        let parts: Vec<&str> = signature.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], parts[1], "the prefix is optional");
        assert!(parts[0].starts_with("v1,"));
    }

    #[test]
    fn bad_secrets_are_refused_without_showing_them() {
        for bad in ["", "\n \n", "whsec_not*base64!", "whsec_c2hvcnQ="] {
            let error = Signer::from_text(bad).unwrap_err();
            assert!(
                !error.contains("c2hvcnQ") && !error.contains("base64!"),
                "{error}"
            );
        }
        assert!(
            !format!(
                "{:?}",
                Signer::from_text("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()
            )
            .contains("whsec")
        );
    }
}
