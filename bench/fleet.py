#!/usr/bin/env python3
"""Fleet simulator: N broker processes x R roles start together against one fake STS that
enforces an account-wide budget (calls/s, `Throttling` beyond it), as a node-pool rollout or a
region recovering does to a real fleet.

    python3 bench/fleet.py [--brokers 100] [--roles 10] [--budget 50] [--latency-ms 20-50]
                           [--variants legacy,defaults,tuned] [--fail-primary hang|error500]
                           [--binary target/release/sts-broker] [--deadline 300] [--out FILE]

Variants (run one after another, each against a fresh fake STS):
  legacy    fixed rate (`adaptive_rate = false`), no spread: the previous release's behaviour
  defaults  this release's defaults (adaptive rate on, `startup_spread = 0`)
  tuned     adaptive rate + `[refresh] startup_spread` = N x R / budget (the README's formula)
  tuned-failover  tuned + `unhealthy_after = 1`, `hedge_after = "1s"` (for --fail-primary)

Reported per variant:
  ready_s        until every broker holds credentials for every role (the fake STS's first
                 successful answer per role ARN; every role ARN is unique to one broker),
                 from the instant all N processes are released together (one flock)
  first_call_s   when the first STS call arrived: N processes starting at once on one small
                 machine take seconds to get there, a broker on its own node milliseconds;
                 sts_ready_s = ready_s - first_call_s is the fleet's time once it talks to STS
  ideal_s        N x R / budget: the fastest the account's quota allows
  calls          STS calls the fake received; throttled = answered Throttling
  amplification  calls / credentials obtained
  client_errors  non-200 answers to clients of brokers whose credentials were valid (sampled
                 during the run, then every role of every broker once at the end)

With --fail-primary, each broker lists two endpoints (`endpoints = [primary, backup]`), the
primary fails that way for the whole run and the backup region enforces the budget.
"""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TOKEN = "fleet-client-token-0123456789abcdef"


def free_ports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def start_fake(workdir, tag, budget, latency, mode=None):
    port_file = os.path.join(workdir, f"{tag}.port")
    args = [sys.executable, os.path.join(HERE, "fake_sts.py"), "--port-file", port_file,
            "--latency-ms", latency, "--budget", str(budget)]
    if mode:
        mode_file = os.path.join(workdir, f"{tag}.mode")
        with open(mode_file, "w") as f:
            f.write(mode)
        args += ["--mode-file", mode_file]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 20
    while not os.path.exists(port_file):
        if time.time() > deadline:
            sys.exit("fake STS did not start")
        time.sleep(0.05)
    with open(port_file) as f:
        return proc, f"http://127.0.0.1:{f.read().strip()}"


def get_json(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.load(r)


def broker_config(i, ecs, admin, roles, endpoints, variant, spread_s):
    sts = f'region = "us-east-1"\ntimeout = "5s"\n'
    if len(endpoints) == 1:
        sts += f'endpoint = "{endpoints[0]}"\n'
    else:
        sts += "endpoints = [" + ", ".join(f'"{e}"' for e in endpoints) + "]\n"
    if variant == "legacy":
        sts += "adaptive_rate = false\n"
    if variant == "tuned-failover":
        # Skip a dead endpoint after one failure; race a slow one after 1 s.
        sts += 'unhealthy_after = 1\nhedge_after = "1s"\n'
    refresh = ""
    if variant in ("tuned", "tuned-failover"):
        refresh = f'startup_spread = "{spread_s:.3f}s"\n'
    out = (f"[sts]\n{sts}\n[source]\nkind = \"static_env\"\n\n[refresh]\n{refresh}\n"
           f"[ecs]\nlisten = \"127.0.0.1:{ecs}\"\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n")
    for j in range(roles):
        out += (f'\n[[role]]\nname = "r{j}"\narn = "arn:aws:iam::123456789012:role/b{i}-r{j}"\n'
                f'tokens = ["{TOKEN}"]\n')
    return out


def readyz(admin_port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=5) as r:
            return r.status == 200
    except Exception:
        return False


def client_get(port, role):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/credentials/{role}",
                                 headers={"Authorization": TOKEN})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        body = e.read().decode(errors="replace")[:200]
        print(f"client error {e.code} on port {port} role {role}: {body}", file=sys.stderr)
        return e.code
    except Exception as e:
        print(f"client error on port {port} role {role}: {e!r}", file=sys.stderr)
        return 0


def run_variant(args, variant, workdir):
    n, r, budget = args.brokers, args.roles, args.budget
    ideal = n * r / budget
    fakes = []
    if args.fail_primary:
        fakes.append(start_fake(workdir, f"{variant}-primary", budget, args.latency_ms,
                                mode=args.fail_primary))
    fakes.append(start_fake(workdir, f"{variant}-sts", budget, args.latency_ms))
    endpoints = [url for _, url in fakes]
    counting = endpoints[-1]
    ports = free_ports(2 * n)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": workdir,
        "RUST_LOG": "warn",
        "AWS_ACCESS_KEY_ID": "AKIAFLEETSIMULATOR00",
        "AWS_SECRET_ACCESS_KEY": "fleet-simulator-secret",
        "AWS_REGION": "us-east-1",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    brokers = []
    for i in range(n):
        d = os.path.join(workdir, f"{variant}-b{i}")
        os.makedirs(d, exist_ok=True)
        cfg = os.path.join(d, "config.toml")
        with open(cfg, "w") as f:
            f.write(broker_config(i, ports[2 * i], ports[2 * i + 1], r, endpoints, variant, ideal))
        brokers.append((cfg, ports[2 * i], ports[2 * i + 1], d))
    # Every broker waits on one lock (flock -s) that is released at t0, so the fleet starts
    # at one instant however long spawning N processes takes here.
    import fcntl

    gate_path = os.path.join(workdir, f"{variant}.gate")
    gate = open(gate_path, "w")
    fcntl.flock(gate, fcntl.LOCK_EX)
    procs = []
    for cfg, _, _, d in brokers:
        log = open(os.path.join(d, "broker.log"), "w")
        # The shell waits for the gate, then becomes the broker (exec): the PID we signal
        # at the end is the broker's own.
        procs.append(subprocess.Popen(
            ["sh", "-c", 'flock -s "$1" true && exec "$2" serve -c "$3"', "gate", gate_path,
             args.binary, cfg],
            env=env, stdout=subprocess.DEVNULL, stderr=log))
    time.sleep(min(5.0, 0.02 * n))  # let every flock reach the lock
    t0 = time.time()
    fcntl.flock(gate, fcntl.LOCK_UN)
    gate.close()
    arn_of = {f"arn:aws:iam::123456789012:role/b{i}-r{j}": i for i in range(n) for j in range(r)}
    ready_at = [None] * n
    errors = {"during": 0, "final": 0, "sampled": 0, "seen": []}
    stop = threading.Event()

    def sampler():
        # Clients of brokers already holding credentials must never see an error.
        while not stop.is_set():
            ready = [i for i in range(n) if ready_at[i] is not None]
            for i in random.sample(ready, min(10, len(ready))):
                # The fake STS answered; the broker says so too (an answer that arrived after
                # the broker gave up on the attempt is not credentials held).
                if not readyz(brokers[i][2]):
                    continue
                errors["sampled"] += 1
                role = f"r{random.randrange(r)}"
                status = client_get(brokers[i][1], role)
                if status != 200:
                    errors["during"] += 1
                    errors["seen"].append([i, role, status, round(time.time() - t0, 2)])
            stop.wait(1.0)

    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    deadline = t0 + args.deadline
    stats = None
    while time.time() < deadline:
        stats = get_json(counting + "/stats")
        firsts = stats.get("first_ok_by_arn", {})
        per_broker = [[] for _ in range(n)]
        for arn, t in firsts.items():
            if arn in arn_of:
                per_broker[arn_of[arn]].append(t)
        for i in range(n):
            if ready_at[i] is None and len(per_broker[i]) == r:
                ready_at[i] = max(per_broker[i])
        if all(t is not None for t in ready_at):
            break
        time.sleep(0.5)
    stop.set()
    th.join()
    # Every role of every broker, once, through the ECS endpoint.
    not_ready = 0
    for i, (_, ecs, admin, _) in enumerate(brokers):
        if ready_at[i] is None:
            continue
        if not readyz(admin):
            not_ready += 1
            continue
        for j in range(r):
            status = client_get(ecs, f"r{j}")
            if status != 200:
                errors["final"] += 1
                errors["seen"].append([i, f"r{j}", status, round(time.time() - t0, 2)])
    stats = get_json(counting + "/stats")
    primary_calls = get_json(endpoints[0] + "/stats")["total"] if args.fail_primary else 0
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
    for proc, _ in fakes:
        proc.terminate()
        proc.wait()
    done = [t for t in ready_at if t is not None]
    ready_s = (max(done) - t0) if len(done) == n else None
    calls = stats["total"] + primary_calls
    obtained = stats["ok"]
    return {
        "variant": variant,
        "brokers": n,
        "roles": r,
        "budget": budget,
        "ideal_s": round(ideal, 1),
        "ready_s": round(ready_s, 1) if ready_s is not None else None,
        "ready_ratio": round(ready_s / ideal, 2) if ready_s is not None else None,
        "brokers_ready": len(done),
        "calls": calls,
        "throttled": stats["throttled"],
        "throttled_pct": round(100.0 * stats["throttled"] / max(calls, 1), 1),
        "failed_primary_calls": primary_calls,
        "obtained": obtained,
        "amplification": round(calls / max(obtained, 1), 2),
        "client_errors": errors["during"] + errors["final"],
        "ready_by_sts_but_not_readyz": not_ready,
        # [broker, role, HTTP status (0: no answer within 5 s), seconds after t0]
        "client_error_detail": errors["seen"][:20],
        "client_requests": errors["sampled"] + len(done) * r,
        "max_ok_per_second": stats["max_ok_per_second"],
        "first_call_s": round(stats["first"] - t0, 2) if stats["first"] else None,
        # Once the fleet talks to STS: N processes starting on one small shared machine take
        # seconds to reach their first call, a real node's broker milliseconds.
        "sts_ready_s": round(max(done) - stats["first"], 1) if ready_s is not None else None,
        "sts_ready_ratio": round((max(done) - stats["first"]) / ideal, 2)
        if ready_s is not None else None,
    }


def table(results):
    head = ("| variant | N x R | budget/s | ideal s | first STS call s | ready s | ready / ideal "
            "| from first call / ideal | calls | throttled | amplification | client errors |")
    lines = [head, "|" + "---|" * 12]
    for x in results:
        ready = "not all (%d/%d)" % (x["brokers_ready"], x["brokers"]) if x["ready_s"] is None \
            else x["ready_s"]
        ratio = "-" if x["ready_ratio"] is None else f'{x["ready_ratio"]}x'
        lines.append(
            f'| {x["variant"]} | {x["brokers"]} x {x["roles"]} | {x["budget"]:g} | {x["ideal_s"]} '
            f'| {x["first_call_s"]} | {ready} | {ratio} '
            f'| {"-" if x["sts_ready_ratio"] is None else str(x["sts_ready_ratio"]) + "x"} '
            f'| {x["calls"]} | {x["throttled"]} ({x["throttled_pct"]} %) '
            f'| {x["amplification"]} | {x["client_errors"]} of {x["client_requests"]} |')
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--brokers", type=int, default=100)
    ap.add_argument("--roles", type=int, default=10)
    ap.add_argument("--budget", type=float, default=50.0)
    ap.add_argument("--latency-ms", default="20-50")
    ap.add_argument("--variants", default="legacy,defaults,tuned")
    ap.add_argument("--fail-primary", choices=["hang", "error500"], default=None)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "sts-broker"))
    ap.add_argument("--deadline", type=float, default=300.0, help="give up on a variant after s")
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    args = ap.parse_args()
    if not os.access(args.binary, os.X_OK):
        sys.exit(f"{args.binary} not found: cargo build --release (or pass --binary)")
    workdir = tempfile.mkdtemp(prefix="sts-broker-fleet-")
    results = []
    try:
        for v in args.variants.split(","):
            res = run_variant(args, v.strip(), workdir)
            print(json.dumps(res), file=sys.stderr, flush=True)
            results.append(res)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(table(results))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
