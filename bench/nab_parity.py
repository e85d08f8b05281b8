#!/usr/bin/env python3
"""Per-row parity of the hub's NAB scores with the specification's prototype.

Compares the `anomaly_score` column of `iot-lab eval nab --out DIR` results
(`DIR/<group>/iothub_<file>.csv`) with the reference scores in
`../shared/detection-ref/<group>/proto_<file>.csv`, row by row: the share of
identical rows, the mean absolute difference, the correlation, and the rows
each side scores at or above the threshold (0.834, the standard profile's
optimum), overall and per file. Standard library only.

    python3 bench/nab_parity.py ../shared/detection-ref /tmp/nab
"""
import csv
import glob
import math
import os
import sys

THRESHOLD = 0.834


def scores(path):
    with open(path, newline="") as f:
        return [float(row["anomaly_score"]) for row in csv.DictReader(f)]


def main(ref_root, ours_root):
    all_ref, all_ours, lines = [], [], []
    for ref_path in sorted(glob.glob(os.path.join(ref_root, "*", "proto_*.csv"))):
        group = os.path.basename(os.path.dirname(ref_path))
        name = os.path.basename(ref_path)[len("proto_"):]
        ours_path = os.path.join(ours_root, group, "iothub_" + name)
        if not os.path.exists(ours_path):
            sys.exit(f"{ours_path} is missing: run `iot-lab eval nab --out {ours_root}` first")
        ref, ours = scores(ref_path), scores(ours_path)
        if len(ref) != len(ours):
            sys.exit(f"{group}/{name}: {len(ref)} reference rows, {len(ours)} hub rows")
        same = sum(abs(a - b) < 1e-6 for a, b in zip(ref, ours))
        fire_ref = {i for i, v in enumerate(ref) if v >= THRESHOLD}
        fire_ours = {i for i, v in enumerate(ours) if v >= THRESHOLD}
        lines.append(
            f"{group + '/' + name:58} rows {len(ref):5}  identical {same / len(ref):.3f}  "
            f"fire reference/hub/both {len(fire_ref)}/{len(fire_ours)}/{len(fire_ref & fire_ours)}"
        )
        all_ref += ref
        all_ours += ours
    n = len(all_ref)
    mean_r, mean_o = sum(all_ref) / n, sum(all_ours) / n
    cov = sum((a - mean_r) * (b - mean_o) for a, b in zip(all_ref, all_ours))
    var_r = sum((a - mean_r) ** 2 for a in all_ref)
    var_o = sum((b - mean_o) ** 2 for b in all_ours)
    same = sum(abs(a - b) < 1e-6 for a, b in zip(all_ref, all_ours))
    mad = sum(abs(a - b) for a, b in zip(all_ref, all_ours)) / n
    fr = {i for i, v in enumerate(all_ref) if v >= THRESHOLD}
    fo = {i for i, v in enumerate(all_ours) if v >= THRESHOLD}
    print(f"{len(lines)} files, {n} rows: identical {same / n:.4f}, mean |difference| {mad:.4f}, "
          f"correlation {cov / math.sqrt(var_r * var_o):.4f}")
    print(f"rows >= {THRESHOLD}: reference {len(fr)}, hub {len(fo)}, both {len(fr & fo)}")
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
