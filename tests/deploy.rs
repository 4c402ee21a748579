//! The container image and Kubernetes manifests agree with the binary: every
//! `OUTBOX_*` setting they use is one the binary documents, the ConfigMap's
//! values pass the relay's own validation, and the pod's grace period
//! outlasts the relay's shutdown timeout. The Dockerfile's checks are in
//! `image` (no Docker engine runs here: this is what can be checked without
//! one), the Helm chart's in `chart` (with helm, which
//! `deploy/local/check-deploy.sh` installs).

mod chart;
mod image;

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
