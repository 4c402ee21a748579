//! Compiles `proto/` (the sidecar's gRPC contract) and the test protos in
//! `tests/proto/` with protox, a protobuf compiler in Rust, so no `protoc`
//! binary is needed. Writes, into OUT_DIR:
//! - Rust code for every package (servers and clients);
//! - `outbox_descriptors.bin`: the contract's FileDescriptorSet (served by
//!   server reflection, and the source of the messaging options);
//! - `test_descriptors.bin`, `bad_descriptors.bin`, and one set per o5 option
//!   form (`o5_descriptors.bin`: pentops and j5; `o5_legacy_descriptors.bin`:
//!   o5-messaging, whose options share the j5 field numbers, so no one set
//!   holds both) and `unknown_descriptors.bin` (an option the sidecar does
//!   not know): what an application would hand the sidecar with
//!   `--descriptor-set`, for the integration tests.

use std::path::{Path, PathBuf};

const CONTRACT: &[&str] = &[
    "proto/outbox/messaging/v1/options.proto",
    "proto/pentops/messaging/v1/options.proto",
    "proto/j5/messaging/v1/annotations.proto",
    "proto/o5/messaging/v1/annotations.proto",
    "proto/outbox/v1/publisher.proto",
    "proto/o5/messaging/v1/message.proto",
    "proto/o5/messaging/v1/topic/bridge.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=tests/proto");

    let contract = compile(CONTRACT, &["proto"], &out.join("outbox_descriptors.bin"))?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(contract)?;

    let includes = ["tests/proto", "proto"];
    let test = compile(
        &["test/v1/topics.proto"],
        &includes,
        &out.join("test_descriptors.bin"),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .extern_path(
            ".outbox.messaging",
            "::outbox_relay::proto::outbox::messaging",
        )
        .compile_fds(test)?;
    let sets: [(&[&str], &str); 4] = [
        (&["bad/v1/bad.proto"], "bad_descriptors.bin"),
        (
            &["foo/v1/foo.proto", "j5test/v1/topics.proto"],
            "o5_descriptors.bin",
        ),
        (&["o5test/v1/topics.proto"], "o5_legacy_descriptors.bin"),
        (&["acme/v1/orders.proto"], "unknown_descriptors.bin"),
    ];
    for (files, set) in sets {
        compile(files, &includes, &out.join(set))?;
    }
    Ok(())
}

/// Compiles `files` (with their imports) and writes the encoded
/// FileDescriptorSet to `set`. The bytes come from protox itself: a set
/// decoded into `prost_types` and encoded again would lose custom options
/// (they are extensions, unknown to prost_types), and with them the topologies.
fn compile(
    files: &[&str],
    includes: &[&str],
    set: &Path,
) -> Result<prost_types::FileDescriptorSet, Box<dyn std::error::Error>> {
    let mut compiler = protox::Compiler::new(includes)?;
    compiler
        .include_imports(true)
        .include_source_info(true)
        .open_files(files)?;
    std::fs::write(set, compiler.encode_file_descriptor_set())?;
    Ok(compiler.file_descriptor_set())
}
