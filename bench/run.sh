#!/usr/bin/env bash
# The benchmark, one command from a fresh clone:  bash bench/run.sh
#
# Installs wrk and nginx from Debian packages when missing, builds the release broker, starts a
# fake STS (20–50 ms per AssumeRole), the broker with 100 roles + an IMDS listener + 3 lazy
# roles, nginx (2 workers) serving the broker's exact response bytes from static files, and a
# naive broker that calls STS on every request. Then, on loopback only:
#   1. wrk (2 threads, keep-alive) interleaved A B A B for ROUNDS rounds: ECS and IMDS cached
#      hits vs nginx at 64 connections, the naive broker at 64, and both again at 8 connections
#      (closed loop: as fast as they answer) and at 8 connections that each pause THINK_MS
#      between requests (light load: the latency of a request, not of the CPU queue);
#   2. the cold path: 1000 concurrent first requests for a prefetch = false role (3 roles);
#   3. memory: VmHWM idle with 100 roles, after the load, and with 10,000 roles prefetched
#      (with the STS calls/s the fake STS saw during that prefetch).
# Prints the table (also written to $OUT/summary.md). About 7 minutes with a warm build, 10 cold.
#
# Knobs (environment): ROUNDS=3 DURATION=10 DURATION8=5 ROLES=100 BIG_ROLES=10000 BIG_RATE=250
# COLD_N=1000 STS_LATENCY_MS=20-50 OUT=target/bench/<time> SKIP_BUILD=1 SKIP_BIG=1
# QUIET_MAX=10 QUIET_WAIT=60 QUIET_BUDGET=240 THINK_MS=1 NGINX_WORKERS=2
# BROKER_ENV="TOKIO_WORKER_THREADS=1" (extra environment for the broker under test: what-if runs).
#
# Noise guard: the machine has 2 cores, shared by wrk and the server under test. Before every
# wrk run the script waits (up to QUIET_WAIT s per run, QUIET_BUDGET s in all) until other
# processes use at most QUIET_MAX % of the machine, and it records the CPU that processes other than wrk and the server used
# during each run ("background" in the table). A high figure there means the pair is noise.
set -euo pipefail

cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
DURATION8=${DURATION8:-5}
ROLES=${ROLES:-100}
BIG_ROLES=${BIG_ROLES:-10000}
BIG_RATE=${BIG_RATE:-250}
COLD_N=${COLD_N:-1000}
COLD_ROLES=3
STS_LATENCY_MS=${STS_LATENCY_MS:-20-50}
QUIET_MAX=${QUIET_MAX:-10}
THINK_MS=${THINK_MS:-1}
NGINX_WORKERS=${NGINX_WORKERS:-2}
BROKER_ENV=${BROKER_ENV:-}
QUIET_WAIT=${QUIET_WAIT:-60}
QUIET_BUDGET=${QUIET_BUDGET:-240}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
OUT=${OUT:-$TARGET_DIR/bench/$(date -u +%Y%m%dT%H%M%SZ)}
BIN=$TARGET_DIR/release/sts-broker

BENCH_NAME=bench
. bench/common.sh

# --- tools -----------------------------------------------------------------------------------
need_tools wrk nginx curl
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
command -v python3 >/dev/null || die "python3 is needed"

if [ -z "${SKIP_BUILD:-}" ]; then
    log "cargo build --release --locked"
    cargo build --release --locked
fi
[ -x "$BIN" ] || die "no $BIN"

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
start_scratch

# --- machine ---------------------------------------------------------------------------------
python3 - "$OUT/machine.json" <<EOF
import json, subprocess, sys, platform
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
sh = lambda c: subprocess.run(c, shell=True, capture_output=True, text=True)
json.dump({
    "cpu": cpu, "nproc": int(sh("nproc").stdout), "kernel": platform.release(),
    "commit": sh("git describe --always --dirty 2>/dev/null || echo unknown").stdout.strip(),
    "nginx": sh("$NGINX -v").stderr.strip().replace("nginx version: ", ""),
    "wrk": (sh("wrk -v").stdout + sh("wrk -v").stderr).split("\n")[0].split(" [")[0].strip(),
    "rustc": sh("rustc --version").stdout.strip(),
    "broker_env": "$BROKER_ENV", "nginx_workers": $NGINX_WORKERS, "think_ms": $THINK_MS,
    "rounds": $ROUNDS, "duration": $DURATION, "duration8": $DURATION8,
    "sts_latency_ms": "$STS_LATENCY_MS", "roles": $ROLES,
}, open(sys.argv[1], "w"), indent=1)
EOF
log "results in $OUT"

# --- fake STS --------------------------------------------------------------------------------
python3 bench/fake_sts.py --port-file "$W/sts.port" --latency-ms "$STS_LATENCY_MS" &
STS_PID=$!
PIDS+=($STS_PID)
wait_file "$W/sts.port"
STS_PORT=$(cat "$W/sts.port")
STS_URL=http://127.0.0.1:$STS_PORT
export AWS_ACCESS_KEY_ID=AKIDBENCHMARK0000000 AWS_SECRET_ACCESS_KEY=bench-secret-not-real
unset AWS_SESSION_TOKEN AWS_PROFILE
export RUST_LOG=${RUST_LOG:-info}

# --- the broker under test -------------------------------------------------------------------
mkdir -p "$W/main"
python3 bench/make_config.py --dir "$W/main" --sts-port "$STS_PORT" --roles "$ROLES" \
    --cold "$COLD_ROLES" --imds --rate 100
env $BROKER_ENV "$BIN" serve -c "$W/main/broker.toml" --log-format json 2>"$W/main/broker.log" &
BROKER=$!
PIDS+=($BROKER)
ECS=$(broker_addr "$W/main/broker.log" ecs)
IMDS=$(broker_addr "$W/main/broker.log" imds)
ADMIN=$(broker_addr "$W/main/broker.log" admin)
wait_ready "$ADMIN" 120
log "broker ready: ecs $ECS imds $IMDS admin $ADMIN ($ROLES roles)"
ECS_TOKEN=$(cat "$W/main/tokens/app0")
IMDS_TOKEN=$(curl -fsS -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 21600' "http://$IMDS/latest/api/token")
ECS_PATH=/v1/credentials/app0
IMDS_PATH=/latest/meta-data/iam/security-credentials/app0

# The exact bytes the broker answers with become nginx's static files.
mkdir -p "$W/www" "$W/nginx-tmp"
chmod 755 "$W/www"
curl -fsS -H "Authorization: $ECS_TOKEN" "http://$ECS$ECS_PATH" -o "$W/www/ecs.json"
curl -fsS -H "X-aws-ec2-metadata-token: $IMDS_TOKEN" "http://$IMDS$IMDS_PATH" -o "$W/www/imds.json"
chmod 644 "$W/www/"*.json
sleep 2
IDLE_HWM=$(hwm_kib "$BROKER")
IDLE_RSS=$(rss_kib "$BROKER")
log "idle: VmHWM $IDLE_HWM KiB, VmRSS $IDLE_RSS KiB"

# --- nginx: the same bytes from static files ---------------------------------------------------
NGINX_PORT=$(free_port)
cat >"$W/nginx.conf" <<EOF
worker_processes $NGINX_WORKERS;
daemon off;
pid $W/nginx.pid;
error_log $W/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 100000000;
    open_file_cache max=16;
    open_file_cache_valid 600s;
    client_body_temp_path $W/nginx-tmp/body;
    proxy_temp_path $W/nginx-tmp/proxy;
    fastcgi_temp_path $W/nginx-tmp/fastcgi;
    uwsgi_temp_path $W/nginx-tmp/uwsgi;
    scgi_temp_path $W/nginx-tmp/scgi;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location = $ECS_PATH { default_type application/json; alias $W/www/ecs.json; }
        location = $IMDS_PATH { default_type text/plain; alias $W/www/imds.json; }
    }
}
EOF
"$NGINX" -c "$W/nginx.conf" -e "$W/nginx-error.log" &
NGINX_PID=$!
PIDS+=($NGINX_PID)
for _ in $(seq 1 100); do curl -fsS -o /dev/null "http://127.0.0.1:$NGINX_PORT$ECS_PATH" 2>/dev/null && break; sleep 0.05; done
cmp <(curl -fsS "http://127.0.0.1:$NGINX_PORT$ECS_PATH") "$W/www/ecs.json" || die "nginx ECS bytes differ"
cmp <(curl -fsS "http://127.0.0.1:$NGINX_PORT$IMDS_PATH") "$W/www/imds.json" || die "nginx IMDS bytes differ"
NGINX_PIDS=$(ps -o pid= --ppid "$NGINX_PID" | tr '\n' ' ')
log "nginx on 127.0.0.1:$NGINX_PORT, workers $NGINX_PIDS; bodies $(wc -c <"$W/www/ecs.json") and $(wc -c <"$W/www/imds.json") bytes"

# --- naive broker ----------------------------------------------------------------------------
python3 bench/naive_broker.py --port-file "$W/naive.port" --sts "$STS_URL" --role app0 \
    --arn arn:aws:iam::123456789012:role/bench-naive --token-file "$W/main/tokens/app0" &
NAIVE_PIDS="$! $STS_PID" # the naive broker and the fake STS it calls: both are "the server"
PIDS+=($!)
wait_file "$W/naive.port"
NAIVE=127.0.0.1:$(cat "$W/naive.port")
curl -fsS -o /dev/null -H "Authorization: $ECS_TOKEN" "http://$NAIVE$ECS_PATH" || die "naive broker does not answer"

# --- wrk ---------------------------------------------------------------------------------------
cat >"$W/ecs.lua" <<EOF
wrk.method = "GET"
wrk.path = "$ECS_PATH"
wrk.headers["Authorization"] = "$ECS_TOKEN"
EOF
cat >"$W/imds.lua" <<EOF
wrk.method = "GET"
wrk.path = "$IMDS_PATH"
wrk.headers["X-aws-ec2-metadata-token"] = "$IMDS_TOKEN"
EOF
for ep in ecs imds; do
    { cat "$W/$ep.lua"; echo "function delay() return $THINK_MS end"; } >"$W/${ep}_think.lua"
done
# run LABEL ROUND CONNS SECONDS SCRIPT ADDR PIDS...: one wrk run; saves wrk's output, the
# server's CPU seconds, wrk's, and the background's (everything else on the machine).
run() {
    local label=$1 round=$2 conns=$3 secs=$4 script=$5 addr=$6
    shift 6
    local before after m0 m1 wrk_cpu cs0 cs1
    wait_quiet
    cs0=$(ctxsw "$@")
    before=$(cpu_s "$@")
    m0=$(machine_busy_s)
    { TIMEFORMAT='%U %S'; time wrk -t2 -c"$conns" -d"${secs}s" --latency -s "$script" "http://$addr/" \
        >"$OUT/wrk/${label}_r$round.txt"; } 2>"$W/wrk.time"
    m1=$(machine_busy_s)
    after=$(cpu_s "$@")
    cs1=$(ctxsw "$@")
    wrk_cpu=$(awk '{print $1 + $2}' "$W/wrk.time")
    python3 - "$OUT/wrk/${label}_r$round.cpu" <<EOF
import json, sys
server = $after - $before
busy = $m1 - $m0
json.dump({"cpu_s": round(server, 3), "wrk_cpu_s": $wrk_cpu, "ctx_switches": $cs1 - $cs0,
           "background_cpu_s": round(max(0.0, busy - server - $wrk_cpu), 3),
           "capacity_cpu_s": $(nproc) * $secs}, open(sys.argv[1], "w"))
EOF
    log "$label r$round: $(awk '/Requests\/sec/ {print $2}' "$OUT/wrk/${label}_r$round.txt") req/s, p99 $(awk '$1 == "99%" {print $2}' "$OUT/wrk/${label}_r$round.txt")"
}
NG=127.0.0.1:$NGINX_PORT
log "warm-up"
for t in "ecs.lua $ECS" "imds.lua $IMDS" "ecs.lua $NG" "imds.lua $NG" "ecs.lua $NAIVE"; do
    set -- $t
    wrk -t2 -c64 -d2s -s "$W/$1" "http://$2/" >/dev/null
done
for r in $(seq 1 "$ROUNDS"); do
    log "round $r of $ROUNDS"
    run ecs64_broker "$r" 64 "$DURATION" "$W/ecs.lua" "$ECS" "$BROKER"
    run ecs64_nginx "$r" 64 "$DURATION" "$W/ecs.lua" "$NG" $NGINX_PIDS
    run imds64_broker "$r" 64 "$DURATION" "$W/imds.lua" "$IMDS" "$BROKER"
    run imds64_nginx "$r" 64 "$DURATION" "$W/imds.lua" "$NG" $NGINX_PIDS
    run naive64 "$r" 64 "$DURATION" "$W/ecs.lua" "$NAIVE" $NAIVE_PIDS
    run ecs8_broker "$r" 8 "$DURATION8" "$W/ecs.lua" "$ECS" "$BROKER"
    run ecs8_nginx "$r" 8 "$DURATION8" "$W/ecs.lua" "$NG" $NGINX_PIDS
    run imds8_broker "$r" 8 "$DURATION8" "$W/imds.lua" "$IMDS" "$BROKER"
    run imds8_nginx "$r" 8 "$DURATION8" "$W/imds.lua" "$NG" $NGINX_PIDS
    run ecs8think_broker "$r" 8 "$DURATION8" "$W/ecs_think.lua" "$ECS" "$BROKER"
    run ecs8think_nginx "$r" 8 "$DURATION8" "$W/ecs_think.lua" "$NG" $NGINX_PIDS
    run imds8think_broker "$r" 8 "$DURATION8" "$W/imds_think.lua" "$IMDS" "$BROKER"
    run imds8think_nginx "$r" 8 "$DURATION8" "$W/imds_think.lua" "$NG" $NGINX_PIDS
done
LOADED_HWM=$(hwm_kib "$BROKER")
log "after load: VmHWM $LOADED_HWM KiB"

# --- cold path ---------------------------------------------------------------------------------
for i in $(seq 0 $((COLD_ROLES - 1))); do
    wait_quiet
    python3 bench/cold_burst.py --admin "$ADMIN" --addr "$ECS" --role "cold$i" --token-file "$W/main/tokens/cold$i" \
        --sts "$STS_URL" --arn "arn:aws:iam::123456789012:role/bench-cold$i" --n "$COLD_N" \
        >"$OUT/cold_$i.json"
    log "cold$i: $(cat "$OUT/cold_$i.json")"
done
echo "{\"roles\": $ROLES, \"idle_hwm_kib\": $IDLE_HWM, \"idle_rss_kib\": $IDLE_RSS, \"loaded_hwm_kib\": $LOADED_HWM}" >"$OUT/memory.json"
kill -TERM "$BROKER"
wait "$BROKER" || true

# --- 10,000 roles ------------------------------------------------------------------------------
if [ -z "${SKIP_BIG:-}" ]; then
    mkdir -p "$W/big"
    python3 bench/make_config.py --dir "$W/big" --sts-port "$STS_PORT" --roles "$BIG_ROLES" --rate "$BIG_RATE"
    wait_quiet
    curl -fsS -X POST -o /dev/null "$STS_URL/reset"
    log "starting a broker with $BIG_ROLES roles (max_calls_per_second = $BIG_RATE)"
    START=$(date +%s.%N)
    "$BIN" serve -c "$W/big/broker.toml" --log-format json 2>"$W/big/broker.log" &
    BIG=$!
    PIDS+=($BIG)
    BIG_ADMIN=$(broker_addr "$W/big/broker.log" admin)
    wait_ready "$BIG_ADMIN" $((BIG_ROLES * 3 / ${BIG_RATE%.*} + 60))
    READY=$(date +%s.%N)
    sleep 1
    BIG_HWM=$(hwm_kib "$BIG")
    curl -fsS "$STS_URL/stats" >"$W/big/stats.json"
    python3 - "$W/big/stats.json" "$OUT/big.json" <<EOF
import json, sys
s = json.load(open(sys.argv[1]))
span = (s["last"] - s["first"]) if s["total"] > 1 else 0.0
json.dump({"roles": $BIG_ROLES, "rate": $BIG_RATE, "hwm_kib": $BIG_HWM, "rss_kib": $(rss_kib "$BIG"),
           "sts_calls": s["total"], "span_s": span,
           "calls_per_s": (s["total"] - 1) / span if span else 0.0,
           "max_per_second": s["max_per_second"], "max_per_5s": s["max_per_5s"],
           "ready_s": $READY - $START}, open(sys.argv[2], "w"))
EOF
    log "10k roles: $(cat "$OUT/big.json")"
    kill -TERM "$BIG"
    wait "$BIG" || true
fi

python3 bench/report.py "$OUT"
