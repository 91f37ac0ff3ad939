"""The executable specification of the Halut ops, in plain numpy.

Every kernel (numba, C++ SIMD, CUDA) is tested against these functions: codes must agree exactly and the integer
LUT sums must agree exactly, so each function fixes its floating-point evaluation order (docs/ops.md states the same
rules in prose). Arrays are 2-D here (rows x features); the ops flatten any leading dims onto rows.
"""

from __future__ import annotations

import numpy as np

from .ops import NUM_CODES, TREE_DEPTH, TREE_NODES


def slice_bounds(D: int, C: int) -> np.ndarray:
    """Start offsets of the C contiguous input slices, plus D at the end (int64, length C + 1).

    The first ``D % C`` slices hold ``D // C + 1`` columns, the rest ``D // C`` (numpy.array_split's rule), so
    codebook c covers columns ``bounds[c]:bounds[c + 1]``.
    """
    if C < 1 or D < C:
        raise ValueError(f"need 1 <= C <= D for {C} codebooks over {D} input columns")
    c = np.arange(C + 1, dtype=np.int64)
    return c * (D // C) + np.minimum(c, D % C)


def encode_tree(X: np.ndarray, split_dims: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Codes (uint8, N x C) from C depth-4 decision trees.

    At level l the tree compares column ``split_dims[c, l]`` with ``thresholds[c, 2**l - 1 + node]`` and moves to
    ``node = 2 * node + (x > threshold)``; after 4 levels ``node`` (0..15) is the code. A NaN compares false.
    """
    X = np.asarray(X, dtype=np.float32)
    C = split_dims.shape[0]
    assert split_dims.shape == (C, TREE_DEPTH) and thresholds.shape == (C, TREE_NODES)
    node = np.zeros((X.shape[0], C), dtype=np.int64)
    cols = np.arange(C)
    for level in range(TREE_DEPTH):
        x = X[:, split_dims[:, level]]  # N x C
        t = thresholds[cols[None, :], (1 << level) - 1 + node]
        node = 2 * node + (x > t)
    return node.astype(np.uint8)


def encode_pq(X: np.ndarray, vectors: np.ndarray, biases: np.ndarray) -> np.ndarray:
    """Codes (uint8, N x C) by nearest prototype under a folded (output-space) metric.

    For codebook c over columns s..e-1 (``slice_bounds``) and prototype k:
    ``score[k] = biases[c, k]``, then for d = s, s+1, ..., e-1 in that order
    ``score[k] = fl32(score[k] + fl32(X[n, d] * vectors[k, d]))`` (no fused multiply-add). The code is the first k
    whose score is smallest in the scan ``best = 0; for k in 1..15: if score[k] < score[best]: best = k``.
    """
    X = np.asarray(X, dtype=np.float32)
    C = biases.shape[0]
    D = X.shape[1]
    assert vectors.shape == (NUM_CODES, D) and biases.shape == (C, NUM_CODES)
    bounds = slice_bounds(D, C)
    codes = np.empty((X.shape[0], C), dtype=np.uint8)
    with np.errstate(invalid="ignore", over="ignore"):
        for c in range(C):
            score = np.repeat(biases[c][None, :].astype(np.float32), X.shape[0], axis=0)  # N x 16
            for d in range(bounds[c], bounds[c + 1]):
                score = score + X[:, d : d + 1] * vectors[None, :, d]
            best = np.zeros(X.shape[0], dtype=np.int64)
            best_score = score[:, 0].copy()
            for k in range(1, NUM_CODES):
                better = score[:, k] < best_score
                best[better] = k
                best_score[better] = score[better, k]
            codes[:, c] = best
    return codes


def lut_sums(codes: np.ndarray, lut_q: np.ndarray) -> np.ndarray:
    """Exact integer sums ``S[n, m] = sum_c lut_q[m, c, codes[n, c] & 15]`` (int32, N x M)."""
    M, C, K = lut_q.shape
    assert K == NUM_CODES and codes.shape[1] == C
    S = np.zeros((codes.shape[0], M), dtype=np.int32)
    for c in range(C):
        S += lut_q[:, c, :].T.astype(np.int32)[codes[:, c] & 15]
    return S


def lookup(codes: np.ndarray, lut_q: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """The lookup op: ``y[n, m] = fl32(fl32(scale[m] * float32(S[n, m])) + offset[m])`` (float32, N x M)."""
    S = lut_sums(codes, lut_q).astype(np.float32)
    return S * scale.astype(np.float32) + offset.astype(np.float32)


def lookup_float(codes: np.ndarray, lut: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The float-LUT form used while learning: ``y[n, m] = sum_c lut[m, c, codes[n, c]] + bias[m]`` (float32)."""
    M, C, _ = lut.shape
    y = np.zeros((codes.shape[0], M), dtype=np.float32)
    for c in range(C):
        y += lut[:, c, :].T.astype(np.float32)[codes[:, c]]
    return y + bias.astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Conv forms: the same ops over the patch rows of a 2-D convolution (docs/ops.md, "Conv ops").


def conv_pads(
    H: int, W: int, kernel_shape, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), auto_pad: str = "NOTSET"
) -> tuple[tuple[int, int, int, int], int, int]:
    """Resolved pads [top, left, bottom, right] and the output size (Ho, Wo), as ONNX Conv computes them."""
    kh, kw = kernel_shape
    sh, sw = strides
    dh, dw = dilations
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        resolved = []
        for size, k, s, d in ((H, kh, sh, dh), (W, kw, sw, dw)):
            out = -(-size // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            small, big = total // 2, total - total // 2
            resolved.append((small, big) if auto_pad == "SAME_UPPER" else (big, small))
        pads = (resolved[0][0], resolved[1][0], resolved[0][1], resolved[1][1])
    elif auto_pad == "VALID":
        pads = (0, 0, 0, 0)
    elif auto_pad != "NOTSET":
        raise ValueError(f"auto_pad {auto_pad!r} is not one of NOTSET, SAME_UPPER, SAME_LOWER, VALID")
    top, left, bottom, right = (int(p) for p in pads)
    Ho = (H + top + bottom - ((kh - 1) * dh + 1)) // sh + 1
    Wo = (W + left + right - ((kw - 1) * dw + 1)) // sw + 1
    return (top, left, bottom, right), max(Ho, 0), max(Wo, 0)


def im2col(
    X: np.ndarray, kernel_shape, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), auto_pad: str = "NOTSET"
) -> np.ndarray:
    """Patch rows of a 2-D convolution: (B * Ho * Wo, Cin * kh * kw) float32, rows in (b, oy, ox) order.

    Element ``d = (ci * kh + ky) * kw + kx`` of row (b, oy, ox) is
    ``X[b, ci, oy * sh - top + ky * dh, ox * sw - left + kx * dw]``, or 0 outside the image, so a Conv weight
    ``W`` (Cout, Cin, kh, kw) acts on the rows as ``W.reshape(Cout, -1).T``.
    """
    X = np.asarray(X, dtype=np.float32)
    B, Cin, H, W = X.shape
    kh, kw = kernel_shape
    sh, sw = strides
    dh, dw = dilations
    (top, left, bottom, right), Ho, Wo = conv_pads(H, W, kernel_shape, strides, pads, dilations, auto_pad)
    padded = np.zeros((B, Cin, H + top + bottom, W + left + right), dtype=np.float32)
    # Negative pads crop: place the part of X that lands inside the padded frame.
    src = X[:, :, max(-top, 0) : H - max(-bottom, 0), max(-left, 0) : W - max(-right, 0)]
    padded[:, :, max(top, 0) : max(top, 0) + src.shape[2], max(left, 0) : max(left, 0) + src.shape[3]] = src
    cols = np.empty((B, Ho, Wo, Cin, kh, kw), dtype=np.float32)
    if cols.size == 0:  # the slices below would count a negative stop from the end
        return cols.reshape(B * Ho * Wo, Cin * kh * kw)
    for ky in range(kh):
        for kx in range(kw):
            y0, x0 = ky * dh, kx * dw
            patch = padded[:, :, y0 : y0 + (Ho - 1) * sh + 1 : sh, x0 : x0 + (Wo - 1) * sw + 1 : sw]
            cols[:, :, :, :, ky, kx] = patch.transpose(0, 2, 3, 1)
    return cols.reshape(B * Ho * Wo, Cin * kh * kw)


def _conv_codes(X, codes_rows, geometry) -> np.ndarray:
    B, _, H, W = np.shape(X)
    _, Ho, Wo = conv_pads(H, W, **geometry)
    return codes_rows.reshape(B, Ho, Wo, codes_rows.shape[1])


def encode_tree_conv(X, split_dims, thresholds, **geometry) -> np.ndarray:
    """HalutEncodeTreeConv: codes (uint8, B x Ho x Wo x C) = encode_tree(im2col(X)); geometry as ``im2col``."""
    return _conv_codes(X, encode_tree(im2col(X, **geometry), split_dims, thresholds), geometry)


def encode_pq_conv(X, vectors, biases, **geometry) -> np.ndarray:
    """HalutEncodePQConv: codes (uint8, B x Ho x Wo x C) = encode_pq(im2col(X)); geometry as ``im2col``."""
    return _conv_codes(X, encode_pq(im2col(X, **geometry), vectors, biases), geometry)


def lookup_conv(codes: np.ndarray, lut_q, scale, offset) -> np.ndarray:
    """HalutLookupConv: Y (float32, B x M x Ho x Wo) with ``Y[b, :, oy, ox] = lookup(codes[b, oy, ox])``."""
    B, Ho, Wo, C = codes.shape
    Y = lookup(codes.reshape(-1, C), lut_q, scale, offset)
    return np.ascontiguousarray(Y.reshape(B, Ho, Wo, lut_q.shape[0]).transpose(0, 3, 1, 2))
