#!/usr/bin/env bash
# Sidecar footprint, one command:  bash bench/footprint.sh [LABEL=BINARY ...]
#
# Idle RSS with one role (and its split in /proc/PID/smaps: the binary's own pages, shared
# libraries, anonymous memory), time from exec to READY=1 (sd_notify, as systemd sees it), idle
# wake-ups and CPU over IDLE seconds, for each binary side by side (bench/footprint.py).
# Without arguments: the shipped binary (scripts/build-release.sh: static, [profile.release]).
# Compare with another build by naming both, e.g. a plain dynamic `cargo build --release`:
#
#   cp target/release/sts-broker /tmp/dynamic
#   bash bench/footprint.sh shipped=target/x86_64-unknown-linux-gnu/release/sts-broker dynamic=/tmp/dynamic
#
# Then the hot path, so a footprint change cannot hide a slowdown: wrk on each broker's ECS
# endpoint in turn (2 threads, 8 keep-alive connections), A B A B for HOT_ROUNDS rounds.
# Knobs: IDLE=60 (seconds of idle), STARTS=7 (exec-to-ready samples per binary), HOT_ROUNDS=3,
# HOT_SECONDS=5 (0 rounds: skip), OUT (JSON). The fake STS (bench/fake_sts.py) answers in
# 5-10 ms. About 2-3 minutes. Installs wrk (Debian) when missing.
set -euo pipefail

cd "$(dirname "$0")/.."
IDLE=${IDLE:-60}
STARTS=${STARTS:-7}
OUT=${OUT:-target/bench/footprint-$(date -u +%Y%m%dT%H%M%SZ).json}
mkdir -p "$(dirname "$OUT")"

HOT_ROUNDS=${HOT_ROUNDS:-3}
HOT_SECONDS=${HOT_SECONDS:-5}
if [ "$HOT_ROUNDS" -gt 0 ] && ! command -v wrk >/dev/null; then
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq wrk >/dev/null
fi

if [ $# -eq 0 ]; then
  set -- "shipped=$(bash scripts/build-release.sh)"
fi

tmp=$(mktemp -d)
sts_pid=
cleanup() {
  [ -n "$sts_pid" ] && kill "$sts_pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
python3 bench/fake_sts.py --port-file "$tmp/port" --latency-ms 5-10 >/dev/null 2>&1 &
sts_pid=$!
for _ in $(seq 100); do [ -s "$tmp/port" ] && break; sleep 0.1; done
[ -s "$tmp/port" ] || { echo "footprint: the fake STS did not start" >&2; exit 1; }

printf 'footprint: kernel %s, %s cores, load %s; idle %s s, %s starts, %s hot rounds of %s s each\n' \
  "$(uname -r)" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)" "$IDLE" "$STARTS" "$HOT_ROUNDS" "$HOT_SECONDS"
python3 bench/footprint.py --sts-url "http://127.0.0.1:$(cat "$tmp/port")" --idle "$IDLE" \
  --starts "$STARTS" --hot-rounds "$HOT_ROUNDS" --hot-seconds "$HOT_SECONDS" --json "$OUT" "$@"
echo "footprint: JSON in $OUT"
