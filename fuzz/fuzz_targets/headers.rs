//! Any JSON an application can store in `headers` either becomes an AMQP
//! field table or is refused with an error; never a panic. What converts
//! converts back and forth to the same table.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outbox_relay::amqp::{headers_table, table_to_json};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(table) = headers_table(&value) {
        let again = headers_table(&table_to_json(&table)).expect("a converted table converts again");
        assert_eq!(again, table);
    }
});
