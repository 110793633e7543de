#!/usr/bin/env bash
# Profiles the cached hot path of a release build with debug info:
#   bash bench/profile.sh            # callgrind (instruction counts, repeatable) + perf (time)
#
# 1. Builds the release profile with debug info into target/profiling (same optimisation,
#    LTO and codegen units as the shipped build; only symbols and line tables are added).
# 2. Runs the broker (1 role + IMDS) against the fake STS, waits until it is ready.
# 3. callgrind: instrumentation is switched on only around a wrk run (2 threads, 64
#    connections), once for ECS and once for IMDS, so start-up and prefetch are not counted;
#    prints instructions per request and the top functions (exclusive and inclusive).
# 4. perf (cpu-clock sampling, works without hardware counters): 10 s of wrk per endpoint on
#    the same binary at full speed; prints the top symbols including the kernel's.
# 5. massif: the heap while a broker with MEM_ROLES (10,000) roles prefetches at MEM_RATE (250)
#    STS calls/s, grouped by subsystem at its peak and at the end (bench/massif_top.py).
# Output in $OUT (default target/profiling/<time>). About 6 minutes with a warm build.
#
# Knobs: BIN=path (skip the build), SECONDS_CG=10 SECONDS_PERF=10 MEM_ROLES=10000 MEM_RATE=250
# SKIP_CALLGRIND=1 SKIP_PERF=1 SKIP_MASSIF=1.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_CG=${SECONDS_CG:-10}
SECONDS_PERF=${SECONDS_PERF:-10}
PROFILE_TARGET=${PROFILE_TARGET:-target/profiling}
OUT=${OUT:-$PROFILE_TARGET/$(date -u +%Y%m%dT%H%M%SZ)}
BENCH_NAME=profile
. bench/common.sh

need_tools wrk curl valgrind perf:linux-perf

if [ -z "${BIN:-}" ]; then
    log "release build with debug info into $PROFILE_TARGET"
    CARGO_TARGET_DIR=$PROFILE_TARGET CARGO_PROFILE_RELEASE_DEBUG=true CARGO_PROFILE_RELEASE_STRIP=false \
        cargo build --release --locked
    BIN=$PROFILE_TARGET/release/sts-broker
fi
start_scratch

python3 bench/fake_sts.py --port-file "$W/sts.port" &
PIDS+=($!)
wait_file "$W/sts.port"
python3 bench/make_config.py --dir "$W" --sts-port "$(cat "$W/sts.port")" --roles 1 --imds --rate 100
export AWS_ACCESS_KEY_ID=AKIDBENCHMARK0000000 AWS_SECRET_ACCESS_KEY=bench-secret-not-real RUST_LOG=info
TOKEN=$(cat "$W/tokens/app0")

# start_broker PREFIX...: runs the broker under PREFIX; sets ECS, IMDS, ADMIN, BPID, IMDS_TOKEN.
start_broker() {
    : >"$W/broker.log"
    "$@" "$BIN" serve -c "$W/broker.toml" --log-format json 2>"$W/broker.log" &
    BPID=$!
    PIDS+=($BPID)
    ECS=$(broker_addr "$W/broker.log" ecs)
    IMDS=$(broker_addr "$W/broker.log" imds)
    ADMIN=$(broker_addr "$W/broker.log" admin)
    for _ in $(seq 1 600); do curl -fs -o /dev/null "http://$ADMIN/readyz" && break; sleep 0.1; done
    IMDS_TOKEN=$(curl -fsS -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 21600' "http://$IMDS/latest/api/token")
    cat >"$W/ecs.lua" <<EOF
wrk.path = "/v1/credentials/app0"
wrk.headers["Authorization"] = "$TOKEN"
EOF
    cat >"$W/imds.lua" <<EOF
wrk.path = "/latest/meta-data/iam/security-credentials/app0"
wrk.headers["X-aws-ec2-metadata-token"] = "$IMDS_TOKEN"
EOF
}
stop_broker() { kill -TERM "$BPID"; wait "$BPID" || true; }
requests() { awk '/requests in/ {print $1}' "$1"; }

if [ -z "${SKIP_CALLGRIND:-}" ]; then
    start_broker valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$W/cg.%p" -q
    # The main thread is `valgrind`'s; callgrind_control finds it by PID.
    for ep in ecs imds; do
        addr=$ECS; [ $ep = imds ] && addr=$IMDS
        callgrind_control -z "$BPID" >/dev/null 2>&1
        callgrind_control -i on "$BPID" >/dev/null 2>&1
        wrk -t2 -c64 -d"${SECONDS_CG}s" -s "$W/$ep.lua" "http://$addr/" >"$OUT/callgrind-$ep.wrk.txt"
        callgrind_control -i off "$BPID" >/dev/null 2>&1
        callgrind_control -d "$ep" "$BPID" >/dev/null 2>&1
        n=$(requests "$OUT/callgrind-$ep.wrk.txt")
        f=$(ls -t "$W"/cg.$BPID* | head -1)
        cp "$f" "$OUT/callgrind-$ep.out"
        total=$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
        echo "{\"requests\": $n, \"instructions\": $total, \"per_request\": $((total / n))}" >"$OUT/callgrind-$ep.json"
        log "callgrind $ep: $n requests, $total instructions, $((total / n)) per request"
        callgrind_annotate --threshold=99 "$f" >"$OUT/callgrind-$ep.self.txt" 2>/dev/null
        callgrind_annotate --inclusive=yes --threshold=99 "$f" >"$OUT/callgrind-$ep.inclusive.txt" 2>/dev/null
    done
    stop_broker
fi

if [ -z "${SKIP_PERF:-}" ]; then
    start_broker
    for ep in ecs imds; do
        addr=$ECS; [ $ep = imds ] && addr=$IMDS
        perf record -q -e cpu-clock -F 499 --call-graph dwarf,8192 -p "$BPID" -o "$OUT/perf-$ep.data" -- sleep "$SECONDS_PERF" &
        PERF=$!
        wrk -t2 -c64 -d"${SECONDS_PERF}s" -s "$W/$ep.lua" "http://$addr/" >"$OUT/perf-$ep.wrk.txt"
        wait "$PERF" || true
        perf report -i "$OUT/perf-$ep.data" --no-children --sort symbol --stdio -g none \
            >"$OUT/perf-$ep.self.txt" 2>/dev/null || true
        perf report -i "$OUT/perf-$ep.data" --children --sort symbol --stdio -g none \
            >"$OUT/perf-$ep.children.txt" 2>/dev/null || true
        perf report -i "$OUT/perf-$ep.data" --no-children --sort dso --stdio -g none \
            >"$OUT/perf-$ep.dso.txt" 2>/dev/null || true
        log "perf $ep: $(awk '/Requests\/sec/ {print $2}' "$OUT/perf-$ep.wrk.txt") req/s while sampled"
    done
    stop_broker
fi

# Memory: which allocations hold the heap at its peak with MEM_ROLES roles prefetched (massif).
if [ -z "${SKIP_MASSIF:-}" ]; then
    MEM_ROLES=${MEM_ROLES:-10000}
    MEM_RATE=${MEM_RATE:-250}
    mkdir -p "$W/mem"
    python3 bench/make_config.py --dir "$W/mem" --sts-port "$(cat "$W/sts.port")" --roles "$MEM_ROLES" --rate "$MEM_RATE"
    valgrind --tool=massif --depth=40 --threshold=0.5 --detailed-freq=3 --max-snapshots=200 --massif-out-file="$OUT/massif.out" -q \
        "$BIN" serve -c "$W/mem/broker.toml" --log-format json 2>"$W/mem/broker.log" &
    BPID=$!
    PIDS+=($BPID)
    MADMIN=$(broker_addr "$W/mem/broker.log" admin)
    for _ in $(seq 1 6000); do curl -fs -o /dev/null "http://$MADMIN/readyz" && break; sleep 0.1; done
    curl -fs -o /dev/null "http://$MADMIN/readyz" || log "massif: the broker was not ready after 600 s"
    sleep 2
    stop_broker
    ms_print --threshold=1 "$OUT/massif.out" >"$OUT/massif.txt"
    python3 bench/massif_top.py "$OUT/massif.out" 15 peak >"$OUT/massif-peak.txt"
    python3 bench/massif_top.py "$OUT/massif.out" 15 last >"$OUT/massif-last.txt"
    log "massif ($MEM_ROLES roles): $(head -1 "$OUT/massif-peak.txt"); $(head -1 "$OUT/massif-last.txt")"
fi
log "profiles in $OUT"
ls "$OUT"
