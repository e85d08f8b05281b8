"""Train the univariate window autoencoder and write it as ONNX.

The model sees a window of WINDOW consecutive readings of one device/metric,
each already z-normalised by the hub with that series' own mean and standard
deviation (learned during the series' warm-up). It reconstructs the window
through a narrow bottleneck; the mean squared reconstruction error is the
anomaly score, computed inside the graph so every runtime agrees on it.

Training data is only what a deployment has before it scores anything:
  * the NAB files labelled as containing no anomaly (artificialNoAnomaly), and
  * the first 15% of every other NAB file (NAB's own probation period, which
    is also the hub's warm-up), never the labelled part.
Each series is normalised with the statistics of its own first 15%, exactly as
the hub's warm-up does.

Deterministic: fixed seed, float64 numpy training, float32 weights in the file.
Usage: python train_univariate_ae.py --nab ../../shared/datasets/nab --out ../univariate-ae
"""

import argparse
import csv
import glob
import hashlib
import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WINDOW = 16
HIDDEN = 6
SEED = 20261126
WARMUP_FRACTION = 0.15
OPSET = 17
MODEL_ID = "univariate-ae"
MODEL_VERSION = "1.0.0"


def load_series(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return np.array([float(r["value"]) for r in rows], dtype=np.float64)


def normalise(series, warmup):
    head = series[:warmup]
    mean = head.mean()
    std = head.std()
    # Same floor as the hub: a flat warm-up must not blow up the scale.
    std = max(std, 1e-3 * max(abs(mean), 1.0))
    return (series - mean) / std


def windows(series):
    n = len(series) - WINDOW + 1
    if n <= 0:
        return np.zeros((0, WINDOW))
    idx = np.arange(WINDOW)[None, :] + np.arange(n)[:, None]
    return series[idx]


def training_windows(nab_root):
    out = []
    for path in sorted(glob.glob(os.path.join(nab_root, "data", "*", "*.csv"))):
        series = load_series(path)
        warmup = max(int(len(series) * WARMUP_FRACTION), WINDOW * 4)
        z = normalise(series, warmup)
        if "artificialNoAnomaly" in path:
            out.append(windows(z))
        else:
            out.append(windows(z[:warmup]))
    x = np.concatenate(out)
    # The hub clips normalised values to +-CLIP before scoring.
    return np.clip(x, -CLIP, CLIP)


CLIP = 10.0
THRESHOLD_QUANTILE = 0.99


def train(x, epochs=60, batch=256, lr=3e-3):
    rng = np.random.default_rng(SEED)
    w1 = rng.normal(0, 1 / np.sqrt(WINDOW), (WINDOW, HIDDEN))
    b1 = np.zeros(HIDDEN)
    w2 = rng.normal(0, 1 / np.sqrt(HIDDEN), (HIDDEN, WINDOW))
    b2 = np.zeros(WINDOW)
    params = [w1, b1, w2, b2]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    step = 0
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch):
            xb = x[order[start:start + batch]]
            h = np.tanh(xb @ w1 + b1)
            y = h @ w2 + b2
            d_y = 2 * (y - xb) / xb.size
            g_w2 = h.T @ d_y
            g_b2 = d_y.sum(0)
            d_h = (d_y @ w2.T) * (1 - h * h)
            g_w1 = xb.T @ d_h
            g_b1 = d_h.sum(0)
            step += 1
            for i, g in enumerate([g_w1, g_b1, g_w2, g_b2]):
                m[i] = 0.9 * m[i] + 0.1 * g
                v[i] = 0.999 * v[i] + 0.001 * g * g
                mh = m[i] / (1 - 0.9 ** step)
                vh = v[i] / (1 - 0.999 ** step)
                params[i] -= lr * mh / (np.sqrt(vh) + 1e-8)
    return [p.astype(np.float32) for p in params]


def scores(params, x):
    w1, b1, w2, b2 = params
    x = x.astype(np.float32)
    y = np.tanh(x @ w1 + b1) @ w2 + b2
    return ((y - x) ** 2).mean(axis=1)


def build_graph(params):
    w1, b1, w2, b2 = params
    inits = [
        numpy_helper.from_array(w1, "enc_w"),
        numpy_helper.from_array(b1, "enc_b"),
        numpy_helper.from_array(w2, "dec_w"),
        numpy_helper.from_array(b2, "dec_b"),
    ]
    nodes = [
        helper.make_node("Gemm", ["window", "enc_w", "enc_b"], ["enc_lin"], name="encoder"),
        helper.make_node("Tanh", ["enc_lin"], ["code"], name="encoder_act"),
        helper.make_node("Gemm", ["code", "dec_w", "dec_b"], ["reconstruction"], name="decoder"),
        helper.make_node("Sub", ["reconstruction", "window"], ["err"], name="error"),
        helper.make_node("Mul", ["err", "err"], ["sq_err"], name="squared_error"),
        helper.make_node("ReduceMean", ["sq_err"], ["score"], axes=[1], keepdims=0, name="score"),
    ]
    graph = helper.make_graph(
        nodes,
        "univariate_window_autoencoder",
        [helper.make_tensor_value_info("window", TensorProto.FLOAT, ["batch", WINDOW])],
        [
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("reconstruction", TensorProto.FLOAT, ["batch", WINDOW]),
        ],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="iot-pipeline/models/training",
        producer_version=MODEL_VERSION,
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nab", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    x = training_windows(args.nab)
    params = train(x)
    train_scores = scores(params, x)
    # Calibrated so that about 1 window in 100 of normal operation exceeds it.
    # (The warm-up periods of real recordings contain spikes of their own, so
    # a higher quantile measures those spikes rather than normal behaviour.)
    threshold = float(np.quantile(train_scores, THRESHOLD_QUANTILE))

    model = build_graph(params)
    os.makedirs(args.out, exist_ok=True)
    onnx_path = os.path.join(args.out, "model.onnx")
    data = model.SerializeToString(deterministic=True)
    with open(onnx_path, "wb") as f:
        f.write(data)
    sha = hashlib.sha256(data).hexdigest()

    # Golden vectors computed by onnxruntime, the reference implementation.
    import onnxruntime as ort

    rng = np.random.default_rng(SEED + 1)
    golden_in = np.concatenate([
        x[rng.choice(len(x), 24, replace=False)],
        rng.normal(0, 3, (6, WINDOW)),
        np.zeros((1, WINDOW)),
        np.full((1, WINDOW), 8.0),
    ]).astype(np.float32)
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    score_out, recon_out = sess.run(["score", "reconstruction"], {"window": golden_in})
    with open(os.path.join(args.out, "golden.json"), "w") as f:
        json.dump({
            "producer": f"onnxruntime {ort.__version__}",
            "input": golden_in.tolist(),
            "score": score_out.tolist(),
            "reconstruction": recon_out.tolist(),
        }, f)

    manifest = {
        "id": MODEL_ID,
        "version": MODEL_VERSION,
        "file": "model.onnx",
        "sha256": sha,
        "opset": OPSET,
        "family": "univariate-window-autoencoder",
        "input": {
            "name": "window",
            "shape": ["batch", WINDOW],
            "dtype": "float32",
            "window": WINDOW,
            "order": "oldest first, one device/metric per row",
            "normalisation": "per device/metric z-score with the series' own warm-up mean and std, clipped to +-10",
            "clip": CLIP,
        },
        "outputs": {
            "score": "mean squared reconstruction error of the window (>= 0); higher is more anomalous",
            "reconstruction": "the reconstructed window, in normalised units",
        },
        "score_output": "score",
        "threshold": threshold,
        "threshold_calibration": f"{THRESHOLD_QUANTILE} quantile of the score on the training windows",
        "training": {
            "seed": SEED,
            "windows": int(len(x)),
            "data": "NAB artificialNoAnomaly in full, and the first 15% (warm-up/probation) of every other NAB file",
        },
    }
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    print(f"{MODEL_ID} {MODEL_VERSION}: {len(x)} training windows, threshold {threshold:.4f}, sha256 {sha}")


if __name__ == "__main__":
    main()
