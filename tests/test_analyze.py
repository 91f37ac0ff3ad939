"""Sensitivity analysis, convert --budget and --sequential end to end on small structured models."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from budget_models import mlp3, write_files
from halut_models import low_rank, mlp, write_calibration
import halut_onnx.analyze as analyze_module
from halut_onnx.analyze import AnalyzeOptions, analyze, codebook_grid
from halut_onnx.budget_convert import convert_under_budget
from halut_onnx.budget_report import analysis_table
from halut_onnx.cli import main
from halut_onnx.convert import convert_model
from halut_onnx.kernel_timing import library_available
from halut_onnx.learn import LearnOptions, learn_layer
from halut_onnx.options import ConvertOptions
from halut_onnx.runtime import make_session

OPTIONS = ConvertOptions(progress=False)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("budget")
    model = mlp3(rng)
    onnx.save(model, folder / "m.onnx")
    write_files(folder / "calib", rng)
    analysis = analyze(folder / "m.onnx", folder / "calib",
                       AnalyzeOptions(OPTIONS, codebooks=(4, 8), encoders=("pq", "tree"), timing=False))
    return folder, model, analysis


def _numpy_forward(model: onnx.ModelProto, x: np.ndarray, swap: dict | None = None) -> np.ndarray:
    """mlp3 in numpy; ``swap[name]`` replaces that layer by a function of its input rows."""
    w = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    swap = swap or {}
    layer = lambda name, a, W, b=0: swap[name](a) if name in swap else a @ W + b  # noqa: E731
    h = np.maximum(layer("fc1", x, w["w1"], w["b1"]), 0)
    h = np.maximum(layer("fc2", h, w["w2"]), 0)
    return layer("fc3", h, w["w3"])


def _heldout(analysis) -> np.ndarray:
    return np.concatenate([np.load(f)["x"] for f in analysis.heldout_files])


def test_codebook_grid():
    wide = (16, 8, 4, 2)
    assert codebook_grid(64, divisors=wide) == [4, 8, 16, 32]
    assert codebook_grid(120, divisors=wide) == [8, 16, 32, 64]
    assert codebook_grid(16, divisors=wide) == [4, 8]
    assert codebook_grid(8, (4, 16)) == [4, 8] and codebook_grid(384, (128,)) == [128]
    # beyond convert's 64 only with at least 2 columns per codebook
    assert codebook_grid(192, divisors=wide) == [16, 32, 64] and codebook_grid(240, divisors=wide) == [16, 32, 64]
    assert codebook_grid(256, divisors=wide) == [16, 32, 64, 128]
    assert codebook_grid(384, divisors=wide) == [32, 64, 128]
    # the default: D / 2, with 64 beside 128
    assert codebook_grid(64) == [32] and codebook_grid(27) == [16] and codebook_grid(8) == [4]
    assert codebook_grid(192) == [64] and codebook_grid(384) == [64, 128] and codebook_grid(768) == [64, 128]
    assert codebook_grid(384, divisors=(1,)) == [64, 128]


def test_analysis_matches_a_numpy_forward_pass(case):
    folder, model, analysis = case
    assert len(analysis.rows) == 3 * 2 * 2 and len(analysis.heldout_files) == 2 and len(analysis.learn_files) == 6
    assert not set(analysis.heldout_files) & set(analysis.learn_files)
    x = _heldout(analysis)
    ref = _numpy_forward(model, x)
    for row in analysis.rows:
        assert row.rows_per_sample == 1 and row.macs == row.D * row.M and row.error is None
        layer = analysis.learned[(row.layer, row.setting.key)]
        out = _numpy_forward(model, x, {row.layer: layer.forward})
        nmse = np.sum((out - ref) ** 2) / np.sum(ref**2)
        cos = np.mean(np.sum(out * ref, 1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1))
        assert row.nmse == pytest.approx(nmse, rel=1e-3) and row.cosine == pytest.approx(cos, abs=1e-5)
        assert row.agreement == np.mean(out.argmax(1) == ref.argmax(1))
        assert 0 < row.file_nmse < 0.5 and row.train_nmse < row.file_nmse
    # more codebooks are more accurate, layer by layer (structured data)
    for name in ("fc1", "fc2", "fc3"):
        for enc in ("pq", "tree"):
            by_c = {r.C: r.file_nmse for r in analysis.rows if r.layer == name and r.encoder == enc}
            assert by_c[8] < by_c[4]


def _measured_cosine(analysis, model: onnx.ModelProto, converted: Path) -> float:
    session, _ = make_session(converted, halut=True)
    x = _heldout(analysis)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    out = np.concatenate([session.run(None, {"x": np.load(f)["x"]})[0] for f in analysis.heldout_files])
    return float(np.mean(np.sum(out * ref, 1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)))


def test_tight_budget_converts_fewer_layers_and_meets_it(case):
    folder, model, analysis = case
    converted = {}
    for value in (0.95, 0.85):
        out = folder / f"cos{value}.onnx"
        result = convert_under_budget(folder / "m.onnx", folder / "calib", out,
                                      ConvertOptions(progress=False, budget=f"cosine={value}"), analysis)
        report = result.budget
        measured = _measured_cosine(analysis, model, out)
        assert measured >= value and report.measured == pytest.approx(measured, abs=1e-5)
        singles = sum(max(loss, 0) for _, _, loss in report.chosen)
        assert report.predicted == pytest.approx(1 - singles)  # prediction: single-layer losses added up
        assert [r.name for r in result.converted] == [name for name, _, _ in report.chosen]
        assert {r.name for r in result.skipped} == {"fc1", "fc2", "fc3"} - {r.name for r in result.converted}
        converted[value] = len(result.converted)
    assert 1 <= converted[0.95] < converted[0.85]


def _same_distribution(folder: Path, files: int) -> list[Path]:
    """``files`` more files of the case's calibration distribution: the fixture's draws, continued."""
    rng = np.random.default_rng(0)
    mlp3(rng)
    write_files(folder, rng, files=8 + files)
    for old in sorted(folder.iterdir())[:8]:  # the case's own calibration files, drawn again
        old.unlink()
    return sorted(folder.iterdir())


def test_heldout_data_measures_its_own_files_and_learns_from_every_calibration_file(case, tmp_path):
    folder, model, split = case
    held = _same_distribution(tmp_path / "held", 3)
    options = ConvertOptions(progress=False, heldout_data=str(tmp_path / "held"))
    analysis = analyze(folder / "m.onnx", folder / "calib",
                       AnalyzeOptions(options, codebooks=(4, 8), encoders=("pq",), timing=False))
    assert analysis.heldout_files == [str(f) for f in held]
    assert analysis.learn_files == [str(f) for f in sorted((folder / "calib").iterdir())]
    assert {name: rows.rows.shape[0] for name, rows in analysis.learn_rows.items()} == {n: 8 * 128 for n in
                                                                                         ("fc1", "fc2", "fc3")}
    x = _heldout(analysis)
    assert x.shape == (3 * 128, 32) and not any(np.array_equal(x[:128], np.load(f)["x"]) for f in split.learn_files)
    ref = _numpy_forward(model, x)
    for row in analysis.rows:
        out = _numpy_forward(model, x, {row.layer: analysis.learned[(row.layer, row.setting.key)].forward})
        assert row.nmse == pytest.approx(np.sum((out - ref) ** 2) / np.sum(ref**2), rel=1e-3)
    assert "on the 3 files of " + str(tmp_path / "held") + " (384 samples, --heldout-data); learned on the 8 " \
        "calibration files." in analysis_table(analysis)

    out = tmp_path / "budget.onnx"
    report = convert_under_budget(folder / "m.onnx", folder / "calib", out,
                                  dataclasses.replace(options, budget="cosine=0.9"), analysis).budget
    measured = _measured_cosine(analysis, model, out)
    assert measured >= 0.9 and report.measured == pytest.approx(measured, abs=1e-5) and report.chosen


def test_heldout_data_needs_one_calibration_file_only(case, tmp_path):
    folder, _, _ = case
    (tmp_path / "calib").mkdir()
    (tmp_path / "calib" / "000.npz").write_bytes((folder / "calib" / "000.npz").read_bytes())
    _same_distribution(tmp_path / "held", 2)
    options = ConvertOptions(progress=False, heldout_data=str(tmp_path / "held"))
    analysis = analyze(folder / "m.onnx", tmp_path / "calib",
                       AnalyzeOptions(options, codebooks=(4,), encoders=("tree",), timing=False))
    assert len(analysis.learn_files) == 1 and len(analysis.heldout_files) == 2 and analysis.samples_heldout == 256
    with pytest.raises(ValueError, match=r"^a budget needs at least 2 calibration files \(one to learn from, one "
                                         r"held out\); found 1$"):
        analyze(folder / "m.onnx", tmp_path / "calib", AnalyzeOptions(OPTIONS, codebooks=(4,), timing=False))


def test_time_objective_converts_only_layers_that_run_faster(case):
    # The same analysis with made-up kernel timings: only fc2's settings run faster than its MatMul.
    folder, _, analysis = case
    timed = copy.copy(analysis)
    timed.timed = True
    timed.rows = [dataclasses.replace(r, matmul_ms=1.0, halut_ms=0.5 if r.layer == "fc2" else 2.0)
                  for r in analysis.rows]
    result = convert_under_budget(folder / "m.onnx", folder / "calib", None,
                                  ConvertOptions(progress=False, budget="cosine=0.5"), timed)
    assert result.budget.objective == "time" and [name for name, _, _ in result.budget.chosen] == ["fc2"]
    macs = convert_under_budget(folder / "m.onnx", folder / "calib", None,
                                ConvertOptions(progress=False, budget="cosine=0.5", objective="macs"), timed)
    assert macs.budget.objective == "macs" and len(macs.budget.chosen) > 1
    slower = copy.copy(timed)
    slower.rows = [dataclasses.replace(r, halut_ms=2.0) for r in timed.rows]
    with pytest.raises(ValueError, match=r"^no layer can be converted within --budget cosine=0\.5: in the kernel "
                                         r"timings no setting of any layer runs faster than the original layer \(1 "
                                         r"thread\); --objective macs converts by multiply-adds removed instead$"):
        convert_under_budget(folder / "m.onnx", folder / "calib", None,
                             ConvertOptions(progress=False, budget="cosine=0.5"), slower)
    # Layers that fit the budget but are no faster are named apart from the fast one that is too lossy (fc2's
    # measured loss, far above 0.001).
    mixed = copy.copy(timed)
    mixed.rows = [r if r.layer == "fc2" else dataclasses.replace(r, cosine=1.0) for r in timed.rows]
    with pytest.raises(ValueError, match=r"^no layer can be converted within --budget cosine=0\.999; the best "
                                         r"single layer is fc2 \(\w+ C=\d+\) with a loss of [0-9.e-]+; 2 layer\(s\) "
                                         r"fit the budget but run no faster than the original in the kernel timings "
                                         r"\(fc1, fc3\): --objective macs converts them$"):
        convert_under_budget(folder / "m.onnx", folder / "calib", None,
                             ConvertOptions(progress=False, budget="cosine=0.999"), mixed)
    # As an analysis by time leaves them: every setting skipped, none measured. The error is the same for any
    # metric (an agreement budget said the output had no classes, of rows that were never run).
    unmeasured = copy.copy(slower)
    unmeasured.rows = [dataclasses.replace(r, skipped="saves no time") for r in slower.rows]
    for metric in ("agreement=0.5", "ctc=0.5"):
        with pytest.raises(ValueError, match=rf"^no layer can be converted within --budget {metric}: in the kernel "
                                             r"timings no setting of any layer runs faster"):
            convert_under_budget(folder / "m.onnx", folder / "calib", None,
                                 ConvertOptions(progress=False, budget=metric), unmeasured)


def test_settings_that_save_nothing_by_the_objective_are_not_measured(case):
    # fc3 (32 -> 10, 320 multiply-adds a row) costs more with pq's encode (16 per input: 512 + C x 10) than it
    # saves, so by multiply-adds a budget never converts it with pq: those two settings are not learned nor run
    folder, _, full = case
    analysis = analyze(folder / "m.onnx", folder / "calib", AnalyzeOptions(
        OPTIONS, codebooks=(4, 8), encoders=("pq", "tree"), timing=False, objective="macs"))
    assert analysis.objective == "macs"
    skipped = [(r.layer, r.setting.key, r.skipped) for r in analysis.rows if r.skipped]
    assert skipped == [("fc3", "pq C=4", "removes no multiply-adds (-232 per sample)"),
                       ("fc3", "pq C=8", "removes no multiply-adds (-272 per sample)")]
    assert not {("fc3", "pq C=4"), ("fc3", "pq C=8")} & set(analysis.learned)
    for row, ref in zip(analysis.rows, full.rows):  # the others as measured without the objective
        assert (row.layer, row.setting) == (ref.layer, ref.setting)
        if not row.skipped:
            assert (row.cosine, row.file_nmse, row.error) == (ref.cosine, ref.file_nmse, None)
        else:
            assert row.cosine is None and row.learn_s is None
    result = convert_under_budget(folder / "m.onnx", folder / "calib", None,
                                  ConvertOptions(progress=False, budget="cosine=0.85", objective="macs"), analysis)
    reference = convert_under_budget(folder / "m.onnx", folder / "calib", None,
                                     ConvertOptions(progress=False, budget="cosine=0.85", objective="macs"), full)
    assert result.budget.chosen == reference.budget.chosen
    with pytest.raises(ValueError, match=r"^--objective time: the analysis measured only the settings that save "
                                         r"multiply-adds \(objective 'macs'\); analyze again with objective 'time' "
                                         r"or None$"):
        timed = copy.copy(analysis)
        timed.timed = True
        convert_under_budget(folder / "m.onnx", folder / "calib", None,
                             ConvertOptions(progress=False, budget="cosine=0.85", objective="time"), timed)


def test_settings_saving_next_to_nothing_are_not_measured(case, monkeypatch):
    # fc3 tree C=8 removes the fewest multiply-adds of the settings that remove any (208 of the 2368 per sample):
    # with NEGLIGIBLE_SAVING just above its share it alone saves too little to be learned for a budget
    folder, _, full = case
    saving = {(r.layer, r.setting.key): r.macs_removed for r in full.rows}
    total = full.total_macs
    assert 0 < saving[("fc3", "tree C=8")] < min(v for k, v in saving.items() if k != ("fc3", "tree C=8") and v > 0)
    monkeypatch.setattr(analyze_module, "NEGLIGIBLE_SAVING", (saving[("fc3", "tree C=8")] + 1) / total)
    analysis = analyze(folder / "m.onnx", folder / "calib", AnalyzeOptions(
        OPTIONS, codebooks=(4, 8), encoders=("pq", "tree"), timing=False, objective="macs"))
    share = 100 * saving[("fc3", "tree C=8")] / total
    skipped = [(r.layer, r.setting.key, r.skipped) for r in analysis.rows if r.skipped]
    assert skipped == [("fc3", "pq C=4", "removes no multiply-adds (-232 per sample)"),
                       ("fc3", "pq C=8", "removes no multiply-adds (-272 per sample)"),
                       ("fc3", "tree C=8", f"saves {share:.2g} % of the eligible multiply-adds, under the "
                                           f"{100 * analyze_module.NEGLIGIBLE_SAVING:g} % measured")]
    assert ("fc3", "tree C=8") not in analysis.learned and ("fc3", "tree C=4") in analysis.learned


def test_settings_saving_next_to_nothing_in_time_are_not_measured(case, monkeypatch):
    # Made-up timings: the model takes 100 ms on a held-out file, fc3's settings save 0.1 ms (0.1 %, under the
    # 0.2 % rule), fc1's and fc2's 1 ms
    import halut_onnx.bench
    import halut_onnx.kernel_timing
    import halut_onnx.model_timing
    from halut_onnx.kernel_timing import KernelTime

    folder, _, full = case
    monkeypatch.setattr(halut_onnx.kernel_timing, "library_available", lambda: True)
    monkeypatch.setattr(halut_onnx.kernel_timing, "time_candidate",
                        lambda N, cand, shape, C, enc: KernelTime(2.0, 1.9 if cand.name == "fc3" else 1.0))
    monkeypatch.setattr(halut_onnx.bench, "median_ms", lambda *args, **kwargs: 100.0)
    monkeypatch.setattr(halut_onnx.model_timing, "layer_times_in_model", lambda *args: {})
    analysis = analyze(folder / "m.onnx", folder / "calib", AnalyzeOptions(
        OPTIONS, codebooks=(4, 8), encoders=("pq", "tree"), objective="time"))
    skipped = {(r.layer, r.setting.key): r.skipped for r in analysis.rows if r.skipped}
    reason = "saves 0.1 % of the model's time, under the 0.2 % measured"
    assert skipped == {("fc3", key): reason for key in ("pq C=4", "pq C=8", "tree C=4", "tree C=8")}
    assert {layer for layer, _ in analysis.learned} == {"fc1", "fc2"}


def test_budget_analyses_both_encoders_unless_one_is_given(case):
    folder, _, _ = case
    for encoder, expected in ((None, {"pq", "tree"}), ("tree", {"tree"})):
        result = convert_under_budget(folder / "m.onnx", folder / "calib", None, ConvertOptions(
            progress=False, budget="cosine=0.85", codebooks=4, encoder=encoder, objective="macs"))
        assert {key.split()[0] for _, key, _ in result.budget.chosen} <= expected
        assert {r.encoder for r in result.budget.analysis.rows} == expected


def test_ctc_budget_needs_a_sequence_output(case):
    folder, _, analysis = case
    assert all(r.ctc is None for r in analysis.rows)
    with pytest.raises(ValueError, match=r"^--budget ctc=0\.99: output 'y' is not a CTC sequence output \(ctc needs "
                                         r"a float output \[samples, time, classes\] with more than one class\); use "):
        convert_under_budget(folder / "m.onnx", folder / "calib", None,
                             ConvertOptions(progress=False, budget="ctc=0.99"), analysis)


def test_budget_with_nothing_within_it(case):
    folder, _, analysis = case
    with pytest.raises(ValueError, match=r"^no layer can be converted within --budget cosine=0\.9999; the best "
                                         r"single layer is fc\d \((pq|tree) C=8\) with a loss of "):
        convert_under_budget(folder / "m.onnx", folder / "calib", None,
                             ConvertOptions(progress=False, budget="cosine=0.9999"), analysis)


def test_analyze_cli_table_json_csv(case):
    folder, _, _ = case
    args = ["analyze", str(folder / "m.onnx"), "--calib", str(folder / "calib"), "--codebooks-list", "4",
            "--encoders", "pq", "--include", "fc[12]", "--json", str(folder / "a.json"), "--csv",
            str(folder / "a.csv"), "--budget", "cosine=0.9", "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:6] == ["layer", "op", "D", "M", "encoder", "C"]
    assert [line.split()[:6] for line in lines[2:4]] == [["fc1", "MatMul", "32", "32", "pq", "4"],
                                                         ["fc2", "MatMul", "32", "32", "pq", "4"]]
    assert "Within --budget cosine=0.9 (single-layer losses added, before verification): " in result.stdout
    data = json.loads((folder / "a.json").read_text())
    assert {"metric_output", "learn_files", "heldout_files", "rows", "skipped", "seconds", "total_macs"} <= set(data)
    assert data["metric_output"] == "y" and [r["layer"] for r in data["rows"]] == ["fc1", "fc2"]
    assert {"agreement", "cosine", "nmse", "file_nmse", "macs_removed", "matmul_ms", "halut_ms"} <= set(data["rows"][0])
    assert [s["name"] for s in data["skipped"]] == ["fc3"]
    if data["timed"]:
        assert data["rows"][0]["matmul_ms"] > 0 and data["rows"][0]["halut_ms"] > 0
    csv_lines = (folder / "a.csv").read_text().splitlines()
    assert csv_lines[0].startswith("layer,op_type,D,M,encoder,C,") and len(csv_lines) == 3
    augmented = CliRunner().invoke(main, ["analyze", str(folder / "m.onnx"), "--calib", str(folder / "calib"),
                                          "--codebooks-list", "4", "--encoders", "pq", "--include", "fc1", "--augment",
                                          "2", "--json", str(folder / "b.json"), "--no-progress", "--no-timing"])
    assert augmented.exit_code == 0, augmented.output
    more = json.loads((folder / "b.json").read_text())
    row, plain = more["rows"][0], data["rows"][0]
    assert row["layer"] == plain["layer"] == "fc1"
    assert abs(row["rows_train"] - 3 * plain["rows_train"]) <= 2  # each learn file and 2 copies, the same split
    assert more["samples_heldout"] == data["samples_heldout"] and more["heldout_files"] == data["heldout_files"]


def test_analyze_cli_errors(case):
    folder, _, _ = case
    base = ["analyze", str(folder / "m.onnx"), "--calib", str(folder / "calib"), "--no-progress"]
    for extra, message in [
        (["--budget", "top1=0.9"], "Error: --budget 'top1=0.9': unknown metric 'top1' (expected agreement, cosine, nmse, ctc)"),
        (["--encoders", "pq,kmeans"], "Error: --encoders must be a comma-separated subset of tree,pq, got 'pq,kmeans'"),
        (["--codebooks-list", "4,x"], "Error: --codebooks-list '4,x': expected comma-separated integers, e.g. 8,16,32"),
        (["--metric-output", "z"], "Error: --metric-output 'z' is not an output of the model (its outputs: y)"),
        (["--augment", "-1"], "Error: --augment must be >= 0, got -1"),
    ]:
        result = CliRunner().invoke(main, base + extra)
        assert result.exit_code == 1 and result.stderr.strip() == message


def test_learning_warnings_name_the_layer_and_setting(tmp_path, caplog):
    """A layer with fewer training rows than LUT entries is warned about once per setting, by name: learn_layer
    only returns the warning, which does not know the layer."""
    rng = np.random.default_rng(3)
    onnx.save(mlp3(rng), tmp_path / "m.onnx")
    write_files(tmp_path / "calib", rng, files=4, rows=32)  # 3 learn files: 96 rows, 77 of them to train on
    with caplog.at_level("WARNING", logger="halut_onnx"):
        analyze(tmp_path / "m.onnx", tmp_path / "calib",
                AnalyzeOptions(dataclasses.replace(OPTIONS, augment=0), codebooks=(8,), encoders=("tree",),
                               timing=False))
    warned = sorted(r.getMessage().split(": the LUT")[0] for r in caplog.records if "LUT entries" in r.getMessage())
    assert warned == [f"{name} (tree C=8): only 77 training rows for 128 LUT entries per output (16 x C=8)"
                      for name in ("fc1", "fc2", "fc3")]


def test_learn_layer_target_inputs(rng):
    A = low_rank(rng, (1200, 24))
    W = rng.standard_normal((24, 12)).astype(np.float32)
    options = LearnOptions(codebooks=4, encoder="pq", seed=1)
    plain = learn_layer(A, W, None, options)
    same = learn_layer(A, W, None, options, target_inputs=A.copy())
    np.testing.assert_array_equal(plain.lut_q, same.lut_q)
    # Other targets (a function of A the codes can represent): the LUT follows them, the encoder still reads A.
    T = 1.5 * A + 0.25
    shifted = learn_layer(A, W, None, options, target_inputs=T)
    np.testing.assert_array_equal(shifted.encode(A[:50]), plain.encode(A[:50]))
    err = lambda layer: np.sum((layer.forward(A) - T @ W) ** 2) / np.sum((T @ W) ** 2)  # noqa: E731
    assert err(shifted) < 0.7 * err(plain)
    with pytest.raises(ValueError) as exc:
        learn_layer(A, W, None, options, target_inputs=A[:10])
    assert str(exc.value) == "target_inputs must have A's shape (1200, 24) (one row per row of A); found (10, 24)"


def test_sequential_two_layers(tmp_path, rng):
    model = mlp(rng, D=32, H=24, M=10)
    onnx.save(model, tmp_path / "m.onnx")
    rows = low_rank(rng, (1536, 32), rank=5)
    write_calibration(tmp_path / "calib", "x", rows[:1024], per_file=128)
    x = rows[1024:]  # same distribution, not calibrated on
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    errors, luts = {}, {}
    for sequential in (False, True):
        out = tmp_path / f"seq{sequential}.onnx"
        result = convert_model(tmp_path / "m.onnx", tmp_path / "calib", out,
                               ConvertOptions(codebooks=4, sequential=sequential, progress=False))
        assert [r.name for r in result.converted] == ["fc1", "fc2"]
        session, _ = make_session(out, halut=True)
        y = session.run(None, {"x": x})[0]
        errors[sequential] = float(np.sum((y - ref) ** 2) / np.sum(ref**2))
        luts[sequential] = {t.name: onnx.numpy_helper.to_array(t) for t in result.model.graph.initializer
                            if t.name.endswith(".halut.lut")}
    np.testing.assert_array_equal(luts[False]["fc1.halut.lut"], luts[True]["fc1.halut.lut"])  # first layer: same inputs
    assert not np.array_equal(luts[False]["fc2.halut.lut"], luts[True]["fc2.halut.lut"])
    assert errors[True] <= errors[False]


def test_convert_cli_budget_report(case):
    folder, _, _ = case
    args = ["convert", str(folder / "m.onnx"), "--calib", str(folder / "calib"), "-o", str(folder / "cli.onnx"),
            "-C", "4", "--budget", "cosine=0.9", "--objective", "macs", "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "chosen layer" in out and "verifications: knapsack choice: " in out
    assert "objective: macs (multiply-adds removed); verifications: " in out
    line = next(x for x in out.splitlines() if x.startswith("Budget cosine=0.9: predicted "))
    measured = float(line.split("measured ")[1].split()[0])
    assert measured >= 0.9 and "of the eligible layers' multiply-adds converted" in line
    if library_available():  # the written model is timed against the original
        speedup = float(line.split("; speedup ")[1].split("x measured on one held-out file (1 thread)")[0])
        assert 0 < speedup < 100
    table = out.split("chosen layer")[1].split("objective:")[0]
    chosen = [x.split()[0] for x in table.splitlines()[2:] if x.strip()]
    assert chosen and all(name in ("fc1", "fc2", "fc3") for name in chosen)
    assert all(f"{name}  " in out.split("skipped layer")[1] for name in {"fc1", "fc2", "fc3"} - set(chosen))


def test_convert_cli_finetune_without_torch(case, monkeypatch):
    folder, _, _ = case
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    result = CliRunner().invoke(main, ["convert", str(folder / "m.onnx"), "--calib", str(folder / "calib"), "-o",
                                       str(folder / "nt.onnx"), "--budget", "cosine=0.9", "--finetune"])
    assert result.exit_code == 1
    assert result.stderr.strip() == ("Error: --finetune needs torch: pip install 'halut-onnx[finetune]' "
                                     "(or any torch >= 2.1)")
    assert not (folder / "nt.onnx").exists()


def test_convert_cli_finetune(case):
    pytest.importorskip("torch", reason="fine-tuning needs torch: pip install -e '.[test]'")
    folder, _, _ = case
    base = ["convert", str(folder / "m.onnx"), "--calib", str(folder / "calib"), "-o", str(folder / "ft.onnx"),
            "-C", "4", "--objective", "macs", "--no-progress", "--finetune"]
    result = CliRunner().invoke(main, base)
    assert result.exit_code == 1
    assert result.stderr.strip() == ("Error: --finetune needs --budget: the fine-tuned model is scored on the "
                                     "budget's held-out files")
    assert not (folder / "ft.onnx").exists()
    result = CliRunner().invoke(main, base + ["--budget", "cosine=0.9"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "fine-tuned the choice within cosine=0.85 (" in out  # the budget widened 1.5 times
    line = next(x for x in out.splitlines() if x.startswith("Budget cosine=0.9: predicted "))
    assert float(line.split("measured ")[1].split()[0]) >= 0.9
    tuned = [x for x in out.splitlines() if x.startswith("Fine-tuned: held-out cosine ")]
    if tuned:  # a fine-tuned choice was kept: it scored at least as well as learned
        before, after = (float(v) for v in tuned[0].split("cosine ")[1].split(" after")[0].split(" as learned -> "))
        assert after >= before


def _ctc_text(frames):
    return [k for k, _ in itertools.groupby(frames.tolist()) if k != 0]


def _edits(a, b):
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def test_ctc_budget_on_a_sequence_model(tmp_path):
    # mlp3 applied per frame of [N, T, D] sequences: a [samples, time, classes] output, class 0 the blank
    rng = np.random.default_rng(4)
    model = mlp3(rng, M=6)
    for value, dims in ((model.graph.input[0], ["N", "T", 32]), (model.graph.output[0], ["N", "T", 6])):
        shape = value.type.tensor_type.shape
        del shape.dim[:]
        for d in dims:
            shape.dim.add().CopyFrom(onnx.TensorShapeProto.Dimension(**({"dim_param": d} if isinstance(d, str)
                                                                        else {"dim_value": d})))
    onnx.save(model, tmp_path / "seq.onnx")
    basis = rng.standard_normal((6, 32))
    (tmp_path / "calib").mkdir()
    for k in range(8):
        x = rng.standard_normal((4 * 40, 6)) @ basis + 0.05 * rng.standard_normal((4 * 40, 32))
        np.savez(tmp_path / "calib" / f"{k:03d}.npz", x=x.reshape(4, 40, 32).astype(np.float32))
    options = ConvertOptions(progress=False, budget="ctc=0.8", codebooks=16)
    analysis = analyze(tmp_path / "seq.onnx", tmp_path / "calib", AnalyzeOptions(options, codebooks=(16,),
                                                                                   timing=False))
    result = convert_under_budget(tmp_path / "seq.onnx", tmp_path / "calib", tmp_path / "out.onnx", options, analysis)
    report = result.budget
    assert all(r.ctc is not None for r in report.analysis.rows) and result.converted
    ref_session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    session, _ = make_session(tmp_path / "out.onnx", halut=True)
    errors = length = 0
    for f in report.analysis.heldout_files:
        x = np.load(f)["x"]
        for r, c in zip(ref_session.run(None, {"x": x})[0], session.run(None, {"x": x})[0]):
            text = _ctc_text(r.argmax(1))
            errors += _edits(text, _ctc_text(c.argmax(1)))
            length += len(text)
    assert report.measured == pytest.approx(1 - errors / length) and report.measured >= 0.8
    assert report.measured_all["ctc"] == report.measured and report.budget.metric == "ctc"


def test_layer_times_in_model_find_each_layer_by_its_weight(rng):
    # a Conv (run by onnxruntime in its blocked layout, weights reordered and padded) and the MatMuls of mlp3
    from onnx import TensorProto, helper, numpy_helper

    from halut_onnx.model_timing import layer_times_in_model

    w = numpy_helper.from_array(rng.standard_normal((12, 3, 3, 3)).astype(np.float32), "wc")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "wc"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"], name="relu")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    conv = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    times = layer_times_in_model(conv, {"x": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)},
                                 {"conv": "wc", "gone": "no such weight"})
    assert set(times) == {"conv"} and times["conv"] > 0
    model = mlp3(rng)
    times = layer_times_in_model(model, {"x": rng.standard_normal((64, 32)).astype(np.float32)},
                                 {"fc1": "w1", "fc2": "w2", "fc3": "w3"})
    assert set(times) == {"fc1", "fc2", "fc3"} and all(t > 0 for t in times.values())


def test_layer_times_in_model_pair_layers_that_share_a_weight(rng):
    """Two MatMuls read one initializer (torch's exporter deduplicates equal parameters): both are found, each in
    its own node, the larger one slower."""
    from onnx import TensorProto, helper, numpy_helper

    from halut_onnx.model_timing import layer_times_in_model

    w = numpy_helper.from_array(rng.standard_normal((256, 256)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "w"], ["ya"], name="small"),
         helper.make_node("MatMul", ["b", "w"], ["yb"], name="large")], "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [4, 256]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [2048, 256])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("ya", "yb")], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feed = {"a": rng.standard_normal((4, 256)).astype(np.float32),
            "b": rng.standard_normal((2048, 256)).astype(np.float32)}
    times = layer_times_in_model(model, feed, {"small": "w", "large": "w"})
    assert set(times) == {"small", "large"} and times["large"] > 4 * times["small"] > 0


def test_time_saving_is_the_layer_in_the_model_when_found():
    from halut_onnx.analyze import SensitivityRow

    row = SensitivityRow("fc", "MatMul", 32, 32, "pq", 8, 1.0, matmul_ms=3.0, halut_ms=1.0)
    assert row.saving("time") == 2.0
    row.in_model_ms = 1.5  # fused in the model: cheaper than alone
    assert row.saving("time") == 0.5
