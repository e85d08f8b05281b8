#!/bin/bash
# The cost of TLS on both MQTT hops (devices -> broker -> agent, agent ->
# broker -> hub): `iot-lab bench` on one Mosquitto with a plain listener and
# a mutual-TLS listener, alternating, ROUNDS rounds (docs/BENCHMARKS.md,
# "TLS on both hops"). Needs mosquitto and the release binaries
# (cargo build --release -p lab -p edge-agent -p inference-hub).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
ARGS=${ARGS:---devices 1000 --messages 200000 --qos 1 --spool}
DIR=$(mktemp -d)
trap 'kill $MQ_PID 2>/dev/null || true; rm -rf "$DIR"' EXIT
target/release/iot-lab pki --out "$DIR/pki" --gateway bench >/dev/null
PLAIN=$((20000 + RANDOM % 10000)); TLS=$((PLAIN + 1))
mkdir -p "$DIR/data"
cat > "$DIR/mosquitto.conf" <<CONF
user $(id -un)
max_inflight_messages 1000
max_queued_messages 1000000
max_packet_size 16777216
persistence true
persistence_location $DIR/data/
autosave_interval 1
allow_anonymous true
listener $PLAIN 127.0.0.1
listener $TLS 127.0.0.1
cafile $DIR/pki/ca.pem
certfile $DIR/pki/broker.pem
keyfile $DIR/pki/broker.key
require_certificate true
use_identity_as_username true
CONF
mosquitto -c "$DIR/mosquitto.conf" > "$DIR/mosquitto.log" 2>&1 &
MQ_PID=$!
sleep 1
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round: plain"
  target/release/iot-lab bench $ARGS --broker 127.0.0.1:$PLAIN --broker-inflight 1000 | tail -1
  echo "round $round: TLS on every MQTT connection"
  target/release/iot-lab bench $ARGS --broker 127.0.0.1:$TLS --broker-inflight 1000 --tls-dir "$DIR/pki" | tail -1
done
