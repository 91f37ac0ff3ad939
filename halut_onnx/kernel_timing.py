"""Measured speed of one layer shape: onnxruntime's fp32 MatMul against the Halut encode + lookup ops.

For a layer of N rows, D inputs, M outputs converted with C codebooks and an encoder, both run as single-layer
onnxruntime sessions (1 intra-op thread, random weights of the right shapes: the kernels' speed does not depend on
the values) and the median of a few runs is kept. Results are cached per shape for the process. A Conv layer is
timed as what runs: onnxruntime's Conv against the conv encode op + HalutLookupConv on NCHW images of the layer's
input size (``time_conv_layer``); timing it as its patch-row MatMul overstated the saving, since onnxruntime's Conv
is faster than a MatMul over materialised patches. A float16 or float64 layer is timed in its type: onnxruntime's
MatMul / Conv in that type against the ops between the Casts the rewrite puts around them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .ops import (DOMAIN, DOMAIN_VERSION, ENCODE_PQ, ENCODE_PQ_CONV, ENCODE_TREE, ENCODE_TREE_CONV, LOOKUP, LOOKUP_CONV,
                  NUM_CODES)

MAX_TIMED_ROWS = 8192  # larger N scales linearly for both: time at most this many rows and scale
_RUNS = 5


@dataclass(frozen=True)
class KernelTime:
    matmul_ms: float  # onnxruntime MatMul, N rows
    halut_ms: float  # encode + lookup, N rows

    @property
    def saving_ms(self) -> float:
        return self.matmul_ms - self.halut_ms

    @property
    def speedup(self) -> float:
        return self.matmul_ms / self.halut_ms if self.halut_ms > 0 else float("inf")


def _model(nodes, D: int, M: int, inits: dict, halut: bool, image: bool = False, dtype: str = "float32"):
    """The timed model: X -> ``nodes`` -> Y, X and Y of ``dtype``. Halut ``nodes`` read and write the tensors
    ``_halut_io(dtype)`` names: for a layer that is not float32, the Casts the rewrite adds join them to X and Y."""
    from onnx import TensorProto, helper, numpy_helper

    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    if halut and elem != TensorProto.FLOAT:
        x32, y32 = _halut_io(dtype)
        nodes = [helper.make_node("Cast", ["X"], [x32], to=TensorProto.FLOAT), *nodes,
                 helper.make_node("Cast", [y32], ["Y"], to=elem)]
    x = helper.make_tensor_value_info("X", elem, ["B", "Cin", "H", "W"] if image else ["N", D])
    y = helper.make_tensor_value_info("Y", elem, None if image else ["N", M])
    graph = helper.make_graph(nodes, "timing", [x], [y], [numpy_helper.from_array(v, k) for k, v in inits.items()])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(DOMAIN, DOMAIN_VERSION)] if halut else [])
    return helper.make_model(graph, ir_version=10, opset_imports=opsets).SerializeToString()


def _halut_io(dtype: str) -> tuple[str, str]:
    """The input and output tensor names of the Halut nodes of a timed model of ``dtype``."""
    return ("X", "Y") if dtype == "float32" else ("X32", "Y32")


def library_available() -> bool:
    from .library import session_options

    try:
        session_options()
    except Exception:  # not built or not loadable: the function fallbacks' speed means nothing
        return False
    return True


def _halut_weights(rng: np.random.Generator, D: int, M: int, C: int, encoder: str) -> tuple[dict, dict]:
    from .reference import slice_bounds

    if encoder == "tree":
        bounds = slice_bounds(D, C)
        enc = {"split_dims": np.stack([rng.integers(bounds[c], bounds[c + 1], 4) for c in range(C)]).astype(np.int64),
               "thresholds": rng.standard_normal((C, 15)).astype(np.float32)}
    else:
        enc = {"vectors": rng.standard_normal((NUM_CODES, D)).astype(np.float32),
               "biases": rng.standard_normal((C, NUM_CODES)).astype(np.float32)}
    lut = {"lut": rng.integers(-128, 128, (M, C, NUM_CODES)).astype(np.int8),
           "scale": np.full(M, 0.01, np.float32), "offset": np.zeros(M, np.float32)}
    return enc, lut


def _time_pair(original: bytes, halut: bytes, X: np.ndarray) -> tuple[float, float]:
    """Median ms of the original and the Halut model on X, 1 thread each."""
    import onnxruntime as ort

    from .bench import latencies
    from .library import session_options

    plain = ort.SessionOptions()
    plain.intra_op_num_threads = plain.inter_op_num_threads = 1
    plain.log_severity_level = 3
    options = session_options()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    s_o = ort.InferenceSession(original, plain, providers=["CPUExecutionProvider"])
    s_h = ort.InferenceSession(halut, options, providers=["CPUExecutionProvider"])
    return latencies(s_o, s_h, {"X": X}, runs=_RUNS, warmup=1)


@functools.lru_cache(maxsize=None)
def time_layer(N: int, D: int, M: int, C: int, encoder: str, dtype: str = "float32") -> KernelTime:
    """Median time of MatMul and of encode + lookup on ``N`` rows of one (D, M, C, encoder) layer computing in
    ``dtype`` (1 thread)."""
    from onnx import helper

    rows = max(1, min(N, MAX_TIMED_ROWS))
    rng = np.random.default_rng([N, D, M, C])
    X = rng.standard_normal((rows, D)).astype(dtype)
    mm = _model([helper.make_node("MatMul", ["X", "W"], ["Y"])], D, M,
                {"W": rng.standard_normal((D, M)).astype(dtype)}, False, dtype=dtype)
    enc, lut = _halut_weights(rng, D, M, C, encoder)
    x, y = _halut_io(dtype)
    nodes = [
        helper.make_node(ENCODE_TREE if encoder == "tree" else ENCODE_PQ, [x, *enc], ["codes"], domain=DOMAIN),
        helper.make_node(LOOKUP, ["codes", *lut], [y], domain=DOMAIN),
    ]
    t_mm, t_h = _time_pair(mm, _model(nodes, D, M, {**enc, **lut}, True, dtype=dtype), X)
    scale = N / rows
    return KernelTime(t_mm * scale, t_h * scale)


@functools.lru_cache(maxsize=None)
def time_conv_layer(N: int, image_shape: tuple[int, int, int], geometry, M: int, C: int, encoder: str,
                    dtype: str = "float32") -> KernelTime:
    """Median time of onnxruntime's Conv and of the conv encode + HalutLookupConv for ``N`` output positions of one
    layer computing in ``dtype``: images of ``image_shape`` = (Cin, H, W) under ``geometry``
    (``passes.candidates.ConvGeometry``), as many as make N positions (at most MAX_TIMED_ROWS positions timed, then
    scaled), 1 thread."""
    from onnx import helper

    from .reference import conv_pads

    Cin, H, W = image_shape
    kh, kw = geometry.kernel_shape
    D = Cin * kh * kw
    _, Ho, Wo = conv_pads(H, W, **geometry.kwargs())
    per_image = max(1, Ho * Wo)
    images = max(1, round(N / per_image))
    timed = max(1, min(images, -(-MAX_TIMED_ROWS // per_image)))
    rng = np.random.default_rng([N, D, M, C])
    X = rng.standard_normal((timed, Cin, H, W)).astype(dtype)
    attrs = geometry.attributes()
    conv = _model([helper.make_node("Conv", ["X", "Wc"], ["Y"], **attrs)], D, M,
                  {"Wc": rng.standard_normal((M, Cin, kh, kw)).astype(dtype)}, False, image=True, dtype=dtype)
    enc, lut = _halut_weights(rng, D, M, C, encoder)
    x, y = _halut_io(dtype)
    nodes = [
        helper.make_node(ENCODE_TREE_CONV if encoder == "tree" else ENCODE_PQ_CONV, [x, *enc], ["codes"],
                         domain=DOMAIN, **attrs),
        helper.make_node(LOOKUP_CONV, ["codes", *lut], [y], domain=DOMAIN),
    ]
    t_conv, t_h = _time_pair(conv, _model(nodes, D, M, {**enc, **lut}, True, image=True, dtype=dtype), X)
    scale = images / timed
    return KernelTime(t_conv * scale, t_h * scale)


def time_candidate(N: int, cand, image_shape, C: int, encoder: str) -> KernelTime:
    """The timing of a layer candidate (``passes.candidates.LayerCandidate``) over N rows, in its type: a Conv
    with a known input size as a Conv, anything else as its row MatMul."""
    if cand.conv is not None and image_shape is not None:
        return time_conv_layer(N, tuple(image_shape), cand.conv, cand.M, C, encoder, cand.dtype.name)
    return time_layer(N, cand.D, cand.M, C, encoder, cand.dtype.name)
