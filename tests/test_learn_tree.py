"""Tree learning against a brute-force split search, and the fast encoder against the reference op."""

import numpy as np
import pytest

from halut_onnx import reference
from halut_onnx.learn.tree import NO_SPLIT, encode_trees, learn_trees


def sse(X):
    return float(((X - X.mean(axis=0)) ** 2).sum()) if len(X) else 0.0


def brute_force_tree(X, s, e, n_candidates):
    """Greedy level-by-level tree from the issue's definition, trying every split position by direct SSE sums."""
    N = X.shape[0]
    Xs = X[:, s:e].astype(np.float64)
    node = np.zeros(N, dtype=np.int64)
    dims = np.zeros(4, dtype=np.int64)
    thr = np.zeros(15, dtype=np.float32)
    for level in range(4):
        nb = 2**level
        buckets = [np.flatnonzero(node == b) for b in range(nb)]
        col_sse = sum(((Xs[r] - Xs[r].mean(axis=0)) ** 2).sum(axis=0) for r in buckets if len(r))
        candidates = np.argsort(-col_sse, kind="stable")[:n_candidates]
        best = (np.inf, None, None)
        for j in candidates:
            total, thrs = 0.0, []
            for r in buckets:
                vals = X[r, s + j]
                options = [(sse(Xs[r]), NO_SPLIT)]  # no split possible
                uniq = np.unique(vals)
                if len(uniq) >= 2:
                    options = []
                    for a, b in zip(uniq[:-1], uniq[1:]):
                        left = vals <= a
                        t = np.float32((np.float64(a) + np.float64(b)) / 2)
                        t = a if t >= b else t
                        options.append((sse(Xs[r][left]) + sse(Xs[r][~left]), t))
                loss, t = min(options, key=lambda o: o[0])
                total += loss
                thrs.append(t)
            if total < best[0]:
                best = (total, j, thrs)
        _, j, thrs = best
        dims[level] = s + j
        thr[nb - 1 : 2 * nb - 1] = thrs
        node = 2 * node + (X[:, s + j] > thr[nb - 1 + node])
    return dims, thr


@pytest.mark.parametrize("n_candidates", [1, 2, 5])
def test_split_search_matches_brute_force(rng, n_candidates):
    N, D, C = 150, 11, 2  # slices of 6 and 5 columns
    X = (rng.standard_normal((N, D)) * rng.uniform(0.5, 3.0, size=D)).astype(np.float32)
    X[:, 3] = np.round(X[:, 3])  # repeated values: splits only between distinct ones
    bounds = reference.slice_bounds(D, C)
    split_dims, thresholds = learn_trees(X, bounds, n_candidates)
    for c in range(C):
        dims, thr = brute_force_tree(X, bounds[c], bounds[c + 1], n_candidates)
        np.testing.assert_array_equal(split_dims[c], dims)
        np.testing.assert_array_equal(thresholds[c], thr)


def test_unsplittable_buckets_send_rows_left():
    # A constant column cannot be split: every threshold is NO_SPLIT and all rows share code 0.
    X = np.ones((40, 3), dtype=np.float32)
    split_dims, thresholds = learn_trees(X, reference.slice_bounds(3, 1), 3)
    assert (thresholds == NO_SPLIT).all()
    assert (reference.encode_tree(X, split_dims, thresholds) == 0).all()


def test_learned_tree_separates_bit_patterns(rng):
    # Each row is a 4-bit pattern in columns 0..3 (plus noise columns): the tree must split on those columns and
    # give each pattern its own leaf.
    N = 800
    bits = rng.integers(0, 2, size=(N, 4))
    X = np.concatenate([bits * 10.0 + rng.standard_normal((N, 4)) * 0.1, rng.standard_normal((N, 3)) * 0.1], axis=1)
    X = X.astype(np.float32)
    split_dims, thresholds = learn_trees(X, reference.slice_bounds(7, 1), 4)
    codes = reference.encode_tree(X, split_dims, thresholds)[:, 0]
    pattern = bits @ np.array([8, 4, 2, 1])
    assert sorted(split_dims[0]) == [0, 1, 2, 3]
    # One leaf per pattern, one pattern per leaf.
    assert len(set(zip(codes, pattern))) == 16


def test_fast_encoder_equals_reference(rng):
    N, D, C = 500, 23, 5
    X = rng.standard_normal((N, D)).astype(np.float32)
    split_dims, thresholds = learn_trees(X, reference.slice_bounds(D, C), 3)
    X[:20] = np.nan
    X[20:40, split_dims[0, 0]] = thresholds[0, 0]
    np.testing.assert_array_equal(encode_trees(X, split_dims, thresholds),
                                  reference.encode_tree(X, split_dims, thresholds))
