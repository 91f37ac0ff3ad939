"""Bad inputs to the Halut ops fail with an onnxruntime error naming the node and the problem."""

from __future__ import annotations

import platform
import re

import numpy as np
import pytest
from ops_models import lookup_weights, pq_weights, run_op, single_node_model, tree_weights

from halut_onnx.ops import ENCODE_PQ, ENCODE_TREE, LOOKUP

NODE = "layer3_halut"


def _bad(op, first, weights, match, constant):
    """Session creation (constant weights are checked there) or the run must fail with `match` in the message."""
    with pytest.raises(Exception, match=re.escape(f"{op} node '{NODE}': ") + match) as info:
        run_op(op, first, weights, constant=constant, node_name=NODE)
    assert "ONNXRuntimeError" in str(info.value)


def _with(weights, **changes):
    return {**weights, **changes}


@pytest.mark.parametrize("constant", [True, False], ids=["initializers", "inputs"])
def test_lookup_bad_inputs(rng, constant):
    M, C = 12, 8
    codes = rng.integers(0, 16, size=(5, C), dtype=np.uint8)
    w = lookup_weights(rng, M, C)
    cases = [
        (codes.astype(np.float32), w, r"input 'codes' must be uint8, found float32"),
        (codes.astype(np.int8), w, r"input 'codes' must be uint8, found int8"),
        (codes[:, :6], w, r"input 'codes' dim 1 \(C, lut's dim 1\) must be 8, found 6"),
        (codes, _with(w, lut=w["lut"].astype(np.int16)), r"input 'lut' must be int8, found int16"),
        (codes, _with(w, lut=w["lut"][0]), r"input 'lut' must have rank 3, found rank 2"),
        (codes, _with(w, lut=w["lut"][:, :, :8]), r"input 'lut' dim 2 \(codes per codebook\) must be 16, found 8"),
        (codes, _with(w, lut=w["lut"][:, :0]), r"input 'lut' needs at least one codebook"),
        (codes, _with(w, scale=w["scale"][:5]), r"input 'scale' dim 0 \(M, lut's dim 0\) must be 12, found 5"),
        (codes, _with(w, scale=w["scale"].astype(np.float64)), r"input 'scale' must be float32, found float64"),
        (codes, _with(w, offset=w["offset"][None]), r"input 'offset' must have rank 1, found rank 2"),
    ]
    for first, weights, match in cases:
        _bad(LOOKUP, first, weights, match, constant)


def test_lookup_scalar_codes_rejected(rng):
    w = lookup_weights(rng, 4, 1)
    _bad(LOOKUP, np.array(3, np.uint8), w, r"input 'codes' must have rank >= 1, found rank 0", True)


@pytest.mark.parametrize("constant", [True, False], ids=["initializers", "inputs"])
def test_encode_tree_bad_inputs(rng, constant):
    D, C = 16, 4
    X = rng.standard_normal((3, D)).astype(np.float32)
    w = tree_weights(rng, D, C)
    far = w["split_dims"].copy()
    far[2, 3] = D
    negative = w["split_dims"].copy()
    negative[1, 0] = -1
    cases = [
        (X.astype(np.float64), w, r"input 'X' must be float32, found float64"),
        (X, _with(w, split_dims=far), r"input 'split_dims' has 16, outside X's columns 0 \.\. 15 \(X shape \[3, 16\]\)"),
        (X, _with(w, split_dims=negative), r"input 'split_dims' has -1 at \[1, 0\], expected a column index"),
        (X, _with(w, split_dims=w["split_dims"].astype(np.int32)), r"input 'split_dims' must be int64, found int32"),
        (X, _with(w, split_dims=w["split_dims"][:, :3]), r"input 'split_dims' dim 1 \(tree depth\) must be 4, found 3"),
        (X, _with(w, thresholds=w["thresholds"][:3]), r"input 'thresholds' dim 0 \(C, split_dims' dim 0\) must be 4"),
        (X, _with(w, thresholds=w["thresholds"][:, :14]), r"input 'thresholds' dim 1 \(thresholds per tree\) must be 15"),
        (X[:, :3], _with(w, split_dims=np.zeros((4, 4), np.int64)), r"C = 4 codebooks exceed X's D = 3 columns"),
    ]
    for first, weights, match in cases:
        _bad(ENCODE_TREE, first, weights, match, constant)


@pytest.mark.parametrize("constant", [True, False], ids=["initializers", "inputs"])
def test_encode_pq_bad_inputs(rng, constant):
    D, C = 16, 4
    X = rng.standard_normal((3, D)).astype(np.float32)
    w = pq_weights(rng, D, C)
    cases = [
        (X.astype(np.float16), w, r"input 'X' must be float32, found float16"),
        (X[:, :12], w, r"input 'X' has D = 12 columns but 'vectors' has 16 \(expected X's last dim 16, found 12\)"),
        (X, _with(w, vectors=w["vectors"][:8]), r"input 'vectors' dim 0 \(prototypes\) must be 16, found 8"),
        (X, _with(w, biases=np.zeros((17, 16), np.float32)), r"input 'biases' has C = 17 codebooks for D = 16"),
        (X, _with(w, biases=w["biases"][:, :4]), r"input 'biases' dim 1 \(prototypes\) must be 16, found 4"),
        (X, _with(w, vectors=w["vectors"].reshape(-1)), r"input 'vectors' must have rank 2, found rank 1"),
    ]
    for first, weights, match in cases:
        _bad(ENCODE_PQ, first, weights, match, constant)


def test_unknown_isa_is_an_error(rng, monkeypatch):
    monkeypatch.setenv("HALUT_ONNX_ISA", "sve")
    w = lookup_weights(rng, 4, 2)
    _bad(LOOKUP, np.zeros((1, 2), np.uint8), w, r"HALUT_ONNX_ISA=sve is not one of scalar, avx2, avx512, neon", True)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="an x86-64 CPU lacks NEON")
def test_isa_of_another_architecture_is_an_error(rng, monkeypatch):
    monkeypatch.setenv("HALUT_ONNX_ISA", "neon")
    w = lookup_weights(rng, 4, 2)
    _bad(LOOKUP, np.zeros((1, 2), np.uint8), w, r"HALUT_ONNX_ISA=neon but this CPU lacks it \(supported: scalar", True)


def test_node_with_a_missing_input_is_rejected_by_onnxruntime(rng):
    """Input counts are onnxruntime's to check (the op schema): a clean load error, no call into the library."""
    from ops_models import make_session

    codes = rng.integers(0, 16, size=(2, 4), dtype=np.uint8)
    model = single_node_model(LOOKUP, codes, lookup_weights(rng, 3, 4), node_name=NODE)
    del model.graph.node[0].input[3]
    with pytest.raises(Exception, match="HalutLookup"):
        make_session(model)
