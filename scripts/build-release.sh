#!/usr/bin/env bash
# Builds the release binary that ships: statically linked (no libc needed at run time, so it
# runs in the FROM-scratch image and on any x86_64 Linux), with the [profile.release] of
# Cargo.toml. Prints its path. Used by scripts/build-image.sh, scripts/check-systemd.sh and
# bench/footprint.sh.
#
#   bash scripts/build-release.sh      # -> target/x86_64-unknown-linux-gnu/release/sts-broker
#
# `--target` is explicit so that RUSTFLAGS reach the broker but not build scripts and
# proc-macros (which cannot be static).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
TARGET=x86_64-unknown-linux-gnu
BIN=${CARGO_TARGET_DIR:-$PWD/target}/$TARGET/release/sts-broker
# No unwind tables for the broker's own code: with panic = "abort" and stripped symbols they
# could only serve a backtrace nobody can read, and they are ~5% of the binary.
# Relative relocations packed as RELR (glibc >= 2.36, linked in): the table the static PIE
# applies to itself at start shrinks from ~480 KB of .rela.dyn to ~5 KB of .relr.dyn; the
# binary stays position-independent (ASLR).
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C force-unwind-tables=no -C link-arg=-Wl,-z,pack-relative-relocs" \
  cargo build --quiet --release --locked --bin sts-broker --target "$TARGET" >&2
if LC_ALL=C readelf -lW "$BIN" | grep -q 'Requesting program interpreter'; then
  echo "build-release: $BIN is dynamically linked" >&2
  exit 1
fi
printf '%s\n' "$BIN"
