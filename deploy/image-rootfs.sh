#!/bin/sh
# Assembles the file tree of the container image (deploy/Dockerfile copies it into an empty
# image): the statically linked broker, the CA bundle its HTTPS client trusts, and passwd/group
# entries for the non-root user 65532. Nothing else: no shell, no libc, no package manager.
#
#   sh deploy/image-rootfs.sh BINARY CA_BUNDLE OUT_DIR
#
# Used by scripts/build-image.sh (podman, from the binary built on the host) and by the
# Dockerfile's build stage (Docker, from the binary built in the rust image).
set -eu
[ $# -eq 3 ] || { echo "usage: $0 BINARY CA_BUNDLE OUT_DIR" >&2; exit 64; }
bin=$1 ca=$2 out=$3
# A dynamically linked binary would need a loader and libraries the image does not have.
LC_ALL=C readelf -h "$bin" >/dev/null 2>&1 || { echo "$bin is not an ELF executable" >&2; exit 65; }
if LC_ALL=C readelf -lW "$bin" 2>/dev/null | grep -q 'Requesting program interpreter'; then
  echo "$bin is dynamically linked; build it with RUSTFLAGS='-C target-feature=+crt-static'" >&2
  exit 65
fi
rm -rf "$out"
mkdir -p "$out/usr/local/bin" "$out/etc/ssl/certs" "$out/etc/sts-broker"
install -m 0755 "$bin" "$out/usr/local/bin/sts-broker"
install -m 0644 "$ca" "$out/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:sts-broker:/:/sbin/nologin\n' >"$out/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$out/etc/group"
chmod 0644 "$out/etc/passwd" "$out/etc/group"
