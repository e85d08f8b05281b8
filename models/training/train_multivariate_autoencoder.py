"""Train the multivariate window autoencoder (SKAB's pump-rig shape) and write it as ONNX.

A device reports F metrics together (SKAB: 8 sensors, one record per second).
The model sees a window of WINDOW consecutive records, each metric
z-normalised by the hub with that device/metric's own warm-up mean and std
(kept fixed afterwards: this model judges the *state* of the machine against
its normal state), laid out time-major. A dense autoencoder with a narrow
tanh bottleneck reconstructs the window; what normal operation cannot explain
(a sensor leaving its normal range, or the sensors leaving their normal
relationship) does not survive the bottleneck. Outputs, computed in the graph:
  * score [batch]: mean squared reconstruction error of the newest record;
  * contributions [batch, F]: each metric's squared error in the newest record;
  * forecast [batch, F]: the reconstructed newest record (its expected value).

Training data is only SKAB's anomaly-free recording (normal operation of the
rig, no labels involved), cut into experiment-sized pieces, each normalised
with the statistics of its own first WARMUP records exactly as the hub's
warm-up does. Deterministic: fixed seed, float64 numpy training, float32 weights.

Usage: python train_multivariate_autoencoder.py --skab ../../shared/datasets/skab --out ../multivariate-autoencoder
"""

import argparse

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from skab_data import CLIP, F, METRICS, training_windows, write_model_dir

WINDOW = 4
HIDDEN = 16
BOTTLENECK = 4
SEED = 20261126
THRESHOLD_QUANTILE = 0.99
OPSET = 17
MODEL_ID = "multivariate-autoencoder"
MODEL_VERSION = "1.0.0"


def init(rng, n_in, n_out):
    return rng.normal(0, 1 / np.sqrt(n_in), (n_in, n_out)), np.zeros(n_out)


def forward(params, x):
    w1, b1, w2, b2, w3, b3, w4, b4 = params
    h1 = np.tanh(x @ w1 + b1)
    h2 = np.tanh(h1 @ w2 + b2)
    h3 = np.tanh(h2 @ w3 + b3)
    return h1, h2, h3, h3 @ w4 + b4


def train(x, epochs=60, batch=256, lr=2e-3):
    rng = np.random.default_rng(SEED)
    d = x.shape[1]
    params = []
    for n_in, n_out in [(d, HIDDEN), (HIDDEN, BOTTLENECK), (BOTTLENECK, HIDDEN), (HIDDEN, d)]:
        params.extend(init(rng, n_in, n_out))
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    step = 0
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch):
            xb = x[order[start:start + batch]]
            w1, b1, w2, b2, w3, b3, w4, b4 = params
            h1, h2, h3, y = forward(params, xb)
            d_y = 2 * (y - xb) / (len(xb) * d)
            g = [None] * 8
            g[6], g[7] = h3.T @ d_y, d_y.sum(0)
            d3 = (d_y @ w4.T) * (1 - h3 * h3)
            g[4], g[5] = h2.T @ d3, d3.sum(0)
            d2 = (d3 @ w3.T) * (1 - h2 * h2)
            g[2], g[3] = h1.T @ d2, d2.sum(0)
            d1 = (d2 @ w2.T) * (1 - h1 * h1)
            g[0], g[1] = xb.T @ d1, d1.sum(0)
            step += 1
            for i, gi in enumerate(g):
                m[i] = 0.9 * m[i] + 0.1 * gi
                v[i] = 0.999 * v[i] + 0.001 * gi * gi
                mh = m[i] / (1 - 0.9 ** step)
                vh = v[i] / (1 - 0.999 ** step)
                params[i] -= lr * mh / (np.sqrt(vh) + 1e-8)
    return [p.astype(np.float32) for p in params]


def scores(params, x):
    x = x.astype(np.float32)
    y = forward(params, x)[3]
    k = (WINDOW - 1) * F
    return ((y[:, k:] - x[:, k:]) ** 2).mean(1)


def build_graph(params):
    w1, b1, w2, b2, w3, b3, w4, b4 = params
    k = (WINDOW - 1) * F
    i64 = lambda name, vals: numpy_helper.from_array(np.array(vals, dtype=np.int64), name)
    inits = [
        numpy_helper.from_array(w1, "enc1_w"), numpy_helper.from_array(b1, "enc1_b"),
        numpy_helper.from_array(w2, "enc2_w"), numpy_helper.from_array(b2, "enc2_b"),
        numpy_helper.from_array(w3, "dec1_w"), numpy_helper.from_array(b3, "dec1_b"),
        numpy_helper.from_array(w4, "dec2_w"), numpy_helper.from_array(b4, "dec2_b"),
        i64("last_start", [k]),
        i64("last_end", [k + F]),
        i64("axis1", [1]),
    ]
    nodes = [
        helper.make_node("Gemm", ["window", "enc1_w", "enc1_b"], ["e1"], name="enc1"),
        helper.make_node("Tanh", ["e1"], ["e1a"], name="enc1_act"),
        helper.make_node("Gemm", ["e1a", "enc2_w", "enc2_b"], ["e2"], name="enc2"),
        helper.make_node("Tanh", ["e2"], ["code"], name="bottleneck"),
        helper.make_node("Gemm", ["code", "dec1_w", "dec1_b"], ["d1"], name="dec1"),
        helper.make_node("Tanh", ["d1"], ["d1a"], name="dec1_act"),
        helper.make_node("Gemm", ["d1a", "dec2_w", "dec2_b"], ["reconstruction"], name="dec2"),
        helper.make_node("Slice", ["reconstruction", "last_start", "last_end", "axis1"], ["forecast"], name="forecast"),
        helper.make_node("Slice", ["window", "last_start", "last_end", "axis1"], ["newest"], name="newest"),
        helper.make_node("Sub", ["forecast", "newest"], ["err"], name="error"),
        helper.make_node("Mul", ["err", "err"], ["contributions"], name="contributions"),
        helper.make_node("ReduceMean", ["contributions"], ["score"], axes=[1], keepdims=0, name="score"),
    ]
    graph = helper.make_graph(
        nodes,
        "multivariate_window_autoencoder",
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
        "family": "multivariate-window-autoencoder",
        "decision": "fixed",
        "input": {
            "name": "window",
            "shape": ["batch", WINDOW * F],
            "dtype": "float32",
            "window": WINDOW,
            "metrics": METRICS,
            "order": "time-major: oldest record first, within a record the metrics in the order listed",
            "normalisation": "per device/metric z-score with the series' own warm-up mean and std, kept fixed after the warm-up, clipped to +-10",
            "clip": CLIP,
        },
        "outputs": {
            "score": "mean squared reconstruction error of the newest record over the metrics, in normalised units (>= 0)",
            "contributions": "per metric squared reconstruction error of the newest record (sums to F x score)",
            "forecast": "the reconstructed (expected) newest record, in normalised units",
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
