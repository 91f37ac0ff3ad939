"""Learning the Halut replacement of one linear layer: options, result types and the orchestration.

Stages: split the calibration rows into train / held-out (seeded), learn the encoder on the training rows, encode
both sets, fit the float LUT by ridge regression on the layer's true outputs ``Y = A W + b`` (lambda chosen on the
held-out rows unless given), quantize it to int8, measure train / held-out NMSE through the reference ops, then fit
the LUT again on all rows with that lambda and quantize it for the model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .. import reference
from ..ops import NUM_CODES
from .lut import (add_stats, fit_ridge, linear_code_stats, lookup_float, lookup_int8, quantize_lut, ridge_grid,
                  rows_layout)
from .pq import encode_pq, learn_pq
from .tree import encode_trees, learn_trees

log = logging.getLogger(__name__)

ENCODERS = ("tree", "pq")
MIN_TRAIN_ROWS = NUM_CODES  # k-means needs 16 rows for 16 prototypes; a tree needs as many to fill its leaves


@dataclass(frozen=True)
class LearnOptions:
    """How to learn one layer. Defaults in one place; the CLI maps its flags one to one onto these fields."""

    codebooks: int = 32  # C, 1 <= C <= D
    encoder: str = "pq"  # "tree" (MADDNESS, 4 comparisons per codebook) or "pq" (output-metric prototypes)
    ridge: float | None = None  # None: pick lambda on the held-out rows
    heldout_fraction: float = 0.2
    seed: int = 0
    kmeans_iters: int = 25  # pq: Lloyd iterations at most (stops earlier once no assignment changes)
    # the encoder (trees or k-means) learns from at most this many training rows, a seeded sample (0 = all); the LUT
    # fits on all of them. On PP-OCR rec's convs at 65536 rows the trees' held-out NMSE moved by -0.5..+1.8 % for half
    # the encoder time (docs/learning.md).
    encoder_rows: int = 16384
    tree_candidates: int = 4  # tree: columns tried per level, highest within-bucket SSE first
    ridge_points: int = 43  # ridge=None: lambdas tried, 6 per decade (see lut.ridge_grid)
    # with noisy copies among the rows (--augment auto): learn again from the real rows alone and keep the one with
    # the lower int8 held-out NMSE (both measured on the same real held-out rows)
    try_without_copies: bool = False


@dataclass
class LearnReport:
    rows_train: int
    rows_heldout: int
    ridge: float
    train_nmse: float  # float LUT, training rows: ||Y - Yhat||^2 / ||Y||^2
    heldout_nmse: float  # float LUT, held-out rows (nan without held-out rows)
    heldout_nmse_int8: float  # int8 LUT through the lookup op, held-out rows
    warnings: list[str] = field(default_factory=list)
    copies: bool | None = None  # learned from noisy copies too (None: there were none among the rows)
    other_nmse_int8: float | None = None  # try_without_copies: held-out int8 NMSE of the fit not kept


@dataclass
class _Fit:
    """One learning of the encoder and LUT from a set of training rows, measured on the held-out rows."""

    train: np.ndarray  # the training rows' indices
    encoder: tuple  # split_dims, thresholds, vectors, biases (tree's or pq's pair, the others None)
    encode: Callable[[np.ndarray], np.ndarray]
    stats: list  # CodeStats of the training and held-out rows (None without held-out rows)
    fit: object  # lut.RidgeFit
    q: object  # lut.QuantizedLUT
    train_nmse: float
    heldout_nmse: float
    heldout_nmse_int8: float


@dataclass
class HalutLayer:
    encoder: str
    D: int
    M: int
    C: int
    split_dims: np.ndarray | None  # int64 (C, 4), tree only
    thresholds: np.ndarray | None  # float32 (C, 15), tree only
    pq_vectors: np.ndarray | None  # float32 (16, D), pq only (folded, docs/ops.md HalutEncodePQ)
    pq_biases: np.ndarray | None  # float32 (C, 16), pq only
    lut: np.ndarray  # float32 (M, C, 16)
    lut_bias: np.ndarray  # float32 (M,): y = sum_c lut[m, c, code] + lut_bias[m]
    lut_q: np.ndarray  # int8 (M, C, 16)
    scale: np.ndarray  # float32 (M,)
    offset: np.ndarray  # float32 (M,): y = scale * sum_c lut_q[m, c, code] + offset (layer bias folded in)
    report: LearnReport

    def encode(self, X: np.ndarray) -> np.ndarray:
        """Codes (uint8, N x C) exactly as the encode op computes them (``halut_onnx.reference``; through its
        parallel numba twins, tested equal)."""
        X = _check_rows(X, self.D)
        if self.encoder == "tree":
            return encode_trees(X, self.split_dims, self.thresholds)
        return encode_pq(X, self.pq_vectors, self.pq_biases, reference.slice_bounds(self.D, self.C))

    def forward(self, X: np.ndarray, quantized: bool = True) -> np.ndarray:
        """Layer output (float32, N x M) through the reference ops: int8 lookup, or the float LUT."""
        codes = self.encode(X)
        if quantized:
            return reference.lookup(codes, self.lut_q, self.scale, self.offset)
        return reference.lookup_float(codes, self.lut, self.lut_bias)


def _check_rows(X: np.ndarray, D: int) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != D:
        raise ValueError(f"X must have shape (rows, {D}); found {X.shape}")
    return X.astype(np.float32, copy=False)


def _as_float_array(name: str, x, ndim: int, shape_text: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D {shape_text}; found {x.ndim}-D with shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name} must be a floating-point array; found dtype {x.dtype}")
    bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise ValueError(f"{name} has {bad} non-finite values (NaN or inf); expected finite values only")
    return x


def heldout_rows(rows: int, fraction: float) -> int:
    """Held-out rows for a fraction: rounded, at least 1 when the fraction is positive."""
    if fraction <= 0:
        return 0
    return max(1, int(round(rows * fraction)))


def min_rows(fraction: float) -> int:
    """Fewest calibration rows that leave MIN_TRAIN_ROWS training rows after the held-out split."""
    n = MIN_TRAIN_ROWS
    while n - heldout_rows(n, fraction) < MIN_TRAIN_ROWS:
        n += 1
    return n


@dataclass(frozen=True)
class RowSources:
    """Where each calibration row came from, when some are noisy copies of others (``--augment``): rows with the
    same ``sample`` are one real row and its copies."""

    sample: np.ndarray  # int64 (rows,): the calibration row (file, position in it) a row was computed from
    noisy: np.ndarray  # bool (rows,): a noisy copy, not the real row

    def __post_init__(self):
        if self.sample.shape != self.noisy.shape or self.sample.ndim != 1:
            raise ValueError(f"sources: sample and noisy must be 1-D of one length; found {self.sample.shape} "
                             f"and {self.noisy.shape}")


def split_rows(rows: int, fraction: float, rng: np.random.Generator,
               sources: RowSources | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(held-out, training) row indices, each ascending: a seeded random ``fraction`` of the rows held out.

    With ``sources`` the held-out rows are real rows only and their noisy copies are in neither set: a copy of a
    held-out row in training would let the held-out error (and the ridge chosen on it) see that row. Copies whose
    real row is not in the sample (the row cap) train.
    """
    perm = rng.permutation(rows)
    if sources is None:
        nh = heldout_rows(rows, fraction)
        return np.sort(perm[:nh]), np.sort(perm[nh:])
    real = perm[~sources.noisy[perm]]
    held = np.sort(real[: heldout_rows(len(real), fraction)])
    return held, np.nonzero(~np.isin(sources.sample, sources.sample[held]))[0]


def _validate(A, W, bias, options: LearnOptions, sources: RowSources | None):
    A = _as_float_array("A", A, 2, "(rows, D)")
    W = _as_float_array("W", W, 2, "(D, M)")
    rows, D = A.shape
    if W.shape[0] != D:
        raise ValueError(f"W must have shape ({D}, M) to match A's {D} columns; found {W.shape}")
    M = W.shape[1]
    if M < 1:
        raise ValueError(f"W must have at least one output column; found shape {W.shape}")
    if bias is not None:
        bias = _as_float_array("bias", bias, 1, "(M,)")
        if bias.shape != (M,):
            raise ValueError(f"bias must have shape ({M},) to match W's {M} columns; found {bias.shape}")
    if options.encoder not in ENCODERS:
        raise ValueError(f"encoder must be one of {', '.join(map(repr, ENCODERS))}; found {options.encoder!r}")
    C = options.codebooks
    if not isinstance(C, (int, np.integer)) or not 1 <= C <= D:
        raise ValueError(f"codebooks must be in 1..D={D} (D = A's columns); found {C}")
    if not 0 <= options.heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in [0, 1); found {options.heldout_fraction}")
    if options.ridge is not None and not (np.isfinite(options.ridge) and options.ridge > 0):
        raise ValueError(
            f"ridge must be > 0 (the one-hot Gram matrix is singular without it) or None; found {options.ridge}"
        )
    if options.ridge is None and options.heldout_fraction == 0:
        raise ValueError("ridge=None picks lambda on held-out rows, but heldout_fraction=0 leaves none; "
                         "give ridge or heldout_fraction > 0")
    if options.encoder_rows < 0:
        raise ValueError(f"encoder_rows must be >= 0 (0 = all training rows); found {options.encoder_rows}")
    if options.kmeans_iters < 1 or options.tree_candidates < 1 or options.ridge_points < 1:
        raise ValueError(
            "kmeans_iters, tree_candidates and ridge_points must be >= 1; found "
            f"{options.kmeans_iters}, {options.tree_candidates}, {options.ridge_points}"
        )
    need = min_rows(options.heldout_fraction)
    have = f"{rows} rows"
    if sources is not None:
        if sources.sample.shape != (rows,):
            raise ValueError(f"sources must have one entry per row of A ({rows}); found {sources.sample.shape[0]}")
        # copies cannot stand in for real rows here: they would be learned from a handful of samples, and the
        # held-out rows are real ones
        rows = int(np.count_nonzero(~sources.noisy))
        have = f"{rows} rows and {len(sources.noisy) - rows} noisy copies of them"
    if rows < need:
        raise ValueError(
            f"A has {have}; learning needs at least {need} rows ({MIN_TRAIN_ROWS} training rows for 16 prototypes "
            f"per codebook, after holding out heldout_fraction={options.heldout_fraction})"
        )
    return A.astype(np.float32, copy=False), W, bias


def _lut_table(fit, C: int, M: int) -> np.ndarray:
    """The float LUT of a RidgeFit in the ops' (M, C, 16) layout."""
    return np.ascontiguousarray(fit.lut.reshape(C, NUM_CODES, M).transpose(2, 0, 1), dtype=np.float32)


def _nmse(err: float, ss: float) -> float:
    if not np.isfinite(ss):
        return float("nan")
    return err / ss if ss > 0 else (0.0 if err == 0 else float("inf"))


def heldout_errors(A, codes, W32, b32, lut, lut_bias, q, chunk_elems: int = 1 << 24) -> dict[str, float]:
    """Squared errors of the float and int8 lookups against ``A W + b`` (and ``||Y||^2``), in row chunks; with
    ``lut`` None the float lookup is not measured (0).

    The lookups are the bit-exact numba twins of ``reference.lookup_float`` / ``reference.lookup`` (tested equal):
    wide layers (a classifier with 18k outputs) would take minutes through the numpy reference.
    """
    out = {"ss": 0.0, "float": 0.0, "int8": 0.0}
    step = max(1, chunk_elems // W32.shape[1])
    lut_t = None if lut is None else rows_layout(lut, np.float32)
    lut_q_t = rows_layout(q.lut_q, np.int8)
    for i in range(0, len(A), step):
        Y = A[i : i + step] @ W32 + b32
        c = codes[i : i + step]
        out["ss"] += float(np.sum(np.square(Y, dtype=np.float64)))
        if lut is not None:
            out["float"] += float(np.sum(np.square(lookup_float(c, lut_t, lut_bias) - Y, dtype=np.float64)))
        out["int8"] += float(np.sum(np.square(lookup_int8(c, lut_q_t, q.scale, q.offset) - Y, dtype=np.float64)))
    return out


def learn_layer(
    A: np.ndarray,
    W: np.ndarray,
    bias: np.ndarray | None = None,
    options: LearnOptions = LearnOptions(),
    progress: Callable[[str], None] | None = None,
    target_inputs: np.ndarray | None = None,
    sources: RowSources | None = None,
) -> HalutLayer:
    """Learn the Halut replacement of ``Y = A W + bias``.

    Parameters
    ----------
    A : (rows, D) floating calibration inputs of the layer.
    W : (D, M) floating weight.  bias : (M,) or None.
    options : LearnOptions.
    progress : called with the name of each stage as it starts ("split", "encoder", "encode", "lut", "quantize",
        "measure", "refit").
    target_inputs : (rows, D) or None. Sequential calibration: the original model's inputs of this layer, paired row
        by row with ``A`` (the inputs the already-converted layers before it produce). The encoder learns on ``A``,
        the LUT fits (and the report measures against) ``Y = target_inputs W + bias``. None: ``target_inputs = A``.
    sources : RowSources or None. Which rows are noisy copies of which (``--augment``): the held-out rows are then
        real rows whose copies the learning never sees (``split_rows``).

    The ridge is chosen on the held-out rows, and the report's train / held-out errors are those of the LUT fit on
    the training rows; the LUT returned is then fit again on all rows with that ridge (the held-out rows have told
    what they can: on the digits MLP, 1005 rows for 512-1024 LUT entries, the refit took the test-accuracy drop
    from 3.56 to 2.67 points, mean of 5 trained models; docs/learning.md).

    Raises ValueError naming the problem for bad shapes, dtypes, non-finite values, too few rows or bad options.
    Warnings (e.g. fewer training rows than LUT entries) are returned in ``report.warnings``, not logged: the
    caller knows which layer this is and says so (convert's notes, analyze's log).
    """
    A, W, bias = _validate(A, W, bias, options, sources)
    T = A
    if target_inputs is not None:
        T = _as_float_array("target_inputs", target_inputs, 2, "(rows, D)").astype(np.float32, copy=False)
        if T.shape != A.shape:
            raise ValueError(f"target_inputs must have A's shape {A.shape} (one row per row of A); found {T.shape}")
    step = progress or (lambda stage: None)
    rows, D = A.shape
    M = W.shape[1]
    C = int(options.codebooks)
    bounds = reference.slice_bounds(D, C)
    W32 = W.astype(np.float32, copy=False)
    b32 = np.zeros(M, dtype=np.float32) if bias is None else bias.astype(np.float32)

    step("split")
    rng = np.random.default_rng(options.seed)
    held, train = split_rows(rows, options.heldout_fraction, rng, sources)
    nh = len(held)
    A_h = A[held]
    T_h = A_h if T is A else T[held]

    def fit_on(train: np.ndarray) -> _Fit:
        A_tr = np.ascontiguousarray(A[train])
        T_tr = A_tr if T is A else np.ascontiguousarray(T[train])
        step("encoder")
        split_dims = thresholds = vectors = biases = None
        sample = A_tr
        if 0 < options.encoder_rows < len(A_tr):
            sample = A_tr[np.sort(rng.choice(len(A_tr), options.encoder_rows, replace=False))]
        if options.encoder == "tree":
            split_dims, thresholds = learn_trees(sample, bounds, options.tree_candidates)
        else:
            vectors, biases, _ = learn_pq(sample, W, bounds, options.kmeans_iters, rng)

        step("encode")

        def encode(X: np.ndarray) -> np.ndarray:
            if options.encoder == "tree":
                return encode_trees(X, split_dims, thresholds)
            return encode_pq(X, vectors, biases, bounds)

        codes_h = encode(A_h)
        step("lut")
        train_stats = linear_code_stats(encode(A_tr), T_tr, W32, b32)
        heldout_stats = linear_code_stats(codes_h, T_h, W32, b32) if nh else None
        ridges = (np.array([options.ridge]) if options.ridge is not None
                  else ridge_grid(train_stats, options.ridge_points))
        fit = fit_ridge(train_stats, heldout_stats, ridges, W, bias)

        step("quantize")
        q = quantize_lut(fit, C)

        step("measure")
        heldout_nmse = heldout_nmse_int8 = float("nan")
        if nh:
            sse = heldout_errors(T_h, codes_h, W32, b32, _lut_table(fit, C, M), fit.intercept.astype(np.float32), q)
            heldout_nmse, heldout_nmse_int8 = _nmse(sse["float"], sse["ss"]), _nmse(sse["int8"], sse["ss"])
        return _Fit(train, (split_dims, thresholds, vectors, biases), encode, [train_stats, heldout_stats], fit, q,
                    _nmse(fit.train_sse, fit.train_ss), heldout_nmse, heldout_nmse_int8)

    chosen = fit_on(train)
    without = None
    if options.try_without_copies and nh and sources is not None and sources.noisy[train].any():
        without = fit_on(train[~sources.noisy[train]])
        if without.heldout_nmse_int8 < chosen.heldout_nmse_int8:
            chosen, without = without, chosen
    copies_kept = sources is not None and bool(sources.noisy[chosen.train].any())
    split_dims, thresholds, vectors, biases = chosen.encoder
    fit, q = chosen.fit, chosen.q

    if nh:
        step("refit")
        # the rows in neither set: copies of held-out rows, and (learned without copies) every copy
        rest = np.setdiff1d(np.arange(rows), np.concatenate([held, chosen.train]), assume_unique=True)
        if not copies_kept and sources is not None:
            rest = rest[~sources.noisy[rest]]
        parts = list(chosen.stats)
        if len(rest):
            parts.append(linear_code_stats(chosen.encode(A[rest]), T[rest], W32, b32))
        fit = fit_ridge(add_stats(parts), None, np.array([fit.ridge]), W, bias)
        q = quantize_lut(fit, C)
    lut = _lut_table(fit, C, M)
    lut_bias = fit.intercept.astype(np.float32)
    nt, train_nmse = len(chosen.train), chosen.train_nmse
    heldout_nmse, heldout_nmse_int8 = chosen.heldout_nmse, chosen.heldout_nmse_int8

    warnings: list[str] = []
    unknowns = NUM_CODES * C
    if nt < unknowns:
        warnings.append(
            f"only {nt} training rows for {unknowns} LUT entries per output (16 x C={C}): the LUT is "
            f"underdetermined, the fit leans on the ridge penalty and may overfit (train NMSE {train_nmse:.3g}, "
            f"held-out {heldout_nmse:.3g}); "
            f"use at least {unknowns} training rows (several times more is better"
            + ("" if without else "; --augment feeds noisy copies of the calibration inputs")  # tried: no help
            + ") or fewer codebooks"
        )
    report = LearnReport(
        rows_train=nt,
        rows_heldout=nh,
        ridge=fit.ridge,
        train_nmse=train_nmse,
        heldout_nmse=heldout_nmse,
        heldout_nmse_int8=heldout_nmse_int8,
        warnings=warnings,
        copies=None if sources is None else copies_kept,
        other_nmse_int8=None if without is None else without.heldout_nmse_int8,
    )
    log.info("learned %s layer D=%d M=%d C=%d: %s", options.encoder, D, M, C, report)
    return HalutLayer(
        encoder=options.encoder,
        D=D,
        M=M,
        C=C,
        split_dims=split_dims,
        thresholds=thresholds,
        pq_vectors=vectors,
        pq_biases=biases,
        lut=lut,
        lut_bias=lut_bias,
        lut_q=q.lut_q,
        scale=q.scale,
        offset=q.offset,
        report=report,
    )
