"""convert_model end to end on small models: structure, metadata, numbers against the numpy spec and the original."""

import hashlib
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from halut_models import IR_VERSION, OPSET, low_rank, make_model, mlp, write_calibration, zoo
from halut_onnx import __version__, reference
from halut_onnx.convert import ConvertOptions, convert_model
from halut_onnx.errors import ConversionError
from halut_onnx.library import session_options
from halut_onnx.learn import LearnOptions
from halut_onnx.selection import default_codebooks

FAST = dict(codebooks=4, max_rows=600, progress=False)


@pytest.fixture
def mlp_case(tmp_path, rng):
    model = mlp(rng)
    path = tmp_path / "mlp.onnx"
    onnx.save(model, path)
    data = low_rank(rng, (1100, 32))  # one distribution: 800 calibration rows, 300 held-out test rows
    calib = write_calibration(tmp_path / "calib", "x", data[:800], per_file=100)
    return path, calib, data[800:]


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _params(model, layer):
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {k.split(".halut.")[1]: v for k, v in inits.items() if k.startswith(f"{layer}.halut.")}


def _layer_ref(p, X):
    if "split_dims" in p:
        codes = reference.encode_tree(X, p["split_dims"], p["thresholds"])
    else:
        codes = reference.encode_pq(X, p["vectors"], p["biases"])
    return reference.lookup(codes, p["lut"], p["scale"], p["offset"])


def _mlp_ref(model, x):
    """The converted MLP in numpy: lookup(fc1) -> Relu -> lookup(fc2), parameters read from the model."""
    h = np.maximum(_layer_ref(_params(model, "fc1"), x), np.float32(0))
    return _layer_ref(_params(model, "fc2"), h)


def _nmse(y, ref):
    return float(np.sum((y - ref) ** 2) / np.sum(ref**2))


def test_convert_tree_mlp(mlp_case, tmp_path):
    path, calib, x = mlp_case
    before = _sha(path)
    out_path = tmp_path / "out.onnx"
    options = ConvertOptions(encoder="tree", **FAST)
    result = convert_model(path, calib, out_path, options)

    assert _sha(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib", "mlp.onnx", "out.onnx"]  # no temp file left
    assert [(r.name, r.op_type, r.status, r.bias_node, r.D, r.M, r.C) for r in result.layers] == [
        ("fc1", "MatMul", "converted", "fc1_bias", 32, 24, 4), ("fc2", "Gemm", "converted", None, 24, 10, 4)]
    assert all(r.rows_seen == 800 and r.rows_train + r.rows_heldout == 600 for r in result.layers)

    out = onnx.load(out_path)
    onnx.checker.check_model(out, full_check=True)
    assert out.ir_version == IR_VERSION
    assert {(o.domain, o.version) for o in out.opset_import} == {("", OPSET), ("ai.halut", 1)}
    assert [n.op_type for n in out.graph.node] == [
        "HalutEncodeTree", "HalutLookup", "Relu", "HalutEncodeTree", "HalutLookup"]
    doc = {n.name: n.doc_string for n in out.graph.node}["fc1/halut_lookup"]
    assert doc.startswith("Halut replacement of MatMul 'fc1' (B 'w1' [32, 24]) + Add 'fc1_bias' (bias folded): "
                          "D=32, M=24, C=4 codebooks, encoder=tree; learned on 600 calibration rows (480 train, "
                          "120 held out, 800 seen); held-out NMSE ")
    meta = {p.key: p.value for p in out.metadata_props}
    assert meta["halut.version"] == __version__
    assert json.loads(meta["halut.settings"]) == options.settings()
    assert [layer["name"] for layer in json.loads(meta["halut.layers"])] == ["fc1", "fc2"]
    assert json.loads(meta["halut.skipped"]) == []

    # The function fallback (no library) computes the spec exactly for trees and lookups.
    y = ort.InferenceSession(str(out_path)).run(None, {"x": x})[0]
    np.testing.assert_array_equal(y, _mlp_ref(out, x))
    # ... and approximates the original on held-out data of the same low-rank structure.
    y0 = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    assert _nmse(y, y0) < 0.05


def test_convert_pq_mlp(mlp_case, tmp_path):
    path, calib, x = mlp_case
    result = convert_model(path, calib, tmp_path / "out.onnx", ConvertOptions(encoder="pq", **FAST))
    out = result.model
    assert [n.op_type for n in out.graph.node if n.domain == "ai.halut"] == ["HalutEncodePQ", "HalutLookup"] * 2
    y = ort.InferenceSession(out.SerializeToString()).run(None, {"x": x})[0]
    ref = _mlp_ref(out, x)
    # The body's MatMul may flip a code at a rounding tie (rare): every other row is exact.
    rows_differ = np.any(y != ref, axis=1)
    assert rows_differ.mean() <= 0.01
    y0 = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    assert _nmse(y, y0) < 0.05


def test_convert_zoo_skips_with_reasons_and_passes_other_nodes(tmp_path, rng):
    model = zoo(rng)
    path = tmp_path / "zoo.onnx"
    onnx.save(model, path)
    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(6):
        np.savez(calib / f"{i}.npz", x=low_rank(rng, (4, 10, 32)), z=low_rank(rng, (20, 32)))
    result = convert_model(path, calib, tmp_path / "out.onnx", ConvertOptions(encoder="tree", **FAST))
    status = {r.name: r.reason or r.status for r in result.layers}
    assert status == {
        "fc3d": "converted", "k_proj": "converted", "attn": "input B is an activation (activation x activation product)",
        "fcz": "converted", "gemm_ta": "Gemm with transA=1 is not supported",
        "tiny": "D=4 is below --min-dim 16: too small to gain from a lookup",
    }
    # --augment auto: 240 and 120 rows for 64 LUT entries are under 4 an entry; copies to reach 8 an entry (2 and
    # 4), as many as the row cap (600) holds (1 and 4). On this low-rank data (rank 4 of 32 columns) the noise of one
    # copy adds directions the real rows lack: fc3d and k_proj do better on their held-out rows without it
    assert {r.name: (r.rows_seen, r.copies) for r in result.converted} == {
        "fc3d": (2 * 240, 0), "k_proj": (2 * 240, 0), "fcz": (5 * 120, 4)}
    notes = {r.name: r.notes[0] for r in result.converted}
    assert notes["fc3d"].startswith("240 calibration rows for 64 LUT entries per output: learned from them alone "
                                    "(--augment auto: held-out NMSE ")
    assert notes["fc3d"].endswith(" with 1 of each)")
    assert notes["fcz"].startswith("120 calibration rows for 64 LUT entries per output: learned from them and 4 "
                                   "noisy copies of each (--augment auto: held-out NMSE ")
    out = onnx.load(tmp_path / "out.onnx")
    assert {(o.domain, o.version) for o in out.opset_import} == {("", OPSET), ("ai.onnx.ml", 3), ("ai.halut", 1)}
    ops = [n.op_type for n in out.graph.node]
    assert ops.count("MatMul") == 2 and "Scaler" in ops and "Gemm" in ops
    skipped = json.loads({p.key: p.value for p in out.metadata_props}["halut.skipped"])
    assert [s["name"] for s in skipped] == ["attn", "gemm_ta", "tiny"]
    inferred = onnx.shape_inference.infer_shapes(out, strict_mode=True)
    assert all(o.type.tensor_type.HasField("shape") for o in inferred.graph.output)
    feed = {"x": low_rank(rng, (2, 10, 32)), "z": low_rank(rng, (5, 32))}
    got = ort.InferenceSession(str(tmp_path / "out.onnx")).run(None, feed)
    want = ort.InferenceSession(str(path)).run(None, feed)
    assert [g.shape for g in got] == [w.shape for w in want]


def test_include_exclude_and_codebooks_above_d(mlp_case, tmp_path):
    path, calib, _ = mlp_case
    result = convert_model(path, calib, None, ConvertOptions(include=("fc",), exclude=("2$",), codebooks=64,
                                                             max_rows=600, progress=False))
    fc1, fc2 = result.layers
    assert (fc1.status, fc1.C, fc1.notes[0]) == ("converted", 32, "-C 64 is more than D=32: C=D")
    # the learning warning (480 rows for 512 LUT entries) is kept: --augment auto adds no copies where the row cap
    # already binds (800 rows seen)
    assert "underdetermined" in fc1.notes[1] and fc1.copies == 0
    result = convert_model(path, calib, None, ConvertOptions(include=("fc1",), codebooks=32, progress=False))
    fc1 = result.layers[0]
    assert fc1.notes == ["800 calibration rows for 512 LUT entries per output: learned from them and 5 noisy "
                         "copies of each (--augment auto: held-out NMSE 0.004524 with the copies, 0.006367 without)"]
    assert fc1.heldout_nmse_int8 == pytest.approx(0.004524, rel=1e-3)
    assert (fc1.rows_seen, fc1.copies, fc1.rows_heldout, fc1.rows_train) == (6 * 800, 5, 160, 6 * 640)
    assert (fc2.status, fc2.reason) == ("skipped", "matched by --exclude '2$'")
    result = convert_model(path, calib, None, ConvertOptions(include=("fc1",), **FAST))
    assert result.layers[1].reason == "not matched by --include"


def test_memory_budget_splits_calibration_without_changing_the_result(mlp_case):
    path, calib, _ = mlp_case
    one = convert_model(path, calib, None, ConvertOptions(**FAST))
    split = convert_model(path, calib, None, ConvertOptions(memory_mb=1, **{**FAST, "max_rows": 5000}))
    again = convert_model(path, calib, None, ConvertOptions(memory_mb=1, **{**FAST, "max_rows": 5000}))
    assert [r.rows_seen for r in split.layers] == [800, 800]
    assert split.model.SerializeToString() == again.model.SerializeToString()  # seeded: same bytes
    assert one.model.graph.initializer[0].name  # the single-pass run converts too


def test_a_layer_with_a_high_error_gets_a_note(tmp_path, rng):
    """Full-rank inputs at C=4 leave fc1 with a large held-out error: the note says so with the figure; low-rank
    inputs (what a lookup learns well) get no such note."""
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp(rng), path)
    for name, data in (("low", low_rank(rng, (800, 32))), ("full", rng.standard_normal((800, 32)).astype(np.float32))):
        calib = write_calibration(tmp_path / name, "x", data, per_file=100)
        fc1 = convert_model(path, calib, None, ConvertOptions(include=("fc1",), **FAST)).layers[0]
        high = [n for n in fc1.notes if n.startswith("held-out NMSE")]
        if name == "low":
            assert fc1.heldout_nmse_int8 < 0.1 and not high, fc1.notes
        else:
            assert fc1.heldout_nmse_int8 > 0.1
            assert high == [f"held-out NMSE {fc1.heldout_nmse_int8:.3g}: above 0.1 a layer keeps too little of its "
                            "output for most models' end metrics; measure the model with `halut-onnx eval`, or "
                            "convert with --budget"]


def test_too_few_rows_skips_then_fails(tmp_path, rng):
    model = mlp(rng)
    path = tmp_path / "mlp.onnx"
    onnx.save(model, path)
    calib = write_calibration(tmp_path / "calib", "x", low_rank(rng, (10, 32)))
    # --augment auto gives the layers 8 copies of each row; they do not stand in for real rows
    with pytest.raises(ConversionError, match=r"^no layer of .*mlp.onnx could be converted: fc1: learning failed: "
                                              r"A has 10 rows and 80 noisy copies of them; learning needs at least "
                                              r"20 rows \(16 training rows"):
        convert_model(path, calib, tmp_path / "out.onnx", ConvertOptions(**FAST))
    with pytest.raises(ConversionError, match=r": fc1: learning failed: A has 10 rows; learning needs at least 20"):
        convert_model(path, calib, tmp_path / "out.onnx", ConvertOptions(**FAST, augment=0))
    assert not (tmp_path / "out.onnx").exists()


def test_user_errors(mlp_case, tmp_path, rng):
    path, calib, _ = mlp_case
    with pytest.raises(ConversionError) as err:
        convert_model(path, calib, path, ConvertOptions(**FAST))
    assert str(err.value) == f"the output path {path} is the input model; write the output elsewhere"
    q = helper.make_tensor_value_info("q", TensorProto.FLOAT, ["N", 8])
    k = helper.make_tensor_value_info("k", TensorProto.FLOAT, [8, "N"])
    attention = make_model([helper.make_node("MatMul", ["q", "k"], ["s"], name="scores")], [q, k],
                           [helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", "N"])], {})
    with pytest.raises(ConversionError) as err:
        convert_model(attention, calib, None, ConvertOptions(**FAST))
    assert str(err.value) == ("no eligible layer in the model: 1 layer skipped: scores: input B is "
                              "an activation (activation x activation product)")
    # A recurrent model: its LSTM named and explained, not "no MatMul, Gemm or Conv node"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 1, 4])
    lstm = make_model([helper.make_node("LSTM", ["x", "W", "R"], ["y"], name="lstm", hidden_size=8)], [x],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 1, 1, 8])],
                      {"W": np.zeros((1, 32, 4), np.float32), "R": np.zeros((1, 32, 8), np.float32)})
    with pytest.raises(ConversionError) as err:
        convert_model(lstm, calib, None, ConvertOptions(**FAST))
    assert str(err.value) == ("no eligible layer in the model: 1 layer skipped: lstm: recurrent layer: its weights "
                              "multiply inside the op at every time step, which no lookup replaces")
    # Layers only inside an If's branches: named and explained, not "no layer"
    w = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w")
    branch = lambda name: helper.make_graph(  # noqa: E731
        [helper.make_node("MatMul", ["q", "w"], [f"{name}_y"], name=f"{name}_mm")], name, [],
        [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, ["N", 4])])
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    branched = make_model(
        [helper.make_node("If", ["cond"], ["y"], name="pick", then_branch=branch("then"), else_branch=branch("else"))],
        [q, cond], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], {"w": onnx.numpy_helper.to_array(w)})
    with pytest.raises(ConversionError) as err:
        convert_model(branched, calib, None, ConvertOptions(**FAST))
    assert str(err.value) == (
        "no eligible layer in the model: 2 layers skipped: pick/else_branch/else_mm: inside the "
        "'else_branch' subgraph of If 'pick': only layers of the main graph are converted; pick/then_branch/then_mm: "
        "inside the 'then_branch' subgraph of If 'pick': only layers of the main graph are converted")
    with pytest.raises(ConversionError) as err:
        convert_model(path, calib, tmp_path / "nowhere" / "out.onnx", ConvertOptions(**FAST))
    assert str(err.value) == f"output folder {tmp_path / 'nowhere'} does not exist"
    with pytest.raises(ValueError, match=r"^--include '\(' is not a valid regular expression"):
        convert_model(path, calib, None, ConvertOptions(include=("(",)))


def test_library_runs_the_converted_model_like_the_fallback(mlp_case, tmp_path):
    from halut_onnx.library import get_library_path, session_options

    try:
        get_library_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    path, calib, x = mlp_case
    out = convert_model(path, calib, None, ConvertOptions(encoder="tree", **FAST)).model
    kernels = ort.InferenceSession(out.SerializeToString(), session_options()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(kernels, _mlp_ref(out, x))


def test_default_codebook_rule():
    assert [default_codebooks(D) for D in (3, 6, 16, 24, 64, 100, 128, 4096)] == [3, 4, 8, 16, 32, 64, 64, 64]
    assert ConvertOptions().layer_encoder == LearnOptions().encoder  # one default for the CLI and the API


def test_old_opset_model_is_upgraded_and_converts(mlp_case, tmp_path, rng, caplog):
    """An opset-9 model (the rewrite needs 11) converts after onnx's version converter upgrades it to 13."""
    path, calib, x = mlp_case
    old = onnx.load(str(path))
    old.opset_import[0].version = 9  # MatMul, Add, Relu and Gemm read the same at opset 9
    onnx.checker.check_model(old, full_check=True)
    with caplog.at_level("WARNING"):
        out = convert_model(old, calib, None, ConvertOptions(**FAST)).model
    assert [(o.domain, o.version) for o in out.opset_import if o.domain in ("", "ai.onnx")] == [("", 13)]
    assert "the model imports default-domain opset 9, older than the 11 the rewrite needs: upgraded to opset 13" in \
        caplog.text
    assert sum(n.domain == "ai.halut" for n in out.graph.node) == 4
    want = ort.InferenceSession(old.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(out.SerializeToString(), session_options(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    assert np.sum((got - want) ** 2) / np.sum(want**2) < 0.1


def test_old_opset_the_converter_cannot_upgrade_is_a_clear_error(mlp_case, monkeypatch):
    path, calib, _ = mlp_case
    old = onnx.load(str(path))
    old.opset_import[0].version = 9

    def refuse(model, target):
        raise RuntimeError("No Adapter From Version $9 for Gemm\nmore detail")

    monkeypatch.setattr(onnx.version_converter, "convert_version", refuse)
    with pytest.raises(ConversionError) as err:
        convert_model(old, calib, None, ConvertOptions(**FAST))
    assert str(err.value) == ("the model imports default-domain opset 9; halut-onnx needs opset >= 11 and onnx's "
                              "version converter could not upgrade it to 13: No Adapter From Version $9 for Gemm")


def test_each_converted_layer_is_timed_against_onnxruntime_on_the_first_files_rows(mlp_case, monkeypatch):
    import halut_onnx.convert as convert_module
    from halut_onnx.kernel_timing import KernelTime, time_candidate
    from halut_onnx.records import read_records

    path, calib, _ = mlp_case  # 8 files of 100 rows
    result = convert_model(path, calib, None, ConvertOptions(**FAST))
    for r in result.converted:
        assert r.timed_rows == 100
        assert r.original_ms > 0 and r.halut_ms > 0 and r.speedup == r.original_ms / r.halut_ms
    # the timing is kernel_timing's for the layer's shape (cached per shape: the same numbers)
    fc1 = result.converted[0]
    t = time_candidate(100, _candidate(path, "fc1"), None, 4, "pq")
    assert (fc1.original_ms, fc1.halut_ms) == (t.matmul_ms, t.halut_ms)
    assert [r.speedup for r in read_records(result.model)[0]] == [r.speedup for r in result.converted]

    calls = []

    def fixed(n, cand, image_shape, C, encoder):
        calls.append((n, cand.name, image_shape, C, encoder))
        return KernelTime(1.0, 2.5) if cand.name == "fc2" else KernelTime(3.0, 1.0)

    monkeypatch.setattr(convert_module, "time_candidate", fixed)
    result = convert_model(path, calib, None, ConvertOptions(**FAST))
    assert calls == [(100, "fc1", None, 4, "pq"), (100, "fc2", None, 4, "pq")]
    assert [r.speedup for r in result.converted] == [3.0, 0.4]

    # without the custom-op library the function bodies would run: nothing timed
    monkeypatch.setattr(convert_module, "library_available", lambda: False)
    result = convert_model(path, calib, None, ConvertOptions(**FAST))
    assert all(r.speedup is None and r.timed_rows is None for r in result.converted)


def _candidate(path, name):
    from halut_onnx.passes import find_layers

    return next(c for c in find_layers(onnx.load(path))[0] if c.name == name)
