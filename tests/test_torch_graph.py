"""halut_onnx.torch_graph: ONNX graphs run as torch operations give onnxruntime's outputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch", reason="fine-tuning needs torch: pip install -e '.[test]'")

from halut_onnx.torch_graph import TorchGraph  # noqa: E402


def _model(nodes, inputs, outputs, inits, opset):
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return model


def _both(model, feeds, outputs=None):
    outputs = outputs or [o.name for o in model.graph.output]
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(outputs, feeds)
    with torch.no_grad():
        ours = TorchGraph(model, outputs)({k: torch.from_numpy(v) for k, v in feeds.items()})
    return ref, [o.numpy() for o in ours]


def _conv_net(rng, opset):
    """The ops of the PP-OCR models: SAME_UPPER convs and pools, BatchNorm, hard-sigmoid gating, GELU by Erf,
    layer norm by ReduceMean/Pow/Sqrt, a reshape into a sequence, MatMul, Softmax, Resize and ConvTranspose."""
    f = lambda *s: (0.3 * rng.standard_normal(s)).astype(np.float32)  # noqa: E731
    inits = {
        "w0": f(8, 3, 3, 3), "b0": f(8), "w1": f(8, 8, 2, 2), "w2": f(8, 1, 3, 3), "wt": f(8, 4, 2, 2),
        "bn_s": 1 + f(8), "bn_b": f(8), "bn_m": f(8), "bn_v": (0.5 + rng.random(8)).astype(np.float32),
        "half": np.array(0.5, np.float32), "two": np.array(2.0, np.float32), "eps": np.array(1e-5, np.float32),
        "sqrt2": np.array(np.sqrt(2.0), np.float32), "one": np.array(1.0, np.float32),
        "wm": f(8, 6), "scales": np.array([1, 1, 2, 2], np.float32), "roi": np.zeros(0, np.float32),
        "shape3": np.array([0, 8, -1], np.int64), "starts": np.array([1], np.int64), "ends": np.array([5], np.int64),
        "axes3": np.array([3], np.int64), "idx": np.array(1, np.int64),
    }
    sq = ({"axes": [0]}, []) if opset < 13 else ({}, ["axes0"])
    if opset >= 13:
        inits["axes0"] = np.array([0], np.int64)
    n = helper.make_node

    def mean_last(i, o):  # ReduceMean's axes: an attribute before opset 18, an input from it on
        if opset < 18:
            return n("ReduceMean", [i], [o], axes=[-1], keepdims=1)
        return n("ReduceMean", [i, "axesm1"], [o], keepdims=1)

    nodes = [
        n("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1], strides=[2, 1]),
        n("BatchNormalization", ["c0", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"], epsilon=1e-5),
        n("Relu", ["bn"], ["r0"]),
        n("Conv", ["r0", "w1"], ["c1"], auto_pad="SAME_UPPER"),
        n("MaxPool", ["c1"], ["p0"], kernel_shape=[2, 2], strides=[1, 1], auto_pad="SAME_UPPER"),
        n("Conv", ["p0", "w2"], ["dw"], group=8, pads=[1, 1, 1, 1]),
        n("HardSigmoid", ["dw"], ["hs"], alpha=1 / 6, beta=0.5),
        n("Mul", ["dw", "hs"], ["hsw"]),
        n("GlobalAveragePool", ["hsw"], ["gap"]),
        n("Sigmoid", ["gap"], ["gate"]),
        n("Mul", ["hsw", "gate"], ["g0"]),
        n("Div", ["g0", "sqrt2"], ["e0"]), n("Erf", ["e0"], ["e1"]), n("Add", ["e1", "one"], ["e2"]),
        n("Mul", ["g0", "e2"], ["e3"]), n("Mul", ["e3", "half"], ["gelu"]),
        n("AveragePool", ["gelu"], ["ap"], kernel_shape=[2, 2], strides=[2, 2]),
        n("Reshape", ["ap", "shape3"], ["seq0"]),
        n("Transpose", ["seq0"], ["seq"], perm=[0, 2, 1]),
        mean_last("seq", "mu"),
        n("Sub", ["seq", "mu"], ["d"]), n("Pow", ["d", "two"], ["d2"]),
        mean_last("d2", "var"),
        n("Add", ["var", "eps"], ["ve"]), n("Sqrt", ["ve"], ["sd"]), n("Div", ["d", "sd"], ["ln"]),
        n("MatMul", ["ln", "wm"], ["logits"]),
        n("Softmax", ["logits"], ["y"], axis=-1 if opset >= 13 else 2),
        n("Resize", ["gelu", "roi", "scales"], ["up"], mode="nearest", coordinate_transformation_mode="asymmetric",
          nearest_mode="floor"),
        n("ConvTranspose", ["up", "wt"], ["ct"], kernel_shape=[2, 2], strides=[2, 2]),
        n("Slice", ["ct", "starts", "ends", "axes3"], ["sl"]),
        n("ReduceSum", ["sl"] + (["axes1"] if opset >= 13 else []), ["rs"], keepdims=0,
          **({} if opset >= 13 else {"axes": [1]})),
        n("Unsqueeze", ["rs"] + sq[1], ["us"], **sq[0]),
        n("Squeeze", ["us"] + sq[1], ["z"], **sq[0]),
        n("Shape", ["z"], ["shp"]), n("Gather", ["shp", "idx"], ["h"]),
        n("Cast", ["h"], ["hf"], to=TensorProto.FLOAT),
    ]
    if opset >= 18:
        inits["axesm1"] = np.array([-1], np.int64)
    if opset >= 13:
        inits["axes1"] = np.array([1], np.int64)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 12, 16])
    outs = [helper.make_empty_tensor_value_info(name) for name in ("y", "z", "hf")]
    return _model(nodes, [x], outs, inits, opset)


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_conv_net_matches_onnxruntime(rng, opset):
    model = _conv_net(rng, opset)
    x = rng.standard_normal((2, 3, 12, 16)).astype(np.float32)
    ref, ours = _both(model, {"x": x})
    for r, o in zip(ref, ours):
        assert r.shape == o.shape
        np.testing.assert_allclose(o, r, rtol=1e-4, atol=1e-5)


def test_conv1d_matches_onnxruntime(rng):
    """1-D Convs (explicit asymmetric pads with stride, dilation, SAME_UPPER, groups, no attributes at all)."""
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w0", "b0"], ["h0"], kernel_shape=[5], strides=[2], pads=[2, 1]),
        n("Conv", ["h0", "w1"], ["h1a"], dilations=[2], pads=[2, 2]),
        n("Conv", ["h1a", "w4"], ["h1"], auto_pad="SAME_UPPER"),
        n("Conv", ["h1", "w2"], ["h2"], group=2, pads=[1, 1]),
        n("Conv", ["h2", "w3"], ["y"]),
    ]
    inits = {"w0": f(6, 4, 5), "b0": f(6), "w1": f(6, 6, 3), "w2": f(8, 3, 3), "w3": f(5, 8, 2),
             "w4": f(6, 6, 4)}
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 23])
    model = _model(nodes, [x], [helper.make_empty_tensor_value_info("y")], inits, 17)
    ref, ours = _both(model, {"x": f(2, 4, 23)})
    assert ours[0].shape == ref[0].shape == (2, 5, 10)
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-4, atol=1e-4)


def test_mlp_ops_match_onnxruntime(rng):
    """Gemm (alpha, beta, transB), Flatten, Clip, LeakyRelu, Tanh, Concat, LogSoftmax at opset 13."""
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    inits = {"w": f(6, 24), "b": f(6), "lo": np.array(-0.5, np.float32), "hi": np.array(0.7, np.float32)}
    n = helper.make_node
    nodes = [
        n("Flatten", ["x"], ["flat"], axis=1),
        n("Gemm", ["flat", "w", "b"], ["g"], alpha=0.5, beta=2.0, transB=1),
        n("Clip", ["g", "lo", "hi"], ["c"]), n("LeakyRelu", ["g"], ["lr"], alpha=0.1), n("Tanh", ["g"], ["t"]),
        n("Concat", ["c", "lr", "t"], ["cat"], axis=1),
        n("LogSoftmax", ["cat"], ["y"], axis=-1),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 2, 3, 4])
    y = helper.make_empty_tensor_value_info("y")
    model = _model(nodes, [x], [y], inits, 13)
    ref, ours = _both(model, {"x": f(5, 2, 3, 4)})
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-5, atol=1e-5)


def test_remaining_ops_match_onnxruntime(rng):
    """Elementwise ops, HardSwish, LayerNormalization, Expand, Constant, GlobalMaxPool, a padded AveragePool that
    does not count the pads, Dropout at inference, and ai.onnx.ml's Scaler, at opset 17."""
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    inits = {"g": 1 + f(5), "b": f(5), "shape": np.array([2, 3, 4, 5], np.int64)}
    n = helper.make_node
    nodes = [
        n("Scaler", ["x"], ["sc"], domain="ai.onnx.ml", offset=[0.5], scale=[2.0]),
        n("Abs", ["sc"], ["ab"]), n("Log", ["ab"], ["lg"]), n("Exp", ["lg"], ["ex"]), n("Neg", ["ex"], ["ng"]),
        n("Reciprocal", ["ex"], ["rc"]), n("HardSwish", ["ng"], ["hw"]), n("Add", ["hw", "rc"], ["s0"]),
        n("Dropout", ["s0"], ["dr"]),
        n("LayerNormalization", ["dr", "g", "b"], ["ln"], axis=-1, epsilon=1e-5),
        n("Constant", [], ["k"], value=numpy_helper.from_array(np.array([0.25], np.float32))),
        n("Mul", ["ln", "k"], ["lk"]), n("Expand", ["lk", "shape"], ["e"]),
        n("AveragePool", ["e"], ["ap"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=0),
        n("GlobalMaxPool", ["ap"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4, 5])
    outs = [helper.make_empty_tensor_value_info(name) for name in ("ap", "y")]
    graph = helper.make_graph(nodes, "g", [x], outs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 8
    ref, ours = _both(model, {"x": f(3, 4, 5)}, ["ap", "y"])
    for r, o in zip(ref, ours):
        np.testing.assert_allclose(o, r, rtol=1e-5, atol=1e-5)


def test_replaced_tensor_is_computed_by_the_module_and_its_node_skipped(rng):
    w = rng.standard_normal((4, 3)).astype(np.float32)
    n = helper.make_node
    nodes = [n("MatMul", ["x", "w"], ["h"], name="mm"), n("Add", ["h", "b"], ["hb"], name="bias"),
             n("Relu", ["hb"], ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    y = helper.make_empty_tensor_value_info("y")
    model = _model(nodes, [x], [y], {"w": w, "b": np.ones(3, np.float32)}, 13)
    calls = []

    class Minus(torch.nn.Module):
        def forward(self, t):
            calls.append(t.shape)
            return -t[:, :3]

    graph = TorchGraph(model, ["y"], {"hb": ("x", Minus())})
    assert [node.name for node in graph.nodes] == ["Relu"] or [node.op_type for node in graph.nodes] == ["Relu"]
    xv = rng.standard_normal((2, 4)).astype(np.float32)
    out = graph({"x": torch.from_numpy(xv)})[0].numpy()
    np.testing.assert_array_equal(out, np.maximum(-xv[:, :3], 0))
    assert calls == [(2, 4)]


def test_unsupported_op_is_refused_with_its_node_named():
    n = helper.make_node
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    y = helper.make_empty_tensor_value_info("y")
    model = _model([n("Relu", ["x"], ["r"], name="act"), n("Einsum", ["r"], ["y"], name="odd", equation="ij->ji")],
                   [x], [y], {}, 13)
    with pytest.raises(ValueError, match=r"^node 'odd' \(Einsum\) has no torch form in halut_onnx.torch_graph: "
                                         r"fine-tuning cannot run this model$"):
        TorchGraph(model, ["y"])
    TorchGraph(model, ["r"])  # a node the outputs do not need is not checked


@pytest.fixture(scope="module")
def ppocr_models():
    pytest.importorskip("rapidocr", reason="rapidocr (PP-OCR models) is in the test extra")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import ppocr_data

    return ppocr_data


@pytest.mark.parametrize("task, shape", [("rec", (2, 3, 48, 120)), ("det", (1, 3, 96, 128))])
def test_ppocr_models_match_onnxruntime(ppocr_models, rng, task, shape):
    path = ppocr_models.rec_model_path() if task == "rec" else ppocr_models.det_model_path()
    model = onnx.load(str(path))
    x = rng.random(shape, dtype=np.float32) * 2 - 1
    ref, ours = _both(model, {model.graph.input[0].name: x}, [model.graph.output[0].name])
    assert ref[0].shape == ours[0].shape
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-3, atol=2e-5)
