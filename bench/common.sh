# Shared by the bench scripts (sourced, not run): logging, Debian tools, a scratch directory
# whose processes die with the script, the broker's logged addresses, and readers of /proc.
# The sourcing script sets BENCH_NAME (the log prefix) first; it may set QUIET_MAX,
# QUIET_WAIT and QUIET_BUDGET for wait_quiet.

log() { printf '[%s %s] %s\n' "${BENCH_NAME:-bench}" "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# need_tools CMD[:PACKAGE]...: installs the Debian packages of the commands that are missing.
need_tools() {
    local want=() spec cmd pkg
    for spec in "$@"; do
        cmd=${spec%%:*}; pkg=${spec#*:}
        command -v "$cmd" >/dev/null || [ -x "/usr/sbin/$cmd" ] || want+=("$pkg")
    done
    [ ${#want[@]} -eq 0 ] && return 0
    log "installing ${want[*]} (Debian packages)"
    local sudo=; [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get -o DPkg::Lock::Timeout=300 update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
        --no-install-recommends "${want[@]}" >/dev/null
}

# start_scratch: makes $OUT absolute (creating $OUT/wrk), a world-readable scratch dir $W, and
# kills every pid in PIDS and removes $W when the script exits.
start_scratch() {
    mkdir -p "$OUT/wrk"
    OUT=$(cd "$OUT" && pwd)
    W=$(mktemp -d)
    chmod 755 "$W"
    PIDS=()
    trap cleanup EXIT
}
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$W"
}

wait_file() { for _ in $(seq 1 1200); do [ -s "$1" ] && return 0; sleep 0.05; done; die "timed out waiting for $1"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# broker_addr LOG ENDPOINT: the address the broker logged: {"message":"listening","endpoint":E,"addr":A}.
broker_addr() {
    python3 - "$1" "$2" <<'PY'
import json, sys, time
for _ in range(1200):
    try:
        lines = open(sys.argv[1]).readlines()
    except FileNotFoundError:  # the background job has not opened its log yet
        lines = []
    for line in lines:
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("message") == "listening" and e.get("endpoint") == sys.argv[2]:
            print(e["addr"]); sys.exit(0)
    time.sleep(0.05)
sys.exit("no listening line for " + sys.argv[2])
PY
}
# wait_ready ADMIN_ADDR SECONDS: until /readyz answers 200.
wait_ready() {
    local deadline=$((SECONDS + $2))
    until curl -fs -o /dev/null "http://$1/readyz"; do
        [ $SECONDS -lt "$deadline" ] || die "broker not ready after $2 s"
        sleep 0.2
    done
}

hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
# cpu_s PID...: CPU seconds (user + system) the processes used so far.
cpu_s() {
    local t=0 p
    for p in "$@"; do
        t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    python3 -c "print($t / $(getconf CLK_TCK))"
}
# Busy CPU seconds of the whole machine so far (user, nice, system, irq, softirq, steal).
machine_busy_s() {
    awk -v hz="$(getconf CLK_TCK)" '$1 == "cpu" {print ($2 + $3 + $4 + $7 + $8 + $9) / hz}' /proc/stat
}
# Context switches (voluntary + involuntary) of every thread of the given processes so far.
ctxsw() {
    cat $(for p in "$@"; do echo /proc/$p/task/*/status; done) 2>/dev/null |
        awk '/^(non)?voluntary_ctxt_switches/ {n += $2} END {print n + 0}'
}
# wait_quiet: until other processes use at most QUIET_MAX % of the machine over one second,
# at most QUIET_WAIT s per call and QUIET_BUDGET s per script: the machine is shared, and a
# busy neighbour turns a pair of runs into noise.
WAITED=0
wait_quiet() {
    local start=$SECONDS a b pct
    while :; do
        a=$(machine_busy_s); sleep 1; b=$(machine_busy_s)
        pct=$(python3 -c "print(round(($b - $a) * 100 / $(nproc)))")
        [ "$pct" -le "${QUIET_MAX:-10}" ] && break
        if [ $((SECONDS - start)) -ge "${QUIET_WAIT:-60}" ] || [ $((WAITED + SECONDS - start)) -ge "${QUIET_BUDGET:-240}" ]; then
            log "machine still ${pct}% busy (other processes): measuring anyway, see the background column"
            break
        fi
        log "machine ${pct}% busy (other processes): waiting"
        sleep 4
    done
    WAITED=$((WAITED + SECONDS - start - 1))
}
