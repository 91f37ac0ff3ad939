"""Small ONNX models and calibration directories for the conversion tests (built with onnx.helper)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 10  # onnxruntime 1.30 reads IR <= 13; onnx 1.23 writes 14 by default
OPSET = 17


def low_rank(rng: np.random.Generator, shape, rank: int = 4, noise: float = 0.05) -> np.ndarray:
    """float32 data whose last dim lies near a ``rank``-dim subspace: what a lookup learns well."""
    n = int(np.prod(shape[:-1]))
    basis = rng.standard_normal((rank, shape[-1]))
    x = rng.standard_normal((n, rank)) @ basis + noise * rng.standard_normal((n, shape[-1]))
    return x.reshape(shape).astype(np.float32)


def make_model(nodes, inputs, outputs, initializers, opset: int = OPSET, extra_opsets=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "test", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in initializers.items()])
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, v) for d, v in extra_opsets)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION, producer_name="halut-tests")
    onnx.checker.check_model(model, full_check=True)
    return model


def mlp(rng: np.random.Generator, D: int = 32, H: int = 24, M: int = 10) -> onnx.ModelProto:
    """x [N, D] -> MatMul + Add (bias) -> Relu -> Gemm (transB, alpha, beta, C) -> y [N, M]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", D])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", M])
    inits = {
        "w1": (rng.standard_normal((D, H)) / np.sqrt(D)).astype(np.float32),
        "b1": rng.standard_normal(H).astype(np.float32),
        "w2": (rng.standard_normal((M, H)) / np.sqrt(H)).astype(np.float32),
        "c2": rng.standard_normal((1, M)).astype(np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="fc1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="fc1_bias"),
        helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
        helper.make_node("Gemm", ["h2", "w2", "c2"], ["y"], name="fc2", transB=1, alpha=0.5, beta=2.0),
    ]
    return make_model(nodes, [x], [y], inits)


def write_calibration(folder: Path, name: str, arrays, per_file: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(0, len(arrays), per_file):
        np.savez(folder / f"sample_{i:04d}.npz", **{name: arrays[i : i + per_file]})
    return folder
