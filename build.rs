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
//!
//! It also names the commit the binary is built from, for `--version` and
//! `outbox_relay_build_info{commit}` (`OUTBOX_RELAY_BUILD_COMMIT`): see
//! [`commit`].

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
    println!("cargo:rustc-env=OUTBOX_RELAY_BUILD_COMMIT={}", commit());

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

/// What the binary is built from (`cargo build` reads these): when one of
/// them differs from the commit, the commit is marked `-dirty`.
/// `tests/cli.rs` checks `--version` against git with the same list.
const SOURCES: &[&str] = &[
    "Cargo.toml",
    "Cargo.lock",
    "build.rs",
    "src",
    "sql",
    "proto",
    "tests/proto",
];

/// The commit of the checkout, `git rev-parse --short=12 HEAD`, with
/// `-dirty` when [`SOURCES`] differ from it. Without git or `.git` (an
/// image build: `.dockerignore` leaves `.git` out), the build's
/// `OUTBOX_RELAY_COMMIT` (the Dockerfile's build argument), else `unknown`.
///
/// Cargo runs this again when HEAD moves (a checkout, a commit: the HEAD
/// file, the branch's ref and packed-refs) and when a source file changes,
/// so the dirty flag follows edits too. The paths come from
/// `git rev-parse --git-path`, which also finds them in a worktree, whose
/// `.git` is a file pointing elsewhere.
fn commit() -> String {
    println!("cargo:rerun-if-env-changed=OUTBOX_RELAY_COMMIT");
    let from_env = || {
        std::env::var("OUTBOX_RELAY_COMMIT")
            .ok()
            .filter(|c| !c.trim().is_empty())
            .map(|c| c.trim().to_owned())
    };
    let Some(head) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return from_env().unwrap_or_else(|| "unknown".to_owned());
    };
    let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name])
            && Path::new(&path).exists()
        {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    for source in SOURCES {
        println!("cargo:rerun-if-changed={source}");
    }
    let mut status = vec!["status", "--porcelain", "--"];
    status.extend_from_slice(SOURCES);
    match git(&status) {
        Some(changes) if !changes.is_empty() => format!("{head}-dirty"),
        _ => head,
    }
}

/// `git ARGS` in the crate's directory: its trimmed output, or `None` when
/// git is missing or fails (not a checkout).
fn git(args: &[&str]) -> Option<String> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")?;
    // No optional locks: `status` must not write the index under a git
    // command the developer is running at the same time.
    let out = std::process::Command::new("git")
        .arg("--no-optional-locks")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    out.status.success().then(|| text.trim().to_owned())
}
