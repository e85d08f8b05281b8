#!/usr/bin/env bash
# The Debian packages on this machine, for real (root, CI):
#
#   .ci/packages/run.sh HUB_BINARY AGENT_BINARY
#
# builds edge-agent and inference-hub .debs (amd64) twice, an older and a
# newer version of the same binaries; installs the older with dpkg -i, checks
# the layout and `systemd-analyze verify`s the installed units; starts both
# installed binaries by hand as their service users (this machine has no
# systemd running) with the installed configuration against a Mosquitto on
# loopback; sends readings; stops the hub and sends more (they wait in the
# agent's spool), stops the agent; upgrades both packages; starts them again
# and checks that every reading is archived exactly once (DuckDB's delta
# extension over the installed hub's archive); then purges both and checks nothing is left.
set -euo pipefail
hub_bin=$1 agent_bin=$2
repo="$(cd "$(dirname "$0")/../.." && pwd)"
work=$(mktemp -d)
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml")
old="$version~ci1" new="$version"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  dpkg --purge edge-agent inference-hub >/dev/null 2>&1 || true
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
fail() { echo "FAILED: $*" >&2; for f in "$work"/*.log; do echo "--- $f" >&2; tail -n 20 "$f" >&2; done; exit 1; }

for pkg in edge-agent inference-hub; do
  if dpkg -s "$pkg" >/dev/null 2>&1; then fail "$pkg is already installed on this machine"; fi
done
for v in "$old" "$new"; do
  "$repo/deploy/debian/build.sh" inference-hub amd64 "$hub_bin" "$work/$v" "$v" >/dev/null
  "$repo/deploy/debian/build.sh" edge-agent amd64 "$agent_bin" "$work/$v" "$v" >/dev/null
done
ls -l "$work/$new"/*.deb
dpkg-deb --info "$work/$new/inference-hub_${new}_amd64.deb" | sed -n '/Package:/,$p'
dpkg-deb --contents "$work/$new/edge-agent_${new}_amd64.deb" | awk '{print $1, $6}'

echo "== install $old"
dpkg -i "$work/$old"/edge-agent_*.deb "$work/$old"/inference-hub_*.deb >/dev/null
for pkg in edge-agent inference-hub; do
  [ "$(dpkg-query -W -f='${Status} ${Version}' "$pkg")" = "install ok installed $old" ] || fail "$pkg not installed"
  getent passwd "$pkg" >/dev/null || fail "no user $pkg"
  [ "$(stat -c %U:%a "/var/lib/$pkg")" = "$pkg:750" ] || fail "/var/lib/$pkg: $(stat -c %U:%a "/var/lib/$pkg")"
  [ "$(stat -c %G:%a "/etc/$pkg")" = "$pkg:750" ] || fail "/etc/$pkg: $(stat -c %G:%a "/etc/$pkg")"
  systemd-analyze verify "/lib/systemd/system/$pkg.service" || fail "systemd-analyze verify $pkg.service"
  ! ls /etc/systemd/system/*.wants/"$pkg.service" >/dev/null 2>&1 || fail "a first install enabled $pkg.service"
  echo "$pkg $old: installed, user and directories in place, unit verified"
done
[ -f /usr/share/inference-hub/models/novelty/manifest.json ] || fail "the hub's models are not installed"

mq_port=$(free_port) http_port=$(free_port)
"$repo/deploy/mosquitto/run-local.sh" "$mq_port" "$work/mq" &
pids+=($!)

# The installed configuration, unchanged; only the ports differ (environment
# overrides, as an operator would set them in a unit drop-in).
as_user() { local user=$1; shift; exec setpriv --reuid="$user" --regid="$user" --init-groups --inh-caps=-all -- "$@"; }
start_hub() {
  HUB__MQTT__PORT=$mq_port HUB__HTTP__LISTEN=127.0.0.1:$http_port HUB__ARCHIVE__MAX_FILE_AGE=2s \
    as_user inference-hub /usr/bin/inference-hub --config /etc/inference-hub/hub.toml run >> "$work/hub.log" 2>&1 &
  hub_pid=$!; pids+=($hub_pid)
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$http_port/health" >/dev/null && return 0
    sleep 0.2
  done
  fail "the installed hub did not become healthy"
}
start_agent() {
  EDGE__MQTT__PORT=$mq_port EDGE__UPLINK__MQTT__PORT=$mq_port \
    as_user edge-agent /usr/bin/edge-agent --config /etc/edge-agent/edge.toml run >> "$work/agent.log" 2>&1 &
  agent_pid=$!; pids+=($agent_pid)
  sleep 2
  kill -0 "$agent_pid" || fail "the installed agent exited"
}
stop() { kill -TERM "$1"; wait "$1" || fail "pid $1 exited with $? on SIGTERM"; }
publish() { # first count: readings with timestamps first .. first+count-1 (ms)
  python3 - "$mq_port" "$1" "$2" <<'PY'
import sys, json, paho.mqtt.client as mqtt
port, first, count = map(int, sys.argv[1:])
c = mqtt.Client(client_id="packages-test", clean_session=True)
c.connect("127.0.0.1", port)
c.loop_start()
base = 1_767_225_600_000  # 2026-01-01T00:00:00Z
for i in range(first, first + count):
    payload = json.dumps({"ts": base + i * 1000, "value": 20.0 + (i % 17) * 0.25})
    c.publish(f"sensors/pump-{i % 5}/temp", payload, qos=1).wait_for_publish()
c.loop_stop(); c.disconnect()
PY
}
durable() { curl -sf "http://127.0.0.1:$http_port/metrics" | awk '/^hub_readings_durable_total /{print $2}'; }
wait_durable() {
  for _ in $(seq 1 150); do
    [ "$(durable)" = "$1" ] && return 0
    sleep 0.2
  done
  fail "the hub holds $(durable) readings, expected $1"
}

echo "== run $old: 300 readings through Mosquitto, agent and hub"
start_hub
start_agent
publish 0 300
wait_durable 300
stop "$hub_pid"
echo "== hub stopped: 200 more readings wait in the agent's spool"
publish 300 200
sleep 2
stop "$agent_pid"
spooled=$(du -sb /var/lib/edge-agent/spool | cut -f1)
[ "$spooled" -gt 0 ] || fail "the agent's spool is empty"

echo "== upgrade to $new"
dpkg -i "$work/$new"/edge-agent_*.deb "$work/$new"/inference-hub_*.deb >/dev/null
for pkg in edge-agent inference-hub; do
  [ "$(dpkg-query -W -f='${Version}' "$pkg")" = "$new" ] || fail "$pkg not upgraded"
done
[ "$(du -sb /var/lib/edge-agent/spool | cut -f1)" = "$spooled" ] || fail "the upgrade changed the spool"
start_hub
start_agent
wait_durable 200
sleep 1
stop "$agent_pid"
stop "$hub_pid"
python3 - <<'PY'
import pathlib, duckdb, duckdb_extension_delta
extension = next(pathlib.Path(duckdb_extension_delta.__file__).parent.glob("extensions/*/delta.duckdb_extension"))
con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
con.execute(f"LOAD '{extension}'")
rows, keys, gateways = con.sql(
    "select count(*), count(distinct (device, ts)), list(distinct gateway) "
    "from delta_scan('/var/lib/inference-hub/archive/scored')"
).fetchone()
assert rows == keys == 500, (rows, keys)
print(f"after the upgrade: {rows} readings archived, each once, from {gateways}")
PY

echo "== purge (after the administrator enabled the units)"
mkdir -p /etc/systemd/system/multi-user.target.wants
for pkg in edge-agent inference-hub; do
  ln -s "/lib/systemd/system/$pkg.service" "/etc/systemd/system/multi-user.target.wants/$pkg.service"
done
dpkg --purge edge-agent inference-hub >/dev/null
for pkg in edge-agent inference-hub; do
  for path in "/usr/bin/$pkg" "/etc/$pkg" "/var/lib/$pkg" "/lib/systemd/system/$pkg.service" "/usr/share/doc/$pkg" \
      "/etc/systemd/system/multi-user.target.wants/$pkg.service"; do
    [ ! -e "$path" ] || fail "$path is left after purge"
  done
  ! getent passwd "$pkg" >/dev/null || fail "user $pkg is left after purge"
done
[ ! -e /usr/share/inference-hub ] || fail "/usr/share/inference-hub is left after purge"
echo "packages: installed, verified, ran, upgraded with their state, purged clean"
