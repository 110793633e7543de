#!/usr/bin/env bash
# The test command: installs what the tests need (scripts/setup-test-deps.sh), then runs the same
# checks as CI: rustfmt, clippy with warnings as errors, every test, the deployment artefacts'
# checks, the container image run with podman and the unit booted under systemd.
#
#   bash scripts/test.sh              # everything
#   bash scripts/test.sh ecs          # extra arguments go to `cargo test` (a name filter, say)
#
# The tests start moto themselves; they find it at $STS_BROKER_TEST_VENV/bin/moto_server.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD

section_start=$SECONDS
section() {
  if [ -n "${section_name:-}" ]; then
    printf '    (%s: %d s)\n' "$section_name" "$((SECONDS - section_start))"
  fi
  section_name=$1
  section_start=$SECONDS
  printf '\n==> %s\n' "$1"
}

section "test dependencies (scripts/setup-test-deps.sh)"
bash scripts/setup-test-deps.sh
export STS_BROKER_TEST_VENV=${STS_BROKER_TEST_VENV:-$REPO/.venv}

section "cargo fmt --all -- --check"
cargo fmt --all -- --check

section "cargo clippy --all-targets --locked -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

section "cargo test --locked${*:+ $*}"
# The fuzz targets (tests/it/fuzz.rs) mutate their corpus for this long each, beside the other
# tests; a plain `cargo test` gives them 3 s.
export STS_BROKER_FUZZ_SECONDS=${STS_BROKER_FUZZ_SECONDS:-45}
cargo test --locked "$@"

section "deployment artefacts (scripts/check-deploy.sh)" && bash scripts/check-deploy.sh

# The artefacts run for real (as root): the image with podman, the unit under systemd as PID 1.
# Both use the static release binary (scripts/build-release.sh), built once.
section "container image (scripts/check-image.sh)" && bash scripts/check-image.sh
section "systemd unit under systemd-nspawn (scripts/check-systemd.sh)" && bash scripts/check-systemd.sh

section "done"
printf 'All checks passed in %d s.\n' "$SECONDS"
