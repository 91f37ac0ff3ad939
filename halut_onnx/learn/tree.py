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


@njit("int64[::1](float32[::1])", cache=True)
def _argsort_f32(keys):
    """Stable argsort of float32 keys (no NaN): sorts (order-preserving uint32 key << 32 | index) as uint64, which is
    several times faster than numba's argsort and deterministic."""
    n = keys.shape[0]
    bits = keys.view(np.uint32)
    packed = np.empty(n, dtype=np.uint64)
    for i in range(n):
        b = np.uint64(bits[i])
        # Negative floats: flip all bits (larger magnitude sorts first); positive: set the sign bit.
        k = (~b) & np.uint64(0xFFFFFFFF) if b >= np.uint64(0x80000000) else b | np.uint64(0x80000000)
        packed[i] = (k << np.uint64(32)) | np.uint64(i)
    packed.sort()
    order = np.empty(n, dtype=np.int64)
    for i in range(n):
        order[i] = np.int64(packed[i] & np.uint64(0xFFFFFFFF))
    return order


@njit("Tuple((float64, float32))(float32[:, ::1], int64, float64[::1], int64[::1])", cache=True)
def _best_split(X, j, mean, order):
    """SSE-optimal split of the bucket X (its rows, the slice's columns) on column j, given ``order``: the rows
    sorted by column j, ties in row order.

    Returns (gain, threshold): gain is the sum over the slice's columns of ``SL^2/nL + SR^2/nR`` for the centred
    left/right sums (the bucket's SSE minus the split's loss), threshold the float32 value that sends the sorted
    prefix left under ``x > threshold``.
    """
    n, d = X.shape
    if n < 2:
        return 0.0, NO_SPLIT
    # Running sums of values centred on the bucket mean, in float64: far less cancellation than raw x and x^2.
    total = np.zeros(d, dtype=np.float64)
    for i in range(n):
        for col in range(d):
            total[col] += np.float64(X[i, col]) - mean[col]
    left = np.zeros(d, dtype=np.float64)
    best_gain = -1.0
    best_pos = -1
    for i in range(n - 1):
        r = order[i]
        for col in range(d):
            left[col] += np.float64(X[r, col]) - mean[col]
        a = X[r, j]
        b = X[order[i + 1], j]
        if a < b:  # a split can only fall between distinct values
            inv_l = 1.0 / np.float64(i + 1)
            inv_r = 1.0 / np.float64(n - i - 1)
            gain = 0.0
            for col in range(d):
                right = total[col] - left[col]
                gain += left[col] * left[col] * inv_l + right * right * inv_r
            if gain > best_gain:
                best_gain = gain
                best_pos = i
    if best_pos < 0:
        g = 0.0
        for col in range(d):
            g += total[col] * total[col] / n
        return g, NO_SPLIT
    a = X[order[best_pos], j]
    b = X[order[best_pos + 1], j]
    thr = np.float32((np.float64(a) + np.float64(b)) * 0.5)
    if thr >= b:  # the midpoint rounded up onto b: b would go left
        thr = a
    return best_gain, thr


@njit("void(float32[:, ::1], int64, int64, int64, int64[::1], float32[::1])", cache=True)
def _learn_one_tree(A, s, e, n_candidates, dims_out, thr_out):
    N = A.shape[0]
    d = e - s
    # The slice's columns, contiguous: the split scans visit rows in sorted (random) order, which must hit cache.
    Xc = np.empty((N, d), dtype=np.float32)
    for n in range(N):
        for col in range(d):
            Xc[n, col] = A[n, s + col]
    Xg = np.empty((N, d), dtype=np.float32)  # rows grouped by bucket, each bucket contiguous
    node = np.zeros(N, dtype=np.int64)
    # A candidate column is sorted once, when first tried (stable: ties in row order). A bucket's rows in that order
    # are its rows sorted by the column, ties in row order, as sorting the bucket itself would give: one pass per
    # level instead of a sort. Wide slices try few of their columns, so only those are sorted.
    sorted_rows = np.empty((d, N), dtype=np.int64)
    is_sorted = np.zeros(d, dtype=np.bool_)
    keys = np.empty(N, dtype=np.float32)
    slot = np.empty(N, dtype=np.int64)  # row n's position in Xg
    order = np.empty(N, dtype=np.int64)  # per bucket, positions within the bucket in column order
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
            Xg[fill[node[n]], :] = Xc[n, :]
            slot[n] = fill[node[n]]
            fill[node[n]] += 1
        means = np.zeros((nb, d), dtype=np.float64)
        col_sse = np.zeros(d, dtype=np.float64)
        for b in range(nb):
            cnt = start[b + 1] - start[b]
            if cnt == 0:
                continue
            for i in range(start[b], start[b + 1]):
                for col in range(d):
                    means[b, col] += Xg[i, col]
            for col in range(d):
                means[b, col] /= cnt
            for i in range(start[b], start[b + 1]):
                for col in range(d):
                    v = Xg[i, col] - means[b, col]
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
            if not is_sorted[j]:
                for n in range(N):
                    keys[n] = Xc[n, j]
                sorted_rows[j] = _argsort_f32(keys)
                is_sorted[j] = True
            fill[:] = start[:nb]
            for r in sorted_rows[j]:
                b = node[r]
                order[fill[b]] = slot[r] - start[b]
                fill[b] += 1
            total = 0.0
            for b in range(nb):
                gain, t = _best_split(Xg[start[b] : start[b + 1]], j, means[b], order[start[b] : start[b + 1]])
                total += gain
                thr[b] = t
            if total > best_total:
                best_total = total
                best_dim = j
                best_thr[:] = thr
        dims_out[level] = s + best_dim
        for b in range(nb):
            thr_out[nb - 1 + b] = best_thr[b]
        for n in range(N):
            node[n] = 2 * node[n] + (1 if Xc[n, best_dim] > best_thr[node[n]] else 0)


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
