#!/usr/bin/env bash
# The container images, run once from their root filesystems (no container
# daemon on CI machines):
#
#   .ci/images/run.sh IMAGE_DIR      (the OUT_DIR of deploy/container/build.sh)
#
# unpacks the edge-agent and inference-hub images with umoci, checks they
# hold no shell and run as a non-root user, starts each entrypoint as the
# image describes it (start.py: chroot, user, environment, arguments) with
# the token secrets a deployment would mount, against a Mosquitto on
# loopback, and checks that readings published to the broker reach the hub
# through the agent, and that both stop cleanly on SIGTERM.
set -euo pipefail
images=$1
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
work=$(mktemp -d)
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml")
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
fail() { echo "FAILED: $*" >&2; for f in "$work"/*.log; do echo "--- $f" >&2; tail -n 20 "$f" >&2; done; exit 1; }

for pkg in edge-agent inference-hub; do
  umoci unpack --image "$images/$pkg:$version" "$work/$pkg" >/dev/null
  rootfs="$work/$pkg/rootfs"
  for shell in bin/sh bin/bash usr/bin/sh; do
    [ ! -e "$rootfs/$shell" ] || fail "$pkg image contains /$shell"
  done
  python3 - "$work/$pkg/config.json" "$pkg" <<'PY'
import json, sys
spec = json.load(open(sys.argv[1]))
user, args = spec["process"]["user"], spec["process"]["args"]
assert user["uid"] != 0 and user["gid"] != 0, user
assert args[0] == f"/usr/bin/{sys.argv[2]}", args
print(f"{sys.argv[2]} image: runs {' '.join(args)} as {user['uid']}:{user['gid']}")
PY
  du -sh "$rootfs" | sed "s|$work/||"
done

mq_port=$(free_port) http_port=$(free_port)
"$repo/deploy/mosquitto/run-local.sh" "$mq_port" "$work/mq" &
pids+=($!)

# The secrets a deployment mounts at /run/secrets.
read_token=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
install -d "$work/inference-hub/rootfs/run/secrets"
head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$work/inference-hub/rootfs/run/secrets/hub-ingest-token"
printf %s "$read_token" > "$work/inference-hub/rootfs/run/secrets/hub-read-token"

python3 "$here/start.py" "$work/inference-hub" HUB__MQTT__HOST=127.0.0.1 HUB__MQTT__PORT="$mq_port" \
  HUB__HTTP__LISTEN="127.0.0.1:$http_port" HUB__ARCHIVE__MAX_FILE_AGE=2s > "$work/hub.log" 2>&1 &
hub_pid=$!; pids+=($hub_pid)
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$http_port/health" >/dev/null && break; sleep 0.2; done
curl -sf "http://127.0.0.1:$http_port/health" >/dev/null || fail "the hub image did not become healthy"
python3 "$here/start.py" "$work/edge-agent" EDGE__GATEWAY_ID=gw-image EDGE__MQTT__HOST=127.0.0.1 \
  EDGE__MQTT__PORT="$mq_port" EDGE__UPLINK__MQTT__HOST=127.0.0.1 EDGE__UPLINK__MQTT__PORT="$mq_port" > "$work/agent.log" 2>&1 &
agent_pid=$!; pids+=($agent_pid)
sleep 2
kill -0 "$agent_pid" || fail "the agent image's entrypoint exited"

python3 - "$mq_port" <<'PY'
import sys, json, paho.mqtt.client as mqtt
c = mqtt.Client(client_id="images-test", clean_session=True)
c.connect("127.0.0.1", int(sys.argv[1]))
c.loop_start()
for i in range(200):
    c.publish(f"sensors/press-{i % 4}/kpa", json.dumps({"ts": 1_767_225_600_000 + i * 1000, "value": 100 + i % 7}), qos=1).wait_for_publish()
c.loop_stop(); c.disconnect()
PY
metrics() { curl -sf -H "Authorization: Bearer $read_token" "http://127.0.0.1:$http_port/metrics"; }
durable=""
for _ in $(seq 1 150); do
  durable=$(metrics | awk '/^hub_readings_durable_total /{print $2}')
  [ "$durable" = 200 ] && break
  sleep 0.2
done
[ "$durable" = 200 ] || fail "the hub image holds ${durable:-no} readings, expected 200"
status=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$http_port/metrics")
[ "$status" = 401 ] || fail "/metrics without the read token answered $status"
for pid in "$agent_pid" "$hub_pid"; do
  kill -TERM "$pid"; wait "$pid" || fail "an entrypoint exited with $? on SIGTERM"
done
owner=$(stat -c %u "$work/inference-hub/rootfs/var/lib/inference-hub/wal" 2>/dev/null || stat -c %u "$work/inference-hub/rootfs/var/lib/inference-hub")
[ "$owner" = 65532 ] || fail "the hub wrote its state as uid $owner"
echo "images: both entrypoints ran from their root filesystems as 65532; 200 readings reached the hub through the agent; the API kept its tokens"
