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


def _check_converted(out, model, X, image, encoder, geo) -> float:
    """The converted model's output on X equals the conv ops' reference on ``image`` (X as the ops see it) with
    the learned parameters, with the library and (exactly for tree; near-ties may flip a pq code) through the
    function bodies; returns its NMSE against the original model's output (the learner's measure)."""
    p = _params(out)
    codes = (reference.encode_tree_conv(image, p["split_dims"], p["thresholds"], **geo) if encoder == "tree"
             else reference.encode_pq_conv(image, p["vectors"], p["biases"], **geo))
    expected = reference.lookup_conv(codes, p["lut"], p["scale"], p["offset"]).reshape(-1)
    got = make_session(out).run(None, {"x": X})[0]
    np.testing.assert_array_equal(got.reshape(-1), expected)
    fallback = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": X})[0]
    if encoder == "tree":
        np.testing.assert_array_equal(fallback.reshape(-1), expected)
    else:
        assert np.mean(fallback.reshape(-1) != expected) < 0.01
    original = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": X})[0]
    assert got.shape == original.shape
    return float(np.sum((got - original) ** 2) / np.sum(original**2))


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
    nmse = _check_converted(out, model, X, X, encoder, geometry_kwargs(attrs))
    # C = Cin codebooks on 3-dim data: the lookup explains most of the output variance.
    print(case[0], encoder, nmse, result.layers[0].heldout_nmse_int8)
    assert nmse < 0.35, nmse


def _patch_rows(tmp_path, rng, images: int, max_rows: int, copies: int = 0):
    """(data, the Conv's candidate, its sampled patch rows) of a 3x3 Conv over ``images`` 4x12x10 images in files of
    two, with ``copies`` noisy copies of each file."""
    from halut_onnx.augment import augmented

    model = conv_model(rng, (1, 4, 12, 10), dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    data = smooth_images(rng, (images, 4, 12, 10))
    calib = write_calibration(tmp_path / "calib", "x", data, per_file=2)
    inferred = onnx.shape_inference.infer_shapes(model)
    (cand,), _ = find_layers(inferred)
    rows = collect_rows(inferred, augmented(CalibrationSet(calib, model_inputs(model)), copies),
                        {"conv": ("x", 36, cand.conv)}, max_rows=max_rows, progress=False)["conv"]
    return data, cand, rows


def test_patch_calibration_is_bounded_and_uniform(tmp_path, rng):
    """The patch sample holds at most --max-rows rows, drawn from every image and position."""
    data, cand, rows = _patch_rows(tmp_path, rng, images=8, max_rows=300)
    assert rows.rows.shape == (300, 36) and rows.rows_seen == 8 * 12 * 10
    full = reference.im2col(data, **cand.conv.kwargs())
    # every sampled row is a true patch row
    lookup = {r.tobytes(): i for i, r in enumerate(full)}
    index = np.array([lookup[r.tobytes()] for r in rows.rows])
    assert len(set(index.tolist())) == 300
    images = index // 120
    assert set(images.tolist()) == set(range(8))  # all images represented
    assert rows.sources is None


def test_augmented_patches_carry_their_sources(tmp_path, rng):
    data, cand, rows = _patch_rows(tmp_path, rng, images=4, max_rows=500, copies=1)
    assert rows.rows.shape == (500, 36) and rows.rows_seen == 2 * 4 * 12 * 10
    file, position = np.divmod(rows.sources.sample, 1 << 32)
    real = reference.im2col(data, **cand.conv.kwargs())[240 * file + position]  # 2 images of 120 patches a file
    clean = ~rows.sources.noisy
    assert 0 < clean.sum() < 500
    np.testing.assert_array_equal(rows.rows[clean], real[clean])
    scale = 0.1 * np.array([data[2 * f : 2 * f + 2].std() for f in range(2)])[file[~clean]]  # augment.NOISE
    assert np.all(np.abs(rows.rows[~clean] - real[~clean]).max(axis=1) < 6 * scale)


# ------------------------------------------------------------------------------- 1-D Conv
# (id, X shape [B, Cin, L], 1-D geometry attributes, the 2-D geometry the conv ops get for it)
GEOMETRIES_1D = [
    ("k3_pad1", (2, 8, 40), dict(kernel_shape=[3], pads=[1, 1]),
     dict(kernel_shape=[1, 3], pads=[0, 1, 0, 1])),
    ("k5_s2_asym", (3, 6, 37), dict(kernel_shape=[5], strides=[2], pads=[2, 1]),
     dict(kernel_shape=[1, 5], strides=[1, 2], pads=[0, 2, 0, 1])),
    ("k3_d2_nobias", (2, 8, 33), dict(kernel_shape=[3], dilations=[2]),
     dict(kernel_shape=[1, 3], dilations=[1, 2])),
    ("same_upper_s2", (2, 6, 35), dict(kernel_shape=[4], strides=[2], auto_pad="SAME_UPPER"),
     dict(kernel_shape=[1, 4], strides=[1, 2], auto_pad="SAME_UPPER")),
    ("k1", (2, 24, 30), dict(kernel_shape=[1]), dict(kernel_shape=[1, 1])),
]


def smooth_signals(rng, shape):
    """Sequences a 1-D conv sees: low-rank channel mixing of 3 smooth signals (noise averaged over 5 steps)."""
    B, Cin, L = shape
    base = rng.standard_normal((B, 3, L + 4))
    blurred = sum(base[:, :, i : i + L] for i in range(5)) / 5
    mix = np.random.default_rng(7).standard_normal((Cin, 3))
    return np.einsum("ck,bkl->bcl", mix, blurred).astype(np.float32)


def conv1d_model(rng, Cin, attrs, Cout=6, bias=True, opset=17):
    k = attrs["kernel_shape"][0]
    inits = {"W": (rng.standard_normal((Cout, Cin, k)) / np.sqrt(Cin * k)).astype(np.float32)}
    if bias:
        inits["B"] = rng.standard_normal(Cout).astype(np.float32)
    node = helper.make_node("Conv", ["x", "W", *(["B"] if bias else [])], ["y"], name="conv", **attrs)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", Cin, "L"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", Cout, "Lo"])
    return make_model([node], [x], [y], inits, opset=opset)


@pytest.mark.parametrize("case", GEOMETRIES_1D, ids=[c[0] for c in GEOMETRIES_1D])
def test_conv1d_is_a_candidate_with_its_2d_geometry(rng, case):
    _, shape, attrs, as_2d = case
    model = onnx.shape_inference.infer_shapes(conv1d_model(rng, shape[1], attrs))
    (cand,), skipped = find_layers(model)
    assert skipped == []
    expected = {"strides": [1, 1], "dilations": [1, 1], "auto_pad": "NOTSET", **as_2d}
    if expected["auto_pad"] == "NOTSET":
        expected.setdefault("pads", [0, 0, 0, 0])
    assert cand.conv.conv1d and cand.conv.attributes() == expected
    W = onnx.numpy_helper.to_array(model.graph.initializer[0])
    np.testing.assert_array_equal(cand.weight, W.reshape(len(W), -1).T)  # patch element d = ci * k + tap


def test_conv3d_and_misshapen_conv1d_are_skipped_with_reasons(rng):
    w3 = rng.standard_normal((4, 2, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["v", "w3"], ["v_out"], name="conv3d"),
             helper.make_node("Conv", ["s", "w1"], ["s_out"], name="conv1d_bad_pads", kernel_shape=[3],
                              pads=[1, 1, 1, 1])]
    inputs = [helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, 2, 5, 5, 5]),
              helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 2, 9])]
    outputs = [helper.make_empty_tensor_value_info(n) for n in ("v_out", "s_out")]
    graph = helper.make_graph(nodes, "g", inputs, outputs, [
        onnx.numpy_helper.from_array(w3, "w3"),
        onnx.numpy_helper.from_array(rng.standard_normal((4, 2, 3)).astype(np.float32), "w1")])
    _, skipped = find_layers(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert [(s.name, s.reason) for s in skipped] == [
        ("conv3d", "3-D Conv (weight rank 5); only 1-D and 2-D Conv are converted"),
        ("conv1d_bad_pads", "pads [1, 1, 1, 1] are not 2 ints >= 0"),
    ]


@pytest.mark.parametrize("encoder", ["tree", "pq"])
@pytest.mark.parametrize("case", GEOMETRIES_1D, ids=[c[0] for c in GEOMETRIES_1D])
def test_convert_conv1d(tmp_path, rng, case, encoder):
    """A 1-D Conv becomes Unsqueeze -> conv encode -> conv lookup -> Squeeze; its output equals the conv ops'
    reference on the height-1 image, with the library and through the function bodies."""
    name, shape, attrs, as_2d = case
    model = conv1d_model(rng, shape[1], attrs, bias="nobias" not in name)
    path = tmp_path / "conv1d.onnx"
    onnx.save(model, path)
    calib = write_calibration(tmp_path / "calib", "x", smooth_signals(rng, (64, *shape[1:])), per_file=16)
    C = shape[1]
    result = convert_model(path, calib, tmp_path / "out.onnx",
                           ConvertOptions(encoder=encoder, codebooks=C, max_rows=3000, progress=False))
    D = shape[1] * attrs["kernel_shape"][0]
    assert [(r.name, r.status, r.D) for r in result.layers] == [("conv", "converted", D)]
    out = result.model
    encode_op = ENCODE_TREE_CONV if encoder == "tree" else ENCODE_PQ_CONV
    assert [(n.op_type, n.domain) for n in out.graph.node] == [
        ("Unsqueeze", ""), (encode_op, "ai.halut"), (LOOKUP_CONV, "ai.halut"), ("Squeeze", "")]
    assert [(i.name, i.op_type, i.D, i.C) for i in summarize(out).layers] == [("conv", "Conv", D, C)]

    X = smooth_signals(rng, shape)
    nmse = _check_converted(out, model, X, X[:, :, None, :], encoder, geometry_kwargs(as_2d))
    assert nmse < 0.35, nmse  # the bound of the 2-D conversions on the same kind of data


def test_convert_conv1d_before_opset_13_gives_axes_as_attributes(tmp_path, rng):
    """Unsqueeze / Squeeze take their axes as an attribute before opset 13 and as an input from it on."""
    model = conv1d_model(rng, 8, dict(kernel_shape=[3], pads=[1, 1]), opset=11)
    calib = write_calibration(tmp_path / "calib", "x", smooth_signals(rng, (64, 8, 40)), per_file=16)
    out = convert_model(model, calib, None, ConvertOptions(codebooks=8, progress=False)).model
    squeezes = [n for n in out.graph.node if n.op_type in ("Unsqueeze", "Squeeze")]
    assert [(n.input[1:], [helper.get_attribute_value(a) for a in n.attribute]) for n in squeezes] == [
        ([], [[2]]), ([], [[2]])]
    X = smooth_signals(rng, (2, 8, 40))
    got = make_session(out).run(None, {"x": X})[0]
    original = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": X})[0]
    assert got.shape == original.shape == (2, 6, 40)
    assert float(np.sum((got - original) ** 2) / np.sum(original**2)) < 0.35


# ------------------------------------------------------------------------------- folding what follows a Conv
def _follower_model(rng, follower: str, Cin=6, Cout=5, conv1d=False, extra_output=False):
    """x -> Conv (no bias) -> ``follower`` -> y; followers: per-channel / scalar / per-column Add, BatchNormalization
    (inference, training mode)."""
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    kernel = [3] if conv1d else [3, 3]
    inits = {"W": f(Cout, Cin, *kernel) / 4}
    spatial = [1] if conv1d else [1, 1]
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv", kernel_shape=kernel, pads=[1] * 2 * len(kernel))]
    if follower.startswith("add"):
        shape = {"add_channel": [1, Cout, *spatial], "add_channel_short": [Cout, *spatial], "add_scalar": [],
                 "add_last_axis": [Cout]}[follower]
        inits["b"] = f(*shape)
        nodes.append(helper.make_node("Add", ["b", "c"], ["y"], name="follower"))
    else:
        inits.update(scale=f(Cout), shift=f(Cout), mean=f(Cout), var=np.abs(f(Cout)) + 0.1)
        training = follower == "bn_training"
        nodes.append(helper.make_node("BatchNormalization", ["c", "scale", "shift", "mean", "var"],
                                      ["y", "running_mean", "running_var"] if training else ["y"],
                                      name="follower", epsilon=1e-3, training_mode=int(training)))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", Cin, "L"] if conv1d else ["N", Cin, "H", "W"])
    out_shape = ["N", Cout, "Lo"] if conv1d else ["N", Cout, "Ho", "Wo"]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)]
    if extra_output:
        outputs.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, out_shape))
    return make_model(nodes, [x], outputs, inits)


@pytest.mark.parametrize("follower,conv1d,folded", [
    ("add_channel", False, True), ("add_channel_short", False, True), ("add_scalar", False, True),
    ("add_channel", True, True), ("bn", False, True), ("bn", True, True),
    ("add_last_axis", False, False),  # [Cout] broadcasts along W, not over channels
    ("bn_training", False, False),
])
def test_conv_folds_the_bias_add_or_batchnorm_that_follows(rng, follower, conv1d, folded):
    """The candidate's W and bias reproduce the Conv and what follows it, computed by onnxruntime."""
    model = onnx.shape_inference.infer_shapes(_follower_model(rng, follower, conv1d=conv1d))
    (cand,), _ = find_layers(model)
    assert (cand.bias_node, cand.output_name) == (("follower", "y") if folded else (None, "c"))
    X = rng.standard_normal((2, 6, 7) if conv1d else (2, 6, 7, 5)).astype(np.float32)  # W = Cout: [Cout] broadcasts
    out = "y" if folded else "c"
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    if not folded:
        probe.graph.output.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, ["N", 5, "Ho", "Wo"]))
    if follower == "bn_training":
        return  # onnxruntime runs training-mode BatchNormalization only in training builds; the refusal is the test
    want = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"]).run([out], {"x": X})[0]
    rows = reference.im2col(cand.conv.as_nchw(X), **cand.conv.kwargs()) @ cand.weight
    rows = rows + (0 if cand.bias is None else cand.bias)
    got = rows.reshape(2, 1 if conv1d else 7, -1, 5).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got[:, :, 0, :] if conv1d else got, want, rtol=1e-4, atol=1e-4)


def test_conv_output_read_elsewhere_keeps_its_follower(rng):
    model = onnx.shape_inference.infer_shapes(_follower_model(rng, "bn", extra_output=True))
    (cand,), _ = find_layers(model)
    assert (cand.bias_node, cand.output_name) == (None, "c")


@pytest.mark.parametrize("follower", ["add_channel", "bn"])
def test_convert_conv_with_folded_follower(tmp_path, rng, follower):
    """The converted graph has no Add / BatchNormalization left; its output is the conv ops' reference with the
    learned parameters, and close to the original's."""
    model = _follower_model(rng, follower, Cin=8, Cout=6)
    calib = write_calibration(tmp_path / "calib", "x", smooth_images(rng, (48, 8, 12, 11)), per_file=12)
    result = convert_model(model, calib, None, ConvertOptions(codebooks=8, max_rows=3000, progress=False))
    assert [(r.name, r.status, r.bias_node) for r in result.layers] == [("conv", "converted", "follower")]
    out = result.model
    assert [n.op_type for n in out.graph.node] == [ENCODE_PQ_CONV, LOOKUP_CONV]
    assert [o.name for o in out.graph.output] == ["y"] and out.graph.node[1].output == ["y"]
    X = smooth_images(rng, (2, 8, 12, 11))
    p = _params(out)
    codes = reference.encode_pq_conv(X, p["vectors"], p["biases"], kernel_shape=(3, 3), pads=(1, 1, 1, 1))
    got = make_session(out).run(None, {"x": X})[0]
    np.testing.assert_array_equal(got, reference.lookup_conv(codes, p["lut"], p["scale"], p["offset"]))
    original = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": X})[0]
    assert float(np.sum((got - original) ** 2) / np.sum((original - original.mean()) ** 2)) < 0.35
