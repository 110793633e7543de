#!/usr/bin/env bash
# Builds the container image (scripts/build-image.sh) and runs it with podman the way a cluster
# would, then proves:
#   - its files are exactly the broker, the CA bundle, passwd and group: no shell, nothing to
#     exec but the broker (`/bin/sh` cannot be started in it);
#   - it runs as uid/gid 65532 with a read-only root file system, no capabilities and no new
#     privileges, the config and the client token mounted read-only;
#   - the ECS endpoint serves credentials from moto, and boto3 (a real SDK) signs with them:
#     GetCallerIdentity says assumed-role/app;
#   - SIGTERM stops it with exit status 0;
#   - the image is at most MAX_IMAGE_BYTES (12 MB) uncompressed.
#
#   bash scripts/check-image.sh        (SKIP_BUILD=1: reuse the release binary already built)
#
# Runs as root (podman without a user namespace setup). moto comes from $STS_BROKER_TEST_VENV
# and listens on a free loopback port; the container shares the host's network (--network host)
# and its listeners are on free ports too.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
VENV=${STS_BROKER_TEST_VENV:-$REPO/.venv}
IMAGE=${IMAGE:-localhost/sts-broker}:dev
MAX_IMAGE_BYTES=${MAX_IMAGE_BYTES:-12000000}
NAME=sts-broker-check-$$

say() { printf 'check-image: %s\n' "$*"; }
die() { say "FAIL: $*" >&2; exit 1; }
t0=$SECONDS

[ -x "$VENV/bin/moto_server" ] || die "no moto at $VENV (run scripts/setup-test-deps.sh)"
bash scripts/build-image.sh
# shellcheck source=scripts/podman.sh
. scripts/podman.sh

WORK=$(mktemp -d /tmp/sts-broker-image.XXXXXX)
moto_pid=
cleanup() {
  pm rm --force --time 0 "$NAME" >/dev/null 2>&1 || true
  pm rm --force "$NAME-files" >/dev/null 2>&1 || true
  [ -n "$moto_pid" ] && kill "$moto_pid" 2>/dev/null && wait "$moto_pid" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { "$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# --- what is in the image ------------------------------------------------------------------------------
size=$(pm image inspect --format '{{.Size}}' "$IMAGE")
[ "$size" -le "$MAX_IMAGE_BYTES" ] || die "image is $size bytes, above $MAX_IMAGE_BYTES"
say "image $IMAGE: $size bytes uncompressed (at most $MAX_IMAGE_BYTES)"
pm create --name "$NAME-files" "$IMAGE" >/dev/null
pm export "$NAME-files" | tar -t | sed 's#^\./##; s#/$##' | grep -v '^$' | sort >"$WORK/files"
pm rm "$NAME-files" >/dev/null
# Directories the runtime creates as mount points (dev, proc, sys, etc/hosts ...) aside, these
# and nothing else:
want='etc/group etc/passwd etc/ssl/certs/ca-certificates.crt usr/local/bin/sts-broker'
have=$(grep -vxE 'dev|proc|sys|run|etc|etc/ssl|etc/ssl/certs|etc/sts-broker|usr|usr/local|usr/local/bin|etc/hosts|etc/hostname|etc/resolv.conf|run/.containerenv' "$WORK/files" | tr '\n' ' ' | sed 's/ $//')
[ "$have" = "$want" ] || die "unexpected files in the image: $have (want: $want)"
say "files: $have (no shell, no libc: the broker is static)"
rc=0
pm run --rm --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 --entrypoint /bin/sh "$IMAGE" -c true >"$WORK/sh.out" 2>&1 || rc=$?
[ "$rc" -ne 0 ] || die "/bin/sh ran in the image"
say "/bin/sh cannot be started in it (podman exit $rc: $(head -c 160 "$WORK/sh.out" | tr '\n' ' '))"

# --- run it ------------------------------------------------------------------------------------------------
MOTO_PORT=$(free_port)
"$VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >"$WORK/moto.log" 2>&1 &
moto_pid=$!
for _ in $(seq 100); do
  "$VENV/bin/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$MOTO_PORT/moto-api/', timeout=1)" 2>/dev/null && break
  sleep 0.2
done
ECS_PORT=$(free_port)
ADMIN_PORT=$(free_port)
# 32 random hex digits: the broker refuses tokens under 16 characters.
TOKEN=image-token-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d " \n")
mkdir -p "$WORK/etc/tokens"
printf '%s' "$TOKEN" >"$WORK/etc/tokens/app"
cat >"$WORK/etc/config.toml" <<EOF
[sts]
region = "us-east-1"
endpoint = "http://127.0.0.1:$MOTO_PORT"

[source]
kind = "static_env"

[ecs]
listen = "127.0.0.1:$ECS_PORT"

[admin]
listen = "127.0.0.1:$ADMIN_PORT"

[[role]]
name = "app"
arn = "arn:aws:iam::123456789012:role/app"
token_files = ["/etc/sts-broker/tokens/app"]
EOF
# As a Kubernetes Secret volume would: readable by the container's user only.
chown -R 65532:65532 "$WORK/etc"
chmod 0500 "$WORK/etc/tokens"
chmod 0400 "$WORK/etc/tokens/app" "$WORK/etc/config.toml"

pm run --detach --name "$NAME" --network host --read-only --cap-drop all \
  --security-opt no-new-privileges --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
  --volume "$WORK/etc:/etc/sts-broker:ro" \
  --env AWS_ACCESS_KEY_ID=AKIDCHECKIMAGE --env AWS_SECRET_ACCESS_KEY=check-image-secret \
  --env AWS_REGION=us-east-1 "$IMAGE" >/dev/null
ready=
for _ in $(seq 150); do
  if "$VENV/bin/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$ADMIN_PORT/readyz', timeout=1)" 2>/dev/null; then
    ready=1
    break
  fi
  sleep 0.2
done
[ -n "$ready" ] || { pm logs "$NAME" >&2 || true; die "the container never became ready"; }
say "container $NAME ready ($(pm inspect --format '{{.State.Status}}' "$NAME"))"

# How it runs, from the runtime and from the kernel.
pid=$(pm inspect --format '{{.State.Pid}}' "$NAME")
readonly_root=$(pm inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$NAME")
ids=$(awk '/^(Uid|Gid):/ { printf "%s %s ", $1, $2 }' "/proc/$pid/status")
caps=$(awk '/^CapEff:/ { print $2 }' "/proc/$pid/status")
nnp=$(awk '/^NoNewPrivs:/ { print $2 }' "/proc/$pid/status")
root_mount=$(awk '$5 == "/" { print $6 }' "/proc/$pid/mountinfo" | head -1)
[ "$ids" = "Uid: 65532 Gid: 65532 " ] || die "the broker runs as $ids"
[ "$caps" = 0000000000000000 ] || die "the broker has capabilities $caps"
[ "$nnp" = 1 ] || die "no-new-privileges is off"
[ "$readonly_root" = true ] && [[ ,$root_mount, == *,ro,* ]] || die "root file system not read-only ($readonly_root, mount options $root_mount)"
say "runs as uid/gid 65532, no capabilities, no new privileges, root file system mounted $root_mount"

# A real SDK through the ECS endpoint: boto3 fetches the credentials and signs with them.
arn=$(env -i PATH=/usr/bin:/bin HOME="$WORK" AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null \
  AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true \
  AWS_CONTAINER_CREDENTIALS_FULL_URI="http://127.0.0.1:$ECS_PORT/v1/credentials/app" \
  AWS_CONTAINER_AUTHORIZATION_TOKEN="$TOKEN" \
  "$VENV/bin/python" -c "
import boto3
print(boto3.client('sts', endpoint_url='http://127.0.0.1:$MOTO_PORT').get_caller_identity()['Arn'])
") || { pm logs "$NAME" >&2 || true; die "boto3 could not use the ECS endpoint"; }
case $arn in
  *:assumed-role/app/*) say "the ECS endpoint serves credentials from moto: boto3 GetCallerIdentity -> $arn" ;;
  *) die "GetCallerIdentity with the served credentials: $arn" ;;
esac

# SIGTERM: graceful stop, exit 0.
pm kill --signal TERM "$NAME" >/dev/null
code=$(timeout 30 bash -c '. scripts/podman.sh && pm wait "$1"' _ "$NAME") ||
  die "the container did not stop within 30 s of SIGTERM"
[ "$code" = 0 ] || { pm logs "$NAME" | tail -5 >&2; die "exit status $code after SIGTERM"; }
say "SIGTERM: exited with status 0"
say "all image checks passed in $((SECONDS - t0)) s"
