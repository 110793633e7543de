#!/usr/bin/env python3
"""Writes the linker's symbol ordering file (bench/symbol-order.sh runs it).

    python3 bench/symbol_order.py --sts-url URL --ca CA.pem --binary UNSTRIPPED --out FILE

Runs the unstripped release broker under callgrind with one role against URL (an HTTPS fake
STS whose CA is CA.pem, so the TLS handshake of a refresh is profiled too) and dumps the
profile twice: at ready + 3 s (start-up) and at exit (what a running broker does: idle, ECS
requests, `/metrics`, `/readyz`, `/v1/roles`, two refreshes, a SIGHUP reload, a watchdog
ping). The file lists the functions of the second part first, then the CPU-specific variants
the profile cannot see (valgrind picks other glibc IFUNCs and ring/sha2 code paths than the
CPU the broker runs on), then the start-up-only functions: the linker places them in that
order at the start of .text, so what a running broker touches sits in a few hundred KiB
instead of spread over the whole binary.
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import footprint  # noqa: E402  (the broker's config and start-up, shared with the footprint bench)

# glibc string functions and ring/sha2 code chosen at run time by CPU features.
VARIANTS = re.compile(
    r"^__(mem|str|stp|wmem|wcs|rawmem|bcmp)\w*_(evex|avx512|avx2|avx)\w*$"
    r"|^ring_core_|sha26sha256")


def functions(path):
    """Mangled names of every function a callgrind dump saw run, first seen first."""
    seen = {}
    with open(path) as f:
        for line in f:
            if line.startswith(("fn=", "cfn=")):
                seen.setdefault(re.sub(r"'[0-9]+$", "", line.split("=", 1)[1].strip()), None)
    return list(seen)


def scenario(sts_url, ca, binary, out_prefix):
    with tempfile.TemporaryDirectory() as tmp:
        wrapper = os.path.join(tmp, "broker.sh")
        with open(wrapper, "w") as f:
            f.write(f"#!/bin/sh\nexport SSL_CERT_FILE={ca}\nexec valgrind -q --tool=callgrind "
                    f"--callgrind-out-file={out_prefix} --dump-instr=no --compress-strings=no "
                    f"--compress-pos=no --demangle=no {binary} \"$@\"\n")
        os.chmod(wrapper, 0o755)
        cfg = footprint.config(tmp, sts_url)
        proc, _, addrs = footprint.start(wrapper, cfg, tmp)
        time.sleep(3)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)

        def ecs(n):
            for _ in range(n):
                req = urllib.request.Request(f"http://{addrs['ecs']}/v1/credentials/app",
                                             headers={"Authorization": footprint.TOKEN})
                urllib.request.urlopen(req, timeout=30).read()

        ecs(100)
        subprocess.run(["wrk", "-t2", "-c8", "-d3s", "-H", f"Authorization: {footprint.TOKEN}",
                        f"http://{addrs['ecs']}/v1/credentials/app"], check=True, capture_output=True)
        for _ in range(2):
            url = f"http://{addrs['admin']}/v1/roles/app/refresh"
            urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=60).read()
            time.sleep(2)
        for path in ("metrics", "readyz", "healthz", "v1/roles"):
            urllib.request.urlopen(f"http://{addrs['admin']}/{path}", timeout=30).read()
        ecs(20)
        os.kill(proc.pid, signal.SIGHUP)
        time.sleep(3)
        ecs(20)
        time.sleep(17)  # one watchdog ping (WATCHDOG_USEC: every 15 s)
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sts-url", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--binary", required=True, help="the release broker with its symbols")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "cg.out")
        scenario(args.sts_url, args.ca, args.binary, prefix)
        start, running = functions(prefix + ".1"), functions(prefix)
    nm = subprocess.run(["nm", args.binary], capture_output=True, text=True, check=True).stdout
    code = [line.split()[-1] for line in nm.splitlines() if line.split()[-2:-1] and line.split()[-2] in "tTwW"]
    known = set(code)
    order, seen = [], set()
    for name in [n for n in running if n in known] + [n for n in code if VARIANTS.search(n)] + \
            [n for n in start if n in known]:
        if name not in seen:
            seen.add(name)
            order.append(name)
    with open(args.out, "w") as f:
        f.write("\n".join(order) + "\n")
    print(f"symbol-order: {len(order)} functions ({len(running)} running, {len(start)} at start-up) "
          f"-> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
