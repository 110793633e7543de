#!/usr/bin/env bash
# Regenerates scripts/symbol-order.txt, the order in which the release link lays out functions
# (scripts/build-release.sh; why: BENCHMARKS.md, "Sidecar footprint"):
#
#   bash bench/symbol-order.sh      # then: bash scripts/build-release.sh
#
# Re-run it after a dependency update or a refactor that renames many functions: the names are
# mangled with hashes, and names that no longer exist are skipped by the linker (the binary stays
# correct but more of it becomes resident). Needs valgrind, wrk and openssl (Debian: installed
# when missing). About 2 minutes plus a release build.
set -euo pipefail

cd "$(dirname "$0")/.."
need=()
command -v valgrind >/dev/null || need+=(valgrind)
command -v wrk >/dev/null || need+=(wrk)
command -v openssl >/dev/null || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq "${need[@]}" >/dev/null
fi

# The profile needs the symbols the shipped binary strips.
bin=$(KEEP_SYMBOLS=1 bash scripts/build-release.sh)
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
cp "$bin" "$tmp/sts-broker"

# An HTTPS fake STS: bench/fake_sts.py behind a TLS terminator with a throwaway CA, so the
# profile holds the TLS handshake a production refresh makes.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=order-ca \
  -keyout "$tmp/ca.key" -out "$tmp/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
  -keyout "$tmp/key.pem" -out "$tmp/leaf.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$tmp/ext"
openssl x509 -req -in "$tmp/leaf.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" -CAcreateserial \
  -days 1 -extfile "$tmp/ext" -out "$tmp/cert.pem" 2>/dev/null
python3 bench/fake_sts.py --port-file "$tmp/port" --latency-ms 5-10 >/dev/null 2>&1 &
pids+=($!)
python3 - "$tmp" <<'PY' &
import socket, ssl, sys, threading, time, os
tmp = sys.argv[1]
while not os.path.exists(f"{tmp}/port") or not open(f"{tmp}/port").read().strip():
    time.sleep(0.05)
upstream = int(open(f"{tmp}/port").read())
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(f"{tmp}/cert.pem", f"{tmp}/key.pem")
srv = socket.create_server(("127.0.0.1", 0))
open(f"{tmp}/tls-port.tmp", "w").write(str(srv.getsockname()[1]))
os.rename(f"{tmp}/tls-port.tmp", f"{tmp}/tls-port")

def pipe(a, b):
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass
    finally:
        try:
            b.shutdown(socket.SHUT_WR)
        except OSError:
            pass

def handle(c):
    try:
        s = ctx.wrap_socket(c, server_side=True)
    except (OSError, ssl.SSLError):
        return
    u = socket.create_connection(("127.0.0.1", upstream))
    threading.Thread(target=pipe, args=(u, s), daemon=True).start()
    pipe(s, u)

while True:
    c, _ = srv.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
PY
pids+=($!)
for _ in $(seq 100); do [ -s "$tmp/tls-port" ] && break; sleep 0.1; done
[ -s "$tmp/tls-port" ] || { echo "symbol-order: the TLS fake STS did not start" >&2; exit 1; }

python3 bench/symbol_order.py --sts-url "https://127.0.0.1:$(cat "$tmp/tls-port")" --ca "$tmp/ca.pem" \
  --binary "$tmp/sts-broker" --out scripts/symbol-order.txt
