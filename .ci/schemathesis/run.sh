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

# Both hubs run at once and the three runs go side by side (schemathesis is
# one single-threaded Python process per run); each run's report is printed
# whole, in order, and any failing run fails the script.
start_hub tokens yes
TOKENS_PID=$HUB_PID TOKENS_URL=$HUB_URL
trap 'kill $TOKENS_PID 2>/dev/null || true' EXIT
post_batches "$TOKEN"
curl -sf -H "Authorization: Bearer $TOKEN" "$TOKENS_URL/v1/openapi.json" > "$WORK/openapi.json"
start_hub anonymous no
ANON_PID=$HUB_PID
trap 'kill $TOKENS_PID $ANON_PID 2>/dev/null || true' EXIT
post_batches

st "$TOKENS_URL/v1/openapi.json" -H "Authorization: Bearer $TOKEN" > "$WORK/with-token.out" 2>&1 &
RUN1=$!
st "$WORK/openapi.json" --url "$TOKENS_URL" > "$WORK/without-token.out" 2>&1 &
RUN2=$!
st "$HUB_URL/v1/openapi.json" > "$WORK/no-tokens.out" 2>&1 &
RUN3=$!
failed=0
report() { # report <title> <pid> <output>
  echo "--- $1"
  wait "$2" || { failed=1; echo "(schemathesis failed: $1)"; }
  cat "$3"
}
report "with a token" $RUN1 "$WORK/with-token.out"
report "without a token (the document read with one)" $RUN2 "$WORK/without-token.out"
report "a hub without tokens" $RUN3 "$WORK/no-tokens.out"
kill $TOKENS_PID $ANON_PID 2>/dev/null || true
wait $TOKENS_PID $ANON_PID 2>/dev/null || true
exit $failed
