#!/usr/bin/env python3
"""Turns one bench/run.sh result directory into the table (stdout) and summary.md.

    python3 bench/report.py DIR

Exit status 1 when a correctness check failed (the cold path caused other than exactly one
STS call, or a wrk run saw errors or non-2xx answers); timing targets only print MISS.
"""

import glob
import json
import os
import re
import statistics
import sys

MIB = 1024 * 1024


def to_ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"unknown latency {text!r}")
    v, unit = float(m.group(1)), m.group(2)
    return v * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def parse_wrk(path):
    text = open(path).read()
    out = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))}
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", text, re.M)
        out[f"p{pct}"] = to_ms(m.group(1))
    out["requests"] = int(re.search(r"(\d+) requests in", text).group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    out["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", text)
    out["socket_errors"] = m.group(1).strip() if m else ""
    cpu = path[:-4] + ".cpu"
    if os.path.exists(cpu):
        c = json.load(open(cpu))
        out["cpu_s"] = c["cpu_s"]
        out["ctx_switches"] = c.get("ctx_switches")
        if "background_cpu_s" in c:
            out["background_pct"] = 100 * c["background_cpu_s"] / c["capacity_cpu_s"]
    return out


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def main():
    d = sys.argv[1]
    runs = {}
    for p in sorted(glob.glob(os.path.join(d, "wrk", "*.txt"))):
        label, rnd = re.fullmatch(r"(.+)_r(\d+)\.txt", os.path.basename(p)).groups()
        runs.setdefault(label, {})[int(rnd)] = parse_wrk(p)
    machine = json.load(open(os.path.join(d, "machine.json")))
    failures = []
    for label, by_round in runs.items():
        for r, w in by_round.items():
            if w["non2xx"] or w["socket_errors"]:
                failures.append(f"{label} round {r}: non-2xx {w['non2xx']}, "
                                f"socket errors {w['socket_errors'] or 'none'}")

    md = []

    def both(line=""):
        md.append(line)

    both(f"Run `{os.path.basename(d.rstrip('/'))}` — {machine['cpu']}, {machine['nproc']} cores, "
         f"kernel {machine['kernel']}; sts-broker {machine['commit']}; {machine['nginx']}; "
         f"{machine['wrk']}; {machine['rounds']} rounds of A B A B, medians; wrk 2 threads, "
         f"keep-alive, {machine['duration']} s per run at 64 connections, "
         f"{machine['duration8']} s at 8; nginx {machine.get('nginx_workers', 2)} workers"
         + (f"; broker environment `{machine['broker_env']}`" if machine.get("broker_env") else "") + ".")
    both()
    both("| scenario | sts-broker req/s | nginx req/s | ratio median (min) | target | "
         "broker p50 / p99 | nginx p50 / p99 | p99 target | CPU µs/req broker / nginx | "
         "context switches per 1000 req broker / nginx | background CPU (max) |")
    both("|---|---|---|---|---|---|---|---|---|---|---|")
    verdicts = []

    def pair(name, a, b, conns):
        A, B = runs.get(a), runs.get(b)
        if not A or not B:
            return
        rounds = sorted(set(A) & set(B))
        ratios = [A[r]["rps"] / B[r]["rps"] for r in rounds]
        ra, rb = med([A[r]["rps"] for r in rounds]), med([B[r]["rps"] for r in rounds])
        p50a, p99a = med([A[r]["p50"] for r in rounds]), med([A[r]["p99"] for r in rounds])
        p50b, p99b = med([B[r]["p50"] for r in rounds]), med([B[r]["p99"] for r in rounds])
        rm, rmin = med(ratios), min(ratios)

        def cpu(X):
            xs = [X[r]["cpu_s"] * 1e6 / X[r]["requests"] for r in rounds if "cpu_s" in X[r]]
            return f"{med(xs):.1f}" if xs else "—"

        if conns == 64:
            ok = rm >= 1.0 and rmin >= 0.8
            rt = "≥ 1.0, never < 0.8: " + ("met" if ok else ("MISS" if rmin < 0.8 else "MISS (< 1.0)"))
            pok = p99a <= p99b
            pt = "≤ nginx: " + ("met" if pok else "MISS")
            verdicts.append((f"{name} ratio", ok))
            verdicts.append((f"{name} p99 ≤ nginx", pok))
        elif conns == 8:
            rt = "—"
            pok = p99a < 1.0
            pt = "< 1 ms: " + ("met" if pok else "MISS")
            verdicts.append((f"{name} p99 < 1 ms", pok))
        else:  # light load: a diagnostic, not one of the targets
            rt = "—"
            pt = f"(diagnostic) < 1 ms: {'yes' if p99a < 1.0 else 'no'}"
        def cs(X):
            xs = [X[r]["ctx_switches"] * 1000 / X[r]["requests"] for r in rounds
                  if X[r].get("ctx_switches") is not None]
            return f"{med(xs):.1f}" if xs else "—"

        bg = [X[r]["background_pct"] for X in (A, B) for r in rounds if "background_pct" in X[r]]
        bgt = f"{max(bg):.0f} %" if bg else "—"
        both(f"| {name} | {ra:,.0f} | {rb:,.0f} | {rm:.2f} ({rmin:.2f}) | {rt} | "
             f"{p50a:.3f} / {p99a:.3f} ms | {p50b:.3f} / {p99b:.3f} ms | {pt} | "
             f"{cpu(A)} / {cpu(B)} | {cs(A)} / {cs(B)} | {bgt} |")

    pair("ECS cached hit, 64 conns", "ecs64_broker", "ecs64_nginx", 64)
    pair("IMDS cached hit, 64 conns", "imds64_broker", "imds64_nginx", 64)
    pair("ECS cached hit, 8 conns", "ecs8_broker", "ecs8_nginx", 8)
    pair("IMDS cached hit, 8 conns", "imds8_broker", "imds8_nginx", 8)
    think = machine.get("think_ms", 1)
    pair(f"ECS, 8 conns, {think} ms pause between requests", "ecs8think_broker", "ecs8think_nginx", 0)
    pair(f"IMDS, 8 conns, {think} ms pause between requests", "imds8think_broker", "imds8think_nginx", 0)
    both()

    naive = runs.get("naive64")
    broker = runs.get("ecs64_broker")
    if naive and broker:
        rounds = sorted(set(naive) & set(broker))
        nr = med([naive[r]["rps"] for r in rounds])
        br = med([broker[r]["rps"] for r in rounds])
        both(f"Naive broker (AssumeRole on every request, fake STS at {machine['sts_latency_ms']} ms): "
             f"{nr:,.0f} req/s, p50 {med([naive[r]['p50'] for r in rounds]):.1f} ms, "
             f"p99 {med([naive[r]['p99'] for r in rounds]):.1f} ms. "
             f"**sts-broker / naive = {br / nr:,.0f}×** (same wrk settings, 64 connections).")
        both()

    colds = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(d, "cold_*.json")))]
    if colds:
        both("Cold path (`prefetch = false` role, N concurrent first requests):")
        both()
        both("| role | requests | statuses | STS calls (must be 1) | fake STS delay | "
             "STS call seen by the broker | last answer | median answer | "
             "same burst once warm (last answer) |")
        both("|---|---|---|---|---|---|---|---|---|")
        for c in colds:
            ok = c["sts_calls"] == 1 and c["statuses"] == {"200": c["n"]}
            if not ok:
                failures.append(f"cold path {c['role']}: {c['sts_calls']} STS calls, statuses {c['statuses']}")
            delay = c["sts_delay_ms"][0] if c["sts_delay_ms"] else float("nan")
            seen = c.get("broker_sts_call_ms")
            both(f"| {c['role']} | {c['n']} | {c['statuses']} | {c['sts_calls']} "
                 f"{'ok' if ok else 'FAIL'} | {delay:.1f} ms | "
                 f"{f'{seen:.1f} ms' if seen is not None else '—'} | {c['total_ms']:.1f} ms | "
                 f"{c['median_answer_ms']:.1f} ms | {c.get('warm_total_ms', float('nan')):.1f} ms |")
        verdicts.append(("cold path: exactly 1 STS call", all(
            c["sts_calls"] == 1 and c["statuses"] == {"200": c["n"]} for c in colds)))
        both()

    mem = json.load(open(os.path.join(d, "memory.json")))
    big = json.load(open(os.path.join(d, "big.json"))) if os.path.exists(os.path.join(d, "big.json")) else None
    both("| memory (peak RSS = VmHWM) | measured | target |")
    both("|---|---|---|")

    def mrow(name, kib, limit):
        mib = kib / 1024
        ok = mib < limit
        verdicts.append((f"{name} < {limit} MiB", ok))
        both(f"| {name} | {mib:.1f} MiB | < {limit} MiB: {'met' if ok else 'MISS'} |")

    mrow(f"idle, {mem['roles']} roles", mem["idle_hwm_kib"], 20)
    mrow(f"after the wrk load ({mem['roles']} roles)", mem["loaded_hwm_kib"], 40)
    if big:
        mrow(f"{big['roles']:,} roles, all prefetched", big["hwm_kib"], 64)
    both()
    if big:
        both(f"10,000-role prefetch: `max_calls_per_second = {big['rate']:g}`; {big['sts_calls']:,} STS calls "
             f"in {big['span_s']:.1f} s = **{big['calls_per_s']:.1f} calls/s** on average; at most "
             f"{big['max_per_5s'] / min(5.0, big['span_s'] or 5.0):.1f} calls/s over any five-second window and "
             f"{big['max_per_second']} calls in any one-second window (arrival times at the fake STS, "
             f"so they include its thread scheduling jitter); ready after {big['ready_s']:.1f} s.")
        verdicts.append(("10k prefetch within the rate limit", big["max_per_5s"] / min(5.0, big["span_s"] or 5.0) <= big["rate"] * 1.02))
        both()

    both("Targets: " + ", ".join(f"{n}: {'met' if ok else 'MISS'}" for n, ok in verdicts) + ".")
    if failures:
        both()
        both("**Correctness failures:** " + "; ".join(failures))

    text = "\n".join(md) + "\n"
    open(os.path.join(d, "summary.md"), "w").write(text)
    print(text)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
