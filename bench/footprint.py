#!/usr/bin/env python3
"""Sidecar footprint of one or more sts-broker binaries, side by side (bench/footprint.sh runs it).

    python3 bench/footprint.py --sts-url URL [--idle 60] [--starts 7] LABEL=BINARY ...

For each binary, with one role against the STS at URL:
- exec to ready: the time from fork+exec to the broker's READY=1 on a NOTIFY_SOCKET this script
  listens on (what systemd's Type=notify waits for), median and min of --starts runs;
- idle memory: VmRSS and the /proc/PID/smaps split (the binary's own pages, the shared
  libraries, heap and other anonymous memory), 5 s after ready; VmRSS again after the idle
  window, after the hot path (with --hot-rounds) and after one forced refresh (an STS call:
  `POST /v1/roles/app/refresh` on the admin listener);
- idle wake-ups: voluntary + involuntary context switches of every thread over --idle seconds
  after that (each is one wake-up of a thread), and the CPU time used.
All binaries run at the same time during the idle window, so they see the same machine.
With --hot-rounds N (N > 0), the hot path too: wrk (2 threads, 8 keep-alive connections,
--hot-seconds each) on the ECS endpoint of each broker in turn, A B A B for N rounds; the
median requests/s and the p50/p99 latency of each binary.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

TOKEN = "footprint-token-0123456789"


def config(tmp, sts_url):
    path = os.path.join(tmp, "config.toml")
    token = os.path.join(tmp, "token")
    with open(token, "w") as f:
        f.write(TOKEN)
    os.chmod(token, 0o600)
    with open(path, "w") as f:
        f.write(f"""
[sts]
region = "us-east-1"
endpoint = "{sts_url}"

[source]
kind = "static_env"

[ecs]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[[role]]
name = "app"
arn = "arn:aws:iam::123456789012:role/app"
token_files = ["{token}"]
""")
    return path


def start(binary, cfg, tmp):
    """Starts the broker; returns (process, seconds from exec to READY=1, {endpoint: address})."""
    sock_path = os.path.join(tmp, f"notify-{time.monotonic_ns()}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(30)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": tmp,
        "RUST_LOG": "info",
        "NOTIFY_SOCKET": sock_path,
        # As under the shipped unit (WatchdogSec=30s): a ping every 15 s.
        "WATCHDOG_USEC": "30000000",
        "AWS_ACCESS_KEY_ID": "AKIDFOOTPRINT",
        "AWS_SECRET_ACCESS_KEY": "footprint-secret",
        "AWS_REGION": "us-east-1",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    log = open(os.path.join(tmp, f"broker-{time.monotonic_ns()}.log"), "w+")
    t0 = time.monotonic()
    proc = subprocess.Popen([binary, "serve", "-c", cfg], env=env, stdout=subprocess.DEVNULL, stderr=log)
    ready = None
    try:
        while ready is None:
            msg = sock.recv(4096).decode()
            if "READY=1" in msg.split("\n"):
                ready = time.monotonic() - t0
    except socket.timeout:
        proc.kill()
        log.seek(0)
        sys.exit(f"{binary}: no READY=1 within 30 s:\n{log.read()}")
    finally:
        sock.close()
        os.unlink(sock_path)
    addrs = {}
    log.seek(0)
    for line in log.read().splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if ev.get("message") == "listening":
            addrs[ev["endpoint"]] = ev["addr"]
    return proc, ready, addrs


def smaps(pid, binary):
    """RSS in KiB: total, the binary's file, shared libraries, anonymous (heap, stacks, ...)."""
    out = {"binary_kib": 0, "libs_kib": 0, "anon_kib": 0, "binary_dirty_kib": 0}
    real = os.path.realpath(binary)
    kind = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            first = line.split(None, 1)[0]
            if not first.endswith(":"):  # a mapping's header: "start-end perms offset dev inode [path]"
                parts = line.split()
                path = parts[5] if len(parts) > 5 else ""
                if path.startswith("/") and os.path.realpath(path) == real:
                    kind = "binary"
                elif path.startswith("/"):
                    kind = "libs"
                else:
                    kind = "anon"
            elif first == "Rss:":
                out[kind + "_kib"] += int(line.split()[1])
            elif first == "Private_Dirty:" and kind == "binary":
                out["binary_dirty_kib"] += int(line.split()[1])
    return out


def status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def wakeups(pid):
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url, seconds):
    """requests/s, p50 and p99 latency (ms) of a wrk run against url."""
    out = subprocess.run(
        ["wrk", "-t2", "-c8", f"-d{seconds}s", "--latency", "-H", f"Authorization: {TOKEN}", url],
        capture_output=True, text=True, check=True).stdout
    rps = float(next(l for l in out.splitlines() if l.startswith("Requests/sec:")).split()[1])

    def pct(p):
        line = next(l for l in out.splitlines() if l.strip().startswith(p + "%"))
        v = line.split()[1]
        for unit, f in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
            if v.endswith(unit):
                return float(v[: -len(unit)]) * f
        raise ValueError(v)

    return rps, pct("50"), pct("99")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sts-url", required=True)
    ap.add_argument("--idle", type=float, default=60)
    ap.add_argument("--starts", type=int, default=7)
    ap.add_argument("--json")
    ap.add_argument("--hot-rounds", type=int, default=0)
    ap.add_argument("--hot-seconds", type=int, default=5)
    ap.add_argument("binaries", nargs="+", help="LABEL=PATH")
    args = ap.parse_args()
    bins = [b.split("=", 1) for b in args.binaries]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(tmp, args.sts_url)
        # Exec to ready: alternate the binaries so drift on the machine hits them alike.
        times = {label: [] for label, _ in bins}
        for _ in range(args.starts):
            for label, path in bins:
                proc, ready, _ = start(path, cfg, tmp)
                times[label].append(ready)
                proc.terminate()
                proc.wait(10)
        # Idle: all at once.
        running = []
        for label, path in bins:
            proc, _, addrs = start(path, cfg, tmp)
            running.append((label, path, proc, addrs))
        time.sleep(5)
        for label, path, proc, addrs in running:
            with urllib.request.urlopen(f"http://{addrs['admin']}/readyz", timeout=5) as r:
                assert r.status == 200
            results[label] = {
                "binary": path,
                "file_bytes": os.path.getsize(path),
                "ready_ms_median": round(statistics.median(times[label]) * 1000, 1),
                "ready_ms_min": round(min(times[label]) * 1000, 1),
                "rss_kib": status(proc.pid, "VmRSS"),
                "threads": status(proc.pid, "Threads"),
                **smaps(proc.pid, path),
                "_w0": wakeups(proc.pid),
                "_c0": cpu_seconds(proc.pid),
            }
        time.sleep(args.idle)
        for label, path, proc, _ in running:
            r = results[label]
            r["wakeups_per_s"] = round((wakeups(proc.pid) - r.pop("_w0")) / args.idle, 2)
            r["idle_cpu_ms_per_min"] = round((cpu_seconds(proc.pid) - r.pop("_c0")) * 1000 * 60 / args.idle, 1)
            r["rss_kib_after_idle"] = status(proc.pid, "VmRSS")
        if args.hot_rounds:
            runs = {label: [] for label, _ in bins}
            for _ in range(args.hot_rounds):
                for label, _, _, addrs in running:
                    runs[label].append(wrk(f"http://{addrs['ecs']}/v1/credentials/app", args.hot_seconds))
            for label, _ in bins:
                r = runs[label]
                results[label]["hot_rps_median"] = round(statistics.median(x[0] for x in r))
                results[label]["hot_p50_ms"] = round(statistics.median(x[1] for x in r), 3)
                results[label]["hot_p99_ms"] = round(statistics.median(x[2] for x in r), 3)
            for label, _, proc, _ in running:
                results[label]["rss_kib_after_hot"] = status(proc.pid, "VmRSS")
        # An STS call (what every refresh does, with its TLS handshake in production) maps the
        # SDK's code again: the RSS between refreshes, after one.
        for label, _, proc, addrs in running:
            url = f"http://{addrs['admin']}/v1/roles/app/refresh"
            urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=30).read()
        time.sleep(2)
        for label, _, proc, _ in running:
            results[label]["rss_kib_after_refresh"] = status(proc.pid, "VmRSS")
        for _, _, proc, _ in running:
            proc.terminate()
            proc.wait(10)
    hot = ["hot_rps_median", "hot_p50_ms", "hot_p99_ms"] if args.hot_rounds else []
    cols = hot + ["file_bytes", "ready_ms_median", "ready_ms_min", "rss_kib", "rss_kib_after_idle"]
    cols += ["rss_kib_after_hot"] if args.hot_rounds else []
    cols += ["rss_kib_after_refresh", "binary_kib",
            "binary_dirty_kib", "libs_kib", "anon_kib", "threads", "wakeups_per_s", "idle_cpu_ms_per_min"]
    print("| " + " | ".join(["binary"] + cols) + " |")
    print("|" + "---|" * (len(cols) + 1))
    for label, r in results.items():
        print("| " + " | ".join([label] + [str(r[c]) for c in cols]) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
