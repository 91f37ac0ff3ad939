"""Output-metric k-means against a direct numpy implementation, and the fast PQ encoder against the reference."""

import numpy as np
import pytest

from halut_onnx import reference
from halut_onnx.learn.pq import LOCAL_TRIALS, encode_pq, fold_prototypes, learn_pq


def kmeans_direct(X, G, iters, uniforms):
    """k-means in the metric (x - z)^T G (x - z): the same k-means++ draws and Lloyd steps, written plainly."""
    X = X.astype(np.float64)
    N = len(X)

    def dist(Z):  # (N, K)
        diff = X[:, None, :] - Z[None, :, :]
        return np.einsum("nki,ij,nkj->nk", diff, G, diff)

    def draw(weights, u):
        if weights.sum() > 0:
            return int(np.flatnonzero((np.cumsum(weights) > u * weights.sum()) & (weights > 0))[0])
        return min(int(u * N), N - 1)

    Z = [X[min(int(uniforms[0] * N), N - 1)]]
    for k in range(1, 16):
        mind = dist(np.array(Z)).min(axis=1)
        # greedy k-means++: of LOCAL_TRIALS draws keep the one with the lowest total squared distance
        draws = [draw(mind, u) for u in uniforms[1 + (k - 1) * LOCAL_TRIALS : 1 + k * LOCAL_TRIALS]]
        potentials = [np.minimum(mind, dist(X[r][None])[:, 0]).sum() for r in draws]
        Z.append(X[draws[int(np.argmin(potentials))]])
    Z = np.array(Z)
    labels = np.full(N, -1)
    for _ in range(iters):
        new = dist(Z).argmin(axis=1)
        if (new == labels).all():
            break
        labels = new
        for k in range(16):
            if (labels == k).any():
                Z[k] = X[labels == k].mean(axis=0)
        assert len(np.unique(labels)) == 16, "test data must not produce empty clusters"
    return Z


@pytest.mark.parametrize("D,C", [(8, 2), (11, 3)])
def test_kmeans_matches_direct_implementation(rng, D, C):
    N, M = 400, 6
    X = rng.standard_normal((N, D)).astype(np.float32)
    W = rng.standard_normal((D, M))
    bounds = reference.slice_bounds(D, C)
    vectors, biases, centroids = learn_pq(X, W, bounds, 10, np.random.default_rng(7))
    uniforms = np.random.default_rng(7).random((C, 1 + 15 * LOCAL_TRIALS))  # learn_pq's draw
    for c in range(C):
        s, e = bounds[c], bounds[c + 1]
        G = W[s:e] @ W[s:e].T
        Z = kmeans_direct(X[:, s:e], G, 10, uniforms[c])
        np.testing.assert_allclose(centroids[c, :, : e - s], Z, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(vectors[:, s:e], (-2 * Z @ G).astype(np.float32), rtol=1e-6)
        np.testing.assert_allclose(biases[c], np.einsum("ki,ij,kj->k", Z, G, Z).astype(np.float32), rtol=1e-6)


def test_fold_prototypes_with_uneven_slices(rng):
    D, C = 7, 3
    bounds = reference.slice_bounds(D, C)  # widths 3, 2, 2
    grams = np.zeros((C, 3, 3))
    centroids = np.zeros((C, 16, 3))
    for c in range(C):
        w = bounds[c + 1] - bounds[c]
        B = rng.standard_normal((w, 4))
        grams[c, :w, :w] = B @ B.T
        centroids[c, :, :w] = rng.standard_normal((16, w))
    vectors, biases = fold_prototypes(centroids, grams, bounds)
    X = rng.standard_normal((100, D)).astype(np.float32)
    codes = reference.encode_pq(X, vectors, biases)
    for c in range(C):
        s, e = bounds[c], bounds[c + 1]
        diff = X[:, None, s:e] - centroids[c][None, :, : e - s]
        dist = np.einsum("nki,ij,nkj->nk", diff, grams[c, : e - s, : e - s], diff)
        srt = np.sort(dist, axis=1)
        clear = srt[:, 1] - srt[:, 0] > 1e-4 * srt[:, 1]
        np.testing.assert_array_equal(codes[clear, c], dist.argmin(axis=1)[clear])


def test_metric_ignores_directions_w_cannot_see(rng):
    # W reads only column 0 of a 2-column slice: clusters must follow column 0 however wide column 1 spreads.
    N = 2000
    X = np.stack([rng.integers(0, 16, N) + rng.standard_normal(N) * 0.01, rng.standard_normal(N) * 100], axis=1)
    X = X.astype(np.float32)
    W = np.array([[1.0], [0.0]])
    vectors, biases, _ = learn_pq(X, W, reference.slice_bounds(2, 1), 25, np.random.default_rng(0))
    codes = reference.encode_pq(X, vectors, biases)[:, 0]
    level = np.rint(X[:, 0]).astype(int)
    assert len(set(zip(codes, level))) == 16  # one code per level of column 0


def test_fast_encoder_equals_reference(rng):
    N, D, C = 300, 21, 4
    X = rng.standard_normal((N, D)).astype(np.float32)
    W = rng.standard_normal((D, 9))
    bounds = reference.slice_bounds(D, C)
    vectors, biases, _ = learn_pq(X, W, bounds, 5, np.random.default_rng(0))
    X[:10] = np.nan
    X[10:20] = 0.0  # all scores = biases
    biases[1, :] = biases[1, 0]  # exact ties: lowest index
    np.testing.assert_array_equal(encode_pq(X, vectors, biases, bounds), reference.encode_pq(X, vectors, biases))
