//! The test protos' descriptor set (`tests/proto/test/v1/topics.proto`),
//! edited for one test's broker names: tests running at once (and the
//! ingress tests, which use the protos' own names) then never consume each
//! other's messages. Also used by the benchmark's `deliver` group
//! (`benches/relay/deliver.rs`), which includes this file by path.

use prost_reflect::{DynamicMessage, Value};

/// The test protos' FileDescriptorSet, as build.rs wrote it.
pub const TEST_DESCRIPTORS: &str = concat!(env!("OUT_DIR"), "/test_descriptors.bin");

/// The unicast service of the test protos.
pub const BILLING_SERVICE: &str = "BillingCommands";

/// The test set with OrderEvents' topic and BillingCommands' worker renamed.
pub fn renamed_set(topic: &str, billing: &str) -> Vec<u8> {
    edited_set(|_, topology| {
        rename(topology, "broadcast", "topic_name", topic);
        rename(topology, "unicast", "worker_name", billing);
        true
    })
}

/// The test set with BillingCommands alone among the services with a
/// messaging option, its worker named `worker`: a relay delivering with it
/// consumes `worker` (declaring `worker.retry` and `worker.dead` too) and
/// needs no `--worker-queue`.
pub fn billing_only_set(worker: &str) -> Vec<u8> {
    edited_set(|service, topology| {
        rename(topology, "unicast", "worker_name", worker);
        service == BILLING_SERVICE
    })
}

/// The test set, decoded with the messaging option's own descriptor (so the
/// option is a known extension, kept through decode and encode), each
/// service with a messaging option passed to `edit` (its name and the
/// option) and kept when `edit` says so, encoded again.
fn edited_set(mut edit: impl FnMut(&str, &mut DynamicMessage) -> bool) -> Vec<u8> {
    let pool = outbox_relay::grpc::descriptors::base_pool();
    let set_type = pool
        .get_message_by_name("google.protobuf.FileDescriptorSet")
        .unwrap();
    let config = pool
        .get_extension_by_name("outbox.messaging.v1.config")
        .unwrap();
    let bytes = std::fs::read(TEST_DESCRIPTORS).unwrap();
    let mut set = DynamicMessage::decode(set_type, bytes.as_slice()).unwrap();
    let Some(Value::List(files)) = set.get_field_by_name_mut("file") else {
        panic!("no files")
    };
    for file in files {
        let Value::Message(file) = file else { continue };
        let Some(Value::List(services)) = file.get_field_by_name_mut("service") else {
            continue;
        };
        services.retain_mut(|service| {
            let Value::Message(service) = service else {
                return true;
            };
            let name = service
                .get_field_by_name("name")
                .and_then(|n| n.as_str().map(str::to_owned))
                .unwrap_or_default();
            let Some(Value::Message(options)) = service.get_field_by_name_mut("options") else {
                return true;
            };
            if !options.has_extension(&config) {
                return true;
            }
            let Value::Message(topology) = options.get_extension_mut(&config) else {
                return true;
            };
            edit(&name, topology)
        });
    }
    prost::Message::encode_to_vec(&set)
}

/// Sets `field` of the topology's `kind` (e.g. `unicast.worker_name`), if
/// the topology is of that kind.
fn rename(topology: &mut DynamicMessage, kind: &str, field: &str, name: &str) {
    if topology.has_field_by_name(kind)
        && let Some(Value::Message(inner)) = topology.get_field_by_name_mut(kind)
    {
        inner.set_field_by_name(field, Value::String(name.to_owned()));
    }
}
