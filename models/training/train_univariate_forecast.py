"""Train the univariate window forecaster and write it as ONNX.

The model sees a window of WINDOW consecutive readings of one device/metric,
each already z-normalised by the hub with that series' own mean and standard
deviation (learned during the series' warm-up). A small MLP predicts the
newest reading from the WINDOW-1 before it; the squared forecast error of the
newest reading is the anomaly score, computed inside the graph so every
runtime agrees on it. (An autoencoder that also sees the newest reading can
partly copy it and under-scores exactly the reading being judged.)

Training data is only what a deployment has before it scores anything:
  * the NAB files labelled as containing no anomaly (artificialNoAnomaly), and
  * the first 15% of every other NAB file (NAB's own probation period, which
    is also the hub's warm-up), never the labelled part.
Each series is normalised with the statistics of its own first 15%, exactly as
the hub's warm-up does.

Deterministic: fixed seed, float64 numpy training, float32 weights in the file.
Usage: python train_univariate_forecast.py --nab ../../shared/datasets/nab --out ../univariate-forecast
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
HIDDEN = 8
SEED = 20261126
WARMUP_FRACTION = 0.15
OPSET = 17
MODEL_ID = "univariate-forecast"
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


def train(x, epochs=40, batch=256, lr=3e-3):
    """x: [n, WINDOW]; learns f(x[:, :-1]) ~ x[:, -1] with Adam."""
    rng = np.random.default_rng(SEED)
    ctx, target = x[:, :-1], x[:, -1:]
    k = WINDOW - 1
    w1 = rng.normal(0, 1 / np.sqrt(k), (k, HIDDEN))
    b1 = np.zeros(HIDDEN)
    w2 = rng.normal(0, 1 / np.sqrt(HIDDEN), (HIDDEN, 1))
    b2 = np.zeros(1)
    # A linear skip from the inputs lets the net start from "persistence".
    w3 = np.zeros((k, 1))
    w3[-1, 0] = 1.0
    params = [w1, b1, w2, b2, w3]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    step = 0
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch):
            idx = order[start:start + batch]
            xb, yb = ctx[idx], target[idx]
            h = np.tanh(xb @ w1 + b1)
            y = h @ w2 + b2 + xb @ w3
            d_y = 2 * (y - yb) / len(xb)
            g_w2 = h.T @ d_y
            g_b2 = d_y.sum(0)
            g_w3 = xb.T @ d_y
            d_h = (d_y @ w2.T) * (1 - h * h)
            g_w1 = xb.T @ d_h
            g_b1 = d_h.sum(0)
            step += 1
            for i, g in enumerate([g_w1, g_b1, g_w2, g_b2, g_w3]):
                m[i] = 0.9 * m[i] + 0.1 * g
                v[i] = 0.999 * v[i] + 0.001 * g * g
                mh = m[i] / (1 - 0.9 ** step)
                vh = v[i] / (1 - 0.999 ** step)
                params[i] -= lr * mh / (np.sqrt(vh) + 1e-8)
    return [p.astype(np.float32) for p in params]


def scores(params, x):
    w1, b1, w2, b2, w3 = params
    x = x.astype(np.float32)
    ctx, target = x[:, :-1], x[:, -1:]
    y = np.tanh(ctx @ w1 + b1) @ w2 + b2 + ctx @ w3
    return ((y - target) ** 2)[:, 0]


def build_graph(params):
    w1, b1, w2, b2, w3 = params
    i64 = lambda name, vals: numpy_helper.from_array(np.array(vals, dtype=np.int64), name)
    inits = [
        numpy_helper.from_array(w1, "hidden_w"),
        numpy_helper.from_array(b1, "hidden_b"),
        numpy_helper.from_array(w2, "out_w"),
        numpy_helper.from_array(b2, "out_b"),
        numpy_helper.from_array(w3, "skip_w"),
        i64("ctx_start", [0]),
        i64("ctx_end", [WINDOW - 1]),
        i64("last_start", [WINDOW - 1]),
        i64("last_end", [WINDOW]),
        i64("axis1", [1]),
    ]
    nodes = [
        helper.make_node("Slice", ["window", "ctx_start", "ctx_end", "axis1"], ["context"], name="context"),
        helper.make_node("Slice", ["window", "last_start", "last_end", "axis1"], ["newest"], name="newest"),
        helper.make_node("Gemm", ["context", "hidden_w", "hidden_b"], ["hidden_lin"], name="hidden"),
        helper.make_node("Tanh", ["hidden_lin"], ["hidden_act"], name="hidden_act"),
        helper.make_node("Gemm", ["hidden_act", "out_w", "out_b"], ["mlp_out"], name="output"),
        helper.make_node("MatMul", ["context", "skip_w"], ["skip_out"], name="skip"),
        helper.make_node("Add", ["mlp_out", "skip_out"], ["forecast_2d"], name="forecast_sum"),
        helper.make_node("Sub", ["forecast_2d", "newest"], ["err"], name="error"),
        helper.make_node("Mul", ["err", "err"], ["sq_err"], name="squared_error"),
        helper.make_node("ReduceMean", ["sq_err"], ["score"], axes=[1], keepdims=0, name="score"),
        helper.make_node("ReduceMean", ["forecast_2d"], ["forecast"], axes=[1], keepdims=0, name="forecast"),
    ]
    graph = helper.make_graph(
        nodes,
        "univariate_window_forecaster",
        [helper.make_tensor_value_info("window", TensorProto.FLOAT, ["batch", WINDOW])],
        [
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("forecast", TensorProto.FLOAT, ["batch"]),
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
    score_out, forecast_out = sess.run(["score", "forecast"], {"window": golden_in})
    with open(os.path.join(args.out, "golden.json"), "w") as f:
        json.dump({
            "producer": f"onnxruntime {ort.__version__}",
            "input": golden_in.tolist(),
            "score": score_out.tolist(),
            "forecast": forecast_out.tolist(),
        }, f)

    manifest = {
        "id": MODEL_ID,
        "version": MODEL_VERSION,
        "file": "model.onnx",
        "sha256": sha,
        "opset": OPSET,
        "family": "univariate-window-forecaster",
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
            "score": "squared error of the forecast of the newest reading, in normalised units (>= 0); higher is more anomalous",
            "forecast": "the expected value of the newest reading, in normalised units",
        },
        "score_output": "score",
        "forecast_output": "forecast",
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
