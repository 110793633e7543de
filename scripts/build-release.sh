#!/usr/bin/env bash
# Builds the release binary that ships: statically linked (no libc needed at run time, so it
# runs in the FROM-scratch image and on any x86_64 Linux), with the [profile.release] of
# Cargo.toml. Prints its path. Used by scripts/build-image.sh, scripts/check-systemd.sh and
# bench/footprint.sh.
#
#   bash scripts/build-release.sh      # -> target/x86_64-unknown-linux-gnu/release/sts-broker
#
# The linker lays out first the functions that idle serving, the hot path, a refresh and a
# reload run, then those only start-up runs (scripts/symbol-order.txt, written by
# bench/symbol-order.sh): the kernel maps code 64 KiB around each page fault, so hot code
# scattered over the whole binary kept ~90 % of it resident (BENCHMARKS.md, "Sidecar
# footprint"). Only the broker's final link gets the flag (`cargo rustc`), so the dependencies'
# builds and symbol names do not change with it; the file's hash rides along as a cfg so that
# editing the file relinks. Names it lists that the binary lacks are skipped: a stale file
# costs memory, never correctness.
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
  CARGO_PROFILE_RELEASE_STRIP=false cargo rustc --quiet --release --locked --bin sts-broker --target "$TARGET" -- \
  --cfg "symbol_order=\"$(sha256sum scripts/symbol-order.txt | cut -c1-16)\"" \
  -C link-arg=-Wl,--symbol-ordering-file="$PWD/scripts/symbol-order.txt" \
  -C link-arg=-Wl,--no-warn-symbol-ordering >&2
# Symbols are stripped here rather than by the profile (`strip = true`): the profile is part of
# every crate's symbol hashes, and scripts/symbol-order.txt names the symbols of this very build
# (bench/symbol-order.sh profiles it with KEEP_SYMBOLS=1). A new file, not in place: the
# artifact is a hard link to cargo's copy under deps/, which keeps its symbols.
if [ -z "${KEEP_SYMBOLS:-}" ]; then
  strip -o "$BIN.stripped" "$BIN"
  mv "$BIN.stripped" "$BIN"
fi
if LC_ALL=C readelf -lW "$BIN" | grep -q 'Requesting program interpreter'; then
  echo "build-release: $BIN is dynamically linked" >&2
  exit 1
fi
printf '%s\n' "$BIN"
