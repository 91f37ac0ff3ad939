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


@njit("void(float64[::1], float64[::1], int64[::1])", cache=True)
def _draws(weights, us, out):
    """out[t]: index drawn with probability proportional to weights for each uniform us[t] (the first index with a
    positive weight whose running sum exceeds us[t] * total), all in one pass over the weights."""
    N = weights.shape[0]
    total = 0.0
    for n in range(N):
        total += weights[n]
    for t in range(us.shape[0]):
        out[t] = min(int(us[t] * N), N - 1)
    if total > 0.0:
        targets = us * total
        order = np.argsort(targets)
        j = 0
        acc = 0.0
        for n in range(N):
            acc += weights[n]
            while j < order.shape[0] and acc > targets[order[j]] and weights[n] > 0.0:
                out[order[j]] = n
                j += 1
            if j == order.shape[0]:
                break


@njit("float64(float64[:, ::1], float64[::1])", cache=True)
def _norm_g(G, v):
    """sqrt(v^T G v), clipped at 0."""
    d = G.shape[0]
    acc = 0.0
    for i in range(d):
        t = 0.0
        for j in range(d):
            t += G[i, j] * v[j]
        acc += v[i] * t
    return np.sqrt(max(acc, 0.0))


@njit(inline="always")
def _fold(G, X, s, r, gz):
    """The centroid z = row r of the slice folded for ``_dist_folded``: G z into ``gz``, and z^T G z returned."""
    d = gz.shape[0]
    zgz = 0.0
    for i in range(d):
        acc = 0.0
        for j in range(d):
            acc += G[i, j] * X[r, s + j]
        gz[i] = acc
        zgz += X[r, s + i] * acc
    return zgz


@njit(inline="always")
def _from_folded(xgx_n, xgz, zgz):
    """(x - z)^T G (x - z) = x^T G x - 2 x^T G z + z^T G z, clipped at 0."""
    v = xgx_n - 2.0 * xgz + zgz
    return v if v > 0.0 else 0.0


@njit(inline="always")
def _dist_folded(X, s, n, xgx_n, gz, zgz):
    """``_from_folded`` for row n, from ``_fold``'s G z and z^T G z."""
    xgz = 0.0
    for i in range(gz.shape[0]):
        xgz += X[n, s + i] * gz[i]
    return _from_folded(xgx_n, xgz, zgz)


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
    # Greedy k-means++, the LOCAL_TRIALS draws of each new centroid scored in one pass over the rows: the same
    # draws and sums, in the same order, as drawing and scoring them one by one.
    mind = np.empty(N, dtype=np.float64)
    first = min(int(uniforms[0] * N), N - 1)
    for i in range(d):
        centroids[0, i] = X[first, s + i]
    gz0 = np.empty(d, dtype=np.float64)
    zgz0 = _fold(G, X, s, first, gz0)
    for n in range(N):
        mind[n] = _dist_folded(X, s, n, xgx[n], gz0, zgz0)
    T = LOCAL_TRIALS
    rows = np.empty(T, dtype=np.int64)
    gz = np.empty((T, d), dtype=np.float64)
    gz_t = np.empty((d, T), dtype=np.float64)  # gz transposed: the trials are the inner, vectorized loop
    zgz = np.empty(T, dtype=np.float64)
    pot = np.empty(T, dtype=np.float64)
    xgz = np.empty(T, dtype=np.float64)
    for k in range(1, K):
        _draws(mind, uniforms[1 + (k - 1) * T : 1 + k * T], rows)
        for t in range(T):
            zgz[t] = _fold(G, X, s, rows[t], gz[t])
            for i in range(d):
                gz_t[i, t] = gz[t, i]
        pot[:] = 0.0
        for n in range(N):
            # _dist_folded for all trials at once, summing over i in the same order (the same values)
            xgz[:] = 0.0
            for i in range(d):
                xi = np.float64(X[n, s + i])
                for t in range(T):
                    xgz[t] += xi * gz_t[i, t]
            for t in range(T):
                v = _from_folded(xgx[n], xgz[t], zgz[t])
                pot[t] += mind[n] if mind[n] < v else v
        best = 0
        for t in range(1, T):
            if pot[t] < pot[best]:
                best = t
        for i in range(d):
            centroids[k, i] = X[rows[best], s + i]
        for n in range(N):
            v = _dist_folded(X, s, n, xgx[n], gz[best], zgz[best])
            if v < mind[n]:
                mind[n] = v

    # Lloyd's iterations with Hamerly's bounds: per row an upper bound on the distance to its centroid and a lower
    # bound on the distance to any other (distances are sqrt((x - z)^T G (x - z)), a seminorm's, so the triangle
    # inequality holds). A row whose bounds show that its centroid is still strictly the nearest is not scored;
    # once the centroids settle that is most rows. The assignments are Lloyd's: a row is skipped only when no
    # other centroid can be as near, and every other row is scored against all 16 as before.
    labels = np.full(N, -1, dtype=np.int64)
    upper = np.full(N, np.inf)
    lower = np.zeros(N)
    vec = np.empty((d, K), dtype=np.float64)  # column k = -2 G z_k, laid out for a contiguous inner loop over k
    bias = np.empty(K, dtype=np.float64)
    score = np.empty(K, dtype=np.float64)
    sums = np.empty((K, d), dtype=np.float64)
    cnt = np.empty(K, dtype=np.int64)
    old = np.empty((K, d), dtype=np.float64)
    half = np.zeros(K, dtype=np.float64)  # half the distance from centroid k to the nearest other
    moves = np.zeros(K, dtype=np.float64)  # how far centroid k moved in the last update
    diff = np.empty(d, dtype=np.float64)
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
        if it > 0:
            for k in range(K):
                nearest = np.inf
                for k2 in range(K):
                    if k2 != k:
                        for i in range(d):
                            diff[i] = centroids[k, i] - centroids[k2, i]
                        nearest = min(nearest, _norm_g(G, diff))
                half[k] = 0.5 * nearest
        changed = 0
        for n in range(N):
            a = labels[n]
            # slack for the rounding of x^T G x - 2 x^T G z + z^T G z
            slack = 1e-7 * np.sqrt(xgx[n]) + 1e-300
            if a >= 0:
                bound = max(half[a], lower[n])
                if upper[n] + slack < bound:
                    continue
                v = bias[a]
                for i in range(d):
                    v += np.float64(X[n, s + i]) * vec[i, a]
                upper[n] = np.sqrt(max(xgx[n] + v, 0.0))
                if upper[n] + slack < bound:
                    continue
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
            second = np.inf
            for k in range(K):
                if k != lab and score[k] < second:
                    second = score[k]
            if lab != a:
                changed += 1
                labels[n] = lab
            upper[n] = np.sqrt(max(xgx[n] + score[lab], 0.0))
            lower[n] = np.sqrt(max(xgx[n] + second, 0.0))
        if changed == 0:
            break
        old[:, :] = centroids[:K, :d]
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
        if np.any(cnt == 0):
            # Re-seed an empty cluster with the row worst served by its centroid (as assigned this iteration);
            # the bounds do not give that distance, so it is computed for every row.
            best = np.empty(N, dtype=np.float64)
            for n in range(N):
                v = bias[labels[n]]
                for i in range(d):
                    v += np.float64(X[n, s + i]) * vec[i, labels[n]]
                best[n] = v
            for k in range(K):
                if cnt[k] == 0:
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
                    upper[far] = np.inf  # its bounds were for another centroid: score it again
                    lower[far] = 0.0
        moved = 0.0
        for k in range(K):
            for i in range(d):
                diff[i] = centroids[k, i] - old[k, i]
            moves[k] = _norm_g(G, diff)
            moved = max(moved, moves[k])
        for n in range(N):
            upper[n] += moves[labels[n]]
            lower[n] -= moved


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
