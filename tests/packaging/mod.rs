//! What the binary says about itself, for packagers and operators: the
//! commit in `--version`, the shell completions and the man pages, each
//! checked by what reads it (git, bash, groff). (A module of the `cli` test
//! binary.)

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

/// What bash offers after `words` (the last one being completed), asking the
/// function that `outbox-relay completions bash` registered for the command.
fn bash_completes(script: &std::path::Path, words: &[&str]) -> Vec<String> {
    const DRIVER: &str = r#"
source "$1"; shift
registered=$(complete -p outbox-relay) || exit 3
function=$(sed -n 's/.*-F \([^ ]*\) .*/\1/p' <<<"$registered")
COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 ))
COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}; COMPREPLY=()
"$function" outbox-relay "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"
"#;
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", DRIVER, "bash"])
        .arg(script)
        .args(words)
        .output()
        .expect("bash runs");
    assert!(out.status.success(), "completing {words:?}: {out:?}");
    let offered = String::from_utf8(out.stdout).unwrap();
    offered.lines().map(str::to_owned).collect()
}

#[test]
fn the_bash_completion_offers_the_subcommands_their_flags_and_values() {
    let dir = tempdir("completion");
    let script = dir.join("outbox-relay.bash");
    std::fs::write(&script, stdout_of(&["completions", "bash"])).unwrap();
    let commands = bash_completes(&script, &["outbox-relay", ""]);
    for command in ["run", "migrate", "send", "dead-queue", "completions", "man"] {
        assert!(
            commands.iter().any(|c| c == command),
            "{command}: {commands:?}"
        );
    }
    assert_eq!(
        bash_completes(&script, &["outbox-relay", "mi"]),
        ["migrate"]
    );
    let mut batch = bash_completes(&script, &["outbox-relay", "run", "--batch-"]);
    batch.sort();
    assert_eq!(batch, ["--batch-max-bytes", "--batch-size"]);
    let on_sent = bash_completes(&script, &["outbox-relay", "run", "--on-sent", ""]);
    assert_eq!(on_sent, ["mark", "delete"]);
    let mut queue = bash_completes(&script, &["outbox-relay", "dead-queue", ""]);
    queue.retain(|w| !w.starts_with('-'));
    assert_eq!(queue, ["list", "replay", "purge", "help"]);
    let shells = bash_completes(&script, &["outbox-relay", "completions", ""]);
    assert!(shells.iter().any(|s| s == "zsh"), "{shells:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The warnings groff gives rendering `page` as a man page (none: valid).
fn groff_warnings(page: &std::path::Path) -> String {
    let out = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .arg(page)
        .output()
        .expect("groff runs (groff-base: deploy/local/services.sh installs it)");
    assert!(out.status.success(), "groff {}: {out:?}", page.display());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_man_pages_are_roff_for_every_command_that_groff_renders_cleanly() {
    use clap::CommandFactory;
    let main = stdout_of(&["man"]);
    assert!(main.contains("\n.TH outbox-relay 1 "), "{main}");
    assert!(
        main.contains("outbox\\-relay\\-run(1)"),
        "lists the run page"
    );

    let dir = tempdir("man");
    stdout_of(&["man", "--out-dir", dir.to_str().unwrap()]);
    let cli = outbox_relay::config::Cli::command();
    let mut pages = vec!["outbox-relay".to_owned()];
    for sub in cli.get_subcommands() {
        pages.push(format!("outbox-relay-{}", sub.get_name()));
        for nested in sub.get_subcommands() {
            let name = format!("outbox-relay-{}-{}", sub.get_name(), nested.get_name());
            pages.push(name);
        }
    }
    for name in &pages {
        let page = dir.join(format!("{name}.1"));
        let roff = std::fs::read_to_string(&page).unwrap_or_else(|e| panic!("{name}.1: {e}"));
        assert!(
            roff.contains(&format!("\n.TH {name} 1 ")),
            "{name}.1 has no .TH"
        );
        assert_eq!(groff_warnings(&page), "", "{name}.1");
    }
    // The options name their environment variables, as --help does.
    let run = std::fs::read_to_string(dir.join("outbox-relay-run.1")).unwrap();
    assert!(run.contains("OUTBOX_BATCH_SIZE"), "{run}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A fresh directory of this test's own.
fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("outbox-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn read(path: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_license_file_is_the_full_apache_2_text_cargo_toml_names() {
    assert!(read("Cargo.toml").contains("\nlicense = \"Apache-2.0\"\n"));
    let license = read("LICENSE");
    for part in [
        "Apache License\n                           Version 2.0, January 2004",
        "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION",
        "9. Accepting Warranty or Additional Liability.",
        "END OF TERMS AND CONDITIONS",
        "APPENDIX: How to apply the Apache License to your work.",
    ] {
        assert!(license.contains(part), "LICENSE lacks {part:?}");
    }
    // The whole text, not an excerpt: the license is 11,358 bytes.
    assert!(license.len() > 11_000, "{} bytes", license.len());
}

/// Every migration file, as `sql/NNNN_name.sql` and `sql/o5/...`.
fn migration_files() -> Vec<String> {
    let mut files = Vec::new();
    for dir in ["sql", "sql/o5"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        for entry in std::fs::read_dir(path).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if name.ends_with(".sql") {
                files.push(format!("{dir}/{name}"));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn the_changelog_says_what_every_migration_locks_and_in_which_order_to_roll_it() {
    let changelog = read("CHANGELOG.md");
    let files = migration_files();
    assert!(files.len() >= 7, "{files:?}");
    for file in files {
        // The relay's own migrations are headed by their file name, the
        // o5 ones by their path (their numbers start again at 0001).
        let name = file.strip_prefix("sql/").unwrap();
        let heading = if name.contains('/') {
            format!("\n### `{file}`")
        } else {
            format!("\n### `{name}`")
        };
        let at = changelog
            .find(&heading)
            .unwrap_or_else(|| panic!("CHANGELOG.md has no upgrade notes for {file}"));
        let section = &changelog[at + heading.len()..];
        let section = &section[..section.find("\n### ").unwrap_or(section.len())];
        for part in ["- **Changes**:", "- **Locks**:", "- **Order**:"] {
            assert!(section.contains(part), "{file}: no {part:?} in its notes");
        }
    }
}
