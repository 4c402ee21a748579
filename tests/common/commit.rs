//! The commit a build of this checkout should name (`--version`,
//! `outbox_relay_build_info{commit}`), asked of git at test time, so that a
//! `build.rs` that names another commit, or misses an edit, fails the test.

use std::process::Command;

/// What `build.rs` compares with HEAD for the `-dirty` flag (its `SOURCES`).
const SOURCES: &[&str] = &[
    "Cargo.toml",
    "Cargo.lock",
    "build.rs",
    "src",
    "sql",
    "proto",
    "tests/proto",
];

/// `git rev-parse --short=12 HEAD`, plus `-dirty` when the build's sources
/// differ from it. The tests run in a checkout (CI clones one): no git is a
/// failure here, not a reason to pass.
pub fn checked_out_commit() -> String {
    let head = git(&["rev-parse", "--short=12", "HEAD"]);
    assert_eq!(head.len(), 12, "git rev-parse --short=12 HEAD: {head:?}");
    let mut status = vec!["status", "--porcelain", "--"];
    status.extend_from_slice(SOURCES);
    if git(&status).is_empty() {
        head
    } else {
        format!("{head}-dirty")
    }
}

fn git(args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("--no-optional-locks")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("git runs (the tests need a checkout)");
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
