//! `.dockerignore` as Docker reads it: which files of the context a build
//! sees, so that a test can tell that every build input reaches the
//! builder stage.

use crate::ROOT;
use std::path::Path;

#[test]
fn the_dockerignore_check_follows_dockers_rules() {
    let topics = "tests/proto/test/v1/topics.proto";
    let publisher = "proto/outbox/v1/publisher.proto";
    let leaves_out = |ignore: &str, path: &str| ignored(&dockerignore_patterns(ignore), path);
    assert!(leaves_out("tests", topics));
    assert!(!leaves_out("tests\n!tests/proto", topics));
    assert!(leaves_out("tests\n!tests/proto", "tests/cli.rs"));
    assert!(leaves_out("# comment\n/proto/", publisher));
    assert!(leaves_out("**/*.proto", publisher));
    assert!(leaves_out("tests/*/*/v1", topics));
    assert!(!leaves_out("tests/*/v1", topics));
    assert!(leaves_out("build.r?", "build.rs"));
    assert!(!leaves_out("target\n**/*.profraw", "build.rs"));
    assert!(copies(".", "tests/proto") && copies("./tests/", "tests/proto"));
    assert!(!copies("tests/protos", "tests/proto") && !copies("proto", "tests/proto"));
}

/// Whether copying `source` (relative to the context) brings `path` along.
pub fn copies(source: &str, path: &str) -> bool {
    let source = clean(source);
    source.is_empty() || path == source || path.starts_with(&format!("{source}/"))
}

/// `path` without `./` in front and `/` at either end; `.` becomes empty.
fn clean(path: &str) -> &str {
    let path = path.trim();
    let path = path.strip_prefix("./").unwrap_or(path);
    let path = path.trim_matches('/');
    if path == "." { "" } else { path }
}

/// `.dockerignore` lines as (re-include?, pattern segments).
pub fn dockerignore_patterns(text: &str) -> Vec<(bool, Vec<String>)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| match l.strip_prefix('!') {
            Some(rest) => (true, rest.trim()),
            None => (false, l),
        })
        .map(|(negated, p)| {
            let segments = clean(p)
                .split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_owned);
            (negated, segments.collect())
        })
        .filter(|(_, segments): &(bool, Vec<String>)| !segments.is_empty())
        .collect()
}

/// Docker's rule: the last pattern that matches the path, or one of its
/// parent directories, decides; a `!` pattern takes the path back in.
pub fn ignored(patterns: &[(bool, Vec<String>)], path: &str) -> bool {
    let segments: Vec<&str> = path.split('/').collect();
    let mut ignored = false;
    for (negated, pattern) in patterns {
        let pattern: Vec<&str> = pattern.iter().map(String::as_str).collect();
        if (1..=segments.len()).any(|n| glob(&pattern, &segments[..n])) {
            ignored = !negated;
        }
    }
    ignored
}

/// Path segments against pattern segments: `**` spans any number of
/// segments, `*` and `?` stay within one.
fn glob(pattern: &[&str], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((&"**", rest)) => (0..=path.len()).any(|skip| glob(rest, &path[skip..])),
        Some((first, rest)) => path.split_first().is_some_and(|(name, tail)| {
            segment(first.as_bytes(), name.as_bytes()) && glob(rest, tail)
        }),
    }
}

fn segment(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|skip| segment(rest, &name[skip..])),
        Some((b'?', rest)) => !name.is_empty() && segment(rest, &name[1..]),
        Some((c, rest)) => name.first() == Some(c) && segment(rest, &name[1..]),
    }
}

/// `input` if it is a file, else every file below it, relative to the root.
pub fn files_under(input: &str) -> Vec<String> {
    let path = Path::new(ROOT).join(input);
    if !path.is_dir() {
        return vec![input.to_owned()];
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&path).unwrap_or_else(|e| panic!("{input}: {e}")) {
        let name = entry.unwrap().file_name();
        files.extend(files_under(&format!("{input}/{}", name.to_string_lossy())));
    }
    files
}
