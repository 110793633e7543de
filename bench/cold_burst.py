#!/usr/bin/env python3
"""The cold path: N concurrent first requests for a role with nothing cached.

    python3 bench/cold_burst.py --addr 127.0.0.1:PORT --role NAME --token-file FILE \
        --sts http://127.0.0.1:STSPORT --arn ARN [--n 1000]

Opens N connections first, then writes N requests back to back and waits for every answer.
Prints JSON: statuses, the time from the first write to the last answer, and the STS calls
the fake STS counted for ARN during the burst (must be exactly 1) with that call's delay; with
--admin, the broker's own timing of that STS call (from /metrics). Then repeats the burst on
the now warm role (new connections): the cost of N concurrent requests without STS.
"""

import argparse
import asyncio
import json
import statistics
import time
import urllib.parse
import urllib.request


def sts_stats(sts, arn):
    url = f"{sts}/stats?" + urllib.parse.urlencode({"arn": arn})
    with urllib.request.urlopen(url) as r:
        return json.load(r)


async def burst(host, port, path, token, n):
    conns = await asyncio.gather(*(asyncio.open_connection(host, port) for _ in range(n)))
    req = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: {token}\r\n"
           "Connection: close\r\n\r\n").encode()

    async def answer(reader, writer):
        data = await reader.read()
        done = time.perf_counter()
        writer.close()
        status = int(data.split(b" ", 2)[1]) if data else 0
        return status, done

    start = time.perf_counter()
    for _, w in conns:
        w.write(req)
    written = time.perf_counter()
    results = await asyncio.gather(*(answer(r, w) for r, w in conns))
    statuses = {}
    for s, _ in results:
        statuses[str(s)] = statuses.get(str(s), 0) + 1
    lat = sorted((t - start) * 1000 for _, t in results)
    return {
        "n": n,
        "statuses": statuses,
        "write_all_ms": round((written - start) * 1000, 2),
        "first_answer_ms": round(lat[0], 2),
        "median_answer_ms": round(statistics.median(lat), 2),
        "total_ms": round(lat[-1], 2),
    }


def sts_seconds(admin):
    """The broker's own account of its STS calls: (sum of durations, count)."""
    total = count = 0.0
    with urllib.request.urlopen(f"http://{admin}/metrics") as r:
        for line in r.read().decode().splitlines():
            if line.startswith("sts_broker_sts_call_duration_seconds_sum"):
                total += float(line.rsplit(" ", 1)[1])
            elif line.startswith("sts_broker_sts_call_duration_seconds_count"):
                count += float(line.rsplit(" ", 1)[1])
    return total, count


def main():

    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--role", required=True)
    ap.add_argument("--token-file", required=True)
    ap.add_argument("--sts", required=True)
    ap.add_argument("--arn", required=True)
    ap.add_argument("--admin", help="admin address: read the broker's STS call duration")
    ap.add_argument("--n", type=int, default=1000)
    a = ap.parse_args()
    host, port = a.addr.rsplit(":", 1)
    with open(a.token_file) as f:
        token = f.read().rstrip()
    before = sts_stats(a.sts, a.arn)["count"]
    m0 = sts_seconds(a.admin) if a.admin else None
    path = f"/v1/credentials/{a.role}"
    out = asyncio.run(burst(host, int(port), path, token, a.n))
    after = sts_stats(a.sts, a.arn)
    if m0:
        m1 = sts_seconds(a.admin)
        if m1[1] - m0[1] == 1:
            out["broker_sts_call_ms"] = round((m1[0] - m0[0]) * 1000, 2)
    # The same burst again, now cached: what N concurrent connections cost without STS.
    warm = asyncio.run(burst(host, int(port), path, token, a.n))
    out["warm_total_ms"] = warm["total_ms"]
    out["warm_statuses"] = warm["statuses"]
    out["role"] = a.role
    out["sts_calls"] = after["count"] - before
    out["sts_delay_ms"] = after["delays_ms"][before:]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
