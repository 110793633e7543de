#!/usr/bin/env python3
"""A fake STS for the benchmarks: answers AssumeRole with realistic latency and counts calls.

    python3 bench/fake_sts.py --port-file FILE [--port 0] [--host 127.0.0.1] [--latency-ms 20-50]
                              [--budget CALLS_PER_S] [--mode-file FILE]

- POST / (form-encoded, as the AWS SDK sends it): sleeps a uniform random delay in the
  latency range (concurrent calls overlap: one thread per connection), then answers with an
  AssumeRoleResponse whose credentials are unique per call and expire DurationSeconds from now.
- GET /stats[?arn=ARN]: JSON with the number of calls (total and per RoleArn), the per-call
  delays for ARN, the first/last call times and the most calls seen in any one-second and five-second window.
- POST /reset: forget every count.
- --budget N: an account-wide quota like STS's: a token bucket of N calls/s (burst N); a call
  beyond it is answered HTTP 400 `Throttling` ("Rate exceeded") at once, as STS does.
- --mode-file FILE: read before every call: `ok` (or missing), `error500` (HTTP 500
  InternalFailure), `hang` (read the request, never answer): a failing region on demand.
- /stats also reports `ok`, `throttled` and `failed` counts, `max_ok_per_second`, and
  `first_ok_by_arn` (when each RoleArn first got credentials: the fleet simulator's readiness).

Signatures are not checked. Loopback by default (--host for a network namespace's address).
"""

import argparse
import json
import os
import random
import threading
import time
import urllib.parse
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
STATE = {"seq": 0}


def reset():
    with LOCK:
        STATE.update(total=0, by_arn={}, delays={}, times=[], ok=0, throttled=0, failed=0,
                     ok_times=[], first_ok={})
        BUCKET.update(tokens=BUCKET["rate"], at=time.monotonic())


BUCKET = {"rate": 0.0, "tokens": 0.0, "at": 0.0}


def take_budget():
    """True when the account-wide budget has a call left (always, without --budget)."""
    rate = BUCKET["rate"]
    if rate <= 0:
        return True
    now = time.monotonic()
    BUCKET["tokens"] = min(rate, BUCKET["tokens"] + (now - BUCKET["at"]) * rate)
    BUCKET["at"] = now
    if BUCKET["tokens"] >= 1.0:
        BUCKET["tokens"] -= 1.0
        return True
    return False


def error_xml(kind, code, message):
    return (
        '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
        f"<Error><Type>{kind}</Type><Code>{code}</Code><Message>{message}</Message></Error>"
        "<RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>"
    )


reset()

XML = (
    '<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
    "<AssumeRoleResult><Credentials>"
    "<AccessKeyId>{akid}</AccessKeyId>"
    "<SecretAccessKey>{secret}</SecretAccessKey>"
    "<SessionToken>{token}</SessionToken>"
    "<Expiration>{expiration}</Expiration>"
    "</Credentials><AssumedRoleUser>"
    "<AssumedRoleId>AROAFAKEBENCH00000001:{session}</AssumedRoleId>"
    "<Arn>arn:aws:sts::123456789012:assumed-role/{role}/{session}</Arn>"
    "</AssumedRoleUser></AssumeRoleResult>"
    "<ResponseMetadata><RequestId>{seq}</RequestId></ResponseMetadata>"
    "</AssumeRoleResponse>"
)


def max_per_second(times, window=1.0):
    """Most calls that started within any `window`-second window."""
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    latency = (0.020, 0.050)
    mode_file = None

    def mode(self):
        if not self.mode_file:
            return "ok"
        try:
            with open(self.mode_file) as f:
                return f.read().strip() or "ok"
        except OSError:
            return "ok"

    def log_message(self, *args):
        pass

    def _send(self, status, body, ctype):
        body = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/stats":
            return self._send(404, "not found", "text/plain")
        arn = urllib.parse.parse_qs(url.query).get("arn", [None])[0]
        with LOCK:
            times = list(STATE["times"])
            out = {
                "total": STATE["total"],
                "by_arn": dict(STATE["by_arn"]),
                "first": min(times) if times else None,
                "last": max(times) if times else None,
                "max_per_second": max_per_second(times),
                "max_per_5s": max_per_second(times, 5.0),
                "ok": STATE["ok"],
                "throttled": STATE["throttled"],
                "failed": STATE["failed"],
                "max_ok_per_second": max_per_second(STATE["ok_times"]),
                "first_ok_by_arn": dict(STATE["first_ok"]),
            }
            if arn is not None:
                out["arn"] = arn
                out["count"] = STATE["by_arn"].get(arn, 0)
                out["delays_ms"] = list(STATE["delays"].get(arn, []))
        self._send(200, json.dumps(out), "application/json")

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode()
        if self.path == "/reset":
            reset()
            return self._send(200, "{}", "application/json")
        form = urllib.parse.parse_qs(raw)
        if form.get("Action", [""])[0] != "AssumeRole":
            return self._send(400, "only AssumeRole", "text/plain")
        arn = form.get("RoleArn", [""])[0]
        session = form.get("RoleSessionName", ["bench"])[0]
        duration = int(form.get("DurationSeconds", ["3600"])[0])
        delay = random.uniform(*self.latency)
        mode = self.mode()
        with LOCK:
            STATE["seq"] += 1
            seq = STATE["seq"]
            STATE["total"] += 1
            STATE["by_arn"][arn] = STATE["by_arn"].get(arn, 0) + 1
            STATE["delays"].setdefault(arn, []).append(round(delay * 1000, 2))
            STATE["times"].append(time.time())
            allowed = mode != "ok" or take_budget()
            if mode != "ok":
                STATE["failed"] += 1
            elif not allowed:
                STATE["throttled"] += 1
            else:
                STATE["ok"] += 1
                STATE["ok_times"].append(time.time())
        if mode == "hang":
            time.sleep(3600)
            return
        if mode == "error500":
            return self._send(
                500, error_xml("Receiver", "InternalFailure", "injected failure"), "text/xml"
            )
        if not allowed:
            return self._send(400, error_xml("Sender", "Throttling", "Rate exceeded"), "text/xml")
        time.sleep(delay)
        with LOCK:
            STATE["first_ok"].setdefault(arn, time.time())
        expiration = datetime.now(timezone.utc) + timedelta(seconds=duration)
        body = XML.format(
            akid=f"ASIA{seq:016d}",
            secret=f"{seq:08d}" + "S" * 32,
            # Real session tokens are several hundred bytes of base64.
            token=f"FQoGZXIvYXdzE{seq:08d}" + "Q" * 700,
            expiration=expiration.strftime("%Y-%m-%dT%H:%M:%SZ"),
            role=arn.rsplit("/", 1)[-1],
            session=session,
            seq=seq,
        )
        self._send(200, body, "text/xml")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def handle_error(self, request, client_address):
        # wrk closes its connections mid-response when a run ends: not worth a traceback.
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--latency-ms", default="20-50", help="LO-HI, uniform")
    ap.add_argument("--budget", type=float, default=0.0, help="account-wide calls/s (0: none)")
    ap.add_argument("--mode-file", default=None, help="ok | error500 | hang, read per call")
    args = ap.parse_args()
    lo, hi = (float(x) / 1000 for x in args.latency_ms.split("-"))
    Handler.latency = (lo, hi)
    Handler.mode_file = args.mode_file
    BUCKET["rate"] = args.budget
    reset()
    server = Server((args.host, args.port), Handler)
    with open(args.port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(args.port_file + ".tmp", args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
