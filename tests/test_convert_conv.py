"""Converting Conv layers end to end: patch calibration, learning, the conv ops in the graph, and the converted model
(library kernels and function bodies) against the numpy reference with the learned parameters."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conv_models import GEOMETRIES, geometry_kwargs
from onnx import TensorProto, helper
from ops_models import make_session

from halut_models import make_model, write_calibration
from halut_onnx import reference
from halut_onnx.calibrate import CalibrationSet, collect_rows, model_inputs
from halut_onnx.convert import ConvertOptions, convert_model
from halut_onnx.ops import ENCODE_PQ_CONV, ENCODE_TREE_CONV, LOOKUP_CONV
from halut_onnx.passes import find_layers
from halut_onnx.summary import summarize

CASES = [g for g in GEOMETRIES if g[0] in ("1x1", "3x3_s2_asym", "3x3_d2", "5x5", "same_upper_s2", "valid_d2")]


def conv_model(rng, shape, attrs, Cout=6, bias=True):
    Cin = shape[1]
    W = (rng.standard_normal((Cout, Cin, *attrs["kernel_shape"])) / np.sqrt(Cin * 9)).astype(np.float32)
    inits = {"W": W, **({"B": rng.standard_normal(Cout).astype(np.float32)} if bias else {})}
    node = helper.make_node("Conv", ["x", "W", *(["B"] if bias else [])], ["y"], name="conv", **attrs)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", Cin, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", Cout, "Ho", "Wo"])
    return make_model([node], [x], [y], inits)


def smooth_images(rng, shape):
    """Images a conv sees: low-rank channel mixing of 3 smooth planes (noise box-blurred over 5 x 5), so that a
    patch lies near a low-dimensional space."""
    B, Cin, H, W = shape
    base = rng.standard_normal((B, 3, H + 4, W + 4))
    blurred = sum(base[:, :, i : i + H, j : j + W] for i in range(5) for j in range(5)) / 5
    mix = np.random.default_rng(7).standard_normal((Cin, 3))  # one distribution for calibration and test
    return np.einsum("ck,bkhw->bchw", mix, blurred).astype(np.float32)


def _params(model):
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    return {k.split(".halut.")[1]: v for k, v in inits.items() if k.startswith("conv.halut.")}


@pytest.mark.parametrize("encoder", ["tree", "pq"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_convert_single_conv(tmp_path, rng, case, encoder):
    _, shape, attrs = case
    shape = (2, 6, shape[2] + 4, shape[3] + 3)  # enough patch rows to learn from, D >= 16 for 3x3
    if attrs["kernel_shape"] == [1, 1]:
        shape = (2, 24, shape[2], shape[3])
    model = conv_model(rng, shape, attrs)
    path = tmp_path / "conv.onnx"
    onnx.save(model, path)
    calib = write_calibration(tmp_path / "calib", "x", smooth_images(rng, (48, *shape[1:])), per_file=12)
    result = convert_model(path, calib, tmp_path / "out.onnx",
                           ConvertOptions(encoder=encoder, codebooks=shape[1], max_rows=3000, progress=False))
    assert [(r.name, r.status, r.D) for r in result.layers] == [("conv", "converted", shape[1] * int(
        np.prod(attrs["kernel_shape"])))]
    out = result.model
    ops = [(n.op_type, n.domain) for n in out.graph.node]
    encode_op = ENCODE_TREE_CONV if encoder == "tree" else ENCODE_PQ_CONV
    assert ops == [(encode_op, "ai.halut"), (LOOKUP_CONV, "ai.halut")]
    encode = out.graph.node[0]
    got_attrs = {a.name: helper.get_attribute_value(a) for a in encode.attribute}
    assert got_attrs["kernel_shape"] == attrs["kernel_shape"]
    D = shape[1] * int(np.prod(attrs["kernel_shape"]))
    assert [(i.name, i.op_type, i.D, i.M, i.C, i.encoder, i.lut_bytes) for i in summarize(out).layers] == [
        ("conv", "Conv", D, 6, shape[1], encoder, 6 * shape[1] * 16)]  # what `inspect` lists

    X = smooth_images(rng, shape)
    p = _params(out)
    geo = geometry_kwargs(attrs)
    codes = (reference.encode_tree_conv(X, p["split_dims"], p["thresholds"], **geo) if encoder == "tree"
             else reference.encode_pq_conv(X, p["vectors"], p["biases"], **geo))
    expected = reference.lookup_conv(codes, p["lut"], p["scale"], p["offset"])
    got = make_session(out).run(None, {"x": X})[0]
    np.testing.assert_array_equal(got, expected)
    # The function bodies alone (no library): exact for tree, near-ties may flip a pq code.
    fallback = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": X})[0]
    if encoder == "tree":
        np.testing.assert_array_equal(fallback, expected)
    else:
        assert np.mean(fallback != expected) < 0.01
    original = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": X})[0]
    nmse = float(np.sum((got - original) ** 2) / np.sum(original**2))  # the learner's measure
    # C = Cin codebooks on 3-dim data: the lookup explains most of the output variance.
    print(case[0], encoder, nmse, result.layers[0].heldout_nmse_int8)
    assert nmse < 0.35, nmse


def test_patch_calibration_is_bounded_and_uniform(tmp_path, rng):
    """The patch sample holds at most --max-rows rows, drawn from every image and position."""
    shape, attrs = (1, 4, 12, 10), dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    model = conv_model(rng, shape, attrs)
    data = smooth_images(rng, (8, 4, 12, 10))
    calib = write_calibration(tmp_path / "calib", "x", data, per_file=2)
    inferred = onnx.shape_inference.infer_shapes(model)
    (cand,), _ = find_layers(inferred)
    rows = collect_rows(inferred, CalibrationSet(calib, model_inputs(model)), {"conv": ("x", 36, cand.conv)},
                        max_rows=300, progress=False)["conv"]
    assert rows.rows.shape == (300, 36) and rows.rows_seen == 8 * 12 * 10
    full = reference.im2col(data, **cand.conv.kwargs())
    # every sampled row is a true patch row
    lookup = {r.tobytes(): i for i, r in enumerate(full)}
    index = np.array([lookup[r.tobytes()] for r in rows.rows])
    assert len(set(index.tolist())) == 300
    images = index // 120
    assert set(images.tolist()) == set(range(8))  # all images represented
