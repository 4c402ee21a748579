//! The Helm chart in `deploy/helm/outbox-relay` agrees with the binary:
//! its values name every `OUTBOX_*` setting the binary reads (and only
//! those), with the binary's defaults, and its alerting rules are
//! `deploy/observability/alerts.yml`. What it renders is checked in
//! `render`, with the real `helm` (`deploy/local/check-deploy.sh` installs
//! it, and lints and schema-validates the same value sets).

mod render;

use crate::read;
use serde_yaml::{Mapping, Value};
use std::collections::BTreeMap;

pub const CHART: &str = "deploy/helm/outbox-relay";

/// Every `OUTBOX_*` variable the binary reads, in any subcommand, with its
/// default as clap shows it (`unset` without one).
fn binary_settings() -> BTreeMap<String, String> {
    use clap::CommandFactory;
    fn walk(command: &clap::Command, settings: &mut BTreeMap<String, String>) {
        for arg in command.get_arguments() {
            let Some(env) = arg.get_env() else { continue };
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            let default = if defaults.is_empty() {
                "unset".to_owned()
            } else {
                defaults.join(",")
            };
            settings.insert(env.to_string_lossy().into_owned(), default);
        }
        for sub in command.get_subcommands() {
            walk(sub, settings);
        }
    }
    let mut settings = BTreeMap::new();
    // Built, so that flags show their implicit defaults (`false`).
    let mut cli = outbox_relay::config::Cli::command();
    cli.build();
    walk(&cli, &mut settings);
    assert!(settings.len() > 40, "{settings:?}");
    settings
}

fn values() -> Value {
    serde_yaml::from_str(&read(&format!("{CHART}/values.yaml"))).expect("values.yaml is YAML")
}

fn keys(mapping: &Value) -> Vec<String> {
    let mapping: &Mapping = mapping.as_mapping().expect("a mapping");
    mapping
        .keys()
        .map(|k| k.as_str().expect("string keys").to_owned())
        .collect()
}

#[test]
fn every_setting_the_binary_reads_is_a_value_of_the_chart_and_no_other() {
    let values = values();
    let config = keys(&values["config"]);
    let files = keys(&values["secret"]["files"]);
    let settings = binary_settings();
    let mut missing = Vec::new();
    for setting in settings.keys() {
        // A secret (a URL, a token) is covered by its _FILE setting only.
        let as_file = format!("{setting}_FILE");
        let covered = config.contains(setting)
            || files.contains(setting)
            || (settings.contains_key(&as_file) && files.contains(&as_file));
        if !covered {
            missing.push(setting.as_str());
        }
    }
    assert!(
        missing.is_empty(),
        "{CHART}/values.yaml has no value for {missing:?}: add each under `config` \
         (or `secret.files` for a secret or a certificate)"
    );
    for key in config.iter().chain(&files) {
        assert!(
            settings.contains_key(key),
            "values.yaml sets {key}, which the binary does not read"
        );
    }
    for key in &config {
        assert!(
            !files.contains(key),
            "{key} is both a config value and a file"
        );
        let as_file = format!("{key}_FILE");
        assert!(
            !settings.contains_key(&as_file),
            "{key} is a secret: the chart takes it as {as_file} under secret.files only"
        );
    }
}

#[test]
fn the_defaults_the_chart_states_are_the_binarys() {
    let settings = binary_settings();
    let text = read(&format!("{CHART}/values.yaml"));
    let config = keys(&values()["config"]);
    for key in &config {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{key}:")))
            .unwrap_or_else(|| panic!("no line for {key}"));
        let stated = line
            .split_once("# default: ")
            .unwrap_or_else(|| panic!("{line:?} does not state the binary's default"))
            .1
            .trim();
        assert_eq!(stated, settings[key], "values.yaml: {line:?}");
    }
}

#[test]
fn the_chart_carries_the_alerting_rules_of_deploy_observability() {
    // Helm reads files inside the chart only: a copy, kept the same.
    assert_eq!(
        read(&format!("{CHART}/files/alerts.yml")),
        read("deploy/observability/alerts.yml"),
        "copy deploy/observability/alerts.yml to {CHART}/files/alerts.yml"
    );
    let rules: Value = serde_yaml::from_str(&read("deploy/observability/alerts.yml")).unwrap();
    let rendered = render::render(&["-f", &format!("{CHART}/ci/standalone-values.yaml")]);
    let rule = render::kind(&rendered, "PrometheusRule");
    assert_eq!(
        rule["spec"], rules,
        "the PrometheusRule's spec is alerts.yml"
    );
    let monitor = render::kind(&rendered, "PodMonitor");
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], "metrics");
    assert_eq!(endpoint["path"], "/metrics");
    let deployment = render::kind(&rendered, "Deployment");
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"], deployment["spec"]["selector"]["matchLabels"],
        "the PodMonitor selects the Deployment's pods"
    );
    // Off by default: the kinds exist only where the operator's CRDs are.
    let plain = render::render(&[]);
    assert!(
        plain
            .iter()
            .all(|d| d["kind"] != "PodMonitor" && d["kind"] != "PrometheusRule")
    );
}
