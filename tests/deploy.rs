//! The container image and Kubernetes manifests agree with the binary: every
//! `OUTBOX_*` setting they use is one the binary documents, the ConfigMap's
//! values pass the relay's own validation, the pod's grace period outlasts
//! the relay's shutdown timeout, and the Dockerfile copies what exists.
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
    // Nothing listens on port 1: a valid configuration gets as far as
    // connecting (exit 1), an invalid one is refused before (exit 2).
    let out = Command::new(RELAY)
        .arg("run")
        .envs(&data)
        .env("OUTBOX_DATABASE_URL", "postgres://app@127.0.0.1:1/app")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
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
fn the_dockerfile_copies_what_exists_and_runs_the_binary() {
    let dockerfile = read("deploy/Dockerfile");
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for source in &parts[1..parts.len() - 1] {
            if *source != "." {
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
