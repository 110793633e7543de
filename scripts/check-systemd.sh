#!/usr/bin/env bash
# systemd/sts-broker.service under a real systemd as PID 1:
#
#   bash scripts/check-systemd.sh
#
# A Debian 12 root file system (debootstrap --variant=minbase with systemd; cached in
# $STS_BROKER_SYSTEMD_CACHE, default /var/cache/sts-broker, rebuilt only when the package list
# below changes) is booted with systemd-nspawn, its writes going to a throw-away overlay
# (--volatile=overlay) so the cache stays pristine. The container joins a network namespace made
# for this run, where moto (from $STS_BROKER_TEST_VENV) listens as the STS: ports 80, 8170 and
# 9469 inside it are nobody else's. A oneshot unit in the container (systemd/check/driver.sh)
# installs the unit, its sysusers.d file and a drop-in, checks each property below, writes one
# PASS/FAIL line per check to a directory shared with this script, and powers the container off:
#   - systemd-sysusers creates the user sts-broker;
#   - Type=notify: 'activating' while the broker is not ready, 'active' once it is;
#   - ECS credentials from moto; IMDS bound to port 80 by a non-root process;
#   - the sandbox: uid/gid, only CAP_NET_BIND_SERVICE, no new privileges, seccomp, nothing
#     writable but the LogsDirectory, private /tmp, no /home; the audit trail in the LogsDirectory;
#   - systemctl reload applies a change without a failed request; a bad config is refused;
#   - SIGSTOP: the watchdog (WatchdogSec of the shipped unit) kills and restarts it;
#   - systemctl stop: SIGTERM, exit 0.
# Exits 0 only when every check passed. Needs root (debootstrap, nspawn, netns); installs
# debootstrap and systemd-container when missing. About 1 min cold on top of the ~1 min
# debootstrap; the check itself takes ~1 min (the watchdog alone is 30 s).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
CACHE=${STS_BROKER_SYSTEMD_CACHE:-/var/cache/sts-broker}
SUITE=bookworm
PACKAGES=systemd,systemd-sysv,dbus,ca-certificates
ROOTFS=$CACHE/rootfs-$SUITE
VENV=${STS_BROKER_TEST_VENV:-$REPO/.venv}

say() { printf 'check-systemd: %s\n' "$*"; }
die() { say "FAIL: $*" >&2; exit 1; }
t0=$SECONDS

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, systemd-nspawn, ip netns)"
missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
command -v ip >/dev/null || missing+=(iproute2)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} (apt)"
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
    --no-install-recommends "${missing[@]}" >/dev/null
fi
[ -x "$VENV/bin/moto_server" ] || die "no moto at $VENV (run scripts/setup-test-deps.sh)"

# --- the root file system (cached) -------------------------------------------------------------------
mkdir -p "$CACHE"
exec 7>"$CACHE/.lock"
flock 7
stamp="$SUITE minbase $PACKAGES"
if [ -f "$ROOTFS/.sts-broker-rootfs" ] && [ "$(cat "$ROOTFS/.sts-broker-rootfs")" = "$stamp" ]; then
  say "root file system cached in $ROOTFS"
else
  # The host's own Debian mirror (deb822 or one-line sources), else debootstrap's default.
  mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -1 || true)
  [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $0 !~ /security/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
  start=$SECONDS
  say "debootstrap --variant=minbase --include=$PACKAGES $SUITE $ROOTFS ${mirror:-(default mirror)} (about a minute)"
  rm -rf "$ROOTFS" "$ROOTFS.tmp"
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS.tmp" ${mirror:+"$mirror"} >"$CACHE/debootstrap.log" 2>&1 ||
    { tail -20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
  rm -rf "$ROOTFS.tmp/var/cache/apt/archives"/*.deb
  printf '%s\n' "$stamp" >"$ROOTFS.tmp/.sts-broker-rootfs"
  mv "$ROOTFS.tmp" "$ROOTFS"
  say "root file system ready in $((SECONDS - start)) s ($(du -sh "$ROOTFS" | cut -f1))"
fi

# --- the broker --------------------------------------------------------------------------------------------
if [ -n "${STS_BROKER_BIN:-}" ]; then
  BIN=$STS_BROKER_BIN
else
  say "release binary (scripts/build-release.sh)"
  BIN=$(bash scripts/build-release.sh)
fi
[ -x "$BIN" ] || die "no broker binary at $BIN"

# --- the run ----------------------------------------------------------------------------------------------
WORK=$(mktemp -d /tmp/sts-broker-systemd.XXXXXX)
NETNS=sts-broker-sd-$$
MOTO_PORT=5000
moto_pid=
cleanup() {
  [ -n "$moto_pid" ] && kill "$moto_pid" 2>/dev/null && wait "$moto_pid" 2>/dev/null
  ip netns del "$NETNS" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

ip netns add "$NETNS"
ip netns exec "$NETNS" ip link set lo up
ip netns exec "$NETNS" "$VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >"$WORK/moto.log" 2>&1 &
moto_pid=$!
for _ in $(seq 100); do
  ip netns exec "$NETNS" "$VENV/bin/python" -c \
    "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$MOTO_PORT/moto-api/', timeout=1)" 2>/dev/null && break
  sleep 0.2
done

cp "$BIN" "$WORK/sts-broker"
cp systemd/sts-broker.service "$WORK/sts-broker.service"
cp systemd/sts-broker.sysusers "$WORK/sts-broker.sysusers"
cp systemd/check/driver.sh "$WORK/driver.sh"
# 32 random hex digits: the broker refuses tokens under 16 characters.
TOKEN=check-token-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d " \n")
printf 'MOTO_PORT=%s\nTOKEN=%s\n' "$MOTO_PORT" "$TOKEN" >"$WORK/env"
# The drop-in an operator would write on a host without an instance profile: the broker's own
# credentials from the environment (moto does not check them).
cat >"$WORK/dropin.conf" <<EOF
[Service]
Environment=AWS_ACCESS_KEY_ID=AKIDCHECKSYSTEMD AWS_SECRET_ACCESS_KEY=check-systemd-secret AWS_REGION=us-east-1
EOF
config() {
  cat <<EOF
[sts]
region = "us-east-1"
endpoint = "http://127.0.0.1:$MOTO_PORT"

[source]
kind = "static_env"

[refresh]
backoff_min = "200ms"
backoff_max = "1s"

[ecs]
listen = "127.0.0.1:8170"

[admin]
listen = "127.0.0.1:9469"

[imds]
listen = "127.0.0.1:80"
role = "app"

[audit]
path = "/var/log/sts-broker/audit.jsonl"

[[role]]
name = "app"
arn = "arn:aws:iam::123456789012:role/app"
token_files = ["/etc/sts-broker/tokens/app"]

# Not ready while /etc/sts-broker/wi-token is empty: the driver fills it in later.
[[role]]
name = "wi"
kind = "web_identity"
arn = "arn:aws:iam::123456789012:role/wi"
web_identity_token_file = "/etc/sts-broker/wi-token"
token_files = ["/etc/sts-broker/tokens/app"]
EOF
}
config >"$WORK/config.toml"
{ config; printf '\n[[role]]\nname = "extra"\narn = "arn:aws:iam::123456789012:role/extra"\ntoken_files = ["/etc/sts-broker/tokens/app"]\n'; } >"$WORK/config-reload.toml"
cat >"$WORK/sts-broker-check.service" <<'EOF'
[Unit]
Description=sts-broker checks (scripts/check-systemd.sh)
After=basic.target

[Service]
Type=oneshot
ExecStart=/bin/bash /sts-broker-check/driver.sh
ExecStopPost=/bin/systemctl --no-block poweroff
StandardOutput=journal+console
StandardError=journal+console
EOF

boot_start=$SECONDS
say "booting $ROOTFS with systemd-nspawn (network namespace $NETNS)"
rc=0
timeout "${STS_BROKER_SYSTEMD_TIMEOUT:-300}" systemd-nspawn --quiet --register=no --keep-unit --console=pipe \
  --directory="$ROOTFS" --volatile=overlay --machine="sts-broker-check-$$" \
  --network-namespace-path="/run/netns/$NETNS" --link-journal=no --timezone=off --resolv-conf=off \
  --bind="$WORK:/sts-broker-check" \
  --bind-ro="$WORK/sts-broker-check.service:/etc/systemd/system/sts-broker-check.service" \
  --boot -- systemd.wants=sts-broker-check.service >"$WORK/console.log" 2>&1 || rc=$?
say "container ran for $((SECONDS - boot_start)) s (systemd-nspawn exit $rc)"

if ! grep -qx DONE "$WORK/results" 2>/dev/null; then
  tail -60 "$WORK/console.log" >&2 || true
  [ -f "$WORK/journal.txt" ] && tail -20 "$WORK/journal.txt" >&2
  [ -f "$WORK/journal-at-failures.txt" ] && { echo "journal at the first failure:"; head -30 "$WORK/journal-at-failures.txt"; } >&2
  [ -f "$WORK/trace" ] && { echo "last commands of the driver:"; tail -25 "$WORK/trace"; } >&2
  cat "$WORK/results" 2>/dev/null >&2 || true
  die "the checks did not finish (systemd-nspawn exit $rc)"
fi
grep -v '^DONE$' "$WORK/results" | sed 's/^/  /'
passed=$(grep -c '^PASS ' "$WORK/results" || true)
failed=$(grep -c '^FAIL ' "$WORK/results" || true)
expected=$(grep -c '^what=' systemd/check/driver.sh)
if [ "$failed" -ne 0 ] || [ "$passed" -ne "$expected" ]; then
  sed 's/^/  journal at failures: /' "$WORK/journal-at-failures.txt" | head -60 >&2
  die "$failed check(s) failed, $passed of $expected passed"
fi
say "all $passed checks passed in $((SECONDS - t0)) s"
