"""Query latency on the demo's data (docs/BENCHMARKS.md).

Starts `iot-lab demo` (release build) for a while, then times each API
query `--repeat` times over real HTTP and prints p50/p99/max per endpoint.

Usage: python3 bench/query_latency.py --hub target/release/inference-hub --warmup 60
"""

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def timed(url):
    t = time.perf_counter()
    with urllib.request.urlopen(url) as r:
        body = r.read()
    return (time.perf_counter() - t) * 1000, len(body)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hub", default="target/release/inference-hub")
    ap.add_argument("--warmup", type=float, default=60)
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args()
    port = free_port()
    data = tempfile.mkdtemp()
    log = open(os.path.join(data, "demo.log"), "w")
    demo = subprocess.Popen([args.hub, "demo", "--duration", f"{args.warmup + 120}s", "--rate", "20", "--data-dir", data,
                             "--listen", f"127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                urllib.request.urlopen(base + "/health")
                break
            except Exception:
                time.sleep(0.5)
        time.sleep(args.warmup)
        devices = json.load(urllib.request.urlopen(base + "/v1/devices"))["devices"]
        d = devices[0]
        m = d["metrics"][0]
        last = int(time.mktime(time.strptime(m["ts"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone) * 1000
        day = f"from={last - 86_400_000}&to={last + 1}"
        rd = f"/v1/devices/{d['device']}/metrics/{m['metric']}/readings"
        queries = {
            "GET /v1/devices": "/v1/devices",
            "GET /v1/anomalies?limit=100": "/v1/anomalies?limit=100",
            "readings, 1 day raw": f"{rd}?{day}&limit=100000",
            "readings, 1 day, step=5m": f"{rd}?{day}&step=5m&agg=mean",
            "query, 1 day of one device, jsonl": f"/v1/query?{day}&device={d['device']}&format=jsonl",
            "query, 1 day of all devices, csv": f"/v1/query?{day}&format=csv&columns=device,ts,value,score",
        }
        print(f"demo data after {args.warmup:.0f}s: {len(devices)} devices")
        print("| query | p50 ms | p99 ms | max ms | response bytes |")
        print("|---|---|---|---|---|")
        for name, path in queries.items():
            samples = []
            size = 0
            for _ in range(args.repeat):
                ms, size = timed(base + path)
                samples.append(ms)
            samples.sort()
            p = lambda q: samples[min(len(samples) - 1, int(q * (len(samples) - 1)))]
            print(f"| {name} | {p(0.5):.1f} | {p(0.99):.1f} | {samples[-1]:.1f} | {size} |")
    finally:
        demo.terminate()
        demo.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
