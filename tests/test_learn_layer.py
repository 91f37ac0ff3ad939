"""learn_layer end to end: error bounds on structured data, determinism, the report, and every bad input."""

import re

import numpy as np
import pytest

from halut_onnx import reference
from halut_onnx.learn import HalutLayer, LearnOptions, LearnReport, RowSources, learn_layer
from halut_onnx.learn.layer import split_rows

ENCODERS = ["tree", "pq"]


def clustered(rng, N, C, width, sigma):
    """Each codebook's slice holds one of 16 states (a 4-bit pattern x 10 in its first 4 columns) plus noise."""
    bits = rng.integers(0, 2, size=(N, C, 4)) * 10.0
    S = np.concatenate([bits, np.zeros((N, C, width - 4))], axis=2).reshape(N, C * width)
    return S, (S + sigma * rng.standard_normal(S.shape)).astype(np.float32)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_clustered_data_reaches_the_noise_floor(rng, encoder):
    # With codes that identify each slice's state, sum_c LUT[c, code] reproduces S W exactly, so what is left is
    # the noise sigma Z W (expected ||.||^2 = N sigma^2 ||W||_F^2), inflated by the estimation error of 16C
    # unknowns per output from N_train rows (factor 1 + 16C / N_train). Bound: 1.5x that prediction.
    N, C, width, M, sigma = 4000, 6, 6, 12, 0.5
    S, A = clustered(rng, N, C, width, sigma)
    W = rng.standard_normal((C * width, M)).astype(np.float32)
    bias = rng.standard_normal(M).astype(np.float32) * 5
    layer = learn_layer(A, W, bias, LearnOptions(codebooks=C, encoder=encoder))
    r = layer.report
    Y = A @ W + bias
    predicted = N * sigma**2 * float((W.astype(np.float64) ** 2).sum()) / float((Y.astype(np.float64) ** 2).sum())
    predicted *= 1 + 16 * C / r.rows_train
    assert r.heldout_nmse < 1.5 * predicted
    assert r.heldout_nmse_int8 < 1.5 * predicted
    assert r.train_nmse < 1.5 * predicted
    # The codes recover the states: each (codebook, code) holds one pattern.
    codes = layer.encode(A)
    pattern = (S.reshape(N, C, width)[:, :, :4] > 5) @ np.array([8, 4, 2, 1])
    for c in range(C):
        assert len(set(zip(codes[:, c], pattern[:, c]))) == 16


@pytest.mark.parametrize("encoder", ENCODERS)
def test_low_rank_plus_noise_bound(encoder):
    # Rank-4 inputs + noise (D=48, C=8 slices of 6 columns). Measured held-out NMSE over seeds 0..2: tree
    # 0.080-0.085, pq 0.056-0.080. The bound 0.12 leaves ~1.4x margin; a broken split search, k-means or ridge
    # lands far above it (a LUT from code means alone, without the ridge, gives > 0.3 here).
    rng = np.random.default_rng(0)
    N, D, M, rank = 3000, 48, 16, 4
    A = (rng.standard_normal((N, rank)) @ rng.standard_normal((rank, D)) + 0.3 * rng.standard_normal((N, D)))
    A = A.astype(np.float32)
    W = rng.standard_normal((D, M)).astype(np.float32)
    r = learn_layer(A, W, None, LearnOptions(codebooks=8, encoder=encoder)).report
    assert r.heldout_nmse < 0.12
    assert r.heldout_nmse_int8 < r.heldout_nmse * 1.01
    assert r.train_nmse < r.heldout_nmse  # fitted on the training rows


@pytest.mark.parametrize("encoder", ENCODERS)
def test_layer_arrays_and_forward(rng, encoder):
    N, D, M, C = 600, 21, 5, 4  # D % C != 0
    A = rng.standard_normal((N, D)).astype(np.float32)
    W = rng.standard_normal((D, M)).astype(np.float32)
    layer = learn_layer(A, W, None, LearnOptions(codebooks=C, encoder=encoder))
    assert isinstance(layer, HalutLayer) and isinstance(layer.report, LearnReport)
    assert (layer.encoder, layer.D, layer.M, layer.C) == (encoder, D, M, C)
    assert layer.lut.dtype == np.float32 and layer.lut.shape == (M, C, 16)
    assert layer.lut_q.dtype == np.int8 and layer.lut_q.shape == (M, C, 16)
    assert layer.lut_bias.shape == layer.scale.shape == layer.offset.shape == (M,)
    assert layer.scale.dtype == layer.offset.dtype == np.float32
    if encoder == "tree":
        assert layer.split_dims.dtype == np.int64 and layer.split_dims.shape == (C, 4)
        assert layer.thresholds.dtype == np.float32 and layer.thresholds.shape == (C, 15)
        assert layer.pq_vectors is None and layer.pq_biases is None
        # split dims stay inside their codebook's slice
        b = reference.slice_bounds(D, C)
        assert ((layer.split_dims >= b[:-1, None]) & (layer.split_dims < b[1:, None])).all()
    else:
        assert layer.pq_vectors.dtype == np.float32 and layer.pq_vectors.shape == (16, D)
        assert layer.pq_biases.dtype == np.float32 and layer.pq_biases.shape == (C, 16)
        assert layer.split_dims is None and layer.thresholds is None
    codes = layer.encode(A[:50])
    expected = (reference.encode_tree(A[:50], layer.split_dims, layer.thresholds) if encoder == "tree"
                else reference.encode_pq(A[:50], layer.pq_vectors, layer.pq_biases))
    np.testing.assert_array_equal(codes, expected)
    np.testing.assert_array_equal(layer.forward(A[:50]),
                                  reference.lookup(codes, layer.lut_q, layer.scale, layer.offset))
    np.testing.assert_array_equal(layer.forward(A[:50], quantized=False),
                                  reference.lookup_float(codes, layer.lut, layer.lut_bias))
    with pytest.raises(ValueError, match=re.escape(f"X must have shape (rows, {D}); found (3, {D + 1})")):
        layer.forward(np.zeros((3, D + 1), dtype=np.float32))


def _nmse(layer, A, W, rows, quantized):
    Y = A[rows] @ W
    return float(((layer.forward(A[rows], quantized) - Y) ** 2).sum() / (Y.astype(np.float64) ** 2).sum())


@pytest.mark.parametrize("M", [6, 40])
def test_report_measures_the_lut_fit_on_the_training_rows(rng, M):
    # M=6 < D fits the outputs, M=40 > D the inputs mapped through W (lut.CodeStats): both must report the truth.
    # The report describes the LUT fit on the training rows alone (the returned one is refit on all rows). Trees
    # learn deterministically from their rows, so learning on the training rows with no held-out rows and the
    # reported ridge rebuilds that LUT.
    N, D = 1000, 16
    A = rng.standard_normal((N, D)).astype(np.float32)
    W = rng.standard_normal((D, M)).astype(np.float32)
    r = learn_layer(A, W, None, LearnOptions(codebooks=4, encoder="tree", seed=3)).report
    assert (r.rows_train, r.rows_heldout) == (800, 200)
    perm = np.random.default_rng(3).permutation(N)
    held, train = np.sort(perm[:200]), np.sort(perm[200:])
    on_train = learn_layer(A[train], W, None, LearnOptions(codebooks=4, encoder="tree", ridge=r.ridge,
                                                            heldout_fraction=0))
    assert r.heldout_nmse == pytest.approx(_nmse(on_train, A, W, held, False), rel=1e-5)
    assert r.heldout_nmse_int8 == pytest.approx(_nmse(on_train, A, W, held, True), rel=1e-5)
    assert r.train_nmse == pytest.approx(_nmse(on_train, A, W, train, False), rel=1e-4)
    assert r.warnings == []


@pytest.mark.parametrize("encoder,M", [("tree", 6), ("pq", 6), ("tree", 40), ("pq", 40)])
def test_lut_is_refit_on_all_rows_with_the_chosen_ridge(rng, encoder, M):
    # Independent reference: centred ridge regression of Y on the one-hot codes of every row (train and held-out),
    # intercept unpenalised, at the ridge the held-out rows chose.
    N, D, C = 1000, 16, 4
    A = rng.standard_normal((N, D)).astype(np.float32)
    W = rng.standard_normal((D, M)).astype(np.float32)
    layer = learn_layer(A, W, None, LearnOptions(codebooks=C, encoder=encoder, seed=3))
    codes = layer.encode(A)
    phi = np.zeros((N, 16 * C))
    phi[np.arange(N)[:, None], np.arange(C) * 16 + codes] = 1.0
    Y = A.astype(np.float64) @ W
    phi_mean, y_mean = phi.mean(0), Y.mean(0)
    pc = phi - phi_mean
    lut = np.linalg.solve(pc.T @ pc + layer.report.ridge * np.eye(16 * C), pc.T @ (Y - y_mean))
    expected = phi @ lut + (y_mean - phi_mean @ lut)
    np.testing.assert_allclose(layer.forward(A, quantized=False), expected, rtol=0, atol=1e-4 * np.abs(Y).max())


@pytest.mark.parametrize("encoder", ENCODERS)
def test_deterministic_for_a_seed(rng, encoder):
    A = rng.standard_normal((700, 20)).astype(np.float32)
    W = rng.standard_normal((20, 7)).astype(np.float32)
    runs = [learn_layer(A, W, None, LearnOptions(codebooks=5, encoder=encoder, seed=11)) for _ in range(2)]
    for name in ["split_dims", "thresholds", "pq_vectors", "pq_biases", "lut", "lut_bias", "lut_q", "scale",
                 "offset"]:
        a, b = getattr(runs[0], name), getattr(runs[1], name)
        if a is None:
            assert b is None
        else:
            np.testing.assert_array_equal(a, b)
    assert runs[0].report == runs[1].report
    other = learn_layer(A, W, None, LearnOptions(codebooks=5, encoder=encoder, seed=12))
    assert not np.array_equal(other.lut, runs[0].lut)


def test_encoder_learns_from_a_seeded_sample_of_the_training_rows(rng):
    """encoder_rows caps the rows the trees are learned from (the sample learn_layer draws after its split); the LUT
    still fits on every training row, so its training error is measured over all of them."""
    from halut_onnx.learn.layer import heldout_rows
    from halut_onnx.learn.tree import learn_trees

    A = rng.standard_normal((900, 12)).astype(np.float32)
    W = rng.standard_normal((12, 5)).astype(np.float32)
    options = LearnOptions(codebooks=3, encoder="tree", seed=5, encoder_rows=100)
    layer = learn_layer(A, W, None, options)
    # learn_layer's draws: the split permutation, then the sample of the training rows
    draws = np.random.default_rng(options.seed)
    perm = draws.permutation(len(A))
    train = A[np.sort(perm[heldout_rows(len(A), options.heldout_fraction):])]
    sample = train[np.sort(draws.choice(len(train), options.encoder_rows, replace=False))]
    dims, thresholds = learn_trees(sample, reference.slice_bounds(12, 3), options.tree_candidates)
    np.testing.assert_array_equal(layer.split_dims, dims)
    np.testing.assert_array_equal(layer.thresholds, thresholds)
    assert layer.report.rows_train == len(train)
    everything = learn_layer(A, W, None, LearnOptions(codebooks=3, encoder="tree", seed=5, encoder_rows=0))
    dims_all, _ = learn_trees(train, reference.slice_bounds(12, 3), options.tree_candidates)
    np.testing.assert_array_equal(everything.split_dims, dims_all)
    assert not np.array_equal(everything.thresholds, layer.thresholds)


def test_fixed_ridge_and_no_heldout(rng):
    A = rng.standard_normal((300, 8)).astype(np.float32)
    W = rng.standard_normal((8, 3)).astype(np.float32)
    r = learn_layer(A, W, None, LearnOptions(codebooks=2, ridge=2.5, heldout_fraction=0.0)).report
    assert (r.rows_train, r.rows_heldout, r.ridge) == (300, 0, 2.5)
    assert np.isnan(r.heldout_nmse) and np.isnan(r.heldout_nmse_int8) and np.isfinite(r.train_nmse)


def test_few_rows_warn_and_heldout_raises_lambda(rng):
    # 16C = 256 LUT entries per output from 120 training rows: underdetermined, so held-out selection must pick a
    # large lambda and the report must warn with the minimum.
    A = rng.standard_normal((150, 32)).astype(np.float32)
    W = rng.standard_normal((32, 4)).astype(np.float32)
    r = learn_layer(A, W, None, LearnOptions(codebooks=16, encoder="tree")).report
    assert r.rows_train == 120
    assert len(r.warnings) == 1
    assert r.warnings[0].startswith("only 120 training rows for 256 LUT entries per output (16 x C=16)")
    assert "use at least 256 training rows" in r.warnings[0]
    assert r.train_nmse < r.heldout_nmse
    many = learn_layer(np.tile(A, (20, 1)) + rng.standard_normal((3000, 32)).astype(np.float32) * 0.01, W, None,
                       LearnOptions(codebooks=16, encoder="tree")).report
    assert r.ridge > many.ridge


A_OK = np.zeros((100, 8), dtype=np.float32)
W_OK = np.ones((8, 3), dtype=np.float32)


@pytest.mark.parametrize(
    "A,W,bias,options,message",
    [
        (A_OK[0], W_OK, None, LearnOptions(), "A must be 2-D (rows, D); found 1-D with shape (8,)"),
        (A_OK, W_OK[0], None, LearnOptions(), "W must be 2-D (D, M); found 1-D with shape (3,)"),
        (A_OK.astype(np.int32), W_OK, None, LearnOptions(), "A must be a floating-point array; found dtype int32"),
        (A_OK, W_OK.astype(bool), None, LearnOptions(), "W must be a floating-point array; found dtype bool"),
        (A_OK, W_OK[:7], None, LearnOptions(codebooks=2),
         "W must have shape (8, M) to match A's 8 columns; found (7, 3)"),
        (A_OK, W_OK[:, :0], None, LearnOptions(codebooks=2),
         "W must have at least one output column; found shape (8, 0)"),
        (A_OK, W_OK, np.zeros(4, np.float32), LearnOptions(codebooks=2),
         "bias must have shape (3,) to match W's 3 columns; found (4,)"),
        (A_OK, W_OK, np.zeros((3, 1), np.float32), LearnOptions(codebooks=2),
         "bias must be 1-D (M,); found 2-D with shape (3, 1)"),
        (np.where(np.eye(100, 8) > 0, np.nan, A_OK), W_OK, None, LearnOptions(codebooks=2),
         "A has 8 non-finite values (NaN or inf); expected finite values only"),
        (A_OK, np.full((8, 3), np.inf, np.float32), None, LearnOptions(codebooks=2),
         "W has 24 non-finite values (NaN or inf); expected finite values only"),
        (A_OK, W_OK, np.array([0, np.nan, 0], np.float32), LearnOptions(codebooks=2),
         "bias has 1 non-finite values (NaN or inf); expected finite values only"),
        (A_OK, W_OK, None, LearnOptions(codebooks=9), "codebooks must be in 1..D=8 (D = A's columns); found 9"),
        (A_OK, W_OK, None, LearnOptions(codebooks=0), "codebooks must be in 1..D=8 (D = A's columns); found 0"),
        (A_OK, W_OK, None, LearnOptions(codebooks=2, encoder="kmeans"),
         "encoder must be one of 'tree', 'pq'; found 'kmeans'"),
        (A_OK, W_OK, None, LearnOptions(codebooks=2, heldout_fraction=1.0),
         "heldout_fraction must be in [0, 1); found 1.0"),
        (A_OK, W_OK, None, LearnOptions(codebooks=2, ridge=0.0),
         "ridge must be > 0 (the one-hot Gram matrix is singular without it) or None; found 0.0"),
        (A_OK, W_OK, None, LearnOptions(codebooks=2, heldout_fraction=0.0),
         "ridge=None picks lambda on held-out rows, but heldout_fraction=0 leaves none; give ridge or "
         "heldout_fraction > 0"),
        (A_OK, W_OK, None, LearnOptions(codebooks=2, encoder_rows=-1),
         "encoder_rows must be >= 0 (0 = all training rows); found -1"),
        (A_OK, W_OK, None, LearnOptions(codebooks=2, kmeans_iters=0),
         "kmeans_iters, tree_candidates and ridge_points must be >= 1; found 0, 4, 43"),
        (A_OK[:19], W_OK, None, LearnOptions(codebooks=2),
         "A has 19 rows; learning needs at least 20 rows (16 training rows for 16 prototypes per codebook, after "
         "holding out heldout_fraction=0.2)"),
    ],
)
def test_bad_input_messages(A, W, bias, options, message):
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        learn_layer(A, W, bias, options)


def test_split_keeps_noisy_copies_of_heldout_rows_out_of_training():
    # 50 real rows, each with 3 noisy copies, plus 10 copies whose real row the sample does not hold (sample 99).
    sample = np.concatenate([np.arange(50), np.repeat(np.arange(50), 3), np.full(10, 99)])
    noisy = np.arange(len(sample)) >= 50
    held, train = split_rows(len(sample), 0.2, np.random.default_rng(0), RowSources(sample, noisy))
    assert len(held) == 10 and not noisy[held].any()  # a fifth of the real rows, real ones only
    held_samples = set(sample[held].tolist())
    assert not held_samples & set(sample[train].tolist())
    expected_train = [i for i in range(len(sample)) if sample[i] not in held_samples]
    np.testing.assert_array_equal(train, expected_train)  # every other row, the 10 orphan copies included
    # without sources: a plain seeded permutation split, as before
    held, train = split_rows(200, 0.2, np.random.default_rng(0))
    perm = np.random.default_rng(0).permutation(200)
    np.testing.assert_array_equal(held, np.sort(perm[:40]))
    np.testing.assert_array_equal(train, np.sort(perm[40:]))


def test_sources_must_match_the_rows(rng):
    A = rng.standard_normal((100, 8)).astype(np.float32)
    W = rng.standard_normal((8, 3)).astype(np.float32)
    sources = RowSources(np.arange(99), np.zeros(99, bool))
    with pytest.raises(ValueError, match=re.escape("sources must have one entry per row of A (100); found 99")):
        learn_layer(A, W, None, LearnOptions(codebooks=2), sources=sources)
    with pytest.raises(ValueError, match=re.escape("sources: sample and noisy must be 1-D of one length")):
        RowSources(np.arange(5), np.zeros(4, bool))


def _with_copies(n, copies, noise, D=16, M=6, seed=0):
    """``n`` real rows of rank-4 data, then ``copies`` noisy copies of each (noise as a share of each column's
    standard deviation, as --augment does), with their RowSources."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, 4)) @ rng.standard_normal((4, D)) + 0.2 * rng.standard_normal((n, D))
    X = np.concatenate([A] + [A + noise * A.std(0) * rng.standard_normal(A.shape) for _ in range(copies)])
    sources = RowSources(np.tile(np.arange(n), copies + 1), np.arange(len(X)) >= n)
    return X.astype(np.float32), rng.standard_normal((D, M)).astype(np.float32), sources


def _ridge_outputs(layer, A, W, rows):
    """An independent reference for the shipped float LUT: centred ridge regression of A W on the one-hot codes of
    ``rows`` at the report's ridge, evaluated on every row of A."""
    C = layer.C
    codes = layer.encode(A)
    phi = np.zeros((len(A), 16 * C))
    phi[np.arange(len(A))[:, None], np.arange(C) * 16 + codes] = 1.0
    Y = A.astype(np.float64) @ W
    p, y = phi[rows], Y[rows]
    pc = p - p.mean(0)
    lut = np.linalg.solve(pc.T @ pc + layer.report.ridge * np.eye(16 * C), pc.T @ (y - y.mean(0)))
    return phi @ lut + (y.mean(0) - p.mean(0) @ lut)


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("noise,kept", [(0.1, True), (3.0, False)])
def test_try_without_copies_keeps_the_fit_with_the_lower_heldout_error(encoder, noise, kept):
    # 300 real rows for 256 LUT entries, 8 copies each. Copies at --augment's noise (0.1) help: held-out int8 NMSE
    # 0.029-0.037 with them against 0.055-0.078 without (pq, seeds 0-4; tree 0.040-0.052 / 0.061-0.073). Copies 30x
    # noisier mislead.
    X, W, sources = _with_copies(300, 8, noise, D=32)
    options = LearnOptions(codebooks=16, encoder=encoder, seed=2)
    tried = learn_layer(X, W, None, LearnOptions(**{**options.__dict__, "try_without_copies": True}), sources=sources)
    plain = learn_layer(X, W, None, options, sources=sources)
    r = tried.report
    assert (r.copies, plain.report.copies, plain.report.other_nmse_int8) == (kept, True, None)
    assert r.heldout_nmse_int8 < r.other_nmse_int8
    real = ~sources.noisy
    if kept:  # the same learning as without the trial (its draws come first)
        assert r == LearnReport(**{**plain.report.__dict__, "other_nmse_int8": r.other_nmse_int8})
        np.testing.assert_array_equal(tried.lut_q, plain.lut_q)
        assert r.rows_train == 2160  # 240 real training rows and their 1920 copies
    else:
        assert r.other_nmse_int8 == plain.report.heldout_nmse_int8
        assert r.rows_train == 240
    # the LUT shipped is refit on every row it may use: all of them with the copies, the real ones without
    np.testing.assert_allclose(tried.forward(X, quantized=False), _ridge_outputs(tried, X, W, slice(None) if kept
                                                                                 else real),
                               rtol=0, atol=1e-4 * np.abs(X @ W).max())


def test_try_without_copies_needs_copies_and_heldout_rows(rng):
    X, W, sources = _with_copies(100, 2, 0.1)
    options = LearnOptions(codebooks=4, try_without_copies=True)
    assert learn_layer(X[:100], W, None, options).report.other_nmse_int8 is None  # no sources
    real_only = RowSources(sources.sample[:100], sources.noisy[:100])
    assert learn_layer(X[:100], W, None, options, sources=real_only).report.other_nmse_int8 is None
    no_heldout = LearnOptions(codebooks=4, try_without_copies=True, ridge=1.0, heldout_fraction=0.0)
    assert learn_layer(X, W, None, no_heldout, sources=sources).report.other_nmse_int8 is None
