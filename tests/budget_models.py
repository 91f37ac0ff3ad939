"""A small 3-layer MLP with structured (low-rank) inputs and calibration files, for the budget and analysis tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from halut_models import make_model


def mlp3(rng: np.random.Generator, D: int = 32, H: int = 32, M: int = 10) -> onnx.ModelProto:
    """x [N, D] -> fc1 (+bias) -> Relu -> fc2 -> Relu -> fc3 -> y [N, M]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", D])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", M])
    inits = {
        "w1": (rng.standard_normal((D, H)) / np.sqrt(D)).astype(np.float32),
        "b1": (0.1 * rng.standard_normal(H)).astype(np.float32),
        "w2": (rng.standard_normal((H, H)) / np.sqrt(H)).astype(np.float32),
        "w3": (rng.standard_normal((H, M)) / np.sqrt(H)).astype(np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="fc1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="fc1_bias"),
        helper.make_node("Relu", ["h1"], ["h2"], name="relu1"),
        helper.make_node("MatMul", ["h2", "w2"], ["h3"], name="fc2"),
        helper.make_node("Relu", ["h3"], ["h4"], name="relu2"),
        helper.make_node("MatMul", ["h4", "w3"], ["y"], name="fc3"),
    ]
    return make_model(nodes, [x], [y], inits)


def write_files(folder: Path, rng: np.random.Generator, files: int = 8, rows: int = 128, D: int = 32,
                rank: int = 6) -> Path:
    """``files`` .npz files of ``rows`` rows each, all drawn from one low-rank distribution."""
    folder.mkdir(parents=True, exist_ok=True)
    basis = rng.standard_normal((rank, D))
    for k in range(files):
        x = rng.standard_normal((rows, rank)) @ basis + 0.05 * rng.standard_normal((rows, D))
        np.savez(folder / f"{k:03d}.npz", x=x.astype(np.float32))
    return folder
