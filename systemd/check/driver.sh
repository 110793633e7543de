#!/bin/bash
# Runs inside the Debian container booted by scripts/check-systemd.sh, as the oneshot unit
# sts-broker-check.service, with systemd as PID 1. Installs systemd/sts-broker.service (the real
# unit, plus a drop-in with the source credentials) and the sysusers.d file the way an operator
# would, then proves each property and writes one line per check to $DIR/results:
#   PASS <what>   or   FAIL <what>: <evidence>
# and "DONE" at the end. The host reads the file after the container powered off.
# moto listens on 127.0.0.1:$MOTO_PORT (the container shares a network namespace with it).
set -u
DIR=/sts-broker-check
RESULTS=$DIR/results
: >"$RESULTS"
# Every command, for the host to show when a check hangs or fails.
exec 9>"$DIR/trace"
BASH_XTRACEFD=9
set -x
# shellcheck source=/dev/null
. "$DIR/env"

pass() { printf 'PASS %s\n' "$1" >>"$RESULTS"; }
fail() {
  printf 'FAIL %s: %s\n' "$1" "$2" >>"$RESULTS"
  journalctl -u sts-broker --no-pager -n 30 >>"$DIR/journal-at-failures.txt" 2>&1
}
log() { printf 'driver: %s\n' "$*"; }

# A tiny HTTP/1.1 client on bash's /dev/tcp (the minbase root has no curl):
#   http METHOD PORT PATH [HEADER...]   -> the status code on the first line, then the body
http() {
  local method=$1 port=$2 path=$3 resp
  shift 3
  exec 3<>"/dev/tcp/127.0.0.1/$port" 2>/dev/null || { printf '000\nconnection refused\n'; return 0; }
  {
    printf '%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n' "$method" "$path"
    for h in "$@"; do printf '%s\r\n' "$h"; done
    [ "$method" = PUT ] && printf 'Content-Length: 0\r\n'
    printf '\r\n'
  } >&3
  resp=$(timeout 5 cat <&3 | tr -d '\r')
  exec 3>&-
  printf '%s\n' "$resp" | head -1 | cut -d' ' -f2
  printf '%s\n' "$resp" | sed '1,/^$/d'
}
status_of() { http "$@" | head -1; }
# "STATUS BODY" on one line, for matching with case.
http1() { http "$@" | tr '\n' ' '; }
# Polls the shell condition $2 every 0.2 s for up to $1 seconds.
wait_for() {
  local end=$((SECONDS + $1))
  while [ $SECONDS -lt $end ]; do
    eval "$2" && return 0
    sleep 0.2
  done
  eval "$2"
}
state() { systemctl is-active sts-broker 2>/dev/null; }
prop() { systemctl show -p "$1" --value sts-broker; }
metric() { http GET 9469 /metrics | grep -F "$1 " | cut -d' ' -f2; }
reloads() { metric "sts_broker_config_reloads_total{outcome=\"$1\"}"; }
ecs_app() { status_of GET 8170 /v1/credentials/app "Authorization: $TOKEN"; }

log "installing the unit, the sysusers.d file and the broker"
install -m 0755 "$DIR/sts-broker" /usr/local/bin/sts-broker
install -m 0644 "$DIR/sts-broker.service" /etc/systemd/system/sts-broker.service
install -m 0644 "$DIR/sts-broker.sysusers" /usr/lib/sysusers.d/sts-broker.conf
mkdir -p /etc/systemd/system/sts-broker.service.d
install -m 0644 "$DIR/dropin.conf" /etc/systemd/system/sts-broker.service.d/check.conf

# --- sysusers ---------------------------------------------------------------------------------------
what="systemd-sysusers creates the system user sts-broker"
if systemd-sysusers && entry=$(getent passwd sts-broker); then
  uid=$(id -u sts-broker)
  gid=$(id -g sts-broker)
  shell=${entry##*:}
  if [ "$uid" -gt 0 ] && [ "$uid" -lt 1000 ] && [ "$shell" = /usr/sbin/nologin ] && getent group sts-broker >/dev/null; then
    pass "$what (uid $uid, gid $gid, shell $shell)"
  else
    fail "$what" "passwd entry: $entry"
  fi
else
  fail "$what" "no passwd entry after systemd-sysusers"
  uid=65534 gid=65534
fi

mkdir -p /etc/sts-broker/tokens
printf '%s' "$TOKEN" >/etc/sts-broker/tokens/app
chown sts-broker:sts-broker /etc/sts-broker/tokens/app
chmod 0400 /etc/sts-broker/tokens/app
install -m 0640 -o root -g sts-broker "$DIR/config.toml" /etc/sts-broker/config.toml
: >/etc/sts-broker/wi-token
chown sts-broker:sts-broker /etc/sts-broker/wi-token
chmod 0400 /etc/sts-broker/wi-token
systemctl daemon-reload

# --- Type=notify: active only once ready ----------------------------------------------------------------
# The web_identity role's token file is empty, so the broker listens but cannot be ready.
log "starting sts-broker without the web identity token"
systemctl start --no-block sts-broker
what="Type=notify: the unit stays 'activating' while the broker is not ready"
if wait_for 30 '[ "$(status_of GET 9469 /healthz)" = 200 ]'; then
  sleep 3
  s=$(state) r=$(status_of GET 9469 /readyz)
  if [ "$s" = activating ] && [ "$r" = 503 ]; then
    pass "$what (listening, /readyz $r, unit $s after 3 s)"
  else
    fail "$what" "unit $s, /readyz $r"
  fi
else
  fail "$what" "the admin listener never answered; unit $(state); $(journalctl -u sts-broker --no-pager | tail -5)"
fi
printf 'web-identity-token' >/etc/sts-broker/wi-token
what="Type=notify: the unit turns 'active' once the broker is ready (READY=1)"
if wait_for 30 '[ "$(state)" = active ]'; then
  r=$(status_of GET 9469 /readyz)
  if [ "$r" = 200 ]; then pass "$what (/readyz 200 when active)"; else fail "$what" "active but /readyz $r"; fi
else
  fail "$what" "unit $(state) 30 s after the token appeared; $(journalctl -u sts-broker --no-pager | tail -5)"
fi
PID=$(prop MainPID)
log "broker running as PID $PID"

# --- serving -------------------------------------------------------------------------------------------
what="the ECS endpoint serves credentials from moto"
resp=$(http1 GET 8170 /v1/credentials/app "Authorization: $TOKEN")
case $resp in
  "200 "*'"AccessKeyId"'*) pass "$what" ;;
  *) fail "$what" "${resp:0:200}" ;;
esac
what="binds port 80 as a non-root user (IMDS on 127.0.0.1:80)"
itok=$(http PUT 80 /latest/api/token "X-aws-ec2-metadata-token-ttl-seconds: 60" | sed -n 2p)
resp=$(http1 GET 80 /latest/meta-data/iam/security-credentials/app "X-aws-ec2-metadata-token: $itok")
puid=$(awk '/^Uid:/ { print $2 }' "/proc/$PID/status")
case $resp in
  "200 "*'"AccessKeyId"'*) if [ "$puid" != 0 ]; then pass "$what (uid $puid)"; else fail "$what" "runs as root"; fi ;;
  *) fail "$what" "${resp:0:200}" ;;
esac

# --- the sandbox -----------------------------------------------------------------------------------------
what="runs as sts-broker with only CAP_NET_BIND_SERVICE, no new privileges, seccomp on"
ids=$(awk '/^(Uid|Gid):/ { printf "%s %s %s %s ", $2, $3, $4, $5 }' "/proc/$PID/status")
caps=$(awk '/^Cap(Inh|Prm|Eff|Bnd|Amb):/ { printf "%s=%s ", $1, $2 }' "/proc/$PID/status")
nnp=$(awk '/^NoNewPrivs:/ { print $2 }' "/proc/$PID/status")
seccomp=$(awk '/^Seccomp:/ { print $2 }' "/proc/$PID/status")
# CAP_NET_BIND_SERVICE is bit 10: 0x400, in every set (ambient capabilities must also be
# inheritable).
want_caps="CapInh:=0000000000000400 CapPrm:=0000000000000400 CapEff:=0000000000000400 CapBnd:=0000000000000400 CapAmb:=0000000000000400 "
if [ "$ids" = "$uid $uid $uid $uid $gid $gid $gid $gid " ] && [ "$caps" = "$want_caps" ] && [ "$nnp" = 1 ] && [ "$seccomp" = 2 ]; then
  pass "$what ($caps)"
else
  fail "$what" "uid/gid $ids; $caps; NoNewPrivs $nnp; Seccomp $seccomp"
fi

# What the broker's mount namespace lets its user write: enter it as that user.
as_broker() { nsenter -t "$PID" -m -S "$uid" -G "$gid" -- "$@" 2>/dev/null; }
what="cannot write outside its LogsDirectory"
bad=
for d in / /etc /etc/sts-broker /usr/local/bin /var /var/lib /var/log /var/cache /opt /srv /root /home /run /dev/shm; do
  if as_broker sh -c "echo x > '$d/sts-broker-write-test'"; then bad="$bad $d"; fi
done
if [ -n "$bad" ]; then
  fail "$what" "writable:$bad"
elif as_broker sh -c 'echo x > /var/log/sts-broker/write-test && rm /var/log/sts-broker/write-test'; then
  pass "$what (/, /etc, /usr, /var, /root, /home, /run, /dev/shm refused; /var/log/sts-broker writable)"
else
  fail "$what" "/var/log/sts-broker is not writable either"
fi
what="its /tmp is private (PrivateTmp); /home and /root are inaccessible (ProtectHome)"
echo host >/tmp/sts-broker-host-file
modes=$(nsenter -t "$PID" -m -- stat -c %a /home /root | tr '\n' ' ')
if ! as_broker test -e /tmp/sts-broker-host-file && [ "$modes" = "0 0 " ]; then
  pass "$what (modes of /home /root in its namespace: $modes)"
else
  fail "$what" "the container's /tmp file is visible, or /home /root have modes $modes"
fi
rm -f /tmp/sts-broker-host-file
what="the audit trail is written to the LogsDirectory, owned by sts-broker"
audit=/var/log/sts-broker/audit.jsonl
if [ -s "$audit" ] && [ "$(stat -c %U:%a /var/log/sts-broker)" = sts-broker:750 ] && grep -q '"role":"app"' "$audit"; then
  pass "$what ($(wc -l <"$audit") records; directory $(stat -c '%U %a' /var/log/sts-broker))"
else
  fail "$what" "$(ls -la /var/log/sts-broker 2>&1 | tr '\n' ' ')"
fi

# --- reload -----------------------------------------------------------------------------------------------
# The new config adds the role "extra". Requests for "app" go on in the background meanwhile.
install -m 0640 -o root -g sts-broker "$DIR/config-reload.toml" /etc/sts-broker/config.toml
(
  end=$((SECONDS + 4)) n=0 bad=0
  while [ $SECONDS -lt $end ]; do
    [ "$(ecs_app)" = 200 ] || bad=$((bad + 1))
    n=$((n + 1))
  done
  echo "$n $bad" >/run/reload-requests
) &
loop=$!
sleep 1
what="systemctl reload applies a change and keeps serving"
if systemctl reload sts-broker; then
  wait $loop
  read -r n nbad </run/reload-requests
  if wait_for 15 '[ "$(status_of GET 8170 /v1/credentials/extra "Authorization: $TOKEN")" = 200 ]' &&
    [ "$nbad" = 0 ] && [ "$(prop MainPID)" = "$PID" ] && [ "$(reloads ok)" = 1 ]; then
    pass "$what (role 'extra' served after the reload, same PID $PID, $n requests during it all 200)"
  else
    fail "$what" "extra: $(status_of GET 8170 /v1/credentials/extra "Authorization: $TOKEN"); $nbad of $n requests failed; PID $(prop MainPID) (was $PID); reloads ok $(reloads ok)"
  fi
else
  wait $loop
  fail "$what" "systemctl reload failed"
fi
what="a bad config on reload is refused and the old one keeps serving"
printf '[sts]\nregion = 1\n' >/etc/sts-broker/config.toml
systemctl reload sts-broker
if wait_for 15 '[ "$(reloads error)" = 1 ]' &&
  [ "$(state)" = active ] && [ "$(ecs_app)" = 200 ] && [ "$(status_of GET 8170 /v1/credentials/extra "Authorization: $TOKEN")" = 200 ]; then
  pass "$what (counted as error, unit active, both roles served)"
else
  fail "$what" "unit $(state); app $(ecs_app); reload errors $(reloads error)"
fi
install -m 0640 -o root -g sts-broker "$DIR/config-reload.toml" /etc/sts-broker/config.toml

# --- watchdog ----------------------------------------------------------------------------------------------
what="a stopped (SIGSTOP) broker is killed by the watchdog and restarted"
wd=$(prop WatchdogUSec)
log "SIGSTOP to $PID; watchdog $wd"
t0=$SECONDS
kill -STOP "$PID"
if wait_for 90 '[ "$(prop NRestarts)" = 1 ]' && wait_for 30 '[ "$(state)" = active ]'; then
  NEW=$(prop MainPID)
  if [ "$NEW" != "$PID" ] && [ "$(ecs_app)" = 200 ] && journalctl -u sts-broker --no-pager | grep -q 'Watchdog timeout'; then
    pass "$what (watchdog $wd: 'Watchdog timeout' logged, PID $PID -> $NEW after $((SECONDS - t0)) s, serving again)"
  else
    fail "$what" "PID $PID -> $NEW; app $(ecs_app); $(journalctl -u sts-broker --no-pager | grep -i watchdog | tail -2)"
  fi
else
  fail "$what" "NRestarts $(prop NRestarts), unit $(state) after $((SECONDS - t0)) s"
  kill -CONT "$PID" 2>/dev/null
fi

# --- stop ---------------------------------------------------------------------------------------------------
what="systemctl stop ends it cleanly (SIGTERM, exit 0)"
PID=$(prop MainPID)
t0=$SECONDS
systemctl stop sts-broker
s=$(state) result=$(prop Result) code=$(prop ExecMainStatus)
if [ "$s" = inactive ] && [ "$result" = success ] && [ "$code" = 0 ] && ! kill -0 "$PID" 2>/dev/null &&
  ! journalctl -u sts-broker --no-pager | grep -q 'SIGKILL'; then
  pass "$what (in $((SECONDS - t0)) s, exit status $code, result $result)"
else
  fail "$what" "unit $s, result $result, exit status $code"
fi

journalctl -u sts-broker --no-pager >"$DIR/journal.txt" 2>&1
echo DONE >>"$RESULTS"
