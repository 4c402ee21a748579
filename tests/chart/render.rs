//! What the chart renders (`helm template`) for its defaults and for each
//! value set in `ci/`: pods of the restricted Pod Security profile, the
//! relay as a standalone container or a native sidecar, secrets only as
//! files of the mounted Secret, and settings the relay itself accepts.

use super::CHART;
use crate::{RELAY, ROOT};
use serde_yaml::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `helm`: `$HELM`, else where check-deploy.sh installs it, else `PATH`.
fn helm() -> PathBuf {
    if let Some(path) = std::env::var_os("HELM") {
        return path.into();
    }
    let installed = Path::new("/opt/helm/helm");
    if installed.exists() {
        return installed.to_owned();
    }
    "helm".into()
}

fn template(args: &[&str]) -> Output {
    Command::new(helm())
        .args(["template", "outbox-relay", CHART])
        .args(args)
        .current_dir(ROOT)
        .output()
        .unwrap_or_else(|e| {
            panic!("helm: {e} (deploy/local/check-deploy.sh installs it into /opt/helm)")
        })
}

/// The documents `helm template` renders with `args` (value files, --set).
pub fn render(args: &[&str]) -> Vec<Value> {
    let out = template(args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "helm template {args:?}: {out:?}");
    serde_yaml::Deserializer::from_str(&stdout)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("helm renders YAML"))
        .filter(|doc: &Value| !doc.is_null())
        .collect()
}

pub fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

/// The default values, then each value set of `ci/`, as `helm` arguments.
fn value_sets() -> Vec<Vec<String>> {
    let mut sets = vec![Vec::new()];
    let mut files: Vec<_> = std::fs::read_dir(Path::new(ROOT).join(CHART).join("ci"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    for file in files {
        sets.push(vec!["-f".to_owned(), file.display().to_string()]);
    }
    sets
}

fn as_args(set: &[String]) -> Vec<&str> {
    set.iter().map(String::as_str).collect()
}

/// Every container of the pod, init containers first.
fn containers(pod: &Value) -> Vec<&Value> {
    let list = |key: &str| pod[key].as_sequence().into_iter().flatten();
    list("initContainers").chain(list("containers")).collect()
}

fn named<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_sequence()?.iter().find(|c| c["name"] == name)
}

/// The USER of the image's runtime stage.
fn image_uid() -> u64 {
    let dockerfile = crate::read("deploy/Dockerfile");
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "));
    user.and_then(|u| u.split(':').next()?.trim().parse().ok())
        .expect("a numeric USER in deploy/Dockerfile")
}

#[test]
fn every_pod_the_chart_renders_meets_the_restricted_pod_security_profile() {
    for set in value_sets() {
        let docs = render(&as_args(&set));
        let pod = &kind(&docs, "Deployment")["spec"]["template"]["spec"];
        let security = &pod["securityContext"];
        assert_eq!(security["runAsNonRoot"], true, "{set:?}");
        assert_eq!(security["runAsUser"].as_u64(), Some(image_uid()), "{set:?}");
        assert_eq!(
            security["seccompProfile"]["type"], "RuntimeDefault",
            "{set:?}"
        );
        assert_eq!(pod["automountServiceAccountToken"], false, "{set:?}");
        for container in containers(pod) {
            let name = &container["name"];
            let context = &container["securityContext"];
            assert_eq!(
                context["allowPrivilegeEscalation"], false,
                "{set:?} {name:?}"
            );
            let drop = context["capabilities"]["drop"].as_sequence();
            assert!(
                drop.is_some_and(|d| d.iter().any(|c| c == "ALL")),
                "{set:?} {name:?}: capabilities not dropped"
            );
            assert_eq!(context["readOnlyRootFilesystem"], true, "{set:?} {name:?}");
        }
    }
}

#[test]
fn the_relay_runs_as_a_standalone_container_or_a_native_sidecar_with_its_probes() {
    for set in value_sets() {
        let args = as_args(&set);
        let sidecar = args.iter().any(|a| a.ends_with("sidecar-values.yaml"));
        let docs = render(&args);
        let pod = &kind(&docs, "Deployment")["spec"]["template"]["spec"];
        let (relay, others) = if sidecar {
            (
                named(&pod["initContainers"], "outbox-relay"),
                &pod["containers"],
            )
        } else {
            (
                named(&pod["containers"], "outbox-relay"),
                &pod["initContainers"],
            )
        };
        let relay = relay.unwrap_or_else(|| panic!("{set:?}: no relay where it belongs"));
        assert!(
            named(others, "outbox-relay").is_none(),
            "{set:?}: the relay twice"
        );
        if sidecar {
            assert_eq!(relay["restartPolicy"], "Always", "a native sidecar");
            let order: Vec<_> = pod["initContainers"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|c| &c["name"])
                .collect();
            assert_eq!(
                order,
                ["outbox-migrate", "outbox-relay"],
                "migrate runs before the sidecar starts"
            );
            assert!(
                named(&pod["containers"], "app").is_some(),
                "the application's container"
            );
        } else {
            assert!(relay["restartPolicy"].is_null(), "{set:?}");
        }
        assert_eq!(relay["args"][0], "run");
        let config = &kind(&docs, "ConfigMap")["data"];
        let addr = config["OUTBOX_HTTP_ADDR"]
            .as_str()
            .expect("the HTTP port is set");
        let port: u64 = addr.rsplit(':').next().unwrap().parse().unwrap();
        let metrics = named(&relay["ports"], "metrics").expect("a metrics port");
        assert_eq!(metrics["containerPort"].as_u64(), Some(port), "{set:?}");
        for (probe, path) in [
            ("startupProbe", "/readyz?exclude=worker"),
            ("livenessProbe", "/livez"),
            ("readinessProbe", "/readyz"),
        ] {
            assert_eq!(relay[probe]["httpGet"]["path"], path, "{set:?} {probe}");
            assert_eq!(
                relay[probe]["httpGet"]["port"], "metrics",
                "{set:?} {probe}"
            );
        }
        // The pod's grace period outlasts the relay's shutdown timeout.
        let shutdown = config["OUTBOX_SHUTDOWN_TIMEOUT"].as_str().unwrap_or("25s");
        let shutdown = humantime::parse_duration(shutdown).unwrap().as_secs();
        let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
        assert!(
            grace > shutdown + 5,
            "{set:?}: grace {grace}s, shutdown {shutdown}s"
        );
    }
}

#[test]
fn secrets_reach_the_relay_only_as_files_of_the_mounted_secret() {
    let docs = render(&["-f", &format!("{CHART}/ci/tls-values.yaml")]);
    let pod = &kind(&docs, "Deployment")["spec"]["template"]["spec"];
    let volume = named(&pod["volumes"], "outbox-secrets").expect("the Secret's volume");
    assert_eq!(volume["secret"]["secretName"], "shop-outbox");
    let relay = named(&pod["containers"], "outbox-relay").unwrap();
    let mount = named(&relay["volumeMounts"], "outbox-secrets").expect("mounted");
    assert_eq!(mount["mountPath"], "/run/secrets/outbox");
    assert_eq!(mount["readOnly"], true);
    let env = |name: &str| named(&relay["env"], name).map(|e| e["value"].clone());
    for (setting, key) in [
        ("OUTBOX_DATABASE_URL_FILE", "db"),
        ("OUTBOX_GRPC_TOKEN_FILE", "grpc-token"),
        ("OUTBOX_GRPC_TLS_KEY", "tls.key"),
    ] {
        assert_eq!(
            env(setting),
            Some(format!("/run/secrets/outbox/{key}").into())
        );
    }
    // A secret put in the ConfigMap's values is refused, naming the fix.
    for (set, says) in [
        (
            "config.OUTBOX_DATABASE_URL=postgres://app:pw@db/app",
            "secret.files.OUTBOX_DATABASE_URL_FILE",
        ),
        (
            "config.OUTBOX_ADMIN_TOKEN=t0ken",
            "secret.files.OUTBOX_ADMIN_TOKEN_FILE",
        ),
        ("config.OUTBOX_GRPC_TLS_KEY=/key.pem", "under secret.files"),
    ] {
        let out = template(&["--set", set]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--set {set} rendered");
        assert!(stderr.contains(says), "--set {set}: {stderr}");
        assert!(
            !stderr.contains("pw@") && !stderr.contains("t0ken"),
            "{stderr}"
        );
    }
}

/// The relay with the environment the chart gives its container (the
/// ConfigMap and the container's env), every mounted file under `dir`.
fn relay_with_rendered_env(docs: &[Value], dir: &Path) -> Output {
    let pod = &kind(docs, "Deployment")["spec"]["template"]["spec"];
    let relay = containers(pod)
        .into_iter()
        .find(|c| c["name"] == "outbox-relay")
        .unwrap();
    let mounts: Vec<&str> = relay["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    let local = |value: &str| match mounts.iter().find(|m| value.starts_with(*m)) {
        Some(mount) => dir
            .join(value[mount.len()..].trim_start_matches('/'))
            .display()
            .to_string(),
        None => value.to_owned(),
    };
    let mut command = Command::new(RELAY);
    command.arg("run").env_clear();
    let config = kind(docs, "ConfigMap")["data"]
        .as_mapping()
        .cloned()
        .unwrap_or_default();
    for (key, value) in &config {
        command.env(key.as_str().unwrap(), local(value.as_str().unwrap()));
    }
    for var in relay["env"].as_sequence().into_iter().flatten() {
        command.env(
            var["name"].as_str().unwrap(),
            local(var["value"].as_str().unwrap()),
        );
    }
    command.output().unwrap()
}

/// What a Secret (and the descriptor ConfigMap) would hold: URLs of a
/// port where nothing listens, tokens, a CA and a certificate.
fn write_mounted_files(dir: &Path) {
    use rcgen::{CertificateParams, KeyPair};
    std::fs::create_dir_all(dir).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let database = "postgres://app@127.0.0.1:1/app\n";
    let amqp = "amqp://app:pw@127.0.0.1:1/%2f\n";
    for (names, content) in [
        (&["database-url", "db"][..], database.to_owned()),
        (&["amqp-url", "mq"][..], amqp.to_owned()),
        (
            &["grpc-token", "admin-token"][..],
            "t0ken-for-the-chart-test\n".to_owned(),
        ),
        (&["tls.crt", "ca.crt"][..], cert.pem()),
        (&["tls.key"][..], key.serialize_pem()),
    ] {
        for name in names {
            std::fs::write(dir.join(name), &content).unwrap();
        }
    }
    std::fs::write(
        dir.join("app.binpb"),
        std::fs::read(concat!(env!("OUT_DIR"), "/test_descriptors.bin")).unwrap(),
    )
    .unwrap();
}

#[test]
fn the_settings_the_chart_renders_pass_the_relays_own_validation() {
    let dir = std::env::temp_dir().join(format!("chart-files-{}", std::process::id()));
    write_mounted_files(&dir);
    for set in value_sets() {
        let out = relay_with_rendered_env(&render(&as_args(&set)), &dir);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Valid settings get as far as connecting (exit 1, to the URL of
        // the Secret's file); invalid ones are refused before (exit 2).
        assert_eq!(out.status.code(), Some(1), "{set:?}: {stderr}");
        assert!(stderr.contains("127.0.0.1:1"), "{set:?}: {stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
