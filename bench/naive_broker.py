#!/usr/bin/env python3
"""The naive broker: what the ECS endpoint costs without a cache.

    python3 bench/naive_broker.py --port-file FILE --sts http://127.0.0.1:PORT \
        --role NAME --arn ARN --token-file FILE

`GET /v1/credentials/NAME` with the right `Authorization` calls AssumeRole on the STS for
every request (one keep-alive STS connection per serving thread) and renders the same JSON
shape as sts-broker. It does not sign its STS calls (the fake STS does not check), so it is
cheaper than a real one; it is the lower bound of "no cache", not a straw man.
"""

import argparse
import http.client
import json
import os
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler

from fake_sts import Server  # the same quiet threading server (this directory)

FIELDS = ("AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration")
local = threading.local()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    cfg = None

    def log_message(self, *args):
        pass

    def reply(self, status, body):
        body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def assume(self):
        c = self.cfg
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection(c["host"], c["port"])
        form = urllib.parse.urlencode(
            {"Action": "AssumeRole", "Version": "2011-06-15", "RoleArn": c["arn"],
             "RoleSessionName": "naive", "DurationSeconds": "3600"})
        conn.request("POST", "/", form,
                     {"Content-Type": "application/x-www-form-urlencoded"})
        xml = conn.getresponse().read().decode()
        return {f: re.search(f"<{f}>([^<]*)</{f}>", xml).group(1) for f in FIELDS}

    def do_GET(self):
        c = self.cfg
        if self.path != "/v1/credentials/" + c["role"]:
            return self.reply(404, '{"Code":"NotFound","Message":"no such path"}')
        if self.headers.get("Authorization") != c["token"]:
            return self.reply(401, '{"Code":"Unauthorized","Message":"bad token"}')
        creds = self.assume()
        self.reply(200, json.dumps({
            "AccessKeyId": creds["AccessKeyId"],
            "SecretAccessKey": creds["SecretAccessKey"],
            "Token": creds["SessionToken"],
            "Expiration": creds["Expiration"],
            "RoleArn": c["arn"],
            "AccountId": c["arn"].split(":")[4],
        }, separators=(",", ":")))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--sts", required=True)
    ap.add_argument("--role", required=True)
    ap.add_argument("--arn", required=True)
    ap.add_argument("--token-file", required=True)
    a = ap.parse_args()
    sts = urllib.parse.urlsplit(a.sts)
    with open(a.token_file) as f:
        token = f.read().rstrip()
    Handler.cfg = {"host": sts.hostname, "port": sts.port, "role": a.role,
                   "arn": a.arn, "token": token}
    server = Server(("127.0.0.1", 0), Handler)
    with open(a.port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(a.port_file + ".tmp", a.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
