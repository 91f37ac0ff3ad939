"""Latency of single converted MatMul layers against onnxruntime's MatMul (the `halut-onnx bench` measurement).

    python benchmarks/bench_convert_layers.py [--threads 1] [--rows 256]

For each size and setting: build a one-MatMul model, convert it on low-rank calibration data, and time both models
in one process with the same input and threads. Prints the ratio original / converted (above 1: faster) and the
layer's held-out NMSE. Timings are noisy on a shared machine: compare ratios from one run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from halut_onnx.bench import bench
from halut_onnx.convert import ConvertOptions, convert_model
from halut_onnx.tables import format_table


def layer_model(D: int, M: int, rng: np.random.Generator) -> onnx.ModelProto:
    w = (rng.standard_normal((D, M)) / np.sqrt(D)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], "layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", M])], [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", type=int, default=256, help="rows per timed run")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for D, M in [(256, 256), (512, 512)]:
            model_path = tmp / f"fc{D}.onnx"
            onnx.save(layer_model(D, M, rng), model_path)
            calib = tmp / f"calib{D}"
            calib.mkdir()
            basis = rng.standard_normal((16, D))
            for i in range(8):
                x = rng.standard_normal((1024, 16)) @ basis + 0.1 * rng.standard_normal((1024, D))
                np.savez(calib / f"{i}.npz", x=x.astype(np.float32))
            for encoder in ("tree", "pq"):
                for C in (16, 32, 64):
                    out = tmp / f"fc{D}.{encoder}{C}.onnx"
                    result = convert_model(model_path, calib, out, ConvertOptions(codebooks=C, encoder=encoder,
                                                                                  progress=False))
                    timing = bench(model_path, out, threads=args.threads, runs=50, batch=args.rows)
                    table.append([f"{D}x{M}", encoder, C, timing.original_ms, timing.converted_ms, timing.speedup,
                                  result.converted[0].heldout_nmse_int8,
                                  "library" if timing.library_loaded else "function fallback"])
    print(format_table(["layer", "encoder", "C", "MatMul ms", "Halut ms", "ratio", "held-out NMSE", "ran by"], table))
    print(f"\n{args.rows} rows per run, {args.threads} threads")


if __name__ == "__main__":
    sys.exit(main())
