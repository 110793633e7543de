#!/usr/bin/env python3
"""The cold path: N concurrent first requests for a role with nothing cached.

    python3 bench/cold_burst.py --addr 127.0.0.1:PORT --role NAME --token-file FILE \
        --sts http://127.0.0.1:STSPORT --arn ARN [--n 1000]

Opens N connections first, then writes N requests back to back and waits for every answer.
Prints JSON: statuses, the time from the first write to the last answer, and the STS calls
the fake STS counted for ARN during the burst (must be exactly 1) with that call's delay.
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


def main():

    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--role", required=True)
    ap.add_argument("--token-file", required=True)
    ap.add_argument("--sts", required=True)
    ap.add_argument("--arn", required=True)
    ap.add_argument("--n", type=int, default=1000)
    a = ap.parse_args()
    host, port = a.addr.rsplit(":", 1)
    with open(a.token_file) as f:
        token = f.read().rstrip()
    before = sts_stats(a.sts, a.arn)["count"]
    out = asyncio.run(burst(host, int(port), f"/v1/credentials/{a.role}", token, a.n))
    after = sts_stats(a.sts, a.arn)
    out["role"] = a.role
    out["sts_calls"] = after["count"] - before
    out["sts_delay_ms"] = after["delays_ms"][before:]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
