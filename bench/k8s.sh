#!/usr/bin/env bash
# Kubernetes workload identity benchmarks (BENCHMARKS.md, "Kubernetes workload identity"):
#
#   bash bench/k8s.sh
#
#   1. a JWT-authenticated cached hit (a projected service-account token already verified:
#      one SHA-256 and two map reads, no signature check) vs nginx serving the same bytes, wrk
#      interleaved A B A B for ROUNDS rounds, same request (the ~1 KB token header included);
#   2. the pod-start burst: BURST_PODS distinct pod tokens of BURST_ACCOUNTS service accounts,
#      all at once, against a fake STS answering in STS_BURST_MS: time from the first request
#      to the last 200, and the STS calls (must equal BURST_ACCOUNTS);
#   3. memory of SESSIONS pod-scope caller sessions: VmRSS before and after creating them.
#
# Installs wrk and nginx from Debian packages when missing; builds the release broker and the
# token minter (examples/k8s_tokens.rs). Knobs: ROUNDS=3 DURATION=10 CONNS=64 BURST_PODS=1000
# BURST_ACCOUNTS=20 STS_BURST_MS=200-200 SESSIONS=10000 SKIP_BUILD=1 OUT=target/bench/k8s-<time>
set -euo pipefail

cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
BURST_PODS=${BURST_PODS:-1000}
BURST_ACCOUNTS=${BURST_ACCOUNTS:-20}
STS_BURST_MS=${STS_BURST_MS:-200-200}
SESSIONS=${SESSIONS:-10000}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
OUT=${OUT:-$TARGET_DIR/bench/k8s-$(date -u +%Y%m%dT%H%M%SZ)}
BIN=$TARGET_DIR/release/sts-broker
MINT=$TARGET_DIR/release/examples/k8s_tokens
ISSUER=https://issuer.bench.example

BENCH_NAME=bench-k8s
QUIET_MAX=${QUIET_MAX:-15}
QUIET_WAIT=${QUIET_WAIT:-30}
. bench/common.sh

need_tools wrk nginx curl
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [ -z "${SKIP_BUILD:-}" ]; then
    log "cargo build --release --locked (broker and token minter)"
    cargo build --release --locked --bin sts-broker --example k8s_tokens
fi
[ -x "$BIN" ] && [ -x "$MINT" ] || die "no $BIN or $MINT"

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
start_scratch

# --- tokens, fake STS, broker ------------------------------------------------------------------
"$MINT" "$W" "$ISSUER" sts-broker bench "$BURST_ACCOUNTS" "$(( SESSIONS > BURST_PODS ? SESSIONS : BURST_PODS ))"
log "minted tokens: $(wc -l <"$W/tokens.txt") ($(head -1 "$W/tokens.txt" | wc -c) bytes each)"
start_sts() {
    python3 bench/fake_sts.py --port-file "$W/sts.port" --latency-ms "$1" &
    STS_PID=$!
    PIDS+=($STS_PID)
    wait_file "$W/sts.port"
    STS_URL=http://127.0.0.1:$(cat "$W/sts.port")
}
start_broker() { # NAME RATE
    cat >"$W/$1.toml" <<TOML
[sts]
region = "us-east-1"
endpoint = "$STS_URL"
timeout = "10s"
max_calls_per_second = $2
[source]
kind = "static_env"
[ecs]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[kubernetes]
issuer = "$ISSUER"
audiences = ["sts-broker"]
jwks = "$W/jwks.json"
max_sessions = $((SESSIONS + 1000))
[[role]]
name = "sa"
arn = "arn:aws:iam::123456789012:role/bench-sa"
service_accounts = ["bench/*"]
tokens = ["bench-static-token-0123456789abcdef"]
[[role]]
name = "pod"
arn = "arn:aws:iam::123456789012:role/bench-pod"
service_accounts = ["bench/*"]
session_scope = "pod"
TOML
    RUST_LOG=warn,sts_broker=info "$BIN" serve -c "$W/$1.toml" --log-format json 2>"$W/$1.log" &
    BROKER=$!
    PIDS+=($BROKER)
    ECS=$(broker_addr "$W/$1.log" ecs)
    ADMIN=$(broker_addr "$W/$1.log" admin)
}
export AWS_ACCESS_KEY_ID=AKIDBENCHMARK0000000 AWS_SECRET_ACCESS_KEY=bench-secret-not-real
unset AWS_SESSION_TOKEN AWS_PROFILE

# --- 1. cached JWT hit vs nginx --------------------------------------------------------------
start_sts 20-50
start_broker hit 100
TOKEN=$(head -1 "$W/tokens.txt")
PATH_=/v1/credentials/sa
mkdir -p "$W/www" "$W/nginx-tmp"
chmod 755 "$W/www"
curl -fsS -H "Authorization: $TOKEN" "http://$ECS$PATH_" -o "$W/www/sa.json"
chmod 644 "$W/www/sa.json"
NGINX_PORT=$(free_port)
cat >"$W/nginx.conf" <<NG
worker_processes 2;
daemon off;
pid $W/nginx.pid;
error_log $W/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off; sendfile on; tcp_nopush on; tcp_nodelay on;
    keepalive_timeout 65; keepalive_requests 100000000;
    open_file_cache max=16; open_file_cache_valid 600s;
    client_body_temp_path $W/nginx-tmp/body; proxy_temp_path $W/nginx-tmp/proxy;
    fastcgi_temp_path $W/nginx-tmp/fastcgi; uwsgi_temp_path $W/nginx-tmp/uwsgi; scgi_temp_path $W/nginx-tmp/scgi;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location = $PATH_ { default_type application/json; alias $W/www/sa.json; }
    }
}
NG
"$NGINX" -c "$W/nginx.conf" -e "$W/nginx-error.log" &
PIDS+=($!)
for _ in $(seq 1 100); do curl -fsS -o /dev/null "http://127.0.0.1:$NGINX_PORT$PATH_" 2>/dev/null && break; sleep 0.05; done
cmp <(curl -fsS "http://127.0.0.1:$NGINX_PORT$PATH_") "$W/www/sa.json" || die "nginx bytes differ"
cat >"$W/jwt.lua" <<LUA
wrk.method = "GET"
wrk.path = "$PATH_"
wrk.headers["Authorization"] = "$TOKEN"
LUA
# The same role through a static client token: what the JWT path costs on top.
cat >"$W/static.lua" <<LUA
wrk.method = "GET"
wrk.path = "$PATH_"
wrk.headers["Authorization"] = "bench-static-token-0123456789abcdef"
LUA
wrk -t2 -c"$CONNS" -d2s -s "$W/jwt.lua" "http://$ECS/" >/dev/null
wrk -t2 -c"$CONNS" -d2s -s "$W/jwt.lua" "http://127.0.0.1:$NGINX_PORT/" >/dev/null
for r in $(seq 1 "$ROUNDS"); do
    for who in broker nginx static; do
        addr=$ECS; [ $who = nginx ] && addr=127.0.0.1:$NGINX_PORT
        script=$W/jwt.lua; [ $who = static ] && script=$W/static.lua
        wait_quiet
        m0=$(machine_busy_s)
        wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency -s "$script" "http://$addr/" >"$OUT/wrk/${who}_r$r.txt"
        m1=$(machine_busy_s)
        log "$who r$r: $(awk '/Requests\/sec/ {print $2}' "$OUT/wrk/${who}_r$r.txt") req/s (machine busy $(python3 -c "print(round(($m1 - $m0) * 100 / ($(nproc) * $DURATION)))") %)"
    done
done
curl -fsS "http://$ADMIN/metrics" | grep -E '^sts_broker_token_verifications_total' >"$OUT/verifications.txt" || true
kill -TERM "$BROKER"; wait "$BROKER" || true
kill "$STS_PID"; wait "$STS_PID" 2>/dev/null || true; rm -f "$W/sts.port"

# --- 2. pod-start burst -----------------------------------------------------------------------
start_sts "$STS_BURST_MS"
start_broker burst 1000
head -n "$BURST_PODS" "$W/tokens.txt" >"$W/burst.txt"
python3 bench/k8s_burst.py --addr "$ECS" --role sa --tokens "$W/burst.txt" --sts "$STS_URL" \
    --n "$BURST_PODS" >"$OUT/burst.json"
log "burst: $(cat "$OUT/burst.json")"

# --- 3. memory of pod-scope sessions ---------------------------------------------------------
sleep 1
RSS0=$(rss_kib "$BROKER")
python3 bench/k8s_burst.py --addr "$ECS" --role pod --tokens "$W/tokens.txt" --sts "$STS_URL" \
    --n "$SESSIONS" --concurrency 200 >"$OUT/sessions.json"
sleep 2
RSS1=$(rss_kib "$BROKER")
SESS=$(curl -fsS "http://$ADMIN/metrics" | awk '/^sts_broker_caller_sessions\{role="pod"\}/ {print $2}')
python3 - "$OUT/sessions.json" "$RSS0" "$RSS1" "$SESS" >"$OUT/memory.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
r0, r1, n = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
print(json.dumps({"sessions": n, "rss_before_kib": r0, "rss_after_kib": r1,
                  "bytes_per_session": round((r1 - r0) * 1024 / n) if n else None, "run": s}))
PY
log "memory: $(cat "$OUT/memory.json")"

python3 - "$OUT" "$ROUNDS" <<'PY'
import json, os, re, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
rps = lambda f: float(re.search(r"Requests/sec:\s+([\d.]+)", open(f).read()).group(1))
b = [rps(f"{out}/wrk/broker_r{r}.txt") for r in range(1, rounds + 1)]
n = [rps(f"{out}/wrk/nginx_r{r}.txt") for r in range(1, rounds + 1)]
st = [rps(f"{out}/wrk/static_r{r}.txt") for r in range(1, rounds + 1)]
burst = json.load(open(f"{out}/burst.json"))
mem = json.load(open(f"{out}/memory.json"))
lines = [
    "| measurement | result |", "|---|---|",
    f"| JWT cached hit, broker req/s (median of {rounds}) | {statistics.median(b):,.0f} ({', '.join(f'{x:,.0f}' for x in b)}) |",
    f"| nginx, same bytes, same request (median) | {statistics.median(n):,.0f} ({', '.join(f'{x:,.0f}' for x in n)}) |",
    f"| ratio broker / nginx (median of per-round ratios) | {statistics.median(x / y for x, y in zip(b, n)):.2f} ({', '.join(f'{x / y:.2f}' for x, y in zip(b, n))}) |",
    f"| same role, static client token, req/s (median) | {statistics.median(st):,.0f} ({', '.join(f'{x:,.0f}' for x in st)}) |",
    f"| ratio JWT / static token (median of per-round ratios) | {statistics.median(x / y for x, y in zip(b, st)):.2f} |",
    f"| pod-start burst: {burst['n']} pods, statuses | {burst['statuses']} |",
    f"| burst: first request to last answer | {burst['first_request_to_last_answer_ms']:.0f} ms |",
    f"| burst: STS calls | {burst['sts_calls']} |",
    f"| {mem['sessions']:.0f} pod-scope sessions: RSS before / after | {mem['rss_before_kib']/1024:.1f} MiB / {mem['rss_after_kib']/1024:.1f} MiB |",
    f"| memory per pod-scope session | {mem['bytes_per_session']:,} bytes |",
]
open(f"{out}/summary.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
