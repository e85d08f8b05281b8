"""What the two multivariate SKAB models share: reading SKAB's anomaly-free
recording, normalising it as the hub's warm-up does, cutting windows, and
writing a model directory (ONNX, golden vectors from onnxruntime, manifest).
"""

import csv
import hashlib
import json
import os

import numpy as np

METRICS = [
    "Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure",
    "Temperature", "Thermocouple", "Voltage", "Volume Flow RateRMS",
]
F = len(METRICS)
WARMUP = 200          # the hub's default scoring.warmup-readings
PIECE = 1150          # about the length of one SKAB experiment file
CLIP = 10.0


def load_records(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    return np.array([[float(r[m]) for m in METRICS] for r in rows], dtype=np.float64)


def normalise(piece):
    head = piece[:WARMUP]
    mean = head.mean(0)
    std = head.std(0, ddof=1)
    std = np.maximum(std, 1e-3 * np.maximum(np.abs(mean), 1.0))
    return np.clip((piece - mean) / std, -CLIP, CLIP)


def windows(z, window):
    n = len(z) - window + 1
    idx = np.arange(window)[None, :] + np.arange(n)[:, None]
    return z[idx].reshape(n, window * F)


def training_windows(skab_root, window):
    """Overlapping experiment-sized pieces of the anomaly-free recording, each
    normalised with its own first WARMUP records; only the windows the hub
    scores (after the warm-up)."""
    records = load_records(os.path.join(skab_root, "data", "anomaly-free", "anomaly-free.csv"))
    out = []
    for start in range(0, len(records) - PIECE + 1, PIECE // 2):
        z = normalise(records[start:start + PIECE])
        out.append(windows(z[WARMUP - window + 1:], window))
    return np.concatenate(out)


def write_model_dir(out, model, x, window, seed, manifest):
    """Writes model.onnx, golden.json (onnxruntime's outputs on training and
    extreme windows) and manifest.json (with the file's sha256); returns the
    sha256."""
    os.makedirs(out, exist_ok=True)
    onnx_path = os.path.join(out, "model.onnx")
    data = model.SerializeToString(deterministic=True)
    with open(onnx_path, "wb") as f:
        f.write(data)
    sha = hashlib.sha256(data).hexdigest()

    import onnxruntime as ort

    rng = np.random.default_rng(seed + 1)
    golden_in = np.concatenate([
        x[rng.choice(len(x), 24, replace=False)],
        rng.normal(0, 3, (6, window * F)),
        np.zeros((1, window * F)),
        np.full((1, window * F), 8.0),
    ]).astype(np.float32)
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    score_out, contrib_out, forecast_out = sess.run(["score", "contributions", "forecast"], {"window": golden_in})
    with open(os.path.join(out, "golden.json"), "w") as f:
        json.dump({
            "producer": f"onnxruntime {ort.__version__}",
            "input": golden_in.tolist(),
            "score": score_out.tolist(),
            "contributions": contrib_out.tolist(),
            "forecast": forecast_out.tolist(),
        }, f)

    manifest["sha256"] = sha
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    return sha
