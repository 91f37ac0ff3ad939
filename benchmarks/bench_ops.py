"""Speed of the Halut custom ops (encode + lookup) against onnxruntime's fp32 MatMul and its int8 quantizations
(dynamic, and static QDQ with per-channel weights calibrated on the timed input).

Per layer shape (N rows, D inputs, M outputs, C codebooks) and intra-op thread count, every contender runs as a
single onnxruntime session on the same input, round-robin; the table reports medians of repeated runs and the
ratios time_ort / time_ours (above 1: ours is faster). Each Halut op is also timed alone to show where the time
goes. Single-thread rows also give the ratio of calling-thread CPU times, which a busy machine disturbs less.

    python benchmarks/bench_ops.py            # the full grid (several minutes)
    python benchmarks/bench_ops.py --quick    # N=4096, D=M=512, C=32, 1 thread (< 1 minute)
"""

from __future__ import annotations

import os

# numpy's OpenBLAS threads spin after any BLAS call and steal the cores the timed sessions run on: keep it serial.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from ops_models import lookup_weights, pq_weights, single_node_model  # noqa: E402

import halut_onnx  # noqa: E402
from halut_onnx.ops import DOMAIN, DOMAIN_VERSION, ENCODE_PQ, ENCODE_TREE, LOOKUP  # noqa: E402
from halut_onnx.reference import slice_bounds  # noqa: E402

OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)]


def _model(nodes, inputs, outputs, initializers) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "bench", inputs, outputs, initializer=initializers)
    return helper.make_model(graph, ir_version=10, opset_imports=OPSETS)


def matmul_model(W: np.ndarray) -> onnx.ModelProto:
    D, M = W.shape
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", D])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", M])
    node = helper.make_node("MatMul", ["X", "W"], ["Y"])
    model = _model([node], [x], [y], [numpy_helper.from_array(W, "W")])
    model.opset_import.pop()  # plain ONNX: the quantizer needs no custom domain
    return model


def halut_model(encoder: str, enc_weights: dict, lut_weights: dict, D: int, M: int) -> onnx.ModelProto:
    """Encode -> Lookup with constant weights: one Halut layer as the converter emits it."""
    names = ("split_dims", "thresholds") if encoder == ENCODE_TREE else ("vectors", "biases")
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", D])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", M])
    nodes = [
        helper.make_node(encoder, ["X", *names], ["codes"], name="encode", domain=DOMAIN),
        helper.make_node(LOOKUP, ["codes", "lut", "scale", "offset"], ["Y"], name="lookup", domain=DOMAIN),
    ]
    inits = [numpy_helper.from_array(np.asarray(enc_weights[n]), n) for n in names]
    inits += [numpy_helper.from_array(lut_weights[n], n) for n in ("lut", "scale", "offset")]
    return _model(nodes, [x], [y], inits)


def tree_weights_in_slices(rng: np.random.Generator, D: int, C: int) -> dict:
    """Split dims inside each codebook's slice, as the learner picks them."""
    bounds = slice_bounds(D, C)
    split_dims = np.stack([rng.integers(bounds[c], bounds[c + 1], size=4) for c in range(C)]).astype(np.int64)
    return {"split_dims": split_dims, "thresholds": (rng.standard_normal((C, 15)) * 0.7).astype(np.float32)}


def session(model: onnx.ModelProto | str, threads: int, halut: bool) -> ort.InferenceSession:
    options = halut_onnx.session_options() if halut else ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    data = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def interleaved_medians(contenders: dict, budget_s: float, min_reps: int, max_reps: int) -> dict:
    """Median run time of each (session, feeds) contender, measured round-robin in a shuffled order per round.

    The machine is shared: alternating the contenders run by run exposes them all to the same background load, so
    their ratios stay meaningful even when absolute times drift. The order is shuffled each round because a fixed
    order can lock a short run into the same phase of the scheduler's time slices on an oversubscribed machine
    (seen: one session preempted for ~4 ms in every round while its CPU time stayed the same).
    """
    for sess, feeds in contenders.values():
        sess.run(None, feeds)  # warm-up: allocations, prepacking, page faults
    times = {name: [] for name in contenders}
    cpu = {name: [] for name in contenders}
    names = list(contenders)
    order_rng = np.random.default_rng(len(names))
    start = time.perf_counter()
    rep = 0
    while rep < min_reps or (time.perf_counter() - start < budget_s and rep < max_reps):
        for name in order_rng.permutation(names):
            sess, feeds = contenders[name]
            t0, c0 = time.perf_counter(), time.thread_time()
            sess.run(None, feeds)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.thread_time() - c0)
        rep += 1
    medians = {name: statistics.median(t) for name, t in times.items()}
    # With one intra-op thread onnxruntime runs every kernel on the calling thread, so its CPU time is the run's
    # work without the time the scheduler gave to other jobs: a steadier ratio on a shared machine.
    medians.update({f"{name}_cpu": statistics.median(t) for name, t in cpu.items()})
    return medians


def bench_shape(N, D, M, Cs, threads, rng, tmp: Path, budget_s, max_reps, int8: bool):
    """Rows of results for one (N, D, M, threads): per C, all contenders measured round-robin."""
    X = rng.standard_normal((N, D)).astype(np.float32)
    W = (rng.standard_normal((D, M)) / np.sqrt(D)).astype(np.float32)
    fp32 = matmul_model(W)
    baselines = {"fp32": (session(fp32, threads, False), {"X": X})}
    if int8:
        from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                              quantize_static)

        class Rows(CalibrationDataReader):
            """Activation ranges from the timed input itself: the most favourable calibration static int8 gets."""

            def __init__(self):
                self.feeds = iter([{"X": X[i : i + 1024]} for i in range(0, min(N, 4096), 1024)])

            def get_next(self):
                return next(self.feeds, None)

        src, dst, dst_s = (tmp / f"mm_{D}_{M}{suffix}.onnx" for suffix in ("", "_int8", "_int8s"))
        if not dst.exists():
            onnx.save(fp32, src)
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
        baselines["int8"] = (session(str(dst), threads, False), {"X": X})
        # static QDQ (uint8 activations, per-channel int8 weights): what docs/int8.md found best on whole models
        quantize_static(str(src), str(dst_s), Rows(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=True)
        baselines["int8s"] = (session(str(dst_s), threads, False), {"X": X})
    rows = []
    for C in Cs:
        lut_w = lookup_weights(rng, M, C)
        tree_w = tree_weights_in_slices(rng, D, C)
        pq_w = pq_weights(rng, D, C)
        codes = rng.integers(0, 16, size=(N, C), dtype=np.uint8)
        contenders = dict(baselines)
        contenders["tree"] = (session(halut_model(ENCODE_TREE, tree_w, lut_w, D, M), threads, True), {"X": X})
        contenders["pq"] = (session(halut_model(ENCODE_PQ, pq_w, lut_w, D, M), threads, True), {"X": X})
        contenders["enc_tree"] = (session(single_node_model(ENCODE_TREE, X, tree_w), threads, True), {"X": X})
        contenders["enc_pq"] = (session(single_node_model(ENCODE_PQ, X, pq_w), threads, True), {"X": X})
        contenders["lookup"] = (session(single_node_model(LOOKUP, codes, lut_w), threads, True), {"codes": codes})
        t = interleaved_medians(contenders, budget_s, 5, max_reps)
        for name in ("int8", "int8_cpu", "int8s", "int8s_cpu"):
            t.setdefault(name, float("nan"))
        rows.append(dict(N=N, D=D, M=M, C=C, threads=threads, **t))
        print(_format_row(rows[-1]), flush=True)
    return rows


HEADER = (
    "| N | D | M | C | thr | fp32 MatMul ms | int8 MatMul ms | int8 static ms | tree ms | pq ms | fp32/tree | fp32/pq "
    "| int8/tree | int8/pq | int8s/tree | int8s/pq | enc tree ms | enc pq ms | lookup ms | lookup out GB/s "
    "| CPU fp32/tree | CPU fp32/pq |\n"
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def _format_row(r: dict) -> str:
    ms = lambda s: f"{s * 1e3:.3f}"  # noqa: E731
    gbs = r["N"] * r["M"] * 4 / r["lookup"] / 1e9
    return (
        f"| {r['N']} | {r['D']} | {r['M']} | {r['C']} | {r['threads']} | {ms(r['fp32'])} | {ms(r['int8'])} "
        f"| {ms(r['int8s'])} | {ms(r['tree'])} | {ms(r['pq'])} | {r['fp32'] / r['tree']:.1f} "
        f"| {r['fp32'] / r['pq']:.1f} | {r['int8'] / r['tree']:.1f} | {r['int8'] / r['pq']:.1f} "
        f"| {r['int8s'] / r['tree']:.1f} | {r['int8s'] / r['pq']:.1f} | {ms(r['enc_tree'])} | {ms(r['enc_pq'])} "
        f"| {ms(r['lookup'])} | {gbs:.1f} | {cpu_ratio(r, 'tree')} | {cpu_ratio(r, 'pq')} |"
    )


def cpu_ratio(r: dict, ours: str) -> str:
    """fp32 / ours in calling-thread CPU time; only meaningful with one intra-op thread."""
    return f"{r['fp32_cpu'] / r[ours + '_cpu']:.1f}" if r["threads"] == 1 else "-"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one configuration (N=4096, D=M=512, C=32, 1 thread)")
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 quantization baselines")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    if args.quick:
        grid, Cs, threads, budget, reps = [(4096, 512, 512)], [32], [1], 3.0, 41
    else:
        grid = [(N, D, M) for (D, M) in [(512, 512), (768, 3072)] for N in (256, 4096, 16384)]
        Cs, threads, budget, reps = [16, 32, 64], args.threads, 3.0, 21
    isa = os.environ.get("HALUT_ONNX_ISA", "best available")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"# onnxruntime {ort.__version__}, Halut ISA: {isa}, {os.cpu_count()} CPUs, load average {load}; "
          "times are medians, ratios = time_ort / time_ours")
    print(HEADER)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for N, D, M in grid:
            for t in threads:
                rows += bench_shape(N, D, M, Cs, t, rng, Path(tmp), budget, reps, not args.no_int8)
    for r in rows:
        if (r["N"], r["D"], r["M"], r["C"], r["threads"]) == (4096, 512, 512, 32, 1):
            print(f"\nheadline (N=4096, D=M=512, C=32, 1 thread): fp32/tree {r['fp32'] / r['tree']:.1f}x, "
                  f"fp32/pq {r['fp32'] / r['pq']:.1f}x (target >= 8x); in CPU time {cpu_ratio(r, 'tree')}x, "
                  f"{cpu_ratio(r, 'pq')}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
