"""The custom-op library against halut_onnx.reference, bit for bit, on every instruction set this CPU supports."""

from __future__ import annotations

import numpy as np
import pytest
from ops_models import isa_params, lookup_weights, pq_weights, run_op, tree_weights

from halut_onnx import reference
from halut_onnx.ops import ENCODE_PQ, ENCODE_TREE, LOOKUP

# (leading dims, D, C): empty, single row, rows off the 16/64-row blocks, rank 1 and 3, D % C != 0, C == D, C = 1,
# C past the AVX2 int16 chunk (256 codebooks), several parallel tasks (sized by work, see kernel_base.h).
ENCODE_SHAPES = [
    ((0,), 32, 8),
    ((1,), 32, 8),
    ((17,), 50, 16),
    ((130,), 64, 32),
    ((), 40, 7),
    ((2, 33), 48, 16),
    ((9,), 24, 24),
    ((5,), 10, 1),
    ((65,), 300, 300),
    ((700,), 96, 96),  # several parallel tasks and a partial last one
]

# (leading dims, C, M): M odd and not a multiple of 16, large M, C not a multiple of 4, C past 256, many rows.
LOOKUP_SHAPES = [
    ((0,), 8, 16),
    ((1,), 8, 33),
    ((17,), 16, 7),
    ((130,), 32, 64),
    ((), 5, 19),
    ((2, 33), 12, 40),
    ((3,), 16, 3072),
    ((70,), 300, 17),
    ((64,), 1, 1),
    ((4100,), 20, 19),  # long inputs: 256-row tasks, a partial last one
    ((2, 2100), 33, 24),
    ((4101,), 8, 256),  # a 4 MB output: non-temporal stores
    ((300,), 64, 1024),  # several parallel tasks of 128 rows and a partial last one
]


@pytest.fixture(params=isa_params())
def isa(request, monkeypatch):
    """Forces the library's instruction set for sessions created in the test (read at kernel creation)."""
    monkeypatch.setenv("HALUT_ONNX_ISA", request.param)
    return request.param


def _activations(rng: np.random.Generator, lead: tuple, D: int) -> np.ndarray:
    X = rng.standard_normal((*lead, D)).astype(np.float32)
    if X.size:
        # Values equal to thresholds/ties and non-finite entries exercise the comparison rules.
        flat = X.reshape(-1)
        flat[rng.integers(0, flat.size, size=max(1, flat.size // 50))] = 0.0
    return X


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("constant", [True, False], ids=["initializers", "inputs"])
@pytest.mark.parametrize("lead,D,C", ENCODE_SHAPES)
def test_encode_tree_matches_reference(isa, rng, lead, D, C, constant, threads):
    X = _activations(rng, lead, D)
    w = tree_weights(rng, D, C)
    w["thresholds"][:, 0] = 0.0  # ties: 0.0 > 0.0 is false
    got = run_op(ENCODE_TREE, X, w, constant=constant, threads=threads)
    expected = reference.encode_tree(X.reshape(-1, D), w["split_dims"], w["thresholds"]).reshape(*lead, C)
    assert got.dtype == np.uint8 and got.shape == (*lead, C)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("constant", [True, False], ids=["initializers", "inputs"])
@pytest.mark.parametrize("lead,D,C", ENCODE_SHAPES)
def test_encode_pq_matches_reference(isa, rng, lead, D, C, constant, threads):
    X = _activations(rng, lead, D)
    w = pq_weights(rng, D, C)
    got = run_op(ENCODE_PQ, X, w, constant=constant, threads=threads)
    expected = reference.encode_pq(X.reshape(-1, D), w["vectors"], w["biases"]).reshape(*lead, C)
    assert got.dtype == np.uint8 and got.shape == (*lead, C)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("constant", [True, False], ids=["initializers", "inputs"])
@pytest.mark.parametrize("lead,C,M", LOOKUP_SHAPES)
def test_lookup_matches_reference(isa, rng, lead, C, M, constant, threads):
    codes = rng.integers(0, 256, size=(*lead, C), dtype=np.uint8)  # high bits set: only code & 15 may count
    w = lookup_weights(rng, M, C)
    got = run_op(LOOKUP, codes, w, constant=constant, threads=threads)
    expected = reference.lookup(codes.reshape(-1, C), w["lut"], w["scale"], w["offset"]).reshape(*lead, M)
    assert got.dtype == np.float32 and got.shape == (*lead, M)
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))


def test_lookup_extreme_tables_are_exact(isa, rng):
    """All -128 or all 127 over 300 codebooks: the int16 chunks of the AVX2 path must not wrap."""
    C, M = 300, 20
    lut = np.full((M, C, 16), -128, dtype=np.int8)
    lut[M // 2 :] = 127
    w = {"lut": lut, "scale": np.ones(M, np.float32), "offset": np.zeros(M, np.float32)}
    codes = rng.integers(0, 16, size=(40, C), dtype=np.uint8)
    got = run_op(LOOKUP, codes, w)
    np.testing.assert_array_equal(got[:, : M // 2], -128.0 * C)
    np.testing.assert_array_equal(got[:, M // 2 :], 127.0 * C)


def test_pq_nan_and_ties_follow_the_scan(isa):
    """Equal scores go to the lowest index; NaN scores never win, and a NaN at prototype 0 keeps code 0."""
    D = 4
    vectors = np.zeros((16, D), np.float32)
    biases = np.array([[5, 3, 3, 7, np.nan, 1, 1, 2, 9, 9, 9, 9, 9, 9, 9, 9],
                       [np.nan, 0, -1, -2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]], np.float32)
    X = np.ones((3, D), np.float32)
    got = run_op(ENCODE_PQ, X, {"vectors": vectors, "biases": biases})
    expected = reference.encode_pq(X, vectors, biases)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got[0], [5, 0])


def test_tree_nan_goes_left(isa):
    split_dims = np.array([[0, 1, 2, 3]], np.int64)
    thresholds = np.full((1, 15), -1.0, np.float32)
    X = np.array([[np.nan, np.nan, np.nan, np.nan], [0, 0, 0, 0], [np.inf, -np.inf, np.inf, np.nan]], np.float32)
    got = run_op(ENCODE_TREE, X, {"split_dims": split_dims, "thresholds": thresholds})
    np.testing.assert_array_equal(got[:, 0], reference.encode_tree(X, split_dims, thresholds)[:, 0])
    np.testing.assert_array_equal(got[:, 0], [0, 15, 10])
