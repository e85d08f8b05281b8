#!/bin/sh
# Mosquitto with the shipped configuration (mosquitto.conf next to this
# script) on another port and persistence directory, as the current user:
# for tests and benchmarks that need a real broker on one machine. Logs to
# DIR/mosquitto.log; the process is Mosquitto itself (exec), so `$!` of
# `run-local.sh PORT DIR &` is the broker's pid.
#
#   deploy/mosquitto/run-local.sh PORT DIR
set -eu
port=$1
dir=$2
mkdir -p "$dir"
sed -e "s/^listener 1883 127.0.0.1/listener $port 127.0.0.1/" \
    -e "s|^persistence_location .*|persistence_location $dir/|" \
    "$(dirname "$0")/mosquitto.conf" > "$dir/mosquitto.conf"
echo "user $(id -un)" >> "$dir/mosquitto.conf"
exec mosquitto -c "$dir/mosquitto.conf" > "$dir/mosquitto.log" 2>&1
