"""Product-quantization encoders with distances in the layer's output space.

Codebook c over input columns ``s:e`` with weight rows ``W_c = W[s:e]`` measures ``d(x, z) = ||W_c^T (x - z)||^2
= (x - z)^T G_c (x - z)``, ``G_c = W_c W_c^T``. K-means in this metric: assignment by the folded score
``z^T G z - 2 x^T G z`` (the op's form, without the row's constant ``x^T G x``), centroid = mean of the assigned
rows (the minimiser of a PSD quadratic form over a cluster is its mean), greedy k-means++ initialisation drawn
from explicit uniforms, an empty cluster re-seeded with the row farthest from its centroid.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..ops import NUM_CODES


# Greedy k-means++: each new centroid is the best of this many D^2-weighted draws (the one that lowers the total
# squared distance most). Plain k-means++ often leaves one of 16 well-separated clusters uncovered, and
# scikit-learn's 2 + ln(16) = 4 draws still did in our tests; 8 made it rare for a few % of the Lloyd time.
LOCAL_TRIALS = 8


@njit("void(float32[:, ::1], int64, float64[:, ::1], float64[::1], float64[::1], float64[::1])", cache=True)
def _dists(X, s, G, xgx, z, out):
    """out[n] = (x_n - z)^T G (x_n - z) = x^T G x - 2 x^T G z + z^T G z, clipped at 0."""
    d = G.shape[0]
    gz = np.zeros(d, dtype=np.float64)
    zgz = 0.0
    for i in range(d):
        for j in range(d):
            gz[i] += G[i, j] * z[j]
        zgz += z[i] * gz[i]
    for n in range(X.shape[0]):
        xgz = 0.0
        for i in range(d):
            xgz += X[n, s + i] * gz[i]
        v = xgx[n] - 2.0 * xgz + zgz
        out[n] = v if v > 0.0 else 0.0


@njit("int64(float64[::1], float64)", cache=True)
def _draw(weights, u):
    """Index drawn with probability proportional to weights (first index whose running sum exceeds u * total)."""
    N = weights.shape[0]
    total = 0.0
    for n in range(N):
        total += weights[n]
    pick = min(int(u * N), N - 1)
    if total > 0.0:
        target = u * total
        acc = 0.0
        for n in range(N):
            acc += weights[n]
            if acc > target and weights[n] > 0.0:
                return n
    return pick


@njit("void(float32[:, ::1], int64, float64[:, ::1], int64, float64[::1], float64[:, ::1])", cache=True)
def _kmeans_one(X, s, G, iters, uniforms, centroids):
    N = X.shape[0]
    d = G.shape[0]
    K = NUM_CODES
    xgx = np.empty(N, dtype=np.float64)
    for n in range(N):
        v = 0.0
        for i in range(d):
            acc = 0.0
            for j in range(d):
                acc += G[i, j] * X[n, s + j]
            v += X[n, s + i] * acc
        xgx[n] = v
    mind = np.empty(N, dtype=np.float64)
    cand = np.empty(N, dtype=np.float64)
    best_cand = np.empty(N, dtype=np.float64)
    z = np.empty(d, dtype=np.float64)
    first = min(int(uniforms[0] * N), N - 1)
    for i in range(d):
        centroids[0, i] = X[first, s + i]
    z[:] = centroids[0]
    _dists(X, s, G, xgx, z, mind)
    for k in range(1, K):
        best_pot = np.inf
        best_row = 0
        for t in range(LOCAL_TRIALS):
            r = _draw(mind, uniforms[1 + (k - 1) * LOCAL_TRIALS + t])
            for i in range(d):
                z[i] = X[r, s + i]
            _dists(X, s, G, xgx, z, cand)
            pot = 0.0
            for n in range(N):
                if mind[n] < cand[n]:
                    cand[n] = mind[n]
                pot += cand[n]
            if pot < best_pot:
                best_pot = pot
                best_row = r
                best_cand[:] = cand
        for i in range(d):
            centroids[k, i] = X[best_row, s + i]
        mind[:] = best_cand

    labels = np.full(N, -1, dtype=np.int64)
    best = np.empty(N, dtype=np.float64)
    vec = np.empty((d, K), dtype=np.float64)  # column k = -2 G z_k, laid out for a contiguous inner loop over k
    bias = np.empty(K, dtype=np.float64)
    score = np.empty(K, dtype=np.float64)
    sums = np.empty((K, d), dtype=np.float64)
    cnt = np.empty(K, dtype=np.int64)
    for it in range(iters):
        for k in range(K):
            b = 0.0
            for i in range(d):
                acc = 0.0
                for j in range(d):
                    acc += G[i, j] * centroids[k, j]
                vec[i, k] = -2.0 * acc
                b += centroids[k, i] * acc
            bias[k] = b
        changed = 0
        for n in range(N):
            for k in range(K):
                score[k] = bias[k]
            for i in range(d):
                xi = np.float64(X[n, s + i])
                for k in range(K):
                    score[k] += xi * vec[i, k]
            lab = 0
            for k in range(1, K):
                if score[k] < score[lab]:
                    lab = k
            if lab != labels[n]:
                changed += 1
                labels[n] = lab
            best[n] = score[lab]
        if changed == 0:
            break
        sums[:, :] = 0.0
        cnt[:] = 0
        for n in range(N):
            lab = labels[n]
            cnt[lab] += 1
            for i in range(d):
                sums[lab, i] += X[n, s + i]
        for k in range(K):
            if cnt[k] > 0:
                for i in range(d):
                    centroids[k, i] = sums[k, i] / cnt[k]
        for k in range(K):
            if cnt[k] == 0:
                # Re-seed with the row worst served by its centroid; the distance needs the row constant x^T G x.
                far = -1
                far_d = -1.0
                for n in range(N):
                    dist = xgx[n] + best[n]
                    if dist > far_d:
                        far_d = dist
                        far = n
                for i in range(d):
                    centroids[k, i] = X[far, s + i]
                best[far] = -np.inf  # a second empty cluster takes another row
                labels[far] = k


@njit(
    "void(float32[:, ::1], int64[::1], float64[:, :, ::1], int64, float64[:, ::1], float64[:, :, ::1])",
    parallel=True,
    cache=True,
)
def _kmeans(X, bounds, grams, iters, uniforms, centroids):
    C = bounds.shape[0] - 1
    for c in prange(C):
        d = bounds[c + 1] - bounds[c]
        G = np.ascontiguousarray(grams[c, :d, :d])
        z = np.zeros((NUM_CODES, d), dtype=np.float64)
        # Every Lloyd pass reads the slice's d columns of all rows: strided in X, that is a cache line per row for
        # a few bytes (3x slower at d = 3); a contiguous copy of the slice is read at memory speed.
        Xc = np.ascontiguousarray(X[:, bounds[c] : bounds[c + 1]])
        _kmeans_one(Xc, 0, G, iters, uniforms[c], z)
        centroids[c, :, :d] = z


def learn_pq(
    A: np.ndarray, W: np.ndarray, bounds: np.ndarray, iters: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Learn 16 prototypes per codebook by k-means in the output metric and fold them for ``HalutEncodePQ``.

    Parameters
    ----------
    A : float32 (N, D) training rows.  W : (D, M) layer weight.  bounds : int64 (C + 1,) slice starts.
    iters : Lloyd iterations at most (stops early when no assignment changes).  rng : seeded generator.

    Returns
    -------
    vectors : float32 (16, D), ``vectors[k, s:e] = -2 G_c z_k``.
    biases : float32 (C, 16), ``z_k^T G_c z_k``.
    centroids : float64 (C, 16, max slice width), zero-padded, in input space.
    """
    C = bounds.shape[0] - 1
    widths = np.diff(bounds)
    dmax = int(widths.max())
    W64 = np.asarray(W, dtype=np.float64)
    grams = np.zeros((C, dmax, dmax), dtype=np.float64)
    for c in range(C):
        Wc = W64[bounds[c] : bounds[c + 1]]
        grams[c, : widths[c], : widths[c]] = Wc @ Wc.T
    uniforms = rng.random((C, 1 + (NUM_CODES - 1) * LOCAL_TRIALS))
    centroids = np.zeros((C, NUM_CODES, dmax), dtype=np.float64)
    _kmeans(np.ascontiguousarray(A, dtype=np.float32), bounds.astype(np.int64), grams, int(iters), uniforms,
            centroids)
    return (*fold_prototypes(centroids, grams, bounds), centroids)


def fold_prototypes(centroids: np.ndarray, grams: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The op's folded form: ``vectors[k, s:e] = -2 G_c z_k`` and ``biases[c, k] = z_k^T G_c z_k`` (float32)."""
    C = bounds.shape[0] - 1
    vectors = np.zeros((NUM_CODES, int(bounds[-1])), dtype=np.float32)
    biases = np.zeros((C, NUM_CODES), dtype=np.float32)
    for c in range(C):
        w = int(bounds[c + 1] - bounds[c])
        G = grams[c, :w, :w]
        Z = centroids[c, :, :w]
        GZ = Z @ G  # G is symmetric: row k = (G z_k)^T
        vectors[:, bounds[c] : bounds[c + 1]] = -2.0 * GZ
        biases[c] = np.einsum("kd,kd->k", Z, GZ)
    return vectors, biases


@njit("void(float32[:, ::1], float32[:, ::1], float32[:, ::1], int64[::1], uint8[:, ::1])", parallel=True,
      cache=True)
def _encode_pq(X, vectors_t, biases, bounds, codes):
    N = X.shape[0]
    C = biases.shape[0]
    K = NUM_CODES
    for n in prange(N):
        score = np.empty(K, dtype=np.float32)
        for c in range(C):
            for k in range(K):
                score[k] = biases[c, k]
            for dd in range(bounds[c], bounds[c + 1]):
                x = X[n, dd]
                for k in range(K):
                    score[k] = score[k] + x * vectors_t[dd, k]  # float32 product and sum, no FMA: the op's order
            best = 0
            for k in range(1, K):
                if score[k] < score[best]:
                    best = k
            codes[n, c] = best


def encode_pq(X: np.ndarray, vectors: np.ndarray, biases: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """``reference.encode_pq`` (same codes, bit for bit), parallel over rows."""
    codes = np.empty((X.shape[0], biases.shape[0]), dtype=np.uint8)
    _encode_pq(np.ascontiguousarray(X, dtype=np.float32), np.ascontiguousarray(vectors.T, dtype=np.float32),
               np.ascontiguousarray(biases, dtype=np.float32), bounds.astype(np.int64), codes)
    return codes
