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


def zoo(rng: np.random.Generator, D: int = 32) -> onnx.ModelProto:
    """One model with every case the rewrite must tell apart.

    x [N, T, D]: ``fc3d`` MatMul (rank-3 A) and ``k_proj`` MatMul feed ``attn``, an activation x activation MatMul.
    z [N, D]: an ai.onnx.ml Scaler, then ``fcz`` MatMul + ``fcz_bias`` Add (a (1, 16) bias), then ``gemm_ta``, a Gemm
    with transA=1 (skipped), and ``tiny`` (D=4, under the default --min-dim).
    """
    w = lambda *shape: (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)  # noqa: E731
    inits = {"w3": w(D, 24), "wk": w(D, 24), "wz": w(D, 16), "bz": w(1, 16), "wta": w(16, 8), "wtiny": w(4, 3)}
    nodes = [
        helper.make_node("MatMul", ["x", "w3"], ["q"], name="fc3d"),
        helper.make_node("MatMul", ["x", "wk"], ["k"], name="k_proj"),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1], name="kt"),
        helper.make_node("MatMul", ["q", "kt"], ["att"], name="attn"),
        helper.make_node("Scaler", ["z"], ["zs"], domain="ai.onnx.ml", name="scaler", offset=[0.5], scale=[2.0]),
        helper.make_node("MatMul", ["zs", "wz"], ["z1"], name="fcz"),
        helper.make_node("Add", ["z1", "bz"], ["z2"], name="fcz_bias"),
        helper.make_node("Transpose", ["z2"], ["z2t"], perm=[1, 0], name="z2t"),
        helper.make_node("Gemm", ["z2t", "wta"], ["g"], name="gemm_ta", transA=1),
        helper.make_node("Slice", ["z2", "s0", "s4", "s1"], ["z4"], name="slice4"),
        helper.make_node("MatMul", ["z4", "wtiny"], ["t"], name="tiny"),
    ]
    inits.update({"s0": np.array([0], np.int64), "s4": np.array([4], np.int64), "s1": np.array([1], np.int64)})
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", D]),
              helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", D])]
    outputs = [helper.make_tensor_value_info("att", TensorProto.FLOAT, ["N", "T", "T"]),
               helper.make_tensor_value_info("g", TensorProto.FLOAT, ["N", 8]),
               helper.make_tensor_value_info("t", TensorProto.FLOAT, ["N", 3])]
    return make_model(nodes, inputs, outputs, inits, extra_opsets=[("ai.onnx.ml", 3)])


FLOAT_TYPES = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16, np.float64: TensorProto.DOUBLE}


def retyped(model: onnx.ModelProto, dtype) -> onnx.ModelProto:
    """``model`` (one float type throughout) computing in ``dtype``: its float initializers and types changed."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for i, init in enumerate(out.graph.initializer):
        if init.data_type in FLOAT_TYPES.values():
            out.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(dtype),
                                                                      init.name))
    for value in (*out.graph.input, *out.graph.output, *out.graph.value_info):
        if value.type.tensor_type.elem_type in FLOAT_TYPES.values():
            value.type.tensor_type.elem_type = FLOAT_TYPES[dtype]
    onnx.checker.check_model(out, full_check=True)
    return out
