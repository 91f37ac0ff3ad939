"""Kernel timing of layer shapes (halut_onnx/kernel_timing.py): what is timed, not how fast it runs.

The timed models are captured instead of timed and run here: the Conv form must be onnxruntime's Conv against the
conv encode + HalutLookupConv on images of the layer's input size (a Conv was once timed as its patch-row MatMul,
which overstated the saving), and the times must be scaled to the rows asked for.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from halut_onnx import kernel_timing, reference, session_options
from halut_onnx.analyze import target
from halut_onnx.calibrate import CalibrationSet, collect_rows, model_inputs
from halut_onnx.passes.candidates import ConvGeometry, LayerCandidate

GEOMETRY = ConvGeometry(kernel_shape=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1))


@pytest.fixture
def captured(monkeypatch):
    """The (original, halut, X) of every timing, with fixed times 2.0 / 0.5 ms for the timed rows."""
    calls = []

    def fake(original, halut, X):
        calls.append((original, halut, X))
        return 2.0, 0.5

    monkeypatch.setattr(kernel_timing, "_time_pair", fake)
    kernel_timing.time_layer.cache_clear()
    kernel_timing.time_conv_layer.cache_clear()
    yield calls
    kernel_timing.time_layer.cache_clear()
    kernel_timing.time_conv_layer.cache_clear()


def _run(model: bytes, X: np.ndarray, options=None) -> np.ndarray:
    session = ort.InferenceSession(model, options or ort.SessionOptions(), providers=["CPUExecutionProvider"])
    return session.run(None, {"X": X})[0]


def test_conv_is_timed_as_a_conv_on_images_of_its_input_size(captured):
    # 3 images of 6 x 11 x 9 under a stride-2 3x3 conv: 6 x 5 = 30 output positions each.
    t = kernel_timing.time_conv_layer(90, (6, 11, 9), GEOMETRY, 7, 8, "pq")
    (original, halut, X), = captured
    assert X.shape == (3, 6, 11, 9) and (t.matmul_ms, t.halut_ms) == (2.0, 0.5)
    graph = onnx.load_from_string(original).graph
    assert [n.op_type for n in graph.node] == ["Conv"]
    weight = numpy_helper.to_array(graph.initializer[0])
    assert weight.shape == (7, 6, 3, 3)
    y = _run(original, X)
    assert y.shape == (3, 7, 6, 5)
    # The Halut model is the conv encode + NCHW lookup with the same geometry: its output is the reference's.
    hgraph = onnx.load_from_string(halut).graph
    assert [n.op_type for n in hgraph.node] == ["HalutEncodePQConv", "HalutLookupConv"]
    w = {t.name: numpy_helper.to_array(t) for t in hgraph.initializer}
    codes = reference.encode_pq_conv(X, w["vectors"], w["biases"], **GEOMETRY.kwargs())
    expected = reference.lookup_conv(codes, w["lut"], w["scale"], w["offset"])
    np.testing.assert_array_equal(_run(halut, X, session_options()), expected)


def test_conv_timing_scales_past_the_timed_rows(captured):
    # 40 images of 4 x 64 x 64 (4096 positions each, stride 1, same padding): 2 are timed, the times are scaled x20.
    geometry = ConvGeometry(kernel_shape=(3, 3), pads=(1, 1, 1, 1))
    t = kernel_timing.time_conv_layer(40 * 4096, (4, 64, 64), geometry, 5, 4, "tree")
    (original, halut, X), = captured
    assert X.shape[0] == kernel_timing.MAX_TIMED_ROWS // 4096 == 2
    assert (t.matmul_ms, t.halut_ms) == (40.0, 10.0)
    assert [n.op_type for n in onnx.load_from_string(halut).graph.node] == ["HalutEncodeTreeConv", "HalutLookupConv"]


def test_candidates_dispatch_by_kind(captured):
    weight = np.zeros((54, 7), np.float32)
    conv = LayerCandidate("c", "Conv", "x", "y", weight, None, "w", conv=GEOMETRY)
    matmul = LayerCandidate("m", "MatMul", "x", "y", weight, None, "w")
    kernel_timing.time_candidate(90, conv, (6, 11, 9), 8, "pq")
    kernel_timing.time_candidate(90, matmul, None, 8, "pq")
    kernel_timing.time_candidate(90, conv, None, 8, "tree")  # input size unknown: its patch-row MatMul
    shapes = [X.shape for _, _, X in captured]
    assert shapes == [(3, 6, 11, 9), (90, 54), (90, 54)]


@pytest.mark.parametrize("kind", ["MatMul", "Conv"])
def test_a_float16_layer_is_timed_in_float16_with_the_rewrites_casts(captured, kind):
    weight = np.zeros((54, 7), np.float32)
    cand = LayerCandidate("l", kind, "x", "y", weight, None, "w", conv=GEOMETRY if kind == "Conv" else None,
                          dtype=np.dtype(np.float16))
    kernel_timing.time_candidate(90, cand, (6, 11, 9), 8, "tree")
    (original, halut, X), = captured
    assert X.dtype == np.float16
    graph = onnx.load_from_string(original).graph
    assert [n.op_type for n in graph.node] == [kind]
    assert graph.initializer[0].data_type == TensorProto.FLOAT16
    hgraph = onnx.load_from_string(halut).graph
    encode = "HalutEncodeTreeConv" if kind == "Conv" else "HalutEncodeTree"
    lookup = "HalutLookupConv" if kind == "Conv" else "HalutLookup"
    assert [n.op_type for n in hgraph.node] == ["Cast", encode, lookup, "Cast"]
    # Both run, and the Halut model computes the ops' reference between the casts.
    assert _run(original, X).dtype == np.float16
    w = {t.name: numpy_helper.to_array(t) for t in hgraph.initializer}
    X32 = X.astype(np.float32)
    if kind == "Conv":
        codes = reference.encode_tree_conv(X32, w["split_dims"], w["thresholds"], **GEOMETRY.kwargs())
        expected = reference.lookup_conv(codes, w["lut"], w["scale"], w["offset"])
    else:
        codes = reference.encode_tree(X32, w["split_dims"], w["thresholds"])
        expected = reference.lookup(codes, w["lut"], w["scale"], w["offset"])
    np.testing.assert_array_equal(_run(halut, X, session_options()), expected.astype(np.float16))


def test_collect_rows_records_a_convs_input_size(tmp_path):
    rng = np.random.default_rng(3)
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 6, None, None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(rng.standard_normal((7, 6, 3, 3)).astype(np.float32), "w")])
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])
    # files of different sizes: the first file's size and positions are kept (the model is timed on it)
    np.savez(tmp_path / "0.npz", x=rng.standard_normal((2, 6, 11, 9)).astype(np.float32))
    np.savez(tmp_path / "1.npz", x=rng.standard_normal((3, 6, 11, 13)).astype(np.float32))
    cand = LayerCandidate("conv", "Conv", "x", "y", np.zeros((54, 7), np.float32), None, "w", conv=GEOMETRY)
    rows = collect_rows(model, CalibrationSet(tmp_path, model_inputs(model)), {"conv": target(cand)}, 1000,
                        progress=False)["conv"]
    assert rows.image_shape == (6, 11, 9) and rows.first_file_rows == 2 * 30
    assert rows.rows_seen == 2 * 30 + 3 * 6 * 7
