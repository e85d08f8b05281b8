"""onnxruntime's side of the scoring benchmark (docs/BENCHMARKS.md).

Runs a committed model with onnxruntime (the reference runtime) on random
normalised windows, `--batch` windows per call, on `--threads` intra-op
threads, for about `--seconds`, and prints windows per second. Compare with
`iot-lab bench-scoring --model-dir <same dir> --batch <same>` (tract,
one thread).

Usage: python models/bench_onnxruntime.py --model-dir models/univariate-forecast
"""

import argparse
import json
import os
import time

import numpy as np
import onnxruntime as ort


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    with open(os.path.join(args.model_dir, "manifest.json")) as f:
        manifest = json.load(f)
    width = manifest["input"]["window"] * len(manifest["input"].get("metrics", [None]))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(
        os.path.join(args.model_dir, manifest["file"]), opts, providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(1)
    x = ((rng.random((args.batch, width)) - 0.5) * 4).astype(np.float32)
    feed = {manifest["input"]["name"]: x}
    out = [manifest["score_output"]]
    sess.run(out, feed)
    start, done = time.perf_counter(), 0
    while time.perf_counter() - start < args.seconds:
        sess.run(out, feed)
        done += args.batch
    rate = done / (time.perf_counter() - start)
    print(f"| {manifest['id']} {manifest['version']} | {args.batch} | onnxruntime {ort.__version__}, {args.threads} thread(s) | {rate:.0f} windows/s |")


if __name__ == "__main__":
    main()
