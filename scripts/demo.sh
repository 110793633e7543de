#!/usr/bin/env bash
# The demo, one command on a fresh machine:
#
#   bash scripts/demo.sh
#
# 1. installs the Python venv (scripts/setup-test-deps.sh) and builds sts-broker;
# 2. starts moto as a local STS, on a free port;
# 3. writes a temporary config from examples/demo.toml and a random client token, checks the
#    config with `sts-broker check`, and starts `sts-broker serve`;
# 4. shows the admin API, the ECS endpoint, and the AWS CLI and boto3 (in an empty environment:
#    no keys, no profile, no IMDS) getting their credentials from the broker;
# 5. proves it: `aws sts get-caller-identity` must answer with the assumed-role ARN
#    arn:aws:sts::123456789012:assumed-role/demo-app/demo-<hostname>; any other answer fails.
#
# Secrets are never printed: the ECS response is shown with SecretAccessKey and Token masked.
# Everything it starts is stopped on exit, and the temporary directory removed (set
# KEEP_DEMO_TMP=1 to keep it, with the config and the logs).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD

step() { printf '\n==> %s\n' "$*"; }
fail() { printf '\ndemo: FAILED: %s\n' "$*" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sts-broker-demo.XXXXXX")
moto_pid=
broker_pid=

# Ends what we started (by pid), shows the logs if something went wrong, removes $tmp.
cleanup() {
  local status=$?
  set +e
  for pid in $broker_pid $moto_pid; do
    kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  done
  if [ "$status" -ne 0 ]; then
    for log in broker moto; do
      if [ -s "$tmp/$log.log" ]; then
        printf '\n--- %s log (last 40 lines of %s/%s.log) ---\n' "$log" "$tmp" "$log" >&2
        tail -n 40 "$tmp/$log.log" >&2
      fi
    done
  fi
  if [ -n "${KEEP_DEMO_TMP:-}" ]; then
    printf '\ndemo: kept %s\n' "$tmp" >&2
  else
    rm -rf "$tmp"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_http URL CODE SECONDS PID: polls URL until it answers CODE; fails after SECONDS, or at once
# when process PID (the server being waited for) has exited.
wait_http() {
  local url=$1 want=$2 deadline=$((SECONDS + $3)) pid=$4 code
  while :; do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" || true)
    [ "$code" = "$want" ] && return 0
    kill -0 "$pid" 2>/dev/null || { echo "process $pid exited (last answer: HTTP $code)" >&2; return 1; }
    [ "$SECONDS" -lt "$deadline" ] || { echo "timed out (last answer: HTTP $code)" >&2; return 1; }
    sleep 0.2
  done
}

step "Test dependencies: Python venv with moto, boto3 and the AWS CLI"
bash scripts/setup-test-deps.sh
VENV=${STS_BROKER_TEST_VENV:-$REPO/.venv}
PY=$VENV/bin/python

# A debug build, not --release: the release profile (lto = true, codegen-units = 1) takes over
# 3.5 minutes cold on a 2-core machine against about 1.5 for debug, and scripts/test.sh leaves the
# same debug build in target/, so after a test run the demo starts at once. A handful of requests
# does not need the optimiser.
step "Building sts-broker (cargo build --locked)"
cargo build --locked --bin sts-broker
target_dir=$(cargo metadata --format-version 1 --no-deps --locked |
  "$PY" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
BIN=$target_dir/debug/sts-broker
[ -x "$BIN" ] || fail "no binary at $BIN"

# Three distinct free ports: bound together, then released for moto and the broker to take.
read -r MOTO_PORT ECS_PORT ADMIN_PORT < <("$PY" -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks:
    s.close()')
STS_URL=http://127.0.0.1:$MOTO_PORT
ECS_URL=http://127.0.0.1:$ECS_PORT/v1/credentials/app
ADMIN_URL=http://127.0.0.1:$ADMIN_PORT

step "Starting moto (the demo's STS) on $STS_URL"
"$VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >"$tmp/moto.log" 2>&1 &
moto_pid=$!
wait_http "$STS_URL/moto-api/" 200 30 "$moto_pid" || fail "moto did not start"
echo "moto is up (pid $moto_pid)"

step "Writing the client token and the config into $tmp"
umask 077
# A token file must hold the token alone: a trailing newline breaks every AWS SDK.
"$PY" -c 'import secrets, sys; sys.stdout.write(secrets.token_urlsafe(32))' >"$tmp/app.token"
chmod 600 "$tmp/app.token"
sed -e "s|@MOTO_PORT@|$MOTO_PORT|g" \
  -e "s|@ECS_ADDR@|127.0.0.1:$ECS_PORT|g" \
  -e "s|@ADMIN_ADDR@|127.0.0.1:$ADMIN_PORT|g" \
  -e "s|@TOKEN_FILE@|$tmp/app.token|g" \
  examples/demo.toml >"$tmp/demo.toml"
if grep -n -v '^[[:space:]]*#' "$tmp/demo.toml" | grep '@[A-Z_]*@'; then
  fail "placeholder left in $tmp/demo.toml"
fi
echo "token: $tmp/app.token ($(wc -c <"$tmp/app.token") bytes, no trailing newline, mode 600)"
echo "config (comments left out):"
grep -v -E '^[[:space:]]*(#|$)' "$tmp/demo.toml" | sed 's/^/    /'

# The broker runs with nothing from this shell's environment but PATH: its STS caller credentials
# are moto's dummy keys, and no profile, config file or instance metadata can interfere.
broker_env=(env -i "PATH=$PATH" "HOME=$tmp"
  AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
  AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_EC2_METADATA_DISABLED=true)
[ -z "${RUST_LOG:-}" ] || broker_env+=("RUST_LOG=$RUST_LOG")

step "sts-broker check -c $tmp/demo.toml"
"${broker_env[@]}" "$BIN" check -c "$tmp/demo.toml" || fail "sts-broker check rejected the config"

step "Starting sts-broker serve (log: $tmp/broker.log)"
"${broker_env[@]}" "$BIN" serve -c "$tmp/demo.toml" 2>"$tmp/broker.log" &
broker_pid=$!
if ! wait_http "$ADMIN_URL/readyz" 200 30 "$broker_pid"; then
  kill -0 "$broker_pid" 2>/dev/null || { rc=0; wait "$broker_pid" || rc=$?; broker_pid=; fail "sts-broker exited with status $rc before it was ready"; }
  fail "sts-broker did not answer 200 on /readyz within 30 s"
fi
echo "ready (pid $broker_pid): GET $ADMIN_URL/readyz -> 200"
# The start-up lines, e.g. {"fields":{"message":"listening","endpoint":"ecs","addr":"..."}}.
"$PY" - "$tmp/broker.log" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    try:
        rec = json.loads(line)
    except ValueError:
        continue
    fields = rec.get("fields", rec)
    if fields.get("message") == "listening":
        print(f"log: listening endpoint={fields.get('endpoint')} addr={fields.get('addr')}")
EOF

step "Admin API: GET $ADMIN_URL/v1/roles (state only, never secrets)"
curl -fsS "$ADMIN_URL/v1/roles" | "$PY" -m json.tool

step "ECS endpoint without a token: GET $ECS_URL (expect 401)"
code=$(curl -s -o "$tmp/noauth.json" -w '%{http_code}' "$ECS_URL" || true)
echo "HTTP $code $(cat "$tmp/noauth.json")"
[ "$code" = 401 ] || fail "expected 401 without a token, got $code"

step "ECS endpoint with the token: GET $ECS_URL (secrets masked)"
# The header goes through a file so the token is not on curl's command line.
printf 'Authorization: %s\n' "$(cat "$tmp/app.token")" >"$tmp/auth.header"
curl -fsS -H @"$tmp/auth.header" "$ECS_URL" | "$PY" -c '
import json, sys
body = json.load(sys.stdin)
for key in ("SecretAccessKey", "Token"):
    if key in body:
        body[key] = f"<{len(body[key])} chars, hidden>"
print(json.dumps(body, indent=4))'

step "sts-broker env -c ... --role app (what a workload exports; token masked)"
"${broker_env[@]}" "$BIN" env -c "$tmp/demo.toml" --role app 2>>"$tmp/broker-env.log" |
  sed "s|$(cat "$tmp/app.token")|<token>|g" || fail "sts-broker env failed: $(cat "$tmp/broker-env.log")"

# The clients: an empty environment except for the two ECS variables (and a region), so the only
# place they can get credentials is the broker. IMDS is off so a failure cannot fall through to it.
client_env=(env -i PATH=/usr/bin:/bin "HOME=$tmp"
  AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_EC2_METADATA_DISABLED=true
  AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
  "AWS_CONTAINER_CREDENTIALS_FULL_URI=$ECS_URL"
  "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=$tmp/app.token")
printf '\nClient environment:\n'
printf '    %s\n' "${client_env[@]:2}"

# AWS CLI v1 (the one on PyPI) has no `configure export-credentials`; `configure list` shows
# where it found credentials ("container-role"). It masks the keys but for their last 4
# characters; the sed hides those too for the secret key.
step "AWS CLI: aws configure list"
"${client_env[@]}" "$VENV/bin/aws" configure list |
  sed -E '/^ *secret_key /s/\*+[^ ]{4}/********************/'

step "boto3: the credentials the SDK resolved (AccessKeyId and expiry only)"
"${client_env[@]}" "$PY" -c '
import boto3
creds = boto3.Session().get_credentials()
frozen = creds.get_frozen_credentials()
print("provider:    ", creds.method)
print("AccessKeyId: ", frozen.access_key)
print("expires:     ", getattr(creds, "_expiry_time", "?"))'

step "AWS CLI: aws sts get-caller-identity --endpoint-url $STS_URL"
"${client_env[@]}" "$VENV/bin/aws" sts get-caller-identity --endpoint-url "$STS_URL" \
  --output json >"$tmp/identity.json" || fail "aws sts get-caller-identity failed"
cat "$tmp/identity.json"
arn=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["Arn"])' "$tmp/identity.json")
case $arn in
  arn:aws:sts::123456789012:assumed-role/demo-app/*) ;;
  *) fail "expected an assumed-role/demo-app/ ARN, got: $arn" ;;
esac

step "Stopping sts-broker (SIGTERM)"
kill -TERM "$broker_pid"
for _ in $(seq 100); do kill -0 "$broker_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$broker_pid" 2>/dev/null && fail "sts-broker still running 10 s after SIGTERM"
rc=0
wait "$broker_pid" || rc=$?
broker_pid=
[ "$rc" = 0 ] || fail "sts-broker exited with status $rc after SIGTERM (want 0)"
echo "sts-broker exited 0"

printf '\nDemo OK: the AWS CLI, holding no keys of its own, called STS as\n    %s\n' "$arn"
