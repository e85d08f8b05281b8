"""Train the multivariate window forecaster (SKAB's pump-rig shape) and write it as ONNX.

A device reports F metrics together (SKAB: 8 sensors, one record per second).
The model sees a window of WINDOW consecutive records, each metric already
z-normalised by the hub with that device/metric's own warm-up mean and std,
laid out time-major ([t0 m0..m7, t1 m0..m7, ...]). A small MLP with a linear
"persistence" skip forecasts the newest record from the WINDOW-1 before it.
Outputs, all computed in the graph so every runtime agrees:
  * score [batch]: mean squared forecast error of the newest record over the metrics;
  * contributions [batch, F]: each metric's squared error (what an anomaly event reports);
  * forecast [batch, F]: the expected newest record (normalised units).

Training data is only SKAB's anomaly-free recording (normal operation of the
rig, no labels involved), cut into experiment-sized pieces, each normalised
with the statistics of its own first WARMUP records exactly as the hub's
warm-up does. Deterministic: fixed seed, float64 numpy training, float32 weights.

Usage: python train_multivariate_forecast.py --skab ../../shared/datasets/skab --out ../multivariate-forecast
"""

import argparse

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from skab_data import CLIP, F, METRICS, training_windows, write_model_dir

WINDOW = 8
HIDDEN = 32
SEED = 20261126
THRESHOLD_QUANTILE = 0.99
OPSET = 17
MODEL_ID = "multivariate-forecast"
MODEL_VERSION = "1.0.0"


def split(x):
    k = (WINDOW - 1) * F
    return x[:, :k], x[:, k:]


def train(x, epochs=60, batch=256, lr=2e-3):
    rng = np.random.default_rng(SEED)
    ctx, target = split(x)
    k = ctx.shape[1]
    w1 = rng.normal(0, 1 / np.sqrt(k), (k, HIDDEN))
    b1 = np.zeros(HIDDEN)
    w2 = rng.normal(0, 0.1 / np.sqrt(HIDDEN), (HIDDEN, F))
    b2 = np.zeros(F)
    # Persistence start: the newest record is forecast as the one before it.
    w3 = np.zeros((k, F))
    w3[k - F:, :] = np.eye(F)
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
            d_y = 2 * (y - yb) / (len(xb) * F)
            grads = [None] * 5
            grads[2] = h.T @ d_y
            grads[3] = d_y.sum(0)
            grads[4] = xb.T @ d_y
            d_h = (d_y @ w2.T) * (1 - h * h)
            grads[0] = xb.T @ d_h
            grads[1] = d_h.sum(0)
            step += 1
            for i, g in enumerate(grads):
                m[i] = 0.9 * m[i] + 0.1 * g
                v[i] = 0.999 * v[i] + 0.001 * g * g
                mh = m[i] / (1 - 0.9 ** step)
                vh = v[i] / (1 - 0.999 ** step)
                params[i] -= lr * mh / (np.sqrt(vh) + 1e-8)
    return [p.astype(np.float32) for p in params]


def scores(params, x):
    w1, b1, w2, b2, w3 = params
    ctx, target = split(x.astype(np.float32))
    y = np.tanh(ctx @ w1 + b1) @ w2 + b2 + ctx @ w3
    return ((y - target) ** 2).mean(1)


def build_graph(params):
    w1, b1, w2, b2, w3 = params
    k = (WINDOW - 1) * F
    i64 = lambda name, vals: numpy_helper.from_array(np.array(vals, dtype=np.int64), name)
    inits = [
        numpy_helper.from_array(w1, "hidden_w"),
        numpy_helper.from_array(b1, "hidden_b"),
        numpy_helper.from_array(w2, "out_w"),
        numpy_helper.from_array(b2, "out_b"),
        numpy_helper.from_array(w3, "skip_w"),
        i64("ctx_start", [0]),
        i64("ctx_end", [k]),
        i64("last_start", [k]),
        i64("last_end", [k + F]),
        i64("axis1", [1]),
    ]
    nodes = [
        helper.make_node("Slice", ["window", "ctx_start", "ctx_end", "axis1"], ["context"], name="context"),
        helper.make_node("Slice", ["window", "last_start", "last_end", "axis1"], ["newest"], name="newest"),
        helper.make_node("Gemm", ["context", "hidden_w", "hidden_b"], ["hidden_lin"], name="hidden"),
        helper.make_node("Tanh", ["hidden_lin"], ["hidden_act"], name="hidden_act"),
        helper.make_node("Gemm", ["hidden_act", "out_w", "out_b"], ["mlp_out"], name="output"),
        helper.make_node("MatMul", ["context", "skip_w"], ["skip_out"], name="skip"),
        helper.make_node("Add", ["mlp_out", "skip_out"], ["forecast"], name="forecast"),
        helper.make_node("Sub", ["forecast", "newest"], ["err"], name="error"),
        helper.make_node("Mul", ["err", "err"], ["contributions"], name="contributions"),
        helper.make_node("ReduceMean", ["contributions"], ["score"], axes=[1], keepdims=0, name="score"),
    ]
    graph = helper.make_graph(
        nodes,
        "multivariate_window_forecaster",
        [helper.make_tensor_value_info("window", TensorProto.FLOAT, ["batch", WINDOW * F])],
        [
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("contributions", TensorProto.FLOAT, ["batch", F]),
            helper.make_tensor_value_info("forecast", TensorProto.FLOAT, ["batch", F]),
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
    ap.add_argument("--skab", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    x = training_windows(args.skab, WINDOW)
    params = train(x)
    threshold = float(np.quantile(scores(params, x), THRESHOLD_QUANTILE))

    model = build_graph(params)
    manifest = {
        "id": MODEL_ID,
        "version": MODEL_VERSION,
        "file": "model.onnx",
        "sha256": None,
        "opset": OPSET,
        "family": "multivariate-window-forecaster",
        "input": {
            "name": "window",
            "shape": ["batch", WINDOW * F],
            "dtype": "float32",
            "window": WINDOW,
            "metrics": METRICS,
            "order": "time-major: oldest record first, within a record the metrics in the order listed",
            "normalisation": "per device/metric z-score with the series' own warm-up mean and std, clipped to +-10",
            "clip": CLIP,
        },
        "outputs": {
            "score": "mean squared forecast error of the newest record over the metrics, in normalised units (>= 0)",
            "contributions": "per metric squared forecast error of the newest record (sums to F x score)",
            "forecast": "the expected newest record, in normalised units",
        },
        "score_output": "score",
        "contributions_output": "contributions",
        "forecast_output": "forecast",
        "threshold": threshold,
        "threshold_calibration": f"{THRESHOLD_QUANTILE} quantile of the score on the training windows",
        "training": {
            "seed": SEED,
            "windows": int(len(x)),
            "data": "SKAB anomaly-free recording only, cut into overlapping 1150-record pieces normalised with their first 200 records",
        },
    }
    sha = write_model_dir(args.out, model, x, WINDOW, SEED, manifest)
    print(f"{MODEL_ID} {MODEL_VERSION}: {len(x)} training windows, threshold {threshold:.4f}, sha256 {sha}")


if __name__ == "__main__":
    main()
