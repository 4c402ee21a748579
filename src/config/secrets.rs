//! Secrets from files: `--database-url-file`, `--amqp-url-file`,
//! `--grpc-token-file`, `--admin-token-file` (and their `OUTBOX_*_FILE` variables), the way a
//! Kubernetes Secret is mounted. Read once at start, after clap has parsed
//! the command line; setting both a value and its file is refused by clap
//! (`conflicts_with`). A file's trailing newlines are trimmed (editors and
//! `kubectl create secret --from-file` add them). Errors name the file,
//! never its content.

use super::{AmqpArgs, Cli, Command, DbArgs, GrpcArgs, HttpArgs};
use clap::ArgMatches;
use clap::parser::ValueSource;
use std::path::Path;
use std::str::FromStr;

/// Reads one secret file: UTF-8, trailing newlines trimmed, not empty.
pub fn read_secret_file(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text =
        String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))?;
    let value = text.trim_end_matches(['\n', '\r']);
    if value.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(value.to_owned())
}

/// Reads and parses the file behind `flag`; the parse error says what is
/// wrong without quoting the value.
fn parse_file<T: FromStr<Err = String>>(flag: &str, path: &Path) -> Result<T, String> {
    let value = read_secret_file(path).map_err(|e| format!("{flag}: {e}"))?;
    value
        .parse()
        .map_err(|e| format!("{flag}: the value in {} is invalid: {e}", path.display()))
}

impl DbArgs {
    fn load_files(&mut self) -> Result<(), String> {
        if let Some(path) = &self.database_url_file {
            self.database_url = parse_file("--database-url-file", path)?;
        }
        Ok(())
    }

    /// Whether the database URL is the built-in quickstart default.
    pub fn url_is_default(&self) -> bool {
        self.url_defaulted && self.database_url_file.is_none()
    }
}

impl AmqpArgs {
    fn load_files(&mut self) -> Result<(), String> {
        if let Some(path) = &self.amqp_url_file {
            self.amqp_url = parse_file("--amqp-url-file", path)?;
        }
        Ok(())
    }

    /// Whether the broker URL is the built-in quickstart default.
    pub fn url_is_default(&self) -> bool {
        self.url_defaulted && self.amqp_url_file.is_none()
    }
}

impl GrpcArgs {
    fn load_files(&mut self) -> Result<(), String> {
        if let Some(path) = &self.grpc_token_file {
            self.grpc_token = Some(parse_file("--grpc-token-file", path)?);
        }
        Ok(())
    }
}

impl HttpArgs {
    fn load_files(&mut self) -> Result<(), String> {
        if let Some(path) = &self.admin_token_file {
            self.admin_token = Some(parse_file("--admin-token-file", path)?);
        }
        Ok(())
    }
}

impl Cli {
    /// Replaces every `--*-file` secret by its file's content, and records
    /// which URLs were left at their defaults.
    pub(super) fn load_secret_files(&mut self, matches: &ArgMatches) -> Result<(), String> {
        let sub = matches.subcommand().map(|(_, m)| m);
        let defaulted =
            |id: &str| sub.and_then(|m| m.value_source(id)) == Some(ValueSource::DefaultValue);
        match &mut self.command {
            Command::Run(args) => {
                args.db.url_defaulted = defaulted("database_url");
                args.amqp.url_defaulted = defaulted("amqp_url");
                args.grpc.addr_defaulted = defaulted("grpc_addr");
                args.db.load_files()?;
                args.amqp.load_files()?;
                args.grpc.load_files()?;
                args.http.load_files()
            }
            Command::Migrate(args) => args.db.load_files(),
            Command::Send(args) => args.db.load_files(),
            Command::Stats(db) => db.load_files(),
            Command::Show(args) => args.db.load_files(),
            Command::Dead(args) => args.db.load_files(),
            Command::Replay(args) => args.db.load_files(),
            Command::Tail(args) => args.amqp.load_files(),
            Command::DeadQueue(args) => args.action.target_mut().amqp.load_files(),
            // They read no secret: they describe the command line.
            Command::Completions(_) | Command::Man(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_file_loses_its_trailing_newlines_only() {
        let dir = std::env::temp_dir().join(format!("outbox-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "  s3cr3t \r\n\n").unwrap();
        assert_eq!(read_secret_file(&path).unwrap(), "  s3cr3t ");
        std::fs::write(&path, "\n").unwrap();
        assert!(read_secret_file(&path).unwrap_err().contains("empty"));
        let e = read_secret_file(&dir.join("missing")).unwrap_err();
        assert!(e.contains("missing"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
