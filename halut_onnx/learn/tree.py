"""MADDNESS tree encoders: learning (greedy, level by level) and a fast encoder with the op's exact semantics.

Per codebook c over the input columns ``s:e`` (``reference.slice_bounds``) a balanced depth-4 tree compares one
column per level. Level l holds 2**l buckets of training rows. The candidate columns are the ``n_candidates``
columns of the slice with the largest within-bucket sum of squared errors (summed over the level's buckets); for
each candidate, every bucket gets its own SSE-optimal threshold (loss = the SSE of both halves summed over all
columns of the slice), and the level takes the candidate with the lowest total loss.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..ops import TREE_DEPTH, TREE_NODES

# A bucket that cannot be split (fewer than 2 rows, or one value only) sends every row left: unseen rows then land
# in the child that training rows populated instead of in an empty one. Finite, so no inf reaches an initializer.
NO_SPLIT = np.float32(np.finfo(np.float32).max)


@njit(
    "Tuple((float64, float32))(float32[:, ::1], int64[::1], int64, int64, int64, float64[::1])",
    cache=True,
)
def _best_split(A, rows, s, d, j, mean):
    """SSE-optimal split of the bucket ``rows`` on column ``s + j``.

    Returns (gain, threshold): gain is the sum over the slice's columns of ``SL^2/nL + SR^2/nR`` for the centred
    left/right sums (the bucket's SSE minus the split's loss, up to a constant of the bucket), threshold the float32
    value that sends the sorted prefix left under ``x > threshold``.
    """
    n = rows.shape[0]
    if n < 2:
        return 0.0, NO_SPLIT
    keys = np.empty(n, dtype=np.float32)
    for i in range(n):
        keys[i] = A[rows[i], s + j]
    order = np.argsort(keys, kind="mergesort")
    # Centred float64 copy in sorted order: the running sums cancel far less than raw sums of x and x^2 would.
    xs = np.empty((n, d), dtype=np.float64)
    total = np.zeros(d, dtype=np.float64)
    for i in range(n):
        r = rows[order[i]]
        for col in range(d):
            v = np.float64(A[r, s + col]) - mean[col]
            xs[i, col] = v
            total[col] += v
    left = np.zeros(d, dtype=np.float64)
    best_gain = -1.0
    best_pos = -1
    for i in range(n - 1):
        for col in range(d):
            left[col] += xs[i, col]
        a = keys[order[i]]
        b = keys[order[i + 1]]
        if a < b:  # a split can only fall between distinct values
            nl = np.float64(i + 1)
            nr = np.float64(n - i - 1)
            gain = 0.0
            for col in range(d):
                right = total[col] - left[col]
                gain += left[col] * left[col] / nl + right * right / nr
            if gain > best_gain:
                best_gain = gain
                best_pos = i
    if best_pos < 0:
        g = 0.0
        for col in range(d):
            g += total[col] * total[col] / n
        return g, NO_SPLIT
    a = keys[order[best_pos]]
    b = keys[order[best_pos + 1]]
    thr = np.float32((np.float64(a) + np.float64(b)) * 0.5)
    if thr >= b:  # the midpoint rounded up onto b: b would go left
        thr = a
    return best_gain, thr


@njit("void(float32[:, ::1], int64, int64, int64, int64[::1], float32[::1])", cache=True)
def _learn_one_tree(A, s, e, n_candidates, dims_out, thr_out):
    N = A.shape[0]
    d = e - s
    node = np.zeros(N, dtype=np.int64)
    order = np.empty(N, dtype=np.int64)
    for level in range(TREE_DEPTH):
        nb = 1 << level
        # Group the rows by bucket (counting sort, stable in row order).
        start = np.zeros(nb + 1, dtype=np.int64)
        for n in range(N):
            start[node[n] + 1] += 1
        for b in range(nb):
            start[b + 1] += start[b]
        fill = start[:nb].copy()
        for n in range(N):
            order[fill[node[n]]] = n
            fill[node[n]] += 1
        means = np.zeros((nb, d), dtype=np.float64)
        col_sse = np.zeros(d, dtype=np.float64)
        for b in range(nb):
            cnt = start[b + 1] - start[b]
            if cnt == 0:
                continue
            for i in range(start[b], start[b + 1]):
                r = order[i]
                for col in range(d):
                    means[b, col] += A[r, s + col]
            for col in range(d):
                means[b, col] /= cnt
            for i in range(start[b], start[b + 1]):
                r = order[i]
                for col in range(d):
                    v = A[r, s + col] - means[b, col]
                    col_sse[col] += v * v
        # Highest SSE first; the stable sort breaks ties towards the lower column.
        candidates = np.argsort(-col_sse, kind="mergesort")
        n_try = min(n_candidates, d)
        best_total = -1.0
        best_dim = 0
        best_thr = np.full(nb, NO_SPLIT, dtype=np.float32)
        thr = np.empty(nb, dtype=np.float32)
        for ci in range(n_try):
            j = candidates[ci]
            total = 0.0
            for b in range(nb):
                gain, t = _best_split(A, order[start[b] : start[b + 1]], s, d, j, means[b])
                total += gain
                thr[b] = t
            if total > best_total:
                best_total = total
                best_dim = j
                best_thr[:] = thr
        dims_out[level] = s + best_dim
        for b in range(nb):
            thr_out[nb - 1 + b] = best_thr[b]
        col = s + best_dim
        for n in range(N):
            node[n] = 2 * node[n] + (1 if A[n, col] > best_thr[node[n]] else 0)


@njit("void(float32[:, ::1], int64[::1], int64, int64[:, ::1], float32[:, ::1])", parallel=True, cache=True)
def _learn_trees(A, bounds, n_candidates, split_dims, thresholds):
    C = bounds.shape[0] - 1
    for c in prange(C):
        _learn_one_tree(A, bounds[c], bounds[c + 1], n_candidates, split_dims[c], thresholds[c])


def learn_trees(A: np.ndarray, bounds: np.ndarray, n_candidates: int) -> tuple[np.ndarray, np.ndarray]:
    """Learn one tree per codebook.

    Parameters
    ----------
    A : float32 (N, D), C-contiguous training rows.
    bounds : int64 (C + 1,) slice starts (``reference.slice_bounds``).
    n_candidates : columns tried per level (the highest within-bucket SSE first).

    Returns
    -------
    split_dims : int64 (C, 4), absolute columns of A.
    thresholds : float32 (C, 15), level by level.
    """
    C = bounds.shape[0] - 1
    split_dims = np.zeros((C, TREE_DEPTH), dtype=np.int64)
    thresholds = np.zeros((C, TREE_NODES), dtype=np.float32)
    _learn_trees(np.ascontiguousarray(A, dtype=np.float32), bounds.astype(np.int64), int(n_candidates), split_dims,
                 thresholds)
    return split_dims, thresholds


@njit("void(float32[:, ::1], int64[:, ::1], float32[:, ::1], uint8[:, ::1])", parallel=True, cache=True)
def _encode_trees(X, split_dims, thresholds, codes):
    N = X.shape[0]
    C = split_dims.shape[0]
    for n in prange(N):
        for c in range(C):
            node = 0
            for level in range(TREE_DEPTH):
                t = thresholds[c, (1 << level) - 1 + node]
                node = 2 * node + (1 if X[n, split_dims[c, level]] > t else 0)
            codes[n, c] = node


def encode_trees(X: np.ndarray, split_dims: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """``reference.encode_tree`` (same codes, bit for bit), parallel over rows."""
    codes = np.empty((X.shape[0], split_dims.shape[0]), dtype=np.uint8)
    _encode_trees(np.ascontiguousarray(X, dtype=np.float32), np.ascontiguousarray(split_dims, dtype=np.int64),
                  np.ascontiguousarray(thresholds, dtype=np.float32), codes)
    return codes
