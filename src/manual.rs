//! The command line's documentation for packagers and shells: completion
//! scripts (`outbox-relay completions <shell>`, clap_complete) and man pages
//! (`outbox-relay man`, clap_mangen).
//!
//! Both are generated from the clap definition that parses the command line
//! ([`Cli`]), so they cannot drift from the flags `--help` documents. Each is
//! rendered in memory first and then written: a closed pipe
//! (`outbox-relay man | head`) is [`StdoutClosed`], not a panic inside a
//! generator.

use crate::commands::StdoutClosed;
use crate::config::Cli;
use anyhow::Context;
use clap::{Args, CommandFactory};
use clap_complete::Shell;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for. Bash: `source <(outbox-relay completions
    /// bash)`, or save it as
    /// /usr/share/bash-completion/completions/outbox-relay.
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Debug, Clone, Args)]
pub struct ManArgs {
    /// Write one page per command into this directory (outbox-relay.1,
    /// outbox-relay-run.1, ...) instead of printing the main page; e.g.
    /// /usr/share/man/man1.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

/// `outbox-relay completions <shell>`: the script on stdout.
pub fn completions_cmd(args: &CompletionsArgs) -> anyhow::Result<()> {
    let mut script = Vec::new();
    let mut command = Cli::command();
    let name = command.get_name().to_owned();
    clap_complete::generate(args.shell, &mut command, &name, &mut script);
    if args.shell == Shell::Bash {
        script = respell_bash_states(&script, &name).into_bytes();
    }
    write_stdout(&script)
}

/// clap_complete 4.6 spells the states of a dashed binary's bash script two
/// ways (clap-rs/clap#6421): its loop sets `outbox__relay__subcmd__run`,
/// the matching case arm reads `outbox__subcmd__relay__subcmd__run`, so
/// nothing after a subcommand completes. The arms are respelled the loop's
/// way; once clap_complete is fixed this replaces nothing.
fn respell_bash_states(script: &[u8], name: &str) -> String {
    const SEP: &str = "__subcmd__";
    let script = String::from_utf8_lossy(script);
    let broken = format!("{}{SEP}", name.replace('-', SEP));
    let meant = format!("{}{SEP}", name.replace('-', "__"));
    script.replace(&broken, &meant)
}

/// `outbox-relay man`: the main page on stdout, or every page into
/// `--out-dir`.
pub fn man_cmd(args: &ManArgs) -> anyhow::Result<()> {
    match &args.out_dir {
        Some(dir) => write_pages(dir),
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut page)
                .context("rendering the man page")?;
            write_stdout(&page)
        }
    }
}

/// The main page and one per subcommand (nested ones too), named as `man`
/// looks them up: `outbox-relay-dead-queue-list.1`.
fn write_pages(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("writing the man pages into {}", dir.display()))
}

fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to standard output")),
    }
}
