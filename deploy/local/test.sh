#!/usr/bin/env bash
# The test command: make PostgreSQL and RabbitMQ available, then run the checks
# and the whole suite against them. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/local/services.sh
# Alerting rules and their unit tests (promtool), the dashboard's JSON, and
# the Kubernetes manifests against the API schemas (kubernetes-validate).
deploy/local/check-deploy.sh
cargo fmt --all -- --check
cargo clippy --all-targets --all-features --locked -- -D warnings
cargo test --all-features --locked
