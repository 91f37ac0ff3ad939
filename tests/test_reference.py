"""halut_onnx.reference (the op spec) against direct per-element loops written from docs/ops.md."""

import numpy as np
import pytest

from halut_onnx import reference


def slice_bounds_loop(D, C):
    sizes = [D // C + (1 if c < D % C else 0) for c in range(C)]
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def encode_tree_loop(X, split_dims, thresholds):
    N, C = X.shape[0], split_dims.shape[0]
    codes = np.zeros((N, C), dtype=np.uint8)
    for n in range(N):
        for c in range(C):
            node = 0
            for level in range(4):
                x = X[n, split_dims[c, level]]
                t = thresholds[c, 2**level - 1 + node]
                node = 2 * node + (1 if x > t else 0)
            codes[n, c] = node
    return codes


def encode_pq_loop(X, vectors, biases):
    N, D = X.shape
    C = biases.shape[0]
    bounds = slice_bounds_loop(D, C)
    codes = np.zeros((N, C), dtype=np.uint8)
    with np.errstate(invalid="ignore", over="ignore"):
        for n in range(N):
            for c in range(C):
                score = [np.float32(biases[c, k]) for k in range(16)]
                for k in range(16):
                    for d in range(bounds[c], bounds[c + 1]):
                        score[k] = np.float32(score[k] + np.float32(X[n, d] * vectors[k, d]))
                best = 0
                for k in range(1, 16):
                    if score[k] < score[best]:
                        best = k
                codes[n, c] = best
    return codes


def lookup_loop(codes, lut_q, scale, offset):
    N, C = codes.shape
    M = lut_q.shape[0]
    Y = np.zeros((N, M), dtype=np.float32)
    for n in range(N):
        for m in range(M):
            S = 0
            for c in range(C):
                S += int(lut_q[m, c, codes[n, c] & 15])
            Y[n, m] = np.float32(np.float32(scale[m] * np.float32(S)) + offset[m])
    return Y


@pytest.mark.parametrize("D,C", [(1, 1), (7, 7), (10, 3), (33, 4), (64, 16), (100, 7)])
def test_slice_bounds(D, C):
    b = reference.slice_bounds(D, C)
    assert b.dtype == np.int64
    np.testing.assert_array_equal(b, slice_bounds_loop(D, C))
    parts = np.array_split(np.arange(D), C)
    assert [len(p) for p in parts] == list(np.diff(b))


@pytest.mark.parametrize("D,C", [(3, 4), (5, 0)])
def test_slice_bounds_rejects_bad_c(D, C):
    with pytest.raises(ValueError, match=f"need 1 <= C <= D for {C} codebooks over {D} input columns"):
        reference.slice_bounds(D, C)


def test_encode_tree_matches_loop_with_nan_and_ties(rng):
    N, D, C = 300, 13, 4
    X = rng.standard_normal((N, D)).astype(np.float32)
    split_dims = rng.integers(0, D, size=(C, 4)).astype(np.int64)
    thresholds = rng.standard_normal((C, 15)).astype(np.float32) * 0.5
    # Exact ties: a value equal to its threshold must go left (x > t is false).
    X[:40, split_dims[0, 0]] = thresholds[0, 0]
    X[40:60, :] = np.nan
    X[60:70, split_dims[1, 2]] = np.inf
    X[70:80, split_dims[1, 1]] = -np.inf
    codes = reference.encode_tree(X, split_dims, thresholds)
    assert codes.dtype == np.uint8 and codes.shape == (N, C)
    np.testing.assert_array_equal(codes, encode_tree_loop(X, split_dims, thresholds))
    assert (codes[40:60] == 0).all()  # NaN compares false at every level: leftmost leaf
    assert (codes[:40, 0] < 8).all()


def test_encode_tree_hand_built():
    # One tree comparing columns 0..3 against 0: the code is the sign bits read as a binary number.
    split_dims = np.array([[0, 1, 2, 3]], dtype=np.int64)
    thresholds = np.zeros((1, 15), dtype=np.float32)
    X = np.array([[1, 1, 1, 1], [-1, -1, -1, -1], [1, -1, 1, -1], [0, 0, 0, 2], [np.nan, 5, np.nan, 5]],
                 dtype=np.float32)
    np.testing.assert_array_equal(reference.encode_tree(X, split_dims, thresholds)[:, 0], [15, 0, 10, 1, 5])


@pytest.mark.parametrize("D,C", [(12, 3), (13, 4), (5, 5), (40, 6)])
def test_encode_pq_matches_loop(rng, D, C):
    N = 60
    X = rng.standard_normal((N, D)).astype(np.float32)
    vectors = rng.standard_normal((16, D)).astype(np.float32)
    biases = rng.standard_normal((C, 16)).astype(np.float32)
    np.testing.assert_array_equal(reference.encode_pq(X, vectors, biases), encode_pq_loop(X, vectors, biases))


def test_encode_pq_ties_nan_and_nearest():
    D, C = 4, 2
    vectors = np.zeros((16, D), dtype=np.float32)
    biases = np.zeros((C, 16), dtype=np.float32)
    X = np.ones((3, D), dtype=np.float32)
    # All scores equal: the lowest index wins.
    np.testing.assert_array_equal(reference.encode_pq(X, vectors, biases), 0)
    biases[0, 5] = -1.0
    biases[0, 9] = -1.0  # tie between 5 and 9
    biases[1, 3] = np.nan  # a NaN score never wins ...
    biases[1, 7] = -2.0  # ... against a smaller number after it
    codes = reference.encode_pq(X, vectors, biases)
    np.testing.assert_array_equal(codes, [[5, 7]] * 3)
    biases[1, 0] = np.nan  # NaN first: no later number is smaller than NaN, so 0 stays
    np.testing.assert_array_equal(reference.encode_pq(X, vectors, biases)[:, 1], 0)
    np.testing.assert_array_equal(reference.encode_pq(X, vectors, biases), encode_pq_loop(X, vectors, biases))
    X[1, 0] = np.nan  # a NaN input makes codebook 0's scores NaN: code 0
    assert reference.encode_pq(X, vectors, biases)[1, 0] == 0


def test_encode_pq_folded_is_nearest_prototype(rng):
    # The folding of docs/ops.md: vectors = -2 G z, biases = z^T G z gives the nearest prototype in the metric G.
    D, M = 6, 5
    Wc = rng.standard_normal((D, M))
    G = Wc @ Wc.T
    Z = rng.standard_normal((16, D))
    vectors = (-2.0 * Z @ G).astype(np.float32)
    biases = np.einsum("kd,de,ke->k", Z, G, Z)[None, :].astype(np.float32)
    X = rng.standard_normal((200, D)).astype(np.float32)
    dist = np.einsum("nkd,de,nke->nk", X[:, None, :] - Z[None], G, X[:, None, :] - Z[None])
    codes = reference.encode_pq(X, vectors, biases)[:, 0]
    gap = np.sort(dist, axis=1)[:, 1] - np.sort(dist, axis=1)[:, 0]
    clear = gap > 1e-3 * dist.max()  # float32 folding may flip only near-ties
    np.testing.assert_array_equal(codes[clear], dist.argmin(axis=1)[clear])


def test_lookup_and_sums_match_loop(rng):
    N, C, M = 50, 5, 7
    codes = rng.integers(0, 256, size=(N, C)).astype(np.uint8)  # codes > 15: only the low 4 bits count
    lut_q = rng.integers(-128, 128, size=(M, C, 16)).astype(np.int8)
    scale = rng.random(M).astype(np.float32) * 0.1
    offset = rng.standard_normal(M).astype(np.float32)
    S = reference.lut_sums(codes, lut_q)
    assert S.dtype == np.int32
    S_loop = np.array([[sum(int(lut_q[m, c, codes[n, c] & 15]) for c in range(C)) for m in range(M)]
                       for n in range(N)])
    np.testing.assert_array_equal(S, S_loop)
    Y = reference.lookup(codes, lut_q, scale, offset)
    assert Y.dtype == np.float32
    np.testing.assert_array_equal(Y, lookup_loop(codes, lut_q, scale, offset))


def test_lookup_extreme_sums_are_exact():
    C, M = 64, 2
    lut_q = np.full((M, C, 16), -128, dtype=np.int8)
    lut_q[1] = 127
    codes = np.zeros((1, C), dtype=np.uint8)
    np.testing.assert_array_equal(reference.lut_sums(codes, lut_q), [[-128 * C, 127 * C]])


def test_lookup_float_matches_loop(rng):
    N, C, M = 20, 3, 4
    codes = rng.integers(0, 16, size=(N, C)).astype(np.uint8)
    lut = rng.standard_normal((M, C, 16)).astype(np.float32)
    bias = rng.standard_normal(M).astype(np.float32)
    expected = np.array([[sum(float(lut[m, c, codes[n, c]]) for c in range(C)) + bias[m] for m in range(M)]
                         for n in range(N)])
    np.testing.assert_allclose(reference.lookup_float(codes, lut, bias), expected, rtol=1e-5, atol=1e-5)
