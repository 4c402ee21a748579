//! The container image and Kubernetes manifests agree with the binary: every
//! `OUTBOX_*` setting they use is one the binary documents, the ConfigMap's
//! values pass the relay's own validation, the pod's grace period outlasts
//! the relay's shutdown timeout, and the Dockerfile copies what exists and
//! everything the build reads (`build.rs` compiles `proto/` and
//! `tests/proto/`), none of it left out by `.dockerignore`.
//! (No Docker engine runs here; this is what can be checked without one.)

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

const RELAY: &str = env!("CARGO_BIN_EXE_outbox-relay");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn help(command: &str) -> String {
    let out = Command::new(RELAY)
        .args([command, "--help"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// Every `OUTBOX_NAME` token in `text`.
fn outbox_vars(text: &str) -> Vec<String> {
    let mut vars = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("OUTBOX_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        vars.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    vars
}

/// `KEY: value` lines of the ConfigMap's `data:` block.
fn configmap_data() -> BTreeMap<String, String> {
    let text = read("deploy/k8s/configmap.yaml");
    let data = text.split("\ndata:\n").nth(1).expect("a data: block");
    data.lines()
        .filter(|l| l.starts_with("  ") && !l.trim_start().starts_with('#'))
        .filter_map(|l| l.trim().split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
        .collect()
}

#[test]
fn every_setting_the_deploy_files_use_is_one_the_binary_documents() {
    let documented = format!("{}{}", help("run"), help("migrate"));
    for file in [
        "deploy/Dockerfile",
        "deploy/k8s/configmap.yaml",
        "deploy/k8s/deployment.yaml",
        "deploy/k8s/secret.example.yaml",
    ] {
        for var in outbox_vars(&read(file)) {
            // Read by build.rs (the commit of an image build without .git), not by `run`.
            if var == "OUTBOX_RELAY_COMMIT" {
                continue;
            }
            assert!(
                documented.contains(&format!("[env: {var}")),
                "{file} uses {var}, which `outbox-relay run/migrate --help` does not document"
            );
        }
    }
}

#[test]
fn the_configmap_values_pass_the_relays_validation() {
    let data = configmap_data();
    assert!(data.contains_key("OUTBOX_SCHEMA"), "{data:?}");
    // The URLs come from the Secret's files: without them the relay stops
    // at once (exit 2), naming the missing file, and never falls back to
    // its localhost defaults.
    let out = Command::new(RELAY).arg("run").envs(&data).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&data["OUTBOX_DATABASE_URL_FILE"]),
        "{stderr}"
    );
    // With the files: nothing listens on port 1, so a valid configuration
    // gets as far as connecting (exit 1), an invalid one is refused before
    // (exit 2).
    let dir = std::env::temp_dir().join(format!("deploy-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("database-url"), "postgres://app@127.0.0.1:1/app\n").unwrap();
    std::fs::write(dir.join("amqp-url"), "amqp://app:pw@127.0.0.1:1/%2f\n").unwrap();
    let out = Command::new(RELAY)
        .arg("run")
        .envs(&data)
        .env("OUTBOX_DATABASE_URL_FILE", dir.join("database-url"))
        .env("OUTBOX_AMQP_URL_FILE", dir.join("amqp-url"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_pod_grace_period_outlasts_the_relay_shutdown_timeout() {
    let data = configmap_data();
    let shutdown = humantime::parse_duration(&data["OUTBOX_SHUTDOWN_TIMEOUT"]).unwrap();
    let deployment = read("deploy/k8s/deployment.yaml");
    let grace: u64 = deployment
        .lines()
        .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds:"))
        .expect("terminationGracePeriodSeconds set")
        .trim()
        .parse()
        .unwrap();
    assert!(
        grace > shutdown.as_secs() + 5,
        "grace {grace}s vs shutdown {shutdown:?}"
    );
}

#[test]
fn the_probes_and_the_scrape_target_are_the_port_the_configmap_opens() {
    let data = configmap_data();
    let addr: std::net::SocketAddr = data["OUTBOX_HTTP_ADDR"].parse().unwrap();
    assert!(
        addr.ip().is_unspecified(),
        "the kubelet probes the pod IP, not loopback"
    );
    let port = addr.port().to_string();
    let deployment = read("deploy/k8s/deployment.yaml");
    let has = |text: &str| deployment.contains(text);
    assert!(has(&format!("containerPort: {port}")), "containerPort");
    assert!(
        has(&format!("prometheus.io/port: \"{port}\"")),
        "scrape annotation"
    );
    for probe in [
        "startupProbe:\n            httpGet: {path: \"/readyz?exclude=worker\", port: metrics}",
        "livenessProbe:\n            httpGet: {path: /livez, port: metrics}",
        "readinessProbe:\n            httpGet: {path: /readyz, port: metrics}",
    ] {
        assert!(has(probe), "missing {probe}");
    }
    // The restricted Pod Security profile, for each of the three containers.
    assert_eq!(
        deployment
            .matches("allowPrivilegeEscalation: false")
            .count(),
        2
    );
    assert_eq!(
        deployment.matches("securityContext: *restricted").count(),
        1
    );
    let podmonitor = read("deploy/k8s/podmonitor.yaml");
    assert!(podmonitor.contains("port: metrics"));
}

#[test]
fn the_dockerfile_copies_what_exists_and_runs_the_binary() {
    let dockerfile = read("deploy/Dockerfile");
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        for source in copy_sources(line) {
            if source != "." {
                assert!(
                    Path::new(ROOT).join(source).exists(),
                    "{line}: {source} missing"
                );
            }
        }
    }
    assert!(dockerfile.contains("--bin outbox-relay"));
    assert!(dockerfile.contains("\"/usr/local/bin/outbox-relay\"]"));
    let ignore = read(".dockerignore");
    assert!(
        ignore.lines().any(|l| l.trim() == "target"),
        "the build context leaves out target/"
    );
}

/// What `cargo build --bin outbox-relay` reads besides the registry:
/// `build.rs` compiles the contract in `proto/` and the test protos in
/// `tests/proto/`, and the migrations in `sql/` are compiled in.
const BUILD_INPUTS: &[&str] = &[
    "Cargo.toml",
    "Cargo.lock",
    "build.rs",
    "src",
    "sql",
    "proto",
    "tests/proto",
];

#[test]
fn the_dockerfile_builder_stage_gets_every_build_input() {
    let dockerfile = read("deploy/Dockerfile");
    let builder = dockerfile_stages(&dockerfile)
        .into_iter()
        .next()
        .expect("a FROM line");
    let copied: Vec<&str> = builder
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
        .flat_map(copy_sources)
        .collect();
    let ignore = read(".dockerignore");
    let patterns = dockerignore_patterns(&ignore);
    for input in BUILD_INPUTS {
        assert!(
            Path::new(ROOT).join(input).exists(),
            "{input} is listed as a build input but does not exist: update BUILD_INPUTS"
        );
        assert!(
            copied.iter().any(|source| copies(source, input)),
            "the Dockerfile's builder stage does not COPY {input} (it copies {copied:?}), \
             which `cargo build` needs"
        );
        for file in files_under(input) {
            assert!(
                !ignored(&patterns, &file),
                ".dockerignore leaves {file} out of the build context, which `cargo build` needs"
            );
        }
    }
}

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

/// The sources of a `COPY` line: its words but the instruction, flags such
/// as `--chown=...`, and the destination.
fn copy_sources(line: &str) -> Vec<&str> {
    let words: Vec<&str> = line
        .split_whitespace()
        .skip(1)
        .filter(|w| !w.starts_with("--"))
        .collect();
    words[..words.len().saturating_sub(1)].to_vec()
}

/// The Dockerfile's stages, each from its `FROM` line to the next.
fn dockerfile_stages(dockerfile: &str) -> Vec<String> {
    let mut stages: Vec<String> = Vec::new();
    for line in dockerfile.lines() {
        if line.trim_start().to_ascii_uppercase().starts_with("FROM ") {
            stages.push(String::new());
        }
        if let Some(stage) = stages.last_mut() {
            stage.push_str(line);
            stage.push('\n');
        }
    }
    stages
}

/// Whether copying `source` (relative to the context) brings `path` along.
fn copies(source: &str, path: &str) -> bool {
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
fn dockerignore_patterns(text: &str) -> Vec<(bool, Vec<String>)> {
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
fn ignored(patterns: &[(bool, Vec<String>)], path: &str) -> bool {
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
fn files_under(input: &str) -> Vec<String> {
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
