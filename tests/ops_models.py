"""Single-node models of the Halut ops for the custom-op tests and benchmarks (onnx.helper, ir_version 10)."""

from __future__ import annotations

import platform

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from halut_onnx.ops import DOMAIN, DOMAIN_VERSION, ENCODE_PQ, ENCODE_TREE, LOOKUP

# The inputs of each op after X / codes, in order.
WEIGHT_NAMES = {
    ENCODE_TREE: ("split_dims", "thresholds"),
    ENCODE_PQ: ("vectors", "biases"),
    LOOKUP: ("lut", "scale", "offset"),
}
FIRST_INPUT = {ENCODE_TREE: "X", ENCODE_PQ: "X", LOOKUP: "codes"}
OUTPUT = {ENCODE_TREE: ("codes", TensorProto.UINT8), ENCODE_PQ: ("codes", TensorProto.UINT8), LOOKUP: ("Y", TensorProto.FLOAT)}


def _value_info(name: str, array: np.ndarray, rank: int | None = None) -> onnx.ValueInfoProto:
    """A graph input of the array's dtype with symbolic dims (any batch shape)."""
    rank = array.ndim if rank is None else rank
    elem = helper.np_dtype_to_tensor_dtype(array.dtype)
    return helper.make_tensor_value_info(name, elem, [f"{name}_{i}" for i in range(rank)])


def single_node_model(
    op: str,
    first: np.ndarray,
    weights: dict[str, np.ndarray],
    *,
    constant: bool = True,
    node_name: str = "halut_node",
) -> onnx.ModelProto:
    """A model with one ``op`` node; weights become initializers when ``constant`` else graph inputs.

    The first input (X or codes) is always a graph input with symbolic dims.
    """
    first_name = FIRST_INPUT[op]
    names = WEIGHT_NAMES[op]
    inputs = [_value_info(first_name, first)]
    initializers = []
    for name in names:
        if constant:
            initializers.append(numpy_helper.from_array(np.asarray(weights[name]), name))
        else:
            inputs.append(_value_info(name, np.asarray(weights[name])))
    out_name, out_type = OUTPUT[op]
    output = helper.make_tensor_value_info(out_name, out_type, None)
    node = helper.make_node(op, [first_name, *names], [out_name], name=node_name, domain=DOMAIN)
    graph = helper.make_graph([node], f"single_{op}", inputs, [output], initializer=initializers)
    return helper.make_model(
        graph,
        ir_version=10,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)],
    )


def feeds(op: str, first: np.ndarray, weights: dict[str, np.ndarray], *, constant: bool = True) -> dict:
    """The run feeds matching ``single_node_model``."""
    out = {FIRST_INPUT[op]: first}
    if not constant:
        out.update({name: np.asarray(weights[name]) for name in WEIGHT_NAMES[op]})
    return out


def tree_weights(rng: np.random.Generator, D: int, C: int) -> dict[str, np.ndarray]:
    """Random split dims (within each codebook's slice, like the learner) and thresholds near N(0, 1) quantiles."""
    split_dims = rng.integers(0, D, size=(C, 4), dtype=np.int64)
    thresholds = rng.standard_normal((C, 15)).astype(np.float32) * 0.7
    return {"split_dims": split_dims, "thresholds": thresholds}


def pq_weights(rng: np.random.Generator, D: int, C: int) -> dict[str, np.ndarray]:
    vectors = rng.standard_normal((16, D)).astype(np.float32)
    biases = rng.standard_normal((C, 16)).astype(np.float32) * 4
    return {"vectors": vectors, "biases": biases}


def lookup_weights(rng: np.random.Generator, M: int, C: int) -> dict[str, np.ndarray]:
    lut = rng.integers(-128, 128, size=(M, C, 16), dtype=np.int16).astype(np.int8)
    scale = (rng.random(M, dtype=np.float32) * 0.01 + 1e-3).astype(np.float32)
    offset = rng.standard_normal(M).astype(np.float32)
    return {"lut": lut, "scale": scale, "offset": offset}


def cpu_flags() -> set[str]:
    """The CPU feature flags Linux reports (x86 "flags", AArch64 "Features"; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


# What each forced path of the library needs (src/cpu/dispatch.cc), per architecture: a build holds only its own
# architecture's kernels (the NEON ones are tested on x86-64 under qemu: tests/test_neon_kernels.py).
ISA_FLAGS = {
    "scalar": set(),
    "avx2": {"avx2"},
    "avx512": {"avx512f", "avx512bw", "avx512vl", "avx512vbmi", "avx512_vnni"},
} if platform.machine() not in ("aarch64", "arm64") else {"scalar": set(), "neon": {"asimd"}}


def isa_params():
    """pytest params over this architecture's instruction sets, skipping those this CPU lacks."""
    import pytest

    flags = cpu_flags()
    params = []
    for isa, needed in ISA_FLAGS.items():
        missing = sorted(needed - flags)
        marks = [pytest.mark.skip(reason=f"this CPU lacks {', '.join(missing)}")] if missing else []
        params.append(pytest.param(isa, marks=marks, id=isa))
    return params


def make_session(model: onnx.ModelProto, *, threads: int = 1):
    """An InferenceSession on the CPU provider with the Halut library registered (errors-only logging)."""
    import onnxruntime as ort

    import halut_onnx

    options = halut_onnx.session_options()
    options.intra_op_num_threads = threads
    options.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run_op(op: str, first: np.ndarray, weights: dict, *, constant: bool = True, threads: int = 1,
           node_name: str = "halut_node") -> np.ndarray:
    """Builds the single-node model, runs it once and returns its output."""
    model = single_node_model(op, first, weights, constant=constant, node_name=node_name)
    return make_session(model, threads=threads).run(None, feeds(op, first, weights, constant=constant))[0]
