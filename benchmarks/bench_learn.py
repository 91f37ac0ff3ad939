"""Stage times of learn_layer (numba kernels warmed up first; compile time reported separately).

    python benchmarks/bench_learn.py            # the target size (65,536 x 512 -> 512, C=32) and scaling rows
    python benchmarks/bench_learn.py --quick    # smaller sizes

Times are wall-clock seconds; `cpu` is the process CPU time of the whole call, summed over threads, which other
loads on a shared machine disturb less. Compare ratios within one run.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from halut_onnx.learn import LearnOptions, learn_layer


class StageClock:
    """progress hook: time between consecutive stage names."""

    def __init__(self) -> None:
        self.marks: list[tuple[str, float]] = []

    def __call__(self, stage: str) -> None:
        self.marks.append((stage, time.perf_counter()))

    def stages(self, end: float) -> dict[str, float]:
        ends = [t for _, t in self.marks[1:]] + [end]
        return {name: e - t for (name, t), e in zip(self.marks, ends)}


def data(rows: int, D: int, M: int, seed: int = 0):
    # Low-rank structure + noise, roughly like activations: the split search and k-means see realistic spreads.
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((rows, 16), dtype=np.float32) @ rng.standard_normal((16, D), dtype=np.float32)
    A += 0.5 * rng.standard_normal((rows, D), dtype=np.float32)
    np.maximum(A, 0, out=A)  # post-ReLU
    W = (rng.standard_normal((D, M)) / np.sqrt(D)).astype(np.float32)
    return A, W, rng.standard_normal(M).astype(np.float32)


def run(rows: int, D: int, M: int, C: int, encoder: str) -> dict[str, float]:
    A, W, b = data(rows, D, M)
    clock = StageClock()
    t0, c0 = time.perf_counter(), time.process_time()
    layer = learn_layer(A, W, b, LearnOptions(codebooks=C, encoder=encoder), progress=clock)
    t1, c1 = time.perf_counter(), time.process_time()
    s = clock.stages(t1)
    return {
        "encoder": s["encoder"],
        "lut fit": s["encode"] + s["lut"],
        "quantize": s["quantize"],
        "measure": s["measure"],
        "total": t1 - t0,
        "cpu": c1 - c0,
        "learn": t1 - t0 - s["measure"] - s["split"],
        "nmse": layer.report.heldout_nmse,
        "nmse8": layer.report.heldout_nmse_int8,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()

    t = time.perf_counter()
    for enc in ("tree", "pq"):
        run(400, 24, 8, 5, enc)  # compiles every kernel (or loads numba's cache)
    print(f"warm-up (numba compile or cache load): {time.perf_counter() - t:.1f} s; "
          f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")

    base = (8192, 128, 128, 16) if args.quick else (65536, 512, 512, 32)
    rows, D, M, C = base
    cases = [base]
    cases += [(rows // 4, D, M, C), (rows // 2, D, M, C)]
    cases += [(rows, D // 2, M, C), (rows, D, M // 2, C), (rows, D, M, C // 2), (rows, D, M, 2 * C)]
    head = f"{'encoder':<8}{'rows':>7}{'D':>5}{'M':>5}{'C':>4}  {'encoder':>8}{'lut fit':>8}{'quantize':>9}" \
           f"{'learn':>8}{'measure':>8}{'total':>8}{'cpu':>7}  {'nmse':>7}{'nmse8':>8}"
    print(head)
    print("-" * len(head))
    for enc in ("tree", "pq"):
        for rows_, D_, M_, C_ in cases:
            r = run(rows_, D_, M_, C_, enc)
            print(f"{enc:<8}{rows_:>7}{D_:>5}{M_:>5}{C_:>4}  {r['encoder']:>8.2f}{r['lut fit']:>8.2f}"
                  f"{r['quantize']:>9.2f}{r['learn']:>8.2f}{r['measure']:>8.2f}{r['total']:>8.2f}{r['cpu']:>7.2f}  "
                  f"{r['nmse']:>7.4f}{r['nmse8']:>8.4f}")
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")
    print("cpu = process CPU seconds of the whole call (both cores); the other columns are wall seconds.\n"
          "learn = encoder + lut fit (encode both row sets, statistics, ridge) + quantize; measure = held-out NMSE "
          "through the bit-exact lookups (not needed to learn)")


if __name__ == "__main__":
    main()
