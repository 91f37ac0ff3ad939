"""Speed of the Conv ops: per Conv layer, Halut (encode + lookup, NCHW in and out) against onnxruntime's fp32 Conv
on the same shapes.

    python benchmarks/bench_conv.py [--runs 20] [--quick] [--conv1d]

3x3 convs, Cin = Cout = 64 and 128, 56x56 and 28x28, batch 1 and 8, 1 and 2 threads, C = Cin (one codebook per
input channel: its 9 taps). ``--conv1d``: 1-D convs as the converter writes them (Unsqueeze, the conv ops with kernel
1x3, Squeeze) against onnxruntime's 1-D Conv: k = 3, Cin = Cout = 384 and 512 (speech encoders' widths), length
1500, batch 1, C = 32 and 64. Parameters are random with the learner's structure (tree split dims inside each
codebook's slice): speed does not depend on learned values. Both models are timed in one process, interleaved
(round robin, fastest of runs: the least disturbed by other work on a shared machine). Prints the ratio onnxruntime / Halut (above 1: Halut faster) and the split of the
Halut time between encode and lookup. 1-thread rows time the calling thread's CPU time (robust to other load),
2-thread rows wall time. Timings are noisy on a shared machine: compare ratios from one run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import halut_onnx
from halut_onnx.ops import DOMAIN, DOMAIN_VERSION, ENCODE_PQ_CONV, ENCODE_TREE_CONV, LOOKUP_CONV
from halut_onnx.reference import slice_bounds

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from example_tools import format_table  # noqa: E402

GEOMETRY = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
GEOMETRY_1D = dict(kernel_shape=[1, 3], pads=[0, 1, 0, 1])  # what the converter gives a Conv1d with k=3, pads [1, 1]


def _model(nodes, inits, Cin, out_type, opsets, conv1d: bool = False) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", Cin, "L"] if conv1d else ["N", Cin, "H", "W"])
    y = helper.make_tensor_value_info("y", out_type, None)
    graph = helper.make_graph(nodes, "conv", [x], [y], [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, ir_version=10, opset_imports=opsets)


def conv_model(Cin: int, Cout: int, rng, conv1d: bool = False) -> onnx.ModelProto:
    kernel = (3,) if conv1d else (3, 3)
    inits = {"W": (rng.standard_normal((Cout, Cin, *kernel)) / np.sqrt(Cin * np.prod(kernel))).astype(np.float32),
             "B": rng.standard_normal(Cout).astype(np.float32)}
    geometry = dict(kernel_shape=[3], pads=[1, 1]) if conv1d else GEOMETRY
    node = helper.make_node("Conv", ["x", "W", "B"], ["y"], name="conv", **geometry)
    return _model([node], inits, Cin, TensorProto.FLOAT, [helper.make_opsetid("", 17)], conv1d)


def halut_model(Cin: int, Cout: int, C: int, encoder: str, rng, stage: str = "both",
                conv1d: bool = False) -> onnx.ModelProto:
    """encode + lookup (stage "both"), or the encode alone ("encode"); for a 1-D conv between the Unsqueeze and
    Squeeze the converter puts around them."""
    geometry = GEOMETRY_1D if conv1d else GEOMETRY
    D = Cin * int(np.prod(geometry["kernel_shape"]))
    bounds = slice_bounds(D, C)
    if encoder == "tree":
        dims = np.stack([rng.integers(bounds[c], bounds[c + 1], 4) for c in range(C)]).astype(np.int64)
        enc = {"split_dims": dims, "thresholds": rng.standard_normal((C, 15)).astype(np.float32)}
        op = ENCODE_TREE_CONV
    else:
        enc = {"vectors": rng.standard_normal((16, D)).astype(np.float32),
               "biases": rng.standard_normal((C, 16)).astype(np.float32)}
        op = ENCODE_PQ_CONV
    lut = {"lut": rng.integers(-128, 128, (Cout, C, 16)).astype(np.int8),
           "scale": np.full(Cout, 0.01, np.float32), "offset": rng.standard_normal(Cout).astype(np.float32)}
    codes = "y" if stage == "encode" else "codes"
    image, out = ("image", "image_out") if conv1d else ("x", "y")
    nodes = [helper.make_node(op, [image, *enc], [codes], domain=DOMAIN, name="enc", **geometry)]
    inits = dict(enc)
    if stage != "encode":
        nodes.append(helper.make_node(LOOKUP_CONV, ["codes", *lut], [out], domain=DOMAIN, name="lookup"))
        inits.update(lut)
    if conv1d:
        inits["axes"] = np.array([2], np.int64)
        nodes.insert(0, helper.make_node("Unsqueeze", ["x", "axes"], ["image"]))
        if stage != "encode":
            nodes.append(helper.make_node("Squeeze", ["image_out", "axes"], ["y"]))
    out_type = TensorProto.UINT8 if stage == "encode" else TensorProto.FLOAT
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)]
    return _model(nodes, inits, Cin, out_type, opsets, conv1d)


def session(model: onnx.ModelProto, threads: int, halut: bool):
    options = halut_onnx.session_options() if halut else ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def time_interleaved(sessions: list, x: np.ndarray, runs: int, cpu_time: bool) -> list[float]:
    """Fastest seconds per run of each session, run round robin so that load changes hit all alike.

    ``cpu_time``: the calling thread's CPU time (one intra-op thread runs everything on the calling thread), which
    time slices given to other processes do not inflate; else wall-clock time.
    """
    clock = time.thread_time if cpu_time else time.perf_counter
    for s in sessions:
        s.run(None, {"x": x})
    times = [[] for _ in sessions]
    for _ in range(runs):
        for i, s in enumerate(sessions):
            start = clock()
            s.run(None, {"x": x})
            times[i].append(clock() - start)
    return [float(np.min(t)) for t in times]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--encoder", default="tree", choices=["tree", "pq"])
    parser.add_argument("--quick", action="store_true", help="the target shape only (3x3, 128, 28x28, batch 8)")
    parser.add_argument("--conv1d", action="store_true", help="1-D convs (k=3, 384 and 512 channels, length 1500)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    if args.conv1d:  # (channels, C, input shape)
        cases = [(c, C, (1, c, 1500)) for c in (384, 512) for C in (32, 64)]
    else:
        cases = [(c, c, (b, c, hw, hw)) for c in (64, 128) for hw in (56, 28) for b in (1, 8)]
        cases = cases[-1:] if args.quick else cases
    rows = []
    for channels, C, shape in cases:
        x = rng.standard_normal(shape).astype(np.float32)
        models = [conv_model(channels, channels, rng, args.conv1d),
                  halut_model(channels, channels, C, args.encoder, rng, conv1d=args.conv1d),
                  halut_model(channels, channels, C, args.encoder, rng, stage="encode", conv1d=args.conv1d)]
        for threads in (1, 2):
            conv_s, halut_s, encode_s = time_interleaved(
                [session(models[0], threads, False), session(models[1], threads, True),
                 session(models[2], threads, True)], x, args.runs, cpu_time=threads == 1)
            kernel = "k3" if args.conv1d else "3x3"
            rows.append([f"{kernel} {channels}->{channels}", "x".join(map(str, shape[2:])), shape[0], threads, C,
                         f"{conv_s / halut_s:.2f}", f"{100 * min(encode_s / halut_s, 1):.0f} %"])
            print(rows[-1], f"(ort {1e3 * conv_s:.2f} ms, halut {1e3 * halut_s:.2f} ms)", file=sys.stderr)
    print(f"encoder {args.encoder}; CPU kernels: {halut_onnx.library.get_library_path()}")
    print(format_table(["layer", "L" if args.conv1d else "HxW", "batch", "threads", "C", "onnxruntime / halut",
                        "encode share"], rows))


if __name__ == "__main__":
    main()
