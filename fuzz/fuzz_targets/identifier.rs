//! Any string offered as a schema name is either a valid identifier, which
//! quotes to exactly itself between double quotes, or refused; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outbox_relay::outbox::Identifier;

fuzz_target!(|data: &str| {
    if let Ok(id) = Identifier::parse(data) {
        assert_eq!(id.as_str(), data);
        assert_eq!(id.quoted(), format!("\"{data}\""));
    }
});
