#!/usr/bin/env python3
"""Writes a broker config with N roles for the benchmarks, and one token file per role.

    python3 bench/make_config.py --dir DIR --sts-port PORT --roles N [--cold K]
        [--imds] [--rate R] [--out broker.toml]

Roles `app0..app{N-1}` are prefetched; `cold0..cold{K-1}` have `prefetch = false` (the cold
path). Each role has its own token in DIR/tokens/NAME (mode 600, no trailing newline). With
--imds, an IMDS listener exposes app0. Every listener binds port 0 (the broker logs the port).
"""

import argparse
import os
import secrets


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--sts-port", required=True)
    ap.add_argument("--roles", type=int, required=True)
    ap.add_argument("--cold", type=int, default=0)
    ap.add_argument("--imds", action="store_true")
    ap.add_argument("--rate", type=float, default=10)
    ap.add_argument("--out", default="broker.toml")
    a = ap.parse_args()
    tokdir = os.path.join(a.dir, "tokens")
    os.makedirs(tokdir, exist_ok=True)
    lines = [
        "[sts]",
        'region = "us-east-1"',
        f'endpoint = "http://127.0.0.1:{a.sts_port}"',
        'timeout = "5s"',
        f"max_calls_per_second = {a.rate}",
        "[source]",
        'kind = "static_env"',
        "[ecs]",
        'listen = "127.0.0.1:0"',
        "[admin]",
        'listen = "127.0.0.1:0"',
    ]
    if a.imds:
        lines += ["[imds]", 'listen = "127.0.0.1:0"', 'role = "app0"']
    names = [(f"app{i}", True) for i in range(a.roles)]
    names += [(f"cold{i}", False) for i in range(a.cold)]
    for name, prefetch in names:
        path = os.path.join(tokdir, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
        lines += [
            "[[role]]",
            f'name = "{name}"',
            f'arn = "arn:aws:iam::123456789012:role/bench-{name}"',
            'session_name = "bench-{hostname}"',
            'duration = "1h"',
            f'token_files = ["{path}"]',
        ]
        if not prefetch:
            lines.append("prefetch = false")
    with open(os.path.join(a.dir, a.out), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
