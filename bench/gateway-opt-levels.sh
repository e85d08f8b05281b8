#!/bin/bash
# Which opt-level the gateway profile uses, by measurement: the agent built
# with opt-level "s", "z" and 3 (LTO fat, one codegen unit, stripped, as the
# profile), its size for x86-64 and aarch64 (musl, static), and its
# throughput and CPU time per message natively on x86-64 (`iot-lab bench --edge-bin`, QoS 1 with the
# spool, 1,000 devices; ROUNDS rounds, the builds alternating). Needs
# mosquitto, the ARM toolchain of the README and the release lab binary
# (cargo build --release -p lab).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
MESSAGES=${MESSAGES:-100000}
OUT=$(mktemp -d)
for level in s z 3; do
  export CARGO_PROFILE_GATEWAY_OPT_LEVEL=$level
  cargo build -q --profile gateway -p edge-agent --target x86_64-unknown-linux-musl
  cp target/x86_64-unknown-linux-musl/gateway/edge-agent "$OUT/x86_64-$level"
  cargo build -q --profile gateway -p edge-agent --target aarch64-unknown-linux-musl
  cp target/aarch64-unknown-linux-musl/gateway/edge-agent "$OUT/aarch64-$level"
done
unset CARGO_PROFILE_GATEWAY_OPT_LEVEL
# Leave the profile's own builds in place again.
cargo build -q --profile gateway -p edge-agent --target x86_64-unknown-linux-musl
cargo build -q --profile gateway -p edge-agent --target aarch64-unknown-linux-musl
ls -l "$OUT"

PORT=$((20000 + RANDOM % 10000))
deploy/mosquitto/run-local.sh "$PORT" "$OUT/mq" &
MQ_PID=$!
trap 'kill $MQ_PID 2>/dev/null || true' EXIT
sleep 1
for round in $(seq 1 "$ROUNDS"); do
  for level in s z 3; do
    echo "round $round, opt-level $level:"
    target/release/iot-lab bench --devices 1000 --messages "$MESSAGES" --qos 1 --spool \
      --broker 127.0.0.1:$PORT --broker-inflight 1000 --edge-bin "$OUT/x86_64-$level" | tail -1
  done
done
