"""Reference hub pipeline in Python, for the throughput comparison in
docs/BENCHMARKS.md: the same work as `iot-lab bench-hub` on the same
envelope files.

Per batch: parse the envelope (header; the CRC32C check is skipped, which
favours Python), read the Arrow IPC payload with pyarrow, dedup by
(gateway, incarnation, seq), append to a write-ahead log and fsync, score
every reading with the same algorithm as the hub (per-series warm-up
mean/std, 16-reading windows normalised and clipped, the ONNX model through
onnxruntime on one thread, threshold plus the adaptive z-test on the series'
own ln(1+score) history), then write Parquet partitioned by event hour,
sorted by device and time, zstd, with the hub's `scored` columns (ingested_at
included). Vectorised with numpy and pyarrow: series
are processed in "rounds" of at most one reading each, so the windows of a
round go through onnxruntime in one call; Python code runs per batch, per
round and per distinct (device, metric) of a batch, never per reading.

Usage: python bench/python_reference.py --envelopes /tmp/bench-env --model-dir models/univariate-forecast --out /tmp/pyref
"""

import argparse
import glob
import json
import os
import resource
import struct
import time

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

WARMUP = 200
MIN_SCORE_HISTORY = 50
SCORE_Z_LIMIT = 3.5
SCORE_HORIZON = 1000.0
STATUSES = pa.array(["warming_up", "ok", "anomalous"])


def parse_envelope(buf):
    magic, _version, hlen, plen, _crc = struct.unpack_from("<4sHHII", buf, 0)
    assert magic == b"IOTB"
    h = buf[16:16 + hlen]
    glen = h[0]
    gateway = h[1:1 + glen].decode()
    inc, seq, _rows, _first, _last = struct.unpack_from("<QQIqq", h, 1 + glen)
    table = ipc.open_stream(pa.py_buffer(buf[16 + hlen:16 + hlen + plen])).read_all()
    return (gateway, inc, seq), table


class Scorer:
    def __init__(self, model_dir):
        with open(os.path.join(model_dir, "manifest.json")) as f:
            self.manifest = json.load(f)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(
            os.path.join(model_dir, self.manifest["file"]), opts, providers=["CPUExecutionProvider"])
        self.w = self.manifest["input"]["window"]
        self.clip = self.manifest["input"]["clip"]
        self.threshold = self.manifest["threshold"]
        self.ids = {}
        cap = 1024
        self.count = np.zeros(cap, np.int64)
        self.mean = np.zeros(cap)
        self.m2 = np.zeros(cap)
        self.buf = np.zeros((cap, self.w))
        self.filled = np.zeros(cap, np.int64)
        self.sn = np.zeros(cap, np.int64)
        self.smean = np.zeros(cap)
        self.svar = np.zeros(cap)

    def _grow(self, n):
        cap = len(self.count)
        if n <= cap:
            return
        new = max(n, cap * 2)
        for name in ["count", "mean", "m2", "filled", "sn", "smean", "svar"]:
            a = getattr(self, name)
            b = np.zeros(new, a.dtype)
            b[:cap] = a
            setattr(self, name, b)
        b = np.zeros((new, self.w))
        b[:cap] = self.buf
        self.buf = b

    def series_ids(self, device_col, metric_col):
        """Series id per row. Python touches only the batch's distinct
        (device, metric) pairs; the per-row work is pyarrow/numpy."""
        dev = device_col.combine_chunks().dictionary_encode() if hasattr(device_col, "combine_chunks") else device_col.dictionary_encode()
        met = metric_col.combine_chunks().dictionary_encode() if hasattr(metric_col, "combine_chunks") else metric_col.dictionary_encode()
        dcode = dev.indices.to_numpy().astype(np.int64)
        mcode = met.indices.to_numpy().astype(np.int64)
        pair = dcode * len(met.dictionary) + mcode
        uniq, inverse = np.unique(pair, return_inverse=True)
        dnames, mnames = dev.dictionary.to_pylist(), met.dictionary.to_pylist()
        local = np.empty(len(uniq), np.int64)
        for j, p in enumerate(uniq.tolist()):
            k = dnames[p // len(mnames)] + "\0" + mnames[p % len(mnames)]
            sid = self.ids.get(k)
            if sid is None:
                sid = len(self.ids)
                self.ids[k] = sid
            local[j] = sid
        self._grow(len(self.ids))
        return local[inverse]

    def score(self, sid, values):
        n = len(sid)
        scores = np.full(n, np.nan)
        status = np.zeros(n, np.int8)  # index into STATUSES
        # Rounds: the k-th reading of each series in this batch.
        order = np.argsort(sid, kind="stable")
        s_sorted = sid[order]
        first = np.r_[True, s_sorted[1:] != s_sorted[:-1]]
        group_start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
        occurrence = np.empty(n, np.int64)
        occurrence[order] = np.arange(n) - group_start
        for k in range(occurrence.max() + 1 if n else 0):
            rows = np.nonzero(occurrence == k)[0]
            ids, x = sid[rows], values[rows]
            self.buf[ids, :-1] = self.buf[ids, 1:]
            self.buf[ids, -1] = x
            self.filled[ids] += 1
            warm = self.count[ids] < WARMUP
            wi, wx = ids[warm], x[warm]
            self.count[wi] += 1
            d = wx - self.mean[wi]
            self.mean[wi] += d / self.count[wi]
            self.m2[wi] += d * (wx - self.mean[wi])
            done = wi[self.count[wi] == WARMUP]
            self.m2[done] /= WARMUP - 1
            ready = ~warm
            if not ready.any():
                continue
            ri, rrows, rx = ids[ready], rows[ready], x[ready]
            std = np.maximum(np.sqrt(self.m2[ri]), 1e-3 * np.maximum(np.abs(self.mean[ri]), 1.0))
            win = np.clip((self.buf[ri] - self.mean[ri, None]) / std[:, None], -self.clip, self.clip)
            sc = self.sess.run(["score"], {"window": win.astype(np.float32)})[0].astype(np.float64)
            scores[rrows] = sc
            l = np.log1p(sc)
            hist = self.sn[ri] >= MIN_SCORE_HISTORY
            z = (l - self.smean[ri]) / np.sqrt(np.maximum(self.svar[ri], 1e-6))
            st = np.where(hist, np.where((sc > self.threshold) & (z > SCORE_Z_LIMIT), 2, 1), 0).astype(np.int8)
            status[rrows] = st
            self.sn[ri] += 1
            d = l - self.smean[ri]
            early = self.sn[ri] <= MIN_SCORE_HISTORY
            a = np.where(early, 1.0 / self.sn[ri], 1.0 / SCORE_HORIZON)
            self.smean[ri] += a * d
            self.svar[ri] = np.where(early, self.svar[ri] + (d * (l - self.smean[ri]) - self.svar[ri]) / self.sn[ri],
                                     (1 - a) * (self.svar[ri] + a * d * d))
            follow = st != 0
            fi, fx = ri[follow], rx[follow]
            a = 1.0 / WARMUP
            d = fx - self.mean[fi]
            self.mean[fi] += a * d
            self.m2[fi] = (1 - a) * (self.m2[fi] + a * d * d)
        return scores, status


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--envelopes", required=True)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--zstd-level", type=int, default=3,
                    help="as the hub's archive.zstd-level (default 3, as the hub's)")
    args = ap.parse_args()
    files = sorted(glob.glob(os.path.join(args.envelopes, "*.iotb")))
    os.makedirs(args.out, exist_ok=True)
    wal = open(os.path.join(args.out, "wal.log"), "ab")
    scorer = Scorer(args.model_dir)
    seen = set()
    partitions = {}
    readings = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for path in files:
        with open(path, "rb") as f:
            buf = f.read()
        key, table = parse_envelope(buf)
        if key in seen:
            continue
        wal.write(struct.pack("<I", len(buf)))
        wal.write(buf)
        wal.flush()
        os.fsync(wal.fileno())
        seen.add(key)
        values = table.column("value").to_numpy()
        sid = scorer.series_ids(table.column("device"), table.column("metric"))
        scores, status = scorer.score(sid, values)
        n = table.num_rows
        readings += n
        unscored = np.isnan(scores)
        out = table.append_column("status", STATUSES.take(pa.array(status))) \
            .append_column("score", pa.array(scores, mask=unscored)) \
            .append_column("threshold", pa.array(np.full(n, scorer.threshold), mask=unscored)) \
            .append_column("model_id", pa.repeat(scorer.manifest["id"], n)) \
            .append_column("model_version", pa.repeat(scorer.manifest["version"], n)) \
            .append_column("gateway", pa.repeat(key[0], n)) \
            .append_column("incarnation", pa.array(np.full(n, key[1], np.uint64))) \
            .append_column("seq", pa.array(np.full(n, key[2], np.uint64))) \
            .append_column("ingested_at", pa.array(np.full(n, time.time_ns() // 1000, np.int64))
                           .cast(pa.timestamp("us", tz="UTC")))
        hours = table.column("ts").cast(pa.int64()).to_numpy() // 3_600_000_000
        for h in np.unique(hours):
            partitions.setdefault(int(h), []).append(out.filter(pa.array(hours == h)))
    parquet_bytes = 0
    for h, parts in partitions.items():
        t = pa.concat_tables(parts).sort_by([("device", "ascending"), ("ts", "ascending")])
        d = os.path.join(args.out, "table=scored", f"hour={h}")
        os.makedirs(d, exist_ok=True)
        p = os.path.join(d, "part-0.parquet")
        pq.write_table(t, p, compression="zstd", compression_level=args.zstd_level, row_group_size=128 * 1024)
        with open(p, "rb") as f:
            os.fsync(f.fileno())
        parquet_bytes += os.path.getsize(p)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"| python reference | {readings} | {wall:.2f} s | {cpu:.2f} s | {readings / wall:.0f} | {readings / cpu:.0f} | {parquet_bytes} |")


if __name__ == "__main__":
    main()
