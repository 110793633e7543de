#!/usr/bin/env bash
# Builds the container image CI tests, with podman and no registry:
#
#   bash scripts/build-image.sh        # -> localhost/sts-broker:dev and localhost/sts-broker:<version>
#
# 1. the release binary, statically linked (scripts/build-release.sh): the image has no libc;
# 2. the image's file tree (deploy/image-rootfs.sh): that binary, the host's CA bundle,
#    passwd/group entries for uid/gid 65532;
# 3. deploy/Dockerfile built with `--build-arg ROOTFS=prebuilt`: its final stage is FROM scratch
#    and takes that tree, so nothing is pulled. The Rust build stage is for Docker users.
#
# The tag <version> is Cargo.toml's version, which is also the chart's appVersion and the tag the
# kustomize overlays set (scripts/check-deploy.sh checks that they agree).
# Installs podman, buildah and runc (Debian packages) when missing. Prints the image size.
# SKIP_BUILD=1 reuses the binary already built.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
IMAGE=${IMAGE:-localhost/sts-broker}
TARGET=x86_64-unknown-linux-gnu
BIN=${CARGO_TARGET_DIR:-$REPO/target}/$TARGET/release/sts-broker
CONTEXT=${CARGO_TARGET_DIR:-$REPO/target}/image-context
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)

say() { printf 'build-image: %s\n' "$*"; }
die() { say "FAIL: $*" >&2; exit 1; }

# --- tools -----------------------------------------------------------------------------------------
missing=()
for tool in podman:podman buildah:buildah runc:runc; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
[ -f /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || die "missing ${missing[*]} and there is no apt-get"
  say "installing ${missing[*]} (apt)"
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
    --no-install-recommends "${missing[@]}" >/dev/null
fi
# shellcheck source=scripts/podman.sh
. scripts/podman.sh

# --- the binary ------------------------------------------------------------------------------------
if [ -z "${SKIP_BUILD:-}" ] || [ ! -x "$BIN" ]; then
  say "cargo build --release --target $TARGET, statically linked (scripts/build-release.sh)"
  BIN=$(bash scripts/build-release.sh)
fi
"$BIN" --version >/dev/null || die "$BIN does not run"

# --- the image -------------------------------------------------------------------------------------
rm -rf "$CONTEXT"
mkdir -p "$CONTEXT/target"
sh deploy/image-rootfs.sh "$BIN" /etc/ssl/certs/ca-certificates.crt "$CONTEXT/target/image-rootfs"
start=$SECONDS
pm build --quiet --build-arg ROOTFS=prebuilt -f deploy/Dockerfile \
  -t "$IMAGE:dev" -t "$IMAGE:$VERSION" "$CONTEXT" >/dev/null
# The images of earlier builds (and their build stages), now untagged: not kept, vfs stores
# each in full. Only images carrying this Dockerfile's io.sts-broker.build label.
pm image prune --force --filter label=io.sts-broker.build >/dev/null
size=$(pm image inspect --format '{{.Size}}' "$IMAGE:dev")
say "built $IMAGE:dev and $IMAGE:$VERSION in $((SECONDS - start)) s: $size bytes uncompressed ($(awk -v s="$size" 'BEGIN { printf "%.1f MiB", s / 1048576 }')), binary $(stat -c %s "$BIN") bytes"
