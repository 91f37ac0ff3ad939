"""The Conv forms of the Halut ops against the numpy reference (im2col + the row ops), every geometry and ISA."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conv_models import GEOMETRIES, geometry_kwargs, run_conv_op
from ops_models import isa_params, lookup_weights, pq_weights, tree_weights

from halut_onnx import reference
from halut_onnx.ops import ENCODE_PQ_CONV, ENCODE_TREE_CONV, LOOKUP_CONV

IDS = [g[0] for g in GEOMETRIES]


def _x(rng, shape):
    return rng.standard_normal(shape).astype(np.float32)


@pytest.fixture(params=isa_params())
def isa(request, monkeypatch):
    monkeypatch.setenv("HALUT_ONNX_ISA", request.param)
    return request.param


@pytest.mark.parametrize("shape,attrs", [g[1:] for g in GEOMETRIES if not g[0].startswith("no_output")],
                         ids=[i for i in IDS if not i.startswith("no_output")])  # ORT's Conv rejects an empty output
def test_im2col_matches_onnxruntime_conv(rng, shape, attrs):
    """The reference's patch rows times the reshaped weight are onnxruntime's Conv (so the contract is Conv's)."""
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    X = _x(rng, shape)
    W = _x(rng, (5, shape[1], *attrs["kernel_shape"]))
    node = helper.make_node("Conv", ["X", "W"], ["Y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", 1, list(shape))],
                              [helper.make_tensor_value_info("Y", 1, None)], [numpy_helper.from_array(W, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"X": X})[0]
    cols = reference.im2col(X, **geometry_kwargs(attrs)).astype(np.float64)
    B, M, Ho, Wo = expected.shape
    Y = (cols @ W.reshape(5, -1).T.astype(np.float64)).reshape(B, Ho, Wo, M).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(Y, expected, atol=1e-4)


@pytest.mark.parametrize("shape,attrs", [g[1:] for g in GEOMETRIES], ids=IDS)
@pytest.mark.parametrize("constant", [True, False], ids=["initializers", "inputs"])
def test_encode_tree_conv(rng, isa, shape, attrs, constant):
    D = shape[1] * attrs["kernel_shape"][0] * attrs["kernel_shape"][1]
    X = _x(rng, shape)
    w = tree_weights(rng, D, max(1, min(D, 13)))
    codes = run_conv_op(ENCODE_TREE_CONV, X, w, attrs, constant=constant)
    expected = reference.encode_tree_conv(X, w["split_dims"], w["thresholds"], **geometry_kwargs(attrs))
    assert codes.dtype == np.uint8 and codes.shape == expected.shape
    np.testing.assert_array_equal(codes, expected)


@pytest.mark.parametrize("shape,attrs", [g[1:] for g in GEOMETRIES], ids=IDS)
def test_encode_pq_conv(rng, isa, shape, attrs):
    D = shape[1] * attrs["kernel_shape"][0] * attrs["kernel_shape"][1]
    X = _x(rng, shape)
    w = pq_weights(rng, D, max(1, min(D, 7)))
    codes = run_conv_op(ENCODE_PQ_CONV, X, w, attrs)
    expected = reference.encode_pq_conv(X, w["vectors"], w["biases"], **geometry_kwargs(attrs))
    assert codes.shape == expected.shape
    np.testing.assert_array_equal(codes, expected)


def test_encode_pq_conv_nan_inf_and_ties(rng, isa):
    """Non-finite patch elements and exactly tied prototypes, on a block of more than 64 positions with a partial
    last vector (the AVX-512 element-major kernel's 16-position lanes and its masked tail)."""
    X = _x(rng, (2, 5, 9, 11))
    X.reshape(-1)[rng.integers(0, X.size, size=40)] = np.nan
    X.reshape(-1)[rng.integers(0, X.size, size=20)] = np.inf
    X.reshape(-1)[rng.integers(0, X.size, size=20)] = -np.inf
    w = pq_weights(rng, 45, 12)
    w["vectors"][9], w["biases"][:, 9] = w["vectors"][4], w["biases"][:, 4]  # prototype 9 ties 4: 4 must win
    attrs = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    codes = run_conv_op(ENCODE_PQ_CONV, X, w, attrs)
    expected = reference.encode_pq_conv(X, w["vectors"], w["biases"], **geometry_kwargs(attrs))
    np.testing.assert_array_equal(codes, expected)
    assert not np.any(codes == 9)


@pytest.mark.parametrize("B,Ho,Wo,M,C", [(2, 7, 9, 20, 13), (1, 17, 19, 64, 32), (3, 1, 1, 5, 4), (2, 0, 3, 4, 4)])
@pytest.mark.parametrize("threads", [1, 2])
def test_lookup_conv(rng, isa, B, Ho, Wo, M, C, threads):
    codes = rng.integers(0, 256, size=(B, Ho, Wo, C), dtype=np.uint8)  # high bits must be ignored
    w = lookup_weights(rng, M, C)
    Y = run_conv_op(LOOKUP_CONV, codes, w, threads=threads)
    expected = reference.lookup_conv(codes, w["lut"], w["scale"], w["offset"])
    assert Y.shape == (B, M, Ho, Wo)
    np.testing.assert_array_equal(Y, expected)


def test_encode_threads_agree(rng):
    """A large input split over two threads gives the same codes as the reference."""
    shape, attrs = (2, 16, 30, 31), dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 2])
    X = _x(rng, shape)
    w = tree_weights(rng, 16 * 9, 16)
    codes = run_conv_op(ENCODE_TREE_CONV, X, w, attrs, threads=2)
    np.testing.assert_array_equal(codes, reference.encode_tree_conv(X, w["split_dims"], w["thresholds"],
                                                                    **geometry_kwargs(attrs)))


NODE = "conv7_halut"


def _bad(op, first, weights, attrs, match, constant=True):
    with pytest.raises(Exception, match=re.escape(f"{op} node '{NODE}': ") + match) as info:
        run_conv_op(op, first, weights, attrs, constant=constant, node_name=NODE)
    assert "ONNXRuntimeError" in str(info.value)


@pytest.mark.parametrize("op", [ENCODE_TREE_CONV, ENCODE_PQ_CONV])
def test_encode_conv_bad_attributes(rng, op):
    X = _x(rng, (1, 2, 6, 6))
    w = tree_weights(rng, 18, 4) if op == ENCODE_TREE_CONV else pq_weights(rng, 18, 4)
    base = dict(kernel_shape=[3, 3])
    _bad(op, X, w, {}, r"attribute 'kernel_shape' is required \(2 ints \[h, w\]\)")
    _bad(op, X, w, dict(kernel_shape=[3]), r"attribute 'kernel_shape' must be 2 positive ints, found \[3\]")
    _bad(op, X, w, dict(base, strides=[0, 1]), r"attribute 'strides' must be 2 positive ints, found \[0, 1\]")
    _bad(op, X, w, dict(base, dilations=[1, 1, 1]), r"attribute 'dilations' must be 2 positive ints")
    _bad(op, X, w, dict(base, pads=[1, 1]), r"attribute 'pads' must be 4 ints >= 0 \[top, left, bottom, right\], "
         r"found \[1, 1\]")
    _bad(op, X, w, dict(base, pads=[1, -1, 1, 1]), r"attribute 'pads' must be 4 ints >= 0")
    _bad(op, X, w, dict(base, auto_pad="SAME"), r"attribute 'auto_pad' is 'SAME', expected NOTSET, SAME_UPPER, "
         r"SAME_LOWER or VALID")


@pytest.mark.parametrize("constant", [True, False], ids=["initializers", "inputs"])
def test_encode_conv_bad_inputs(rng, constant):
    attrs = dict(kernel_shape=[3, 3])
    X = _x(rng, (1, 2, 6, 6))  # D = 18
    tree = tree_weights(rng, 18, 4)
    _bad(ENCODE_TREE_CONV, X[0], tree, attrs, r"input 'X' must have rank 4, found rank 3", constant)
    _bad(ENCODE_TREE_CONV, X.astype(np.float64), tree, attrs, r"input 'X' must be float32, found float64", constant)
    bad_dims = tree["split_dims"].copy()
    bad_dims[2, 1] = 18
    _bad(ENCODE_TREE_CONV, X, {**tree, "split_dims": bad_dims}, attrs,
         r"input 'split_dims' has 18, outside the patch indices 0 .. 17 \(D = Cin \* kh \* kw, X shape "
         r"\[1, 2, 6, 6\]\)", constant)
    pq = pq_weights(rng, 18, 4)
    _bad(ENCODE_PQ_CONV, X[:, :1], pq, attrs, r"input 'X' has Cin \* kh \* kw = 1 \* 3 \* 3 = 9 patch elements but "
         r"'vectors' has D = 18 \(X shape \[1, 1, 6, 6\]\)", constant)
    _bad(ENCODE_PQ_CONV, X, {**pq, "biases": pq["biases"][:, :8]}, attrs,
         r"input 'biases' dim 1 \(prototypes\) must be 16, found 8", constant)


def test_lookup_conv_bad_inputs(rng):
    w = lookup_weights(rng, 6, 4)
    codes = rng.integers(0, 16, size=(1, 3, 3, 4), dtype=np.uint8)
    _bad(LOOKUP_CONV, codes[0], w, None, r"input 'codes' must have rank 4, found rank 3")
    _bad(LOOKUP_CONV, codes[..., :3], w, None, r"input 'codes' dim 3 \(C, lut's dim 1\) must be 4, found 3")
    _bad(LOOKUP_CONV, codes.astype(np.int8), w, None, r"input 'codes' must be uint8, found int8")
