//! What the binary says about itself, for packagers and operators: the
//! commit in `--version`. (A module of the `cli` test binary.)

use crate::BIN;
use crate::common::commit::checked_out_commit;
use std::process::Command;

fn stdout_of(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run outbox-relay");
    assert!(out.status.success(), "outbox-relay {args:?}: {out:?}");
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

#[test]
fn the_version_names_the_commit_git_has_checked_out() {
    let commit = checked_out_commit();
    let version = format!("{} ({commit})\n", env!("CARGO_PKG_VERSION"));
    assert_eq!(stdout_of(&["--version"]), format!("outbox-relay {version}"));
    // Every subcommand says the same (propagate_version).
    assert_eq!(
        stdout_of(&["run", "--version"]),
        format!("outbox-relay-run {version}")
    );
}
