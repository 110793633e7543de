#!/usr/bin/env python3
"""Kubernetes workload identity benchmarks: many distinct service-account tokens at once.

    python3 bench/k8s_burst.py --addr 127.0.0.1:PORT --role NAME --tokens FILE \
        --sts http://127.0.0.1:STSPORT [--n 1000] [--concurrency 0]

burst: opens one connection per token (N), writes every request back to back (the pod-start
burst: N pods of the tokens' service accounts asking at once) and waits for every answer.
Prints JSON: statuses, time from the first write to the last 200, and the STS calls the fake
STS counted during the burst. With --concurrency C > 0 the tokens are sent C at a time instead
(for creating many sessions: the memory measurement).
"""

import argparse
import asyncio
import json
import time
import urllib.request


def sts_total(sts):
    with urllib.request.urlopen(f"{sts}/stats") as r:
        return json.load(r)["total"]


async def one(host, port, path, token):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: {token}\r\n"
                  "Connection: close\r\n\r\n").encode())
    data = await reader.read()
    writer.close()
    return int(data.split(b" ", 2)[1]) if data else 0, time.perf_counter()


async def burst(host, port, path, tokens):
    conns = await asyncio.gather(*(asyncio.open_connection(host, port) for _ in tokens))
    start = time.perf_counter()
    for (_, w), t in zip(conns, tokens):
        w.write((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: {t}\r\n"
                 "Connection: close\r\n\r\n").encode())
    written = time.perf_counter()

    async def answer(r, w):
        data = await r.read()
        done = time.perf_counter()
        w.close()
        return (int(data.split(b" ", 2)[1]) if data else 0), done

    results = await asyncio.gather(*(answer(r, w) for r, w in conns))
    return start, written, results


async def paced(host, port, path, tokens, c):
    sem = asyncio.Semaphore(c)
    start = time.perf_counter()

    async def go(t):
        async with sem:
            return await one(host, port, path, t)

    results = await asyncio.gather(*(go(t) for t in tokens))
    return start, start, results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--role", required=True)
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--sts", required=True)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=0)
    a = ap.parse_args()
    host, port = a.addr.rsplit(":", 1)
    tokens = [l.strip() for l in open(a.tokens) if l.strip()][: a.n]
    path = f"/v1/credentials/{a.role}"
    before = sts_total(a.sts)
    if a.concurrency:
        start, written, results = asyncio.run(paced(host, int(port), path, tokens, a.concurrency))
    else:
        start, written, results = asyncio.run(burst(host, int(port), path, tokens))
    statuses = {}
    for s, _ in results:
        statuses[str(s)] = statuses.get(str(s), 0) + 1
    last = max(t for _, t in results)
    print(json.dumps({
        "n": len(tokens),
        "statuses": statuses,
        "write_all_ms": round((written - start) * 1000, 2),
        "first_request_to_last_answer_ms": round((last - start) * 1000, 2),
        "sts_calls": sts_total(a.sts) - before,
    }))


if __name__ == "__main__":
    main()
