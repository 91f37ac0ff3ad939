"""The CUDA kernels inside onnxruntime's CUDA execution provider, against halut_onnx.reference bit for bit.

The CPU kernel tests (test_ops_kernels.py, test_ops_conv.py) mirrored for the CUDA provider. Every session disables
the CPU fallback, so a Halut node that did not get its CUDA kernel fails session creation instead of passing on the
CPU. Skipped where onnxruntime has no CUDAExecutionProvider (this project's CI); benchmarks/gpu_check.py is the
one-command device check (docs/cuda.md).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from conv_models import GEOMETRIES, conv_op_model, geometry_kwargs
from ops_models import feeds, lookup_weights, pq_weights, single_node_model, tree_weights
from test_ops_kernels import ENCODE_SHAPES, LOOKUP_SHAPES

import halut_onnx
from halut_onnx import reference
from halut_onnx.ops import ENCODE_PQ, ENCODE_PQ_CONV, ENCODE_TREE, ENCODE_TREE_CONV, LOOKUP, LOOKUP_CONV

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                       reason="onnxruntime has no CUDAExecutionProvider (needs onnxruntime-gpu and an NVIDIA GPU)"),
]


def cuda_session(model):
    options = halut_onnx.session_options()
    options.log_severity_level = 4
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CUDAExecutionProvider"])


def run_cuda(op, first, weights, attrs=None):
    if op in (ENCODE_TREE_CONV, ENCODE_PQ_CONV, LOOKUP_CONV):
        model = conv_op_model(op, first, weights, attrs)
        name = "codes" if op == LOOKUP_CONV else "X"
        return cuda_session(model).run(None, {name: first})[0]
    return cuda_session(single_node_model(op, first, weights)).run(None, feeds(op, first, weights))[0]


def _activations(rng, lead, D):
    X = rng.standard_normal((*lead, D)).astype(np.float32)
    if X.size:
        flat = X.reshape(-1)
        flat[rng.integers(0, flat.size, size=max(1, flat.size // 50))] = 0.0
    return X


@pytest.mark.parametrize("lead,D,C", ENCODE_SHAPES)
def test_encode_tree_matches_reference(rng, lead, D, C):
    X = _activations(rng, lead, D)
    w = tree_weights(rng, D, C)
    w["thresholds"][:, 0] = 0.0
    got = run_cuda(ENCODE_TREE, X, w)
    expected = reference.encode_tree(X.reshape(-1, D), w["split_dims"], w["thresholds"]).reshape(*lead, C)
    assert got.dtype == np.uint8 and got.shape == (*lead, C)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("lead,D,C", ENCODE_SHAPES)
def test_encode_pq_matches_reference(rng, lead, D, C):
    X = _activations(rng, lead, D)
    w = pq_weights(rng, D, C)
    got = run_cuda(ENCODE_PQ, X, w)
    expected = reference.encode_pq(X.reshape(-1, D), w["vectors"], w["biases"]).reshape(*lead, C)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("lead,C,M", [*LOOKUP_SHAPES, ((200,), 32, 3072), ((333,), 1500, 40)])
def test_lookup_matches_reference(rng, lead, C, M):
    codes = rng.integers(0, 256, size=(*lead, C), dtype=np.uint8)
    w = lookup_weights(rng, M, C)
    got = run_cuda(LOOKUP, codes, w)
    expected = reference.lookup(codes.reshape(-1, C), w["lut"], w["scale"], w["offset"]).reshape(*lead, M)
    assert got.dtype == np.float32 and got.shape == (*lead, M)
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))


def test_nan_ties_and_extreme_tables():
    split_dims = np.array([[0, 1, 2, 3]], np.int64)
    X = np.array([[np.nan] * 4, [0, 0, 0, 0], [np.inf, -np.inf, np.inf, np.nan]], np.float32)
    got = run_cuda(ENCODE_TREE, X, {"split_dims": split_dims, "thresholds": np.full((1, 15), -1.0, np.float32)})
    np.testing.assert_array_equal(got[:, 0], [0, 15, 10])
    biases = np.array([[5, 3, 3, 7, np.nan, 1, 1, 2, 9, 9, 9, 9, 9, 9, 9, 9],
                       [np.nan, 0, -1, -2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]], np.float32)
    got = run_cuda(ENCODE_PQ, np.ones((3, 4), np.float32), {"vectors": np.zeros((16, 4), np.float32), "biases": biases})
    np.testing.assert_array_equal(got[0], [5, 0])
    C, M = 300, 20
    lut = np.full((M, C, 16), -128, dtype=np.int8)
    lut[M // 2 :] = 127
    codes = np.random.default_rng(0).integers(0, 16, size=(40, C), dtype=np.uint8)
    got = run_cuda(LOOKUP, codes, {"lut": lut, "scale": np.ones(M, np.float32), "offset": np.zeros(M, np.float32)})
    np.testing.assert_array_equal(got[:, : M // 2], -128.0 * C)
    np.testing.assert_array_equal(got[:, M // 2 :], 127.0 * C)


@pytest.mark.parametrize("shape,attrs", [g[1:] for g in GEOMETRIES], ids=[g[0] for g in GEOMETRIES])
def test_conv_encoders(rng, shape, attrs):
    D = shape[1] * attrs["kernel_shape"][0] * attrs["kernel_shape"][1]
    X = rng.standard_normal(shape).astype(np.float32)
    geo = geometry_kwargs(attrs)
    w = tree_weights(rng, D, max(1, min(D, 13)))
    np.testing.assert_array_equal(run_cuda(ENCODE_TREE_CONV, X, w, attrs),
                                  reference.encode_tree_conv(X, w["split_dims"], w["thresholds"], **geo))
    w = pq_weights(rng, D, max(1, min(D, 7)))
    np.testing.assert_array_equal(run_cuda(ENCODE_PQ_CONV, X, w, attrs),
                                  reference.encode_pq_conv(X, w["vectors"], w["biases"], **geo))


@pytest.mark.parametrize("B,Ho,Wo,M,C", [(2, 7, 9, 20, 13), (1, 17, 19, 64, 32), (3, 1, 1, 5, 4), (2, 0, 3, 4, 4),
                                         (2, 33, 35, 300, 32), (1, 5, 7, 24, 1500)])
def test_lookup_conv(rng, B, Ho, Wo, M, C):
    codes = rng.integers(0, 256, size=(B, Ho, Wo, C), dtype=np.uint8)
    w = lookup_weights(rng, M, C)
    Y = run_cuda(LOOKUP_CONV, codes, w)
    expected = reference.lookup_conv(codes, w["lut"], w["scale"], w["offset"])
    assert Y.shape == (B, M, Ho, Wo)
    np.testing.assert_array_equal(Y.view(np.uint32), expected.view(np.uint32))


def test_errors_name_the_node_as_on_the_cpu(rng):
    w = pq_weights(rng, 10, 2)
    X = rng.standard_normal((4, 12)).astype(np.float32)
    with pytest.raises(Exception, match=r"HalutEncodePQ node 'halut_node': input 'X' has D = 12 columns but "
                                        r"'vectors' has 10"):
        run_cuda(ENCODE_PQ, X, w)


def test_non_constant_weights_are_rejected_at_session_creation(rng):
    codes = np.zeros((3, 5), np.uint8)
    w = lookup_weights(rng, 4, 5)
    with pytest.raises(Exception, match="the CUDA kernel needs 'lut', 'scale' and 'offset' to be constant"):
        cuda_session(single_node_model(LOOKUP, codes, w, constant=False))


def test_eval_and_bench_see_the_halut_nodes_on_the_gpu(rng, tmp_path):
    """halut_placement (what `halut-onnx bench / eval --provider cuda` report) finds the node on the CUDA provider."""
    import onnx

    from halut_onnx.runtime import halut_placement

    codes = rng.integers(0, 16, size=(64, 32), dtype=np.uint8)
    w = lookup_weights(rng, 48, 32)
    onnx.save(single_node_model(LOOKUP, codes, w), tmp_path / "lookup.onnx")
    assert halut_placement(tmp_path / "lookup.onnx", feeds(LOOKUP, codes, w), provider="cuda") == {
        "CUDAExecutionProvider": 1}
