#!/bin/bash
# The agent's memory as the gateways run it (profile gateway): idle RSS and
# peak RSS with 1,000 devices, natively (x86-64, static musl) and under qemu-user for
# aarch64 and armv7: there the process's RSS includes the emulator, and
# bench/qemu_guest_rss.py reads the ARM program's own share from the
# process's memory map. Needs mosquitto, qemu-user-static, the release lab binary and the
# gateway builds (README, "Running the binaries separately").
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${MESSAGES:-50000}
DIR=$(mktemp -d)
trap 'kill $MQ_PID 2>/dev/null || true; rm -rf "$DIR"' EXIT
PORT=$((20000 + RANDOM % 10000))
deploy/mosquitto/run-local.sh "$PORT" "$DIR/mq" &
MQ_PID=$!
sleep 1
wrap() { # name, command...: a script that runs the agent the way given
  local f="$DIR/$1"; shift
  printf '#!/bin/sh\nexec %s "$@"\n' "$*" > "$f"; chmod +x "$f"; echo "$f"
}
NATIVE=$(wrap native "$PWD/target/x86_64-unknown-linux-musl/gateway/edge-agent")
AARCH64=$(wrap aarch64 qemu-aarch64-static "$PWD/target/aarch64-unknown-linux-musl/gateway/edge-agent")
ARMV7=$(wrap armv7 qemu-arm-static "$PWD/target/armv7-unknown-linux-gnueabihf/gateway/edge-agent")
for agent in "$NATIVE" "$AARCH64" "$ARMV7"; do
  name=$(basename "$agent")
  cat > "$DIR/idle.toml" <<TOML
gateway-id = "idle-$name"
[mqtt]
port = $PORT
broker-inflight = 1000
[[subscriptions]]
filter = "idle/+/+"
topic-template = "idle/{device}/{metric}"
[uplink.mqtt]
port = $PORT
[spool]
dir = "$DIR/spool-$name"
TOML
  "$agent" --config "$DIR/idle.toml" run > "$DIR/idle-$name.log" 2>&1 &
  pid=$!
  sleep 10
  echo "$name idle: $(grep -E 'VmRSS' /proc/$pid/status | tr -s ' ')"
  [ "$name" = native ] || echo "$name idle, the ARM program alone: $(bench/qemu_guest_rss.py "$DIR/idle.toml" 1)"
  kill $pid; wait $pid 2>/dev/null || true
  echo "$name with 1000 devices (QoS 1, spool, $MESSAGES messages):"
  [ "$name" = native ] || { bench/qemu_guest_rss.py "$(tail -1 "$agent" | cut -d' ' -f3)" > "$DIR/guest-$name" & SAMPLER=$!; }
  target/release/iot-lab bench --devices 1000 --messages "$MESSAGES" --qos 1 --spool \
    --broker 127.0.0.1:$PORT --broker-inflight 1000 --edge-bin "$agent" | tail -1
  [ "$name" = native ] || { wait "$SAMPLER"; echo "$name with 1000 devices, the ARM program alone: $(cat "$DIR/guest-$name")"; }
done
