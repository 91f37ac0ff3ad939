"""halut_onnx.finetune: the torch form of a converted layer, its straight-through gradient, the int8 requantization,
and fine-tuning a chain of converted layers end to end."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch", reason="fine-tuning needs torch: pip install -e '.[test]'")

from budget_models import mlp3, write_files  # noqa: E402
from halut_models import retyped  # noqa: E402
from halut_onnx import reference  # noqa: E402
from halut_onnx.analyze import AnalyzeOptions, analyze, model_session  # noqa: E402
from halut_onnx.finetune import FinetuneOptions, _layer_module, _requantize, finetune  # noqa: E402
from halut_onnx.learn import LearnOptions, learn_layer  # noqa: E402
from halut_onnx.metrics import OutputComparison  # noqa: E402
from halut_onnx.options import ConvertOptions  # noqa: E402
from halut_onnx.passes import LayerCandidate, LayerRewrite, rewrite_model  # noqa: E402
from halut_onnx.passes.candidates import ConvGeometry  # noqa: E402

GEOMETRIES = {
    "matmul": None,
    "conv same_upper": ConvGeometry((2, 2), auto_pad="SAME_UPPER"),
    "conv strided": ConvGeometry((3, 3), strides=(2, 1), pads=(1, 0, 1, 2), dilations=(1, 2)),
    "conv1d strided": ConvGeometry((1, 3), strides=(1, 2), pads=(0, 1, 0, 2), conv1d=True),
}


def _layer(rng, encoder: str, geometry):
    """A learned layer, its candidate and its input (rows, or an NCHW / NCL batch for a conv)."""
    cin, M = 3, 5
    if geometry is None:
        X = rng.standard_normal((400, 12)).astype(np.float32)
        rows = X
    else:
        X = rng.standard_normal((4, cin, 11) if geometry.conv1d else (4, cin, 9, 11)).astype(np.float32)
        rows = reference.im2col(geometry.as_nchw(X), **geometry.kwargs())
    D = rows.shape[1]
    W = rng.standard_normal((D, M)).astype(np.float32)
    b = rng.standard_normal(M).astype(np.float32)
    layer = learn_layer(rows, W, b, LearnOptions(codebooks=4, encoder=encoder))
    cand = LayerCandidate(name="L", op_type="Conv" if geometry else "MatMul", input_name="a", output_name="y",
                          weight=W, bias=b, weight_name="W", conv=geometry)
    return layer, cand, X, rows


@pytest.mark.parametrize("encoder", ["pq", "tree"])
@pytest.mark.parametrize("kind", list(GEOMETRIES))
def test_layer_module_computes_the_float_lut_forward(rng, encoder, kind):
    layer, cand, X, rows = _layer(rng, encoder, GEOMETRIES[kind])
    module = _layer_module(cand, layer)
    with torch.no_grad():
        out = module(torch.from_numpy(X)).numpy()
    codes = module.last_codes.numpy()
    ref_codes = layer.encode(rows)
    # pq scores sum in another order than the op's: a near tie may go the other way, very rarely
    assert (codes == ref_codes).mean() >= (0.995 if encoder == "pq" else 1.0)
    expected = reference.lookup_float(codes.astype(np.uint8), layer.lut, layer.lut_bias)
    if cand.conv is not None:
        X4 = cand.conv.as_nchw(X)
        _, Ho, Wo = reference.conv_pads(X4.shape[2], X4.shape[3], **cand.conv.kwargs())
        expected = expected.reshape(X.shape[0], Ho, Wo, -1).transpose(0, 3, 1, 2)
        if cand.conv.conv1d:
            expected = expected[:, :, 0, :]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kind", list(GEOMETRIES))
def test_gradient_reaches_the_input_straight_through_the_original_layer(rng, kind):
    layer, cand, X, rows = _layer(rng, "pq", GEOMETRIES[kind])
    module = _layer_module(cand, layer)
    x = torch.from_numpy(X).requires_grad_(True)
    out = module(x)
    g = torch.from_numpy(rng.standard_normal(tuple(out.shape)).astype(np.float32))
    (out * g).sum().backward()
    # the gradient of the original layer's output <g, A W + b> with respect to its input A
    x_ref = torch.from_numpy(X).requires_grad_(True)
    W = torch.from_numpy(cand.weight)
    if cand.conv is None:
        linear = x_ref @ W
    else:
        x4 = cand.conv.as_nchw(x_ref)
        top, left, bottom, right = reference.conv_pads(x4.shape[2], x4.shape[3], **cand.conv.kwargs())[0]
        padded = torch.nn.functional.pad(x4, (left, right, top, bottom))
        kernel = W.T.reshape(W.shape[1], X.shape[1], *cand.conv.kernel_shape)
        linear = torch.nn.functional.conv2d(padded, kernel, stride=cand.conv.strides, dilation=cand.conv.dilations)
        g4 = cand.conv.as_nchw(g)
    (linear * (g if cand.conv is None else g4)).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), x_ref.grad.numpy(), rtol=1e-5, atol=1e-5)
    # and the LUT's gradient: each entry sums g over the rows whose code picks it
    codes = module.last_codes.numpy()
    g_rows = g.numpy() if cand.conv is None else g4.numpy().transpose(0, 2, 3, 1).reshape(-1, layer.M)
    expected = np.zeros((layer.C * 16, layer.M))
    for c in range(layer.C):
        np.add.at(expected, c * 16 + codes[:, c], g_rows)
    np.testing.assert_allclose(module.lut.grad.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_fake_quant_rounds_each_column_to_an_int8_grid_and_passes_the_gradient(rng):
    layer, cand, X, rows = _layer(rng, "pq", None)
    plain, rounded = _layer_module(cand, layer), _layer_module(cand, layer, fake_quant=True)
    T = rounded.table().detach().numpy().reshape(layer.C, 16, layer.M)
    L = layer.lut.transpose(1, 2, 0)  # (C, 16, M) as the module holds it
    mid = 0.5 * (L.max(axis=1, keepdims=True) + L.min(axis=1, keepdims=True))
    step = np.abs(L - mid).max(axis=(0, 1)) / 127
    units = (T - mid) / step
    np.testing.assert_allclose(units, np.round(units), atol=1e-3)  # on the grid
    assert np.abs(units).max() <= 127 + 1e-3 and np.abs(T - L).max() <= 0.5 * step.max() * (1 + 1e-5)
    x = torch.from_numpy(X)
    g = torch.from_numpy(rng.standard_normal((len(X), layer.M)).astype(np.float32))
    for module in (plain, rounded):
        (module(x) * g).sum().backward()
    np.testing.assert_allclose(rounded.lut.grad.numpy(), plain.lut.grad.numpy(), rtol=1e-6)


def test_requantize_keeps_the_float_lut_within_int8_error(rng):
    layer, cand, X, rows = _layer(rng, "pq", None)
    lut_rows = layer.lut.transpose(1, 2, 0).reshape(layer.C * 16, layer.M) * 1.5 + 0.1  # a changed table
    codes = layer.encode(rows)
    tuned = _requantize(layer, lut_rows, layer.lut_bias + 1, codes)
    assert tuned.lut_q.dtype == np.int8 and tuned.lut_q.shape == layer.lut_q.shape
    np.testing.assert_array_equal(tuned.pq_vectors, layer.pq_vectors)  # the encoder is kept
    float_out = reference.lookup_float(codes, tuned.lut, tuned.lut_bias)
    int8_out = reference.lookup(codes, tuned.lut_q, tuned.scale, tuned.offset)
    expected = 1.5 * reference.lookup_float(codes, layer.lut, layer.lut_bias) - 0.5 * layer.lut_bias + 1 + \
        0.1 * layer.C
    np.testing.assert_allclose(float_out, expected, rtol=1e-4, atol=1e-4)
    assert np.sum((int8_out - float_out) ** 2) / np.sum(float_out ** 2) < 1e-4


def test_layer_module_of_a_float16_layer_computes_in_float32_between_casts(rng):
    layer, cand, X, _ = _layer(rng, "tree", None)
    module = _layer_module(cand, layer)
    X16 = torch.from_numpy(X.astype(np.float16)).requires_grad_()
    out = module(X16)
    assert out.dtype == torch.float16
    with torch.no_grad():
        expected = module(X16.float()).half()
    np.testing.assert_array_equal(out.detach().numpy(), expected.numpy())
    out.float().sum().backward()
    assert X16.grad is not None and X16.grad.dtype == torch.float16 and X16.grad.abs().sum() > 0


def _chain(folder, dtype):
    """mlp3 in ``dtype`` with fc1 and fc2 converted at C=8: the second layer's input carries the first one's
    error."""
    rng = np.random.default_rng(0)
    onnx.save(retyped(mlp3(rng), dtype), folder / "m.onnx")
    write_files(folder / "calib", rng, files=10, rows=256)
    for path in (folder / "calib").iterdir():
        np.savez(path, x=np.load(path)["x"].astype(dtype))
    analysis = analyze(folder / "m.onnx", folder / "calib",
                       AnalyzeOptions(ConvertOptions(progress=False, include=("^fc1$", "^fc2$")), codebooks=(8,),
                                      encoders=("pq",), timing=False))
    plan = [analysis.candidates[n] for n in ("fc1", "fc2")]
    layers = {c.name: analysis.learned[(c.name, "pq C=8")] for c in plan}
    return analysis, plan, layers


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    return _chain(tmp_path_factory.mktemp("finetune"), np.float32)


def _written_nmse(analysis, plan, layers) -> float:
    model = rewrite_model(analysis.work, [LayerRewrite(c, layers[c.name], "") for c in plan])
    session = model_session(model)
    comparison = OutputComparison()
    for feed, ref in zip(analysis.evaluator.feeds, analysis.evaluator.reference):
        comparison.add(ref, session.run([analysis.metric_output], feed)[0])
    return comparison.nmse


def test_finetune_lowers_the_error_of_a_chain_on_held_out_files(chain):
    _check_finetune_lowers_the_error(*chain)


def test_finetune_lowers_the_error_of_a_float16_chain(tmp_path):
    """The same chain in float16: the graph replays in float16, the converted layers in float32 between casts."""
    analysis, plan, layers = _chain(tmp_path, np.float16)
    assert [c.dtype for c in plan] == [np.float16] * 2
    _check_finetune_lowers_the_error(analysis, plan, layers)


def _check_finetune_lowers_the_error(analysis, plan, layers):
    tuned, report = finetune(analysis.work, plan, layers, [f for _, f in analysis.learn_set],
                             analysis.evaluator.feeds, analysis.evaluator.reference, analysis.metric_output, "nmse",
                             FinetuneOptions(epochs=6, lr=1e-2, progress=False))
    before, after = _written_nmse(analysis, plan, layers), _written_nmse(analysis, plan, tuned)
    assert report.history[0][0] == 0 and len(report.history) == 7
    assert report.best_epoch > 0
    # measured 0.1009 -> 0.0971 (float LUTs, held-out files); the training loss falls by 15 %: with 1800
    # learn rows for 4096 LUT entries per layer, most of the gain does not carry to other data. Before the
    # learning refit each LUT on all its rows (train and held-out) it started from 0.1047 and ended at 0.0972: the
    # refit takes half of what fine-tuning gained, the end point is the same.
    assert report.after < 0.97 * report.before
    assert after < 0.97 * before  # the int8 model as written, same files
    assert abs(after - report.after) < 0.1 * report.after  # int8 costs little against the float LUTs
    assert report.after_int8 == pytest.approx(after, rel=0.02)  # the dequantized int8 tables score as written
    for c in plan:  # the encoders are kept
        np.testing.assert_array_equal(tuned[c.name].pq_vectors, layers[c.name].pq_vectors)


def test_finetune_keeps_the_layers_when_no_epoch_scores_better(chain):
    analysis, plan, layers = chain
    tuned, report = finetune(analysis.work, plan, layers, [f for _, f in analysis.learn_set],
                             analysis.evaluator.feeds, analysis.evaluator.reference, analysis.metric_output, "nmse",
                             FinetuneOptions(epochs=1, lr=50.0, progress=False))  # a step that ruins the tables
    assert report.best_epoch == 0 and report.after == report.before and report.after_int8 is None
    assert all(tuned[c.name] is layers[c.name] for c in plan)
