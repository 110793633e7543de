#!/usr/bin/env bash
# What attributing callers by socket owner costs (DESIGN §10):  bash bench/local_users.sh
#
# Starts the fake STS and two release brokers on loopback serving the same role:
#   A: the role has a token only (no role has local_users: the kernel is never asked);
#   B: the same role with local_users = [BENCH_UID] (sock_diag asked once per connection, at accept).
# wrk runs as BENCH_UID (setpriv, so it needs root), interleaved A B A B for ROUNDS rounds:
#   new-conn  every request on a fresh connection (`Connection: close`): the lookup is paid per request
#             - A token: the baseline; B token-less: the local_users path; B token: a token
#               request on a broker with local_users (the lookup happens at accept for everyone)
#   warm      keep-alive connections: A token vs B token-less (the lookup is not on this path)
# Prints a table (also $OUT/summary.md) with B/A ratios side by side: requests per second, and the
# broker's own CPU time per request (from /proc, less disturbed by other load than req/s). The
# machine may be shared: compare ratios from the same run, not absolute numbers across runs.
#
# Knobs: ROUNDS=3 DURATION=5 CONNS_NEW=8 CONNS_WARM=32 BENCH_UID=64000 SKIP_BUILD=1
# OUT=target/bench/local-users-<time>
set -euo pipefail

cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
CONNS_NEW=${CONNS_NEW:-8}
CONNS_WARM=${CONNS_WARM:-32}
BENCH_UID=${BENCH_UID:-64000}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
OUT=${OUT:-$TARGET_DIR/bench/local-users-$(date -u +%Y%m%dT%H%M%SZ)}
BIN=$TARGET_DIR/release/sts-broker
TOKEN=bench-local-users-token-0123456789

BENCH_NAME=bench
. bench/common.sh

[ "$(id -u)" -eq 0 ] || die "run as root: wrk runs as UID $BENCH_UID through setpriv"
need_tools wrk curl
if [ -z "${SKIP_BUILD:-}" ]; then
    log "cargo build --release --locked"
    cargo build --release --locked
fi
[ -x "$BIN" ] || die "no $BIN"

start_scratch

python3 bench/fake_sts.py --port-file "$W/sts.port" --latency-ms 1-2 >/dev/null &
PIDS+=($!)
wait_file "$W/sts.port"
STS_PORT=$(cat "$W/sts.port")
export AWS_ACCESS_KEY_ID=AKIDBENCHMARK0000000 AWS_SECRET_ACCESS_KEY=bench-secret-not-real
export RUST_LOG=warn

# start_broker NAME EXTRA: writes the config, starts it, sets ADDR to its ECS address
start_broker() {
    local name=$1 extra=$2 ecs admin
    ecs=$(free_port); admin=$(free_port)
    cat >"$W/$name.toml" <<EOF
[sts]
region = "us-east-1"
endpoint = "http://127.0.0.1:$STS_PORT"
[source]
kind = "static_env"
[ecs]
listen = "127.0.0.1:$ecs"
[admin]
listen = "127.0.0.1:$admin"
[[role]]
name = "app"
arn = "arn:aws:iam::123456789012:role/app"
tokens = ["$TOKEN"]
$extra
EOF
    "$BIN" serve -c "$W/$name.toml" --log-format json >/dev/null 2>"$W/$name.log" &
    PIDS+=($!)
    PID=$!
    for _ in $(seq 1 300); do
        curl -fs -o /dev/null "http://127.0.0.1:$admin/readyz" && { ADDR="127.0.0.1:$ecs"; return; }
        sleep 0.1
    done
    die "broker $name not ready: $(cat "$W/$name.log")"
}
start_broker a ""
A=$ADDR A_PID=$PID
start_broker b "local_users = [$BENCH_UID]"
B=$ADDR B_PID=$PID
log "A (tokens only) $A, B (local_users = [$BENCH_UID]) $B"

as_user() { setpriv --reuid="$BENCH_UID" --regid="$BENCH_UID" --clear-groups "$@"; }
# Sanity: B answers the local user without a token, A does not.
[ "$(as_user curl -s -o /dev/null -w '%{http_code}' "http://$B/v1/credentials/app")" = 200 ] || die "B refuses the local user"
[ "$(as_user curl -s -o /dev/null -w '%{http_code}' "http://$A/v1/credentials/app")" = 401 ] || die "A serves without a token"

# CPU ticks (user + system) the process has used so far.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# run LABEL ROUND ADDR PID CONNS HEADERS...: also records the broker's CPU per request, which
# other processes on a shared machine disturb far less than requests per second.
run() {
    local label=$1 round=$2 addr=$3 pid=$4 conns=$5 before after
    shift 5
    local out="$OUT/wrk/$label.$round.txt"
    before=$(ticks "$pid")
    as_user wrk -t2 -c"$conns" -d"${DURATION}s" --latency "$@" "http://$addr/v1/credentials/app" >"$out"
    after=$(ticks "$pid")
    echo "broker_cpu_ticks $((after - before)) hz $(getconf CLK_TCK)" >>"$out"
    if grep -q "Non-2xx" "$out"; then cat "$out" >&2; die "$label: non-200 answers"; fi
    log "$label round $round: $(awk '/Requests\/sec/ {print $2}' "$out") req/s"
}
for r in $(seq 1 "$ROUNDS"); do
    run new-A-token "$r" "$A" "$A_PID" "$CONNS_NEW" -H "Authorization: $TOKEN" -H "Connection: close"
    run new-B-local "$r" "$B" "$B_PID" "$CONNS_NEW" -H "Connection: close"
    run new-B-token "$r" "$B" "$B_PID" "$CONNS_NEW" -H "Authorization: $TOKEN" -H "Connection: close"
    run warm-A-token "$r" "$A" "$A_PID" "$CONNS_WARM" -H "Authorization: $TOKEN"
    run warm-B-local "$r" "$B" "$B_PID" "$CONNS_WARM"
done

python3 - "$OUT" "$ROUNDS" <<'EOF' | tee "$OUT/summary.md"
import re, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def parse(label, r):
    t = open(f"{out}/wrk/{label}.{r}.txt").read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
    def us(s):
        v, unit = re.match(r"([\d.]+)(us|ms|s)", s).groups()
        return float(v) * {"us": 1, "ms": 1e3, "s": 1e6}[unit]
    p50 = us(re.search(r"^\s+50%\s+(\S+)", t, re.M).group(1))
    p99 = us(re.search(r"^\s+99%\s+(\S+)", t, re.M).group(1))
    n = int(re.search(r"(\d+) requests in", t).group(1))
    m = re.search(r"broker_cpu_ticks (\d+) hz (\d+)", t)
    cpu = int(m.group(1)) / int(m.group(2)) * 1e6 / n if m else float("nan")
    return rps, p50, p99, cpu
def med(label):
    runs = [parse(label, r) for r in range(1, rounds + 1)]
    return [statistics.median(x[i] for x in runs) for i in range(4)]
rows = [("new connection per request", "new-A-token", "new-B-local"),
        ("new connection, token on a local_users broker", "new-A-token", "new-B-token"),
        ("warm keep-alive", "warm-A-token", "warm-B-local")]
print(f"medians of {rounds} interleaved rounds (wrk -t2, as one local user)\n")
print("| case | A token req/s | B req/s | B/A req/s | A broker CPU µs/req | B broker CPU µs/req | B/A CPU | A p50 µs | B p50 µs | A p99 µs | B p99 µs |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for name, a, b in rows:
    ra, rb = med(a), med(b)
    print(f"| {name} | {ra[0]:.0f} | {rb[0]:.0f} | {rb[0]/ra[0]:.2f} | {ra[3]:.1f} | {rb[3]:.1f} | {rb[3]/ra[3]:.2f} | {ra[1]:.0f} | {rb[1]:.0f} | {ra[2]:.0f} | {rb[2]:.0f} |")
EOF
