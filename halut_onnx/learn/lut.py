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
    """Sufficient statistics of (codes, T) for a least-squares fit of the layer output on the one-hot codes.

    The regression targets T are the layer outputs Y (``space == "output"``) or, for layers with fewer inputs than
    outputs, the inputs A themselves (``space == "input"``): Y = A W + b is linear in A, so every statistic of Y
    follows from those of A through W, at D/M of the cost (a 120 -> 18710 classifier would otherwise accumulate
    18710-wide sums per code). The LUT in input space is MADDNESS's prototype table, then multiplied by W.
    """

    space: str  # "output" (T = Y) or "input" (T = A)
    rows: int
    counts: np.ndarray  # (16C,) rows per (codebook, code)
    gram: np.ndarray  # (16C, 16C) Phi^T Phi
    phi_t: np.ndarray  # (16C, T) Phi^T T
    tsum: np.ndarray  # (T,)
    tt: np.ndarray  # output space: (M,) sums of squares per column; input space: (D, D) T^T T


def _stats(space, codes, T_chunks, T_width) -> CodeStats:
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    N, C = codes.shape
    G = np.zeros((C * NUM_CODES, C * NUM_CODES), dtype=np.float64)
    _code_gram(codes, G)
    P = np.zeros((C * NUM_CODES, T_width), dtype=np.float64)
    tsum = np.zeros(T_width, dtype=np.float64)
    tsq = np.zeros(T_width, dtype=np.float64)
    tt = np.zeros((T_width, T_width), dtype=np.float64) if space == "input" else tsq
    for i, T in T_chunks:
        _code_sums(codes[i : i + len(T)], T, P, tsum, tsq)
        if space == "input":
            T64 = T.astype(np.float64)
            tt += T64.T @ T64
    return CodeStats(space, N, np.diag(G).copy(), G, P, tsum, tt)


def add_stats(parts: list[CodeStats]) -> CodeStats:
    """The statistics of the union of the row sets ``parts`` describe (all in one space)."""
    first = parts[0]
    return CodeStats(first.space, sum(p.rows for p in parts), sum(p.counts for p in parts),
                     sum(p.gram for p in parts), sum(p.phi_t for p in parts), sum(p.tsum for p in parts),
                     sum(p.tt for p in parts))


def code_stats(codes: np.ndarray, Y: np.ndarray) -> CodeStats:
    """Counts, Gram and ``Phi^T Y`` of codes (uint8, N x C) against targets Y (N x M), float64."""
    Y = np.ascontiguousarray(Y, dtype=np.float32)
    return _stats("output", codes, [(0, Y)], Y.shape[1])


def linear_code_stats(codes: np.ndarray, A: np.ndarray, W: np.ndarray, bias: np.ndarray | None,
                      chunk_elems: int = 1 << 22) -> CodeStats:
    """Statistics for ``Y = A W + bias``: in input space when D < M, else of Y formed about ``chunk_elems`` values
    (16 MiB) at a time, so memory stays bounded whatever the layer's width."""
    D, M = W.shape
    if D < M:
        chunk = max(1, chunk_elems // D)
        A = np.ascontiguousarray(A, dtype=np.float32)
        return _stats("input", codes, ((i, A[i : i + chunk]) for i in range(0, len(A), chunk)), D)
    W = np.asarray(W, dtype=np.float32)
    chunk = max(1, chunk_elems // M)

    def chunks():
        for i in range(0, len(A), chunk):
            Y = A[i : i + chunk] @ W
            if bias is not None:
                Y += bias
            yield i, Y

    return _stats("output", codes, chunks(), M)


@dataclass
class RidgeFit:
    lut: np.ndarray  # (16C, M) float64; row c*16+k
    intercept: np.ndarray  # (M,) float64: y = sum_c lut[c*16+code_c] + intercept
    ridge: float
    train_sse: float
    heldout_sse: float  # nan without held-out rows
    train_ss: float  # ||Y_train||^2 (uncentred: the NMSE denominator)
    heldout_ss: float
    counts: np.ndarray  # (16C,) training rows per (codebook, code)
    centred_gram: np.ndarray  # (16C, 16C) Gram of the centred one-hot matrix (train rows), reused by quantization


def ridge_grid(train: CodeStats, points: int = 43) -> np.ndarray:
    """Lambdas scaled to the data: the mean count per (codebook, code) times 1e-6 .. 10."""
    base = max(float(train.rows) / NUM_CODES * (1.0 - 1.0 / NUM_CODES), 1.0)
    return base * np.logspace(-6.0, 1.0, points)


def _centred_ss(st: CodeStats, t0: np.ndarray, K: np.ndarray | None) -> float:
    """``||(T - 1 t0^T) W||^2`` (input space, K = W W^T) or ``||T - 1 t0^T||^2`` (output space)."""
    if K is None:
        return float(np.sum(st.tt - 2.0 * t0 * st.tsum + st.rows * t0 * t0))
    S = st.tt - np.outer(t0, st.tsum) - np.outer(st.tsum, t0) + st.rows * np.outer(t0, t0)
    return float(np.sum(K * S))


def fit_ridge(train: CodeStats, heldout: CodeStats | None, ridges: np.ndarray, W: np.ndarray | None = None,
              bias: np.ndarray | None = None) -> RidgeFit:
    """Fit the float LUT for each lambda in ``ridges``; keep the one with the lowest held-out error.

    With one lambda (or no held-out rows) that lambda is used. Errors are exact sums of squares of the layer
    output over the rows, computed from the statistics (no predictions are formed). Input-space statistics need
    the layer's W (and bias); the fitted LUT is always in output space.
    """
    ridges = np.asarray(ridges, dtype=np.float64)
    K = None
    if train.space == "input":
        W = np.asarray(W, dtype=np.float64)
        K = W @ W.T  # ||X W||^2 = tr(K X^T X): every output-space norm through the D x D metric
        b = np.zeros(W.shape[1]) if bias is None else np.asarray(bias, dtype=np.float64)
    N = float(train.rows)
    phibar = train.counts / N
    t0 = train.tsum / N
    Gc = _centred_gram(train.gram, train.counts, N)
    Pc = train.phi_t - np.outer(train.counts, t0)
    syy = _centred_ss(train, t0, K)
    evals, Q = np.linalg.eigh(Gc)
    evals = np.maximum(evals, 0.0)  # the centred Gram is PSD; clip rounding below zero
    R = Q.T @ Pc
    RK = R if K is None else R @ K  # R K R^T is the output-space Gram of R's rows
    r2 = np.sum(RK * R, axis=1)

    def train_sse(lam: float) -> float:
        w = 1.0 / (evals + lam)
        return syy - float(np.sum(r2 * w * (2.0 - evals * w)))

    heldout_sse = np.full(ridges.shape, np.nan)
    has_heldout = heldout is not None and heldout.rows > 0
    if has_heldout:
        Nh = float(heldout.rows)
        ch = heldout.counts
        # Held-out residual: (Th - t0) - (Phi_h - 1 phibar^T) L, expanded into the held-out statistics.
        Hh = heldout.gram - np.outer(phibar, ch) - np.outer(ch, phibar) + Nh * np.outer(phibar, phibar)
        Ph = heldout.phi_t - np.outer(ch, t0) - np.outer(phibar, heldout.tsum) + Nh * np.outer(phibar, t0)
        syy_h = _centred_ss(heldout, t0, K)
        # With Z = diag(w) R, w = 1 / (evals + lam): tr(Z^T Q^T Ph) = w . v and tr(Z^T (Q^T Hh Q) Z) = w^T S w,
        # so after a few p x p products each lambda costs O(p^2), p = 16C.
        v = np.sum(RK * (Q.T @ Ph), axis=1)
        S = (Q.T @ Hh @ Q) * (RK @ R.T)
        for i, lam in enumerate(ridges):
            w = 1.0 / (evals + lam)
            heldout_sse[i] = syy_h - 2.0 * float(w @ v) + float(w @ S @ w)
        best = int(np.nanargmin(heldout_sse))
    else:
        best = 0
    lam = float(ridges[best])
    L = Q @ (R / (evals + lam)[:, None])
    intercept = t0 - phibar @ L
    if K is not None:  # input-space tables and intercept to the layer's outputs
        L = L @ W
        intercept = intercept @ W + b
    # Uncentred ||Y||^2 = centred + cross term + N ||mu||^2, with mu = the training mean of Y.
    mu = t0 if K is None else t0 @ W + b
    train_ss = syy + N * float(mu @ mu)
    heldout_ss = float("nan")
    if has_heldout:
        dev = heldout.tsum - heldout.rows * t0  # sum over held-out rows of (T - t0)
        dev = dev if K is None else dev @ W
        heldout_ss = syy_h + 2.0 * float(mu @ dev) + heldout.rows * float(mu @ mu)
    return RidgeFit(
        lut=L,
        intercept=intercept,
        ridge=lam,
        train_sse=max(train_sse(lam), 0.0),
        heldout_sse=float(max(heldout_sse[best], 0.0)) if has_heldout else float("nan"),
        train_ss=train_ss,
        heldout_ss=heldout_ss,
        counts=train.counts,
        centred_gram=Gc,
    )


# Scales tried per output column, as fractions of the one that fits the widest table exactly into -127..127; below 1
# the widest tables clip, which pays when one codebook's spread dwarfs the others'.
_SCALE_FRACTIONS = np.array([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
_GRID_SHIFTS = 8  # offsets of the integer grid tried per (output, codebook) table, in steps of 1/8 of the scale
_REFINE_SWEEPS = 4


@njit("void(float64[:, ::1], int64[:, ::1], float64[::1], float64[:, ::1], float64[:, ::1], int64)", parallel=True,
      cache=True)
def _refine(Gc, q, scale, E, GE, sweeps):
    """Coordinate descent on the integer tables: move single entries by +-1 while ``E^T Gc E`` drops.

    q (16C x M) integers in -128..127, E = scale * q - L and GE = Gc @ E (both updated in place; the product comes
    from BLAS, which computes it ten times faster than a loop here); column m is independent of the others.
    The centred Gram weighs each entry by how often its code occurs and lets errors of codes that co-occur cancel,
    which rounding each entry on its own cannot.
    """
    p, M = q.shape
    for m in prange(M):
        s = scale[m]
        g = GE[:, m].copy()  # Gc @ E[:, m], kept contiguous for the updates
        for _ in range(sweeps):
            changed = 0
            for i in range(p):
                for step in (1, -1):
                    nq = q[i, m] + step
                    if nq < -128 or nq > 127:
                        continue
                    # error change of E[i] += s * step: 2 s step g[i] + s^2 Gc[i, i]
                    if 2.0 * s * step * g[i] + s * s * Gc[i, i] < -1e-12 * s * s * Gc[i, i]:
                        q[i, m] = nq
                        E[i, m] += s * step
                        for j in range(p):
                            g[j] += s * step * Gc[i, j]  # Gc is symmetric: its row i is contiguous, its column is not
                        changed += 1
                        break
            if changed == 0:
                break


@njit("void(float64[:, :, ::1], float64[:, ::1], float64[:, :, ::1])", parallel=True, cache=True)
def _shifted_grids(X, weights, q):
    """q[c, :, m]: table (c, m) of X (in units of the step) rounded on the best of _GRID_SHIFTS integer grids shifted
    by j / _GRID_SHIFTS - 1/2, clipped to -128..127; best = lowest count-weighted variance of the rounding error (its
    mean is a constant that the column's offset absorbs). Ties keep the first shift."""
    C, K, M = X.shape
    for c in prange(C):  # task c owns q[c]; the inner loops run along m, contiguous
        w_sum = 0.0
        for k in range(K):
            w_sum += weights[c, k]
        w_sum = max(w_sum, 1e-300)
        best = np.full(M, np.inf)
        s1 = np.empty(M)
        s2 = np.empty(M)
        for j in range(_GRID_SHIFTS):
            shift = j / _GRID_SHIFTS - 0.5
            s1[:] = 0.0
            s2[:] = 0.0
            for k in range(K):
                w = weights[c, k]
                for m in range(M):
                    qj = min(max(np.rint(X[c, k, m] + shift), -128.0), 127.0)
                    e = qj - shift - X[c, k, m]
                    s2[m] += w * e * e
                    s1[m] += w * e
            for m in range(M):
                err = s2[m] - s1[m] ** 2 / w_sum
                if err < best[m]:
                    best[m] = err
                    for k in range(K):
                        q[c, k, m] = min(max(np.rint(X[c, k, m] + shift), -128.0), 127.0)


@dataclass
class QuantizedLUT:
    lut_q: np.ndarray  # int8 (M, C, 16)
    scale: np.ndarray  # float32 (M,)
    offset: np.ndarray  # float32 (M,)


def quantize_lut(fit: RidgeFit, C: int, exact_limit: int = 1 << 30) -> QuantizedLUT:
    """``quantize_table`` for a ridge fit's LUT, weighted by its training codes."""
    return quantize_table(fit.lut, fit.intercept, fit.counts, fit.centred_gram, C, exact_limit)


def code_weights(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows per (codebook, code), Gram of the centred one-hot matrix) of codes (uint8, N x C): what
    ``quantize_table`` weighs a table's errors by."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    G = np.zeros((codes.shape[1] * NUM_CODES, codes.shape[1] * NUM_CODES), dtype=np.float64)
    _code_gram(codes, G)
    counts = np.diag(G).copy()
    return counts, _centred_gram(G, counts, len(codes))


def _centred_gram(gram: np.ndarray, counts: np.ndarray, rows: float) -> np.ndarray:
    return gram - np.outer(counts, counts) / max(rows, 1)


def quantize_table(lut: np.ndarray, intercept: np.ndarray, counts: np.ndarray, centred_gram: np.ndarray, C: int,
                   exact_limit: int = 1 << 30) -> QuantizedLUT:
    """int8 form of a float LUT (16C x M; ``intercept`` (M,)) with one scale per output column,
    ``y = scale * sum_c lut_q[c, code_c] + offset``, its errors weighted by the codes' ``counts`` and
    ``centred_gram`` (``code_weights``).

    1. Each (m, c) table is centred on its midrange (centres fold into ``offset``), so int8 covers the spread only.
    2. For a few candidate scales per column (the widest table fitting -127..127, and smaller ones that clip it),
       every table's integer grid is shifted by the best of 8 sub-step offsets (count-weighted squared error; the
       shift folds into ``offset``): a table narrower than a few steps loses much less than by plain rounding. The
       column keeps the scale with the lowest error ``E^T Gc E`` on the training codes (E = table errors, Gc the
       centred Gram).
    3. Coordinate descent on the integers lowers ``E^T Gc E`` further (``_refine``).
    4. ``offset`` absorbs the mean error on the training codes, so the column sums stay unbiased.

    For very wide layers (16C x 16C x M beyond ``exact_limit``) the block diagonal of Gc stands in for it in step 2
    (codebooks' errors taken as uncorrelated) and step 3 is skipped.
    """
    L = lut  # (16C, M)
    p, M = L.shape
    phibar = counts * (C / counts.sum())  # fraction of rows per (codebook, code)
    weights = np.ascontiguousarray(phibar.reshape(C, NUM_CODES))
    T = L.reshape(C, NUM_CODES, M)
    mid = 0.5 * (T.max(axis=1) + T.min(axis=1))  # (C, M)
    Rr = T - mid[:, None, :]
    half = 0.5 * (T.max(axis=1) - T.min(axis=1)).max(axis=0)  # (M,)
    s0 = np.where(half > 0, half / 127.0, 1.0)
    exact = p * p * M <= exact_limit
    if not exact:
        blocks = centred_gram.reshape(C, NUM_CODES, C, NUM_CODES)[np.arange(C), :, np.arange(C), :]  # (C,16,16)
    best_err = np.full(M, np.inf)
    best_q = np.zeros((p, M), dtype=np.int64)
    best_s = np.ones(M, dtype=np.float32)
    for frac in _SCALE_FRACTIONS:
        s = (s0 * frac).astype(np.float32)
        X = np.ascontiguousarray(Rr / s.astype(np.float64))  # tables in units of the step
        q = np.empty(X.shape)
        _shifted_grids(X, weights, q)
        q = q.reshape(p, M)
        E = q * s.astype(np.float64) - L  # against the float tables; per-table constants are free (Gc's null space)
        if exact:
            err = np.sum(E * (centred_gram @ E), axis=0)
        else:
            Eb = E.reshape(C, NUM_CODES, M)
            err = np.sum(Eb * (blocks @ Eb), axis=(0, 1))
        better = err < best_err
        best_err[better] = err[better]
        best_q[:, better] = q[:, better].astype(np.int64)
        best_s[better] = s[better]
    E = best_q * best_s.astype(np.float64) - L
    if exact:
        Gc = np.ascontiguousarray(centred_gram)
        _refine(Gc, best_q, best_s.astype(np.float64), E, Gc @ E, _REFINE_SWEEPS)
    # Quantized minus float output is sum_c E[c, code_c] + (offset - intercept): zero mean on the training codes.
    offset = intercept - phibar @ E
    lut_q = np.ascontiguousarray(best_q.reshape(C, NUM_CODES, M).transpose(2, 0, 1).astype(np.int8))
    return QuantizedLUT(lut_q=lut_q, scale=best_s, offset=offset.astype(np.float32))


# The lookups add whole table rows: with the tables laid out (C, 16, M), a row's code in codebook c selects one
# contiguous row of M entries, added to the row's M sums in one vectorized pass (gathering lut[m, c, code] per output
# would run one scalar load per entry). Each output is still summed codebook by codebook, so the float results are
# unchanged, and integer sums are exact in any order. Columns are tiled so that a wide layer's sums and table
# slices stay in cache.
_TILE_ROWS = 256
_TILE_COLS = 512


@njit(inline="always")
def _tile(t, col_tiles, N, M):
    """Rows n0..n1-1 and output columns m0..m1-1 of tile t."""
    n0 = (t // col_tiles) * _TILE_ROWS
    m0 = (t % col_tiles) * _TILE_COLS
    return n0, min(N, n0 + _TILE_ROWS), m0, min(M, m0 + _TILE_COLS)


@njit("void(uint8[:, ::1], int8[:, :, ::1], float32[::1], float32[::1], float32[:, ::1])", parallel=True, cache=True)
def _lookup_int8(codes, lut_t, scale, offset, out):
    N, C = codes.shape
    M = lut_t.shape[2]
    col_tiles = (M + _TILE_COLS - 1) // _TILE_COLS
    for t in prange(col_tiles * ((N + _TILE_ROWS - 1) // _TILE_ROWS)):
        n0, n1, m0, m1 = _tile(t, col_tiles, N, M)
        S = np.empty(m1 - m0, dtype=np.int32)
        for n in range(n0, n1):
            S[:] = 0
            for c in range(C):
                row = lut_t[c, codes[n, c] & 15, m0:m1]
                for m in range(m1 - m0):
                    S[m] += np.int32(row[m])
            for m in range(m1 - m0):
                out[n, m0 + m] = np.float32(scale[m0 + m] * np.float32(S[m])) + offset[m0 + m]


@njit("void(uint8[:, ::1], float32[:, :, ::1], float32[::1], float32[:, ::1])", parallel=True, cache=True)
def _lookup_float(codes, lut_t, bias, out):
    N, C = codes.shape
    M = lut_t.shape[2]
    col_tiles = (M + _TILE_COLS - 1) // _TILE_COLS
    for t in prange(col_tiles * ((N + _TILE_ROWS - 1) // _TILE_ROWS)):
        n0, n1, m0, m1 = _tile(t, col_tiles, N, M)
        y = np.empty(m1 - m0, dtype=np.float32)
        for n in range(n0, n1):
            y[:] = 0.0
            for c in range(C):  # float32, codebook by codebook: reference.lookup_float's order
                row = lut_t[c, codes[n, c], m0:m1]
                for m in range(m1 - m0):
                    y[m] = y[m] + row[m]
            for m in range(m1 - m0):
                out[n, m0 + m] = y[m] + bias[m0 + m]


def rows_layout(lut: np.ndarray, dtype) -> np.ndarray:
    """(M, C, 16) tables, as the ops take them, in the lookups' layout (C, 16, M): one contiguous row of M entries
    per (codebook, code). Callers that look up in chunks convert once."""
    return np.ascontiguousarray(np.asarray(lut, dtype=dtype).transpose(1, 2, 0))


def lookup_int8(codes: np.ndarray, lut_t: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """``reference.lookup`` (bit for bit) of the int8 tables in ``rows_layout``, parallel over rows: for measuring
    large layers."""
    out = np.empty((codes.shape[0], lut_t.shape[2]), dtype=np.float32)
    _lookup_int8(np.ascontiguousarray(codes, dtype=np.uint8), lut_t, np.ascontiguousarray(scale, dtype=np.float32),
                 np.ascontiguousarray(offset, dtype=np.float32), out)
    return out


def lookup_float(codes: np.ndarray, lut_t: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """``reference.lookup_float`` (bit for bit) of the float tables in ``rows_layout``, parallel over rows."""
    out = np.empty((codes.shape[0], lut_t.shape[2]), dtype=np.float32)
    _lookup_float(np.ascontiguousarray(codes, dtype=np.uint8), lut_t, np.ascontiguousarray(bias, dtype=np.float32),
                  out)
    return out
