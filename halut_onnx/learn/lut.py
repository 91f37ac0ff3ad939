"""LUT fitting: ridge regression of one-hot codes on the layer's outputs, and int8 quantization.

With Phi the (rows x 16C) one-hot matrix of the codes, the float LUT is ``L = argmin ||Yc - Phi_c L||^2 + lam ||L||^2``
with Phi and Y centred (the intercept is unpenalised, so lambda never shrinks the mean). Everything needed comes
from sufficient statistics the kernels below build in one pass: counts, the Gram ``Phi^T Phi`` (a bincount per pair
of codebooks) and ``Phi^T Y``. One eigendecomposition of the centred Gram turns each lambda into a diagonal solve, so
a grid of lambdas is scored on held-out rows nearly for free, by the same kind of statistics of the held-out rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from ..ops import NUM_CODES

_M_BLOCK = 64  # output columns per parallel task in _code_sums: the 16C x 64 accumulator stays in cache


@njit("void(uint8[:, ::1], float64[:, ::1])", parallel=True, cache=True)
def _code_gram(codes, G):
    N, C = codes.shape
    for c in prange(C):  # task c owns rows c*16 .. c*16+15 of G: no two tasks write the same entry
        for n in range(N):
            r = c * NUM_CODES + (codes[n, c] & 15)
            for c2 in range(C):
                G[r, c2 * NUM_CODES + (codes[n, c2] & 15)] += 1.0


@njit("void(uint8[:, ::1], float32[:, ::1], float64[:, ::1], float64[::1], float64[::1])", parallel=True,
      cache=True)
def _code_sums(codes, Y, P, ysum, ysq):
    N, C = codes.shape
    M = Y.shape[1]
    nblocks = (M + _M_BLOCK - 1) // _M_BLOCK
    for blk in prange(nblocks):  # task blk owns output columns m0..m1-1
        m0 = blk * _M_BLOCK
        m1 = min(M, m0 + _M_BLOCK)
        w = m1 - m0
        acc = np.zeros((C * NUM_CODES, w), dtype=np.float64)
        s1 = np.zeros(w, dtype=np.float64)
        s2 = np.zeros(w, dtype=np.float64)
        for n in range(N):
            y = Y[n, m0:m1]
            for m in range(w):
                s1[m] += y[m]
                s2[m] += np.float64(y[m]) * y[m]
            for c in range(C):
                # Row views keep the inner loop a plain vectorizable add (indexing acc[r, m] directly ran 3x slower).
                a = acc[c * NUM_CODES + (codes[n, c] & 15)]
                for m in range(w):
                    a[m] += y[m]
        for r in range(C * NUM_CODES):
            for m in range(w):
                P[r, m0 + m] += acc[r, m]
        for m in range(w):
            ysum[m0 + m] += s1[m]
            ysq[m0 + m] += s2[m]


@dataclass
class CodeStats:
    """Sufficient statistics of (codes, Y) for a least-squares fit of Y on the one-hot codes."""

    rows: int
    counts: np.ndarray  # (16C,) rows per (codebook, code)
    gram: np.ndarray  # (16C, 16C) Phi^T Phi
    phi_y: np.ndarray  # (16C, M) Phi^T Y
    ysum: np.ndarray  # (M,)
    ysq: np.ndarray  # (M,) sum of squares per column


def code_stats(codes: np.ndarray, Y: np.ndarray) -> CodeStats:
    """Counts, Gram and ``Phi^T Y`` of codes (uint8, N x C) against targets Y (N x M), float64."""
    return linear_code_stats(codes, Y, np.eye(Y.shape[1], dtype=np.float32), None)


def linear_code_stats(codes: np.ndarray, A: np.ndarray, W: np.ndarray, bias: np.ndarray | None,
                      chunk: int = 8192) -> CodeStats:
    """``code_stats(codes, A @ W + bias)`` without holding all of Y: it is formed ``chunk`` rows at a time."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    W = np.asarray(W, dtype=np.float32)
    N, C = codes.shape
    M = W.shape[1]
    G = np.zeros((C * NUM_CODES, C * NUM_CODES), dtype=np.float64)
    _code_gram(codes, G)
    P = np.zeros((C * NUM_CODES, M), dtype=np.float64)
    ysum = np.zeros(M, dtype=np.float64)
    ysq = np.zeros(M, dtype=np.float64)
    Y = np.empty((min(chunk, N), M), dtype=np.float32)
    for i in range(0, N, chunk):
        rows = min(chunk, N - i)
        y = Y[:rows]
        np.matmul(A[i : i + rows], W, out=y)
        if bias is not None:
            y += bias
        _code_sums(codes[i : i + rows], y, P, ysum, ysq)
    return CodeStats(N, np.diag(G).copy(), G, P, ysum, ysq)


@dataclass
class RidgeFit:
    lut: np.ndarray  # (16C, M) float64; row c*16+k
    intercept: np.ndarray  # (M,) float64: y = sum_c lut[c*16+code_c] + intercept
    ridge: float
    train_sse: float
    heldout_sse: float  # nan without held-out rows
    train_ss: float  # ||Y_train||^2 (uncentred: the NMSE denominator)
    heldout_ss: float
    centred_gram: np.ndarray  # (16C, 16C) Gram of the centred one-hot matrix (train rows), reused by quantization
    mean_code: np.ndarray  # (16C,) counts / rows


def ridge_grid(train: CodeStats, points: int = 43) -> np.ndarray:
    """Lambdas scaled to the data: the mean count per (codebook, code) times 1e-6 .. 10."""
    C16 = train.counts.shape[0]
    base = max(float(train.rows) / NUM_CODES * (1.0 - 1.0 / NUM_CODES), 1.0) if C16 else 1.0
    return base * np.logspace(-6.0, 1.0, points)


def fit_ridge(train: CodeStats, heldout: CodeStats | None, ridges: np.ndarray) -> RidgeFit:
    """Fit the float LUT for each lambda in ``ridges``; keep the one with the lowest held-out error.

    With one lambda (or no held-out rows) that lambda is used. Errors are exact sums of squares over the rows,
    computed from the statistics (no predictions are formed).
    """
    ridges = np.asarray(ridges, dtype=np.float64)
    N = float(train.rows)
    phibar = train.counts / N
    mu = train.ysum / N
    Gc = train.gram - np.outer(train.counts, train.counts) / N
    Pc = train.phi_y - np.outer(train.counts, mu)
    syy = float(np.sum(train.ysq - N * mu * mu))
    evals, Q = np.linalg.eigh(Gc)
    evals = np.maximum(evals, 0.0)  # the centred Gram is PSD; clip rounding below zero
    R = Q.T @ Pc

    def train_sse(lam: float) -> float:
        w = 1.0 / (evals + lam)
        r2 = np.sum(R * R, axis=1)
        return syy - float(np.sum(r2 * w * (2.0 - evals * w)))

    heldout_sse = np.full(ridges.shape, np.nan)
    if heldout is not None and heldout.rows > 0:
        Nh = float(heldout.rows)
        ch = heldout.counts
        # Held-out residual: (Yh - mu) - (Phi_h - 1 phibar^T) L, expanded into the held-out statistics.
        Hh = heldout.gram - np.outer(phibar, ch) - np.outer(ch, phibar) + Nh * np.outer(phibar, phibar)
        Ph = heldout.phi_y - np.outer(ch, mu) - np.outer(phibar, heldout.ysum) + Nh * np.outer(phibar, mu)
        syy_h = float(np.sum(heldout.ysq - 2.0 * mu * heldout.ysum + Nh * mu * mu))
        # With Z = diag(w) R, w = 1 / (evals + lam): tr(Z^T Q^T Ph) = w . v and tr(Z^T (Q^T Hh Q) Z) = w^T S w,
        # so after three p x p products each lambda costs O(p^2), p = 16C.
        v = np.sum(R * (Q.T @ Ph), axis=1)
        S = (Q.T @ Hh @ Q) * (R @ R.T)
        for i, lam in enumerate(ridges):
            w = 1.0 / (evals + lam)
            heldout_sse[i] = syy_h - 2.0 * float(w @ v) + float(w @ S @ w)
        best = int(np.nanargmin(heldout_sse)) if len(ridges) > 1 else 0
    else:
        best = 0
    lam = float(ridges[best])
    L = Q @ (R / (evals + lam)[:, None])
    intercept = mu - phibar @ L
    return RidgeFit(
        lut=L,
        intercept=intercept,
        ridge=lam,
        train_sse=max(train_sse(lam), 0.0),
        heldout_sse=float(max(heldout_sse[best], 0.0)) if np.isfinite(heldout_sse[best]) else float("nan"),
        train_ss=float(np.sum(train.ysq)),
        heldout_ss=float(np.sum(heldout.ysq)) if heldout is not None and heldout.rows > 0 else float("nan"),
        centred_gram=Gc,
        mean_code=phibar,
    )


@dataclass
class QuantizedLUT:
    lut_q: np.ndarray  # int8 (M, C, 16)
    scale: np.ndarray  # float32 (M,)
    offset: np.ndarray  # float32 (M,)


# Scales tried per output column, as fractions of the one that fits the widest table exactly into -127..127; below 1
# the widest tables clip, which pays when one codebook's spread dwarfs the others'.
_SCALE_FRACTIONS = np.array([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4])


def quantize_lut(fit: RidgeFit, C: int) -> QuantizedLUT:
    """int8 LUT with one scale per output column.

    Each (m, c) table is centred on its midrange (the centres fold into ``offset``), so int8 covers the spread only.
    Per column the scale minimises the squared error of the integer sums on the training codes (``E^T Gc E`` with
    the centred Gram, over a few candidate scales), and the mean error on the training codes folds into ``offset``
    so the column sums stay unbiased.
    """
    L = fit.lut  # (16C, M)
    M = L.shape[1]
    T = L.reshape(C, NUM_CODES, M)
    mid = 0.5 * (T.max(axis=1) + T.min(axis=1))  # (C, M)
    Rr = (T - mid[:, None, :]).reshape(C * NUM_CODES, M)
    half = 0.5 * (T.max(axis=1) - T.min(axis=1)).max(axis=0)  # (M,)
    s0 = np.where(half > 0, half / 127.0, 1.0)
    best_err = np.full(M, np.inf)
    best_q = np.zeros((C * NUM_CODES, M), dtype=np.int8)
    best_s = np.ones(M, dtype=np.float32)
    for frac in _SCALE_FRACTIONS:
        s = (s0 * frac).astype(np.float32)
        q = np.clip(np.rint(Rr / s), -128, 127)
        E = q * s.astype(np.float64) - Rr
        err = np.sum(E * (fit.centred_gram @ E), axis=0)
        better = err < best_err
        best_err[better] = err[better]
        best_q[:, better] = q[:, better].astype(np.int8)
        best_s[better] = s[better]
    E = best_q.astype(np.float64) * best_s.astype(np.float64) - Rr
    offset = fit.intercept + mid.sum(axis=0) - fit.mean_code @ E
    lut_q = np.ascontiguousarray(best_q.reshape(C, NUM_CODES, M).transpose(2, 0, 1))
    return QuantizedLUT(lut_q=lut_q, scale=best_s, offset=offset.astype(np.float32))
