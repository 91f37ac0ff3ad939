"""Float16 and float64 models convert as they are: each layer's input is cast to the ops' float32 and the lookup's
output back to the layer's type, and the converted model computes exactly that (numpy spec with the same casts)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from ops_models import make_session
from test_convert_conv import conv1d_model, conv_model, smooth_images, smooth_signals

from halut_models import low_rank, mlp, retyped, write_calibration
from halut_onnx import reference
from halut_onnx.convert import ConvertOptions, convert_model


def _params(model, layer):
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {k.split(".halut.")[1]: v for k, v in inits.items() if k.startswith(f"{layer}.halut.")}


def _tree_layer(p, x):
    """One converted MatMul / Gemm as the rewrite builds it: Cast to float32, the ops' spec, Cast back."""
    codes = reference.encode_tree(x.astype(np.float32), p["split_dims"], p["thresholds"])
    return reference.lookup(codes, p["lut"], p["scale"], p["offset"]).astype(x.dtype)


def _nmse(y, ref):
    y, ref = y.astype(np.float64), ref.astype(np.float64)
    return float(np.sum((y - ref) ** 2) / np.sum(ref**2))


@pytest.mark.parametrize("sequential", [False, True], ids=["", "sequential"])
@pytest.mark.parametrize("dtype", [np.float16, np.float64], ids=["float16", "float64"])
def test_convert_mlp_in_another_float_type(tmp_path, rng, dtype, sequential):
    model = retyped(mlp(rng), dtype)
    onnx.save(model, tmp_path / "mlp.onnx")
    data = low_rank(rng, (1100, 32)).astype(dtype)
    calib = write_calibration(tmp_path / "calib", "x", data[:800], per_file=100)
    options = ConvertOptions(encoder="tree", codebooks=4, max_rows=600, progress=False, sequential=sequential)
    result = convert_model(tmp_path / "mlp.onnx", calib, tmp_path / "out.onnx", options)

    assert [(r.name, r.status, r.bias_node, r.D, r.M) for r in result.layers] == [
        ("fc1", "converted", "fc1_bias", 32, 24), ("fc2", "converted", None, 24, 10)]
    out = onnx.load(tmp_path / "out.onnx")
    onnx.checker.check_model(out, full_check=True)
    assert [n.op_type for n in out.graph.node] == ["Cast", "HalutEncodeTree", "HalutLookup", "Cast", "Relu"] + [
        "Cast", "HalutEncodeTree", "HalutLookup", "Cast"]
    assert [n.name for n in out.graph.node[:4]] == ["fc1/halut_cast_in", "fc1/halut_encode", "fc1/halut_lookup",
                                                    "fc1/halut_cast_out"]
    doc = out.graph.node[2].doc_string
    assert doc.startswith(f"Halut replacement of MatMul 'fc1' (B 'w1' [32, 24]) + Add 'fc1_bias' (bias folded) in "
                          f"{np.dtype(dtype).name}, cast to float32 around the Halut ops: D=32"), doc

    x = data[800:]
    h = np.maximum(_tree_layer(_params(out, "fc1"), x), dtype(0))
    expected = _tree_layer(_params(out, "fc2"), h)
    for session in (make_session(out), ort.InferenceSession(out.SerializeToString())):  # library, functions
        y = session.run(None, {"x": x})[0]
        assert y.dtype == dtype
        np.testing.assert_array_equal(y, expected)
    original = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    assert _nmse(y, original) < 0.05  # the float32 conversion's bound (test_convert.py) on the same kind of data

    # The first layer sees the same values as in the float32 model with the same (rounded) weights fed the same
    # data: it learns the same tables, so calibration and learning do not depend on the model's type.
    onnx.save(retyped(model, np.float32), tmp_path / "mlp32.onnx")
    calib32 = write_calibration(tmp_path / "calib32", "x", data[:800].astype(np.float32), per_file=100)
    out32 = convert_model(tmp_path / "mlp32.onnx", calib32, tmp_path / "out32.onnx", options).model
    for name, value in _params(out32, "fc1").items():
        np.testing.assert_array_equal(_params(out, "fc1")[name], value, err_msg=name)


@pytest.mark.parametrize("encoder", ["tree", "pq"])
def test_convert_float16_convs(tmp_path, rng, encoder):
    """A float16 2-D Conv and 1-D Conv: Cast -> (Unsqueeze ->) conv encode -> conv lookup (-> Squeeze) -> Cast."""
    attrs = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    cases = {
        "conv2d": (retyped(conv_model(rng, (2, 6, 12, 11), attrs), np.float16),
                   smooth_images(rng, (40, 6, 12, 11)), ["Cast", "encode", "HalutLookupConv", "Cast"]),
        "conv1d": (retyped(conv1d_model(rng, 6, {"kernel_shape": [3], "pads": [1, 1]}), np.float16),
                   smooth_signals(rng, (64, 6, 40)),
                   ["Cast", "Unsqueeze", "encode", "HalutLookupConv", "Squeeze", "Cast"]),
    }
    for name, (model, data, ops) in cases.items():
        data = data.astype(np.float16)
        onnx.save(model, tmp_path / f"{name}.onnx")
        calib = write_calibration(tmp_path / f"calib_{name}", "x", data[:-8], per_file=8)
        result = convert_model(tmp_path / f"{name}.onnx", calib, tmp_path / f"{name}_out.onnx",
                               ConvertOptions(encoder=encoder, codebooks=6, max_rows=3000, progress=False))
        assert [(r.name, r.status, r.D) for r in result.layers] == [("conv", "converted", 54 if name == "conv2d"
                                                                      else 18)]
        out = result.model
        assert [("encode" if n.op_type.startswith("HalutEncode") else n.op_type) for n in out.graph.node] == ops

        x = data[-8:]
        image = x.astype(np.float32) if name == "conv2d" else x.astype(np.float32)[:, :, None, :]
        p = _params(out, "conv")
        geo = dict(kernel_shape=(3, 3), pads=(1, 1, 1, 1)) if name == "conv2d" else \
            dict(kernel_shape=(1, 3), pads=(0, 1, 0, 1))
        codes = (reference.encode_tree_conv(image, p["split_dims"], p["thresholds"], **geo) if encoder == "tree"
                 else reference.encode_pq_conv(image, p["vectors"], p["biases"], **geo))
        expected = reference.lookup_conv(codes, p["lut"], p["scale"], p["offset"]).astype(np.float16)
        y = make_session(out).run(None, {"x": x})[0]
        assert y.dtype == np.float16
        np.testing.assert_array_equal(y.reshape(-1), expected.reshape(-1))
        original = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
        assert _nmse(y, original) < 0.35, (name, _nmse(y, original))  # test_convert_conv.py's bound
