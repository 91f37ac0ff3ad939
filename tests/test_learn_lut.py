"""Ridge fit of the LUT against an explicit one-hot least-squares solve, and the int8 quantization error."""

import numpy as np
import pytest

from halut_onnx import reference
from halut_onnx.learn.lut import (code_stats, fit_ridge, linear_code_stats, lookup_float, lookup_int8, quantize_lut,
                                  rows_layout)


def one_hot(codes):
    N, C = codes.shape
    Phi = np.zeros((N, 16 * C))
    Phi[np.arange(N)[:, None], np.arange(C) * 16 + codes] = 1.0
    return Phi


def explicit_ridge(codes, Y, lam):
    """Ridge with an unpenalised intercept: centre Phi and Y, solve the normal equations, recover the intercept."""
    Phi = one_hot(codes)
    phibar, mu = Phi.mean(axis=0), Y.mean(axis=0)
    Pc, Yc = Phi - phibar, Y - mu
    L = np.linalg.solve(Pc.T @ Pc + lam * np.eye(Phi.shape[1]), Pc.T @ Yc)
    return L, mu - phibar @ L


def test_code_stats_match_one_hot(rng):
    codes = rng.integers(0, 16, size=(300, 5)).astype(np.uint8)
    Y = rng.standard_normal((300, 70)).astype(np.float32)  # M > one column block
    st = code_stats(codes, Y)
    Phi = one_hot(codes)
    np.testing.assert_array_equal(st.gram, Phi.T @ Phi)
    np.testing.assert_array_equal(st.counts, Phi.sum(axis=0))
    np.testing.assert_allclose(st.phi_t, Phi.T @ Y.astype(np.float64), rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(st.tt, (Y.astype(np.float64) ** 2).sum(axis=0), rtol=1e-12)


@pytest.mark.parametrize("lam", [0.01, 1.0, 50.0])
def test_ridge_matches_explicit_solve(rng, lam):
    N, C, M = 400, 4, 3
    codes = rng.integers(0, 16, size=(N, C)).astype(np.uint8)
    codes[:, 2] = rng.integers(0, 5, size=N)  # unused codes: zero columns in Phi
    Y = (rng.standard_normal((N, M)) * 3 + 10).astype(np.float32)
    fit = fit_ridge(code_stats(codes, Y), None, np.array([lam]))
    L, intercept = explicit_ridge(codes, Y.astype(np.float64), lam)
    np.testing.assert_allclose(fit.lut, L, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(fit.intercept, intercept, rtol=1e-9)
    resid = Y - (one_hot(codes) @ L + intercept)
    assert fit.train_sse == pytest.approx(float((resid**2).sum()), rel=1e-8)
    assert fit.train_ss == pytest.approx(float((Y.astype(np.float64) ** 2).sum()), rel=1e-12)


def test_heldout_selection_matches_explicit_errors(rng):
    N, Nh, C, M = 300, 150, 6, 4
    codes = rng.integers(0, 16, size=(N + Nh, C)).astype(np.uint8)
    true = rng.standard_normal((16 * C, M))
    Y = (one_hot(codes) @ true + rng.standard_normal((N + Nh, M)) * 2.0 + 1.0).astype(np.float32)
    ridges = np.logspace(-2, 3, 11)
    fit = fit_ridge(code_stats(codes[:N], Y[:N]), code_stats(codes[N:], Y[N:]), ridges)
    errors = []
    for lam in ridges:
        L, b = explicit_ridge(codes[:N], Y[:N].astype(np.float64), lam)
        errors.append(float(((Y[N:] - one_hot(codes[N:]) @ L - b) ** 2).sum()))
    best = int(np.argmin(errors))
    assert 0 < best < len(ridges) - 1, "the noise level must make an interior lambda best"
    assert fit.ridge == ridges[best]
    assert fit.heldout_sse == pytest.approx(errors[best], rel=1e-8)


def test_input_space_fit_equals_output_space_fit(rng):
    # D < M: the statistics are taken of A and mapped through W. Same LUT, errors and norms as fitting Y directly.
    N, Nh, C, D, M = 500, 200, 3, 5, 40
    codes = rng.integers(0, 16, size=(N + Nh, C)).astype(np.uint8)
    A = (rng.standard_normal((N + Nh, D)) + one_hot(codes)[:, :D] * 3).astype(np.float32)
    W = rng.standard_normal((D, M)).astype(np.float32)
    bias = rng.standard_normal(M).astype(np.float32) * 4
    tr_in = linear_code_stats(codes[:N], A[:N], W, bias)
    ho_in = linear_code_stats(codes[N:], A[N:], W, bias)
    assert tr_in.space == "input"
    Y = A.astype(np.float64) @ W.astype(np.float64) + bias
    tr_out, ho_out = code_stats(codes[:N], Y[:N]), code_stats(codes[N:], Y[N:])
    ridges = np.logspace(-2, 3, 9)
    f_in = fit_ridge(tr_in, ho_in, ridges, W, bias)
    f_out = fit_ridge(tr_out, ho_out, ridges)
    assert f_in.ridge == f_out.ridge
    np.testing.assert_allclose(f_in.lut, f_out.lut, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(f_in.intercept, f_out.intercept, rtol=1e-5, atol=1e-5)
    for name in ["train_sse", "heldout_sse", "train_ss", "heldout_ss"]:
        assert getattr(f_in, name) == pytest.approx(getattr(f_out, name), rel=1e-5), name
    L, b = explicit_ridge(codes[:N], Y[:N], f_in.ridge)
    assert f_in.heldout_sse == pytest.approx(float(((Y[N:] - one_hot(codes[N:]) @ L - b) ** 2).sum()), rel=1e-5)
    assert f_in.heldout_ss == pytest.approx(float((Y[N:] ** 2).sum()), rel=1e-6)


@pytest.mark.parametrize("exact_limit", [1 << 30, 0])  # 0: the block-diagonal error model of very wide layers
def test_int8_lookup_close_to_float_and_unbiased(rng, exact_limit):
    N, C, M = 3000, 8, 20
    codes = rng.integers(0, 16, size=(N, C)).astype(np.uint8)
    true = rng.standard_normal((16 * C, M)) * rng.uniform(0.1, 10, size=M)  # columns of very different scales
    true[:16] *= 20  # one codebook with a much wider spread than the others
    Y = (one_hot(codes) @ true + rng.standard_normal((N, M))).astype(np.float32)
    fit = fit_ridge(code_stats(codes, Y), None, np.array([1.0]))
    q = quantize_lut(fit, C, exact_limit)
    assert q.lut_q.dtype == np.int8 and q.lut_q.shape == (M, C, 16)
    lut = fit.lut.reshape(C, 16, M).transpose(2, 0, 1).astype(np.float32)
    y_float = reference.lookup_float(codes, lut, fit.intercept.astype(np.float32)).astype(np.float64)
    y_int8 = reference.lookup(codes, q.lut_q, q.scale, q.offset).astype(np.float64)
    diff = y_int8 - y_float
    # Unbiased on the calibration codes: the mean error per column is float32 rounding only.
    assert np.all(np.abs(diff.mean(axis=0)) <= 1e-5 * np.abs(y_float).max(axis=0))
    # Rounding errors of C independent tables: about C * scale^2 / 12 per column; allow 2x.
    assert np.all((diff**2).mean(axis=0) <= 2 * C * q.scale.astype(np.float64) ** 2 / 12)
    # Grid shifts and coordinate descent must beat rounding each centred entry with the same scales.
    T = fit.lut.reshape(C, 16, M)
    centred = T - 0.5 * (T.max(axis=1) + T.min(axis=1))[:, None, :]
    plain_q = np.clip(np.rint(centred / q.scale.astype(np.float64)), -128, 127).astype(np.int8)
    plain_E = (plain_q * q.scale.astype(np.float64)).reshape(16 * C, M) - fit.lut
    plain_offset = (fit.intercept - fit.counts / N @ plain_E).astype(np.float32)
    plain = reference.lookup(codes, np.ascontiguousarray(plain_q.transpose(2, 0, 1)), q.scale, plain_offset)
    assert (diff**2).sum() < 0.9 * ((plain - y_float) ** 2).sum()
    # Relative to the signal: C * s^2 / 12 over the variance of 8 tables, one 20x wider, is about 1.2e-4.
    assert (diff**2).sum() / ((y_float - y_float.mean(axis=0)) ** 2).sum() < 2.5e-4


@pytest.mark.parametrize("N,C,M", [(300, 7, 33), (260, 5, 1100)])  # the second spans 3 column tiles, 2 row tiles
def test_fast_lookups_equal_reference(rng, N, C, M):
    codes = rng.integers(0, 16, size=(N, C)).astype(np.uint8)
    lut_q = rng.integers(-128, 128, size=(M, C, 16)).astype(np.int8)
    scale = (rng.random(M) * 0.01).astype(np.float32)
    offset = rng.standard_normal(M).astype(np.float32) * 100
    lut = rng.standard_normal((M, C, 16)).astype(np.float32) * 10
    np.testing.assert_array_equal(lookup_int8(codes, rows_layout(lut_q, np.int8), scale, offset),
                                  reference.lookup(codes, lut_q, scale, offset))
    np.testing.assert_array_equal(lookup_float(codes, rows_layout(lut, np.float32), offset),
                                  reference.lookup_float(codes, lut, offset))
    codes[:5] += 16  # only the low 4 bits count in the lookup op
    np.testing.assert_array_equal(lookup_int8(codes, rows_layout(lut_q, np.int8), scale, offset),
                                  reference.lookup(codes, lut_q, scale, offset))
