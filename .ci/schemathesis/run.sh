#!/usr/bin/env bash
# Schemathesis (every check) against a running hub's generated OpenAPI
# document: with a token, without one (every protected route must refuse),
# and against a hub configured without tokens (whose document then declares
# no security). Each hub first takes three real batches (three devices,
# anomalies among them) so that the responses schemathesis checks carry data.
# Usage: .ci/schemathesis/run.sh <inference-hub binary> <iot-lab binary>
set -euo pipefail
HUB_BIN=$1
LAB_BIN=$2
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=$(mktemp -d)
export SCHEMATHESIS_HOOKS=hooks
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"
TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(16))')

"$LAB_BIN" bench-hub --batches 3 --rows 600 --devices 3 --write-envelopes "$WORK/envelopes" \
  --model-dir "$ROOT/models/novelty" > "$WORK/envelopes.log" 2>&1

# post_batches [token]: the envelopes into the running hub.
post_batches() {
  local f code
  for f in "$WORK"/envelopes/*.iotb; do
    code=$(curl -s -o /dev/null -w '%{http_code}' ${1:+-H "Authorization: Bearer $1"} \
      -H 'Content-Type: application/vnd.iot-pipeline.batch' --data-binary @"$f" "$HUB_URL/v1/batches")
    [ "$code" = 200 ] || { echo "seeding batch $f answered $code"; return 1; }
  done
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_hub <name> <with tokens: yes|no>; sets HUB_PID and HUB_URL
start_hub() {
  local dir="$WORK/$1" port
  port=$(free_port)
  mkdir -p "$dir"
  cat > "$dir/hub.toml" <<TOML
hub-id = "contract_$1"
data-dir = "$dir/data"
[mqtt]
enabled = false
[http]
listen = "127.0.0.1:$port"
[scoring]
model-dir = "$ROOT/models/novelty"
TOML
  if [ "$2" = yes ]; then
    printf '[[http.tokens]]\nname = "contract"\ntoken = "%s"\nscopes = ["admin"]\n' "$TOKEN" >> "$dir/hub.toml"
  fi
  "$HUB_BIN" --config "$dir/hub.toml" run > "$dir/hub.log" 2>&1 &
  HUB_PID=$!
  HUB_URL="http://127.0.0.1:$port"
  for _ in $(seq 1 100); do curl -sf "$HUB_URL/health" >/dev/null && return 0; sleep 0.2; done
  echo "hub $1 did not start"; cat "$dir/hub.log"; return 1
}

st() { (cd "$HERE" && schemathesis --no-color run "$@" --checks all); }

start_hub tokens yes
trap 'kill $HUB_PID 2>/dev/null || true' EXIT
post_batches "$TOKEN"
curl -sf -H "Authorization: Bearer $TOKEN" "$HUB_URL/v1/openapi.json" > "$WORK/openapi.json"
echo "--- with a token"
st "$HUB_URL/v1/openapi.json" -H "Authorization: Bearer $TOKEN"
echo "--- without a token (the document read with one)"
st "$WORK/openapi.json" --url "$HUB_URL"
kill $HUB_PID; wait $HUB_PID 2>/dev/null || true

start_hub anonymous no
post_batches
echo "--- a hub without tokens"
st "$HUB_URL/v1/openapi.json"
kill $HUB_PID; wait $HUB_PID 2>/dev/null || true
