"""--augment: noisy copies of the calibration feeds (halut_onnx/augment.py), learned from and never measured on."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from budget_models import mlp3, write_files
from halut_models import make_model
from halut_onnx.analyze import AnalyzeOptions, analyze
from halut_onnx.augment import NOISE, AugmentedSet, augmented, auto_copies
from halut_onnx.budget_report import analysis_table
from halut_onnx.calibrate import CalibrationSet, InputSpec
from halut_onnx.convert import convert_model
from halut_onnx.errors import CalibrationError
from halut_onnx.options import ConvertOptions
from halut_onnx.records import KEY_SETTINGS, get_metadata


def _two_inputs(tmp_path, rng):
    folder = tmp_path / "calib"
    folder.mkdir()
    for k in range(2):
        np.savez(folder / f"{k}.npz", x=(3 + 2 * rng.standard_normal((4000, 8))).astype(np.float32),
                 ids=rng.integers(0, 100, (4000, 8)))
    specs = [InputSpec("x", np.dtype(np.float32), (None, 8)), InputSpec("ids", np.dtype(np.int64), (None, 8))]
    return CalibrationSet(folder, specs)


def test_each_file_is_followed_by_its_noisy_copies(tmp_path, rng):
    base = _two_inputs(tmp_path, rng)
    feeds = list(AugmentedSet(base, copies=3, seed=0))
    assert len(feeds) == len(AugmentedSet(base, 3)) == 8 and [p.name for p, _ in feeds] == ["0.npz"] * 4 + ["1.npz"] * 4
    for start, (_, clean) in zip((0, 4), base):
        np.testing.assert_array_equal(feeds[start][1]["x"], clean["x"])  # the file itself first
        for _, copy in feeds[start + 1 : start + 4]:
            np.testing.assert_array_equal(copy["ids"], clean["ids"])  # integer inputs untouched
            noise = copy["x"].astype(np.float64) - clean["x"]
            assert copy["x"].dtype == np.float32 and abs(noise.mean()) < 0.01
            assert noise.std() == pytest.approx(NOISE * clean["x"].std(), rel=0.03)
    assert not np.array_equal(feeds[1][1]["x"], feeds[2][1]["x"])  # copies differ from each other
    again = list(AugmentedSet(base, copies=3, seed=0))
    np.testing.assert_array_equal(again[2][1]["x"], feeds[2][1]["x"])  # seeded
    other = list(AugmentedSet(base, copies=3, seed=1))
    assert not np.array_equal(other[2][1]["x"], feeds[2][1]["x"])
    assert augmented(base, 0) is base


def test_a_model_without_float_inputs_cannot_be_augmented(tmp_path, rng):
    base = _two_inputs(tmp_path, rng)
    base.inputs = [InputSpec("ids", np.dtype(np.int64), (None, 8))]
    with pytest.raises(CalibrationError, match=r"^--augment adds noise to float model inputs; this model's inputs "
                                               r"are 'ids' \(int64\)$"):
        AugmentedSet(base, 2)
    with pytest.raises(ValueError, match=r"^--augment must be >= 0, got -1$"):
        ConvertOptions(augment=-1).validate()


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("augment")
    onnx.save(mlp3(rng), folder / "m.onnx")
    write_files(folder / "calib", rng, files=4, rows=64)
    write_files(folder / "held", np.random.default_rng(0), files=2, rows=64)
    return folder


def test_convert_learns_from_the_copies(case):
    plain = convert_model(case / "m.onnx", case / "calib", None, ConvertOptions(progress=False, codebooks=4))
    more = convert_model(case / "m.onnx", case / "calib", None, ConvertOptions(progress=False, codebooks=4,
                                                                                augment=2))
    for a, b in zip(plain.converted, more.converted):
        assert (a.rows_seen, b.rows_seen) == (4 * 64, 3 * 4 * 64)
        # the same real rows held out, their copies in neither set (learn.split_rows), every other row trains
        assert (b.rows_heldout, b.rows_train) == (a.rows_heldout, 3 * a.rows_train)
    settings = json.loads(get_metadata(more.model)[KEY_SETTINGS])  # recorded with the other settings
    assert settings["augment"] == 2


def test_a_budget_measures_on_real_inputs_only(case):
    options = ConvertOptions(progress=False, augment=3, heldout_data=str(case / "held"))
    analysis = analyze(case / "m.onnx", case / "calib", AnalyzeOptions(options, codebooks=(4,), encoders=("pq",),
                                                                      timing=False))
    assert {name: rows.rows_seen for name, rows in analysis.learn_rows.items()} == dict.fromkeys(
        ("fc1", "fc2", "fc3"), 4 * 4 * 64)
    assert analysis.samples_heldout == 2 * 64  # the held-out files as they are
    split = analyze(case / "m.onnx", case / "calib", AnalyzeOptions(ConvertOptions(progress=False, augment=3),
                                                                    codebooks=(4,), encoders=("pq",), timing=False))
    assert len(split.heldout_files) == 1 and split.samples_heldout == 64
    assert split.learn_rows["fc1"].rows_seen == 4 * 3 * 64


@pytest.mark.parametrize("rows,C,copies", [
    (4 * 16 * 32, 32, 0),  # 4 rows per LUT entry: enough
    (4 * 16 * 32 - 1, 32, 2),  # just under: one copy would give 4094 rows for 512 entries
    (1005, 32, 4),  # the digits MLP's first and last layers: 5025 rows for 512 entries
    (1005, 64, 8),  # its second: 8 copies reach 9045 of 8192
    (100, 64, 8),  # AUTO_MAX_COPIES
])
def test_auto_copies_reach_8_rows_per_lut_entry_below_4(rows, C, copies):
    assert auto_copies(rows, C) == copies


def _pooled(rng, T=16, D=32, M=16):
    """x [N, T, D] -> tokens (MatMul, T rows a sample) -> ReduceMean over T -> head (MatMul, 1 row a sample)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", T, D])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", M])
    inits = {"w1": (rng.standard_normal((D, D)) / np.sqrt(D)).astype(np.float32),
             "w2": (rng.standard_normal((D, M)) / np.sqrt(D)).astype(np.float32),
             "axes": np.array([1], np.int64)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="tokens"),
             helper.make_node("ReduceMean", ["h", "axes"], ["p"], keepdims=0, name="pool"),
             helper.make_node("MatMul", ["p", "w2"], ["y"], name="head")]
    return make_model(nodes, [x], [y], inits, opset=18)


@pytest.fixture(scope="module")
def pooled(tmp_path_factory):
    rng = np.random.default_rng(1)
    folder = tmp_path_factory.mktemp("pooled")
    onnx.save(_pooled(rng), folder / "m.onnx")
    (folder / "calib").mkdir()
    for k in range(3):  # 3 x 40 samples: 1920 token rows, 120 pooled rows for 16 x C=8 = 128 LUT entries
        np.savez(folder / "calib" / f"{k}.npz", x=rng.standard_normal((40, 16, 32)).astype(np.float32))
    return folder


def test_auto_gives_copies_only_to_the_layers_with_few_rows(pooled):
    result = convert_model(pooled / "m.onnx", pooled / "calib", None, ConvertOptions(progress=False, codebooks=8))
    tokens, head = result.converted
    assert (tokens.rows_seen, tokens.copies) == (1920, 0)  # 15 rows per entry
    assert not any("noisy copies" in note for note in tokens.notes)
    assert (head.rows_seen, head.copies) == (9 * 120, 8)  # ceil(8 * 128 / 120) - 1 = 8
    assert head.notes[0] == ("120 calibration rows for 128 LUT entries per output: learned from them and 8 noisy "
                             "copies of each (--augment auto: held-out NMSE 0.4677 with the copies, 0.5278 without)")
    assert (head.rows_heldout, head.rows_train) == (24, 9 * 96)  # held-out: real rows only, their copies unused
    assert json.loads(get_metadata(result.model)[KEY_SETTINGS])["augment"] == "auto"
    none = convert_model(pooled / "m.onnx", pooled / "calib", None, ConvertOptions(progress=False, codebooks=8,
                                                                                   augment=0))
    assert [(r.rows_seen, r.copies) for r in none.converted] == [(1920, 0), (120, 0)]
    assert "underdetermined" in none.converted[1].notes[0]
    fixed = convert_model(pooled / "m.onnx", pooled / "calib", None, ConvertOptions(progress=False, codebooks=8,
                                                                                    augment=2))
    assert [(r.rows_seen, r.copies) for r in fixed.converted] == [(3 * 1920, 2), (3 * 120, 2)]
    assert all(not r.notes or "noisy copies of each" not in r.notes[0] for r in fixed.converted)


def test_auto_learns_the_head_from_the_copies_it_would_get_alone(pooled):
    """The second pass's copies for a layer are those --augment K would give it: the same rows, so that
    --sequential's rows of the converted model pair with the original's."""
    from halut_onnx.augment import collect_layer_rows
    from halut_onnx.calibrate import collect_rows, model_inputs

    model = onnx.load(pooled / "m.onnx")
    base = CalibrationSet(pooled / "calib", model_inputs(model))
    targets = {"tokens": ("x", 32), "head": ("p", 32)}
    auto = collect_layer_rows(model, base, targets, {"tokens": 8, "head": 8}, None, 65536, progress=False)
    alone = collect_rows(model, AugmentedSet(base, 8), {"head": ("p", 32)}, 65536, progress=False)["head"]
    np.testing.assert_array_equal(auto["head"].rows, alone.rows)
    np.testing.assert_array_equal(auto["head"].sources.sample, alone.sources.sample)
    assert auto["tokens"].sources is None and auto["tokens"].copies == 0
    sequential = convert_model(pooled / "m.onnx", pooled / "calib", None,
                               ConvertOptions(progress=False, codebooks=8, sequential=True))
    assert [r.rows_seen for r in sequential.converted] == [1920, 9 * 120]
    # learned after the converted tokens layer, the head does better on its held-out rows without the copies
    assert [r.copies for r in sequential.converted] == [0, 0]
    assert sequential.converted[1].notes[0].startswith("120 calibration rows for 128 LUT entries per output: "
                                                       "learned from them alone (--augment auto: held-out NMSE ")


def test_auto_leaves_a_model_without_float_inputs_as_it_is(tmp_path, rng):
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8])
    table = rng.standard_normal((50, 32)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"]),
             helper.make_node("MatMul", ["e", "w"], ["y"], name="fc")]
    model = make_model(nodes, [ids], [y], {"table": table, "w": rng.standard_normal((32, 8)).astype(np.float32)})
    onnx.save(model, tmp_path / "m.onnx")
    (tmp_path / "calib").mkdir()
    np.savez(tmp_path / "calib" / "0.npz", ids=rng.integers(0, 50, (30, 4)))
    result = convert_model(tmp_path / "m.onnx", tmp_path / "calib", None, ConvertOptions(progress=False,
                                                                                          codebooks=8))
    assert [(r.rows_seen, r.copies) for r in result.converted] == [(120, 0)]
    assert "underdetermined" in result.converted[0].notes[0]


def test_a_budget_learns_from_the_copies_auto_gives_and_measures_on_real_inputs(pooled, tmp_path):
    rng = np.random.default_rng(5)
    (tmp_path / "held").mkdir()
    for k in range(2):
        np.savez(tmp_path / "held" / f"{k}.npz", x=rng.standard_normal((20, 16, 32)).astype(np.float32))
    options = ConvertOptions(progress=False, codebooks=8, budget="nmse=1", objective="macs",
                             heldout_data=str(tmp_path / "held"))
    result = convert_model(pooled / "m.onnx", pooled / "calib", None, options)
    learn_rows = result.budget.analysis.learn_rows
    assert {name: (rows.rows_seen, rows.copies) for name, rows in learn_rows.items()} == {
        "tokens": (1920, 0), "head": (9 * 120, 8)}
    assert result.budget.analysis.samples_heldout == 40  # the held-out files as they are
    assert [(r.name, r.copies) for r in result.converted] == [("tokens", 0), ("head", 8)]
    # timed on the first learn file's rows as it is (40 samples), not on its copies
    assert [(r.timed_rows, r.speedup > 0) for r in result.converted] == [(40 * 16, True), (40, True)]
    assert result.converted[1].notes[0].startswith("120 calibration rows for 128 LUT entries per output")
    assert ("learned from noisy copies of each calibration row too (--augment; train rows count them): head 8"
            in analysis_table(result.budget.analysis).splitlines())


def test_the_analysis_table_says_how_many_settings_kept_the_copies():
    from halut_onnx.analyze import Analysis, SensitivityRow
    from halut_onnx.calibrate import CollectedRows

    def row(layer, C, copies, learned=True):
        return SensitivityRow(layer, "MatMul", 32, 16, "pq", C, 1.0, rows_train=100 if learned else None,
                              copies=copies)

    rows = [row("head", 4, 8), row("head", 8, 0), row("head", 16, 8), row("head", 32, 0, learned=False),
            row("tokens", 8, 0), row("fc", 8, 2)]
    learn_rows = {name: CollectedRows(np.zeros((1, 32), np.float32), 10, 0, copies=k)
                  for name, k in (("head", 8), ("tokens", 0), ("fc", 2))}
    analysis = Analysis(rows, "y", [], [], 0, None, 0, 0.0, False, learn_rows=learn_rows)
    assert ("learned from noisy copies of each calibration row too (--augment; train rows count them): "
            "head 8 (kept by 2 of 3 settings), fc 2" in analysis_table(analysis).splitlines())


def test_finetuning_learns_from_the_copies_of_the_chosen_layers_only():
    from halut_onnx.analyze import Analysis, Setting, SensitivityRow
    from halut_onnx.budget import Option
    from halut_onnx.budget_convert import finetune_copies

    rows = [SensitivityRow("tokens", "MatMul", 32, 32, "pq", 8, 16.0, rows_train=100, copies=0),
            SensitivityRow("head", "MatMul", 32, 16, "pq", 8, 1.0, rows_train=100, copies=8),
            SensitivityRow("head", "MatMul", 32, 16, "pq", 16, 1.0, rows_train=100, copies=0)]
    analysis = Analysis(rows, "y", [], [], 0, None, 0, 0.0, False)
    key = {C: Setting("pq", C).key for C in (8, 16)}
    assert finetune_copies(analysis, {"tokens": Option("tokens", key[8], 0.0, 1.0)}) == 0
    assert finetune_copies(analysis, {"tokens": Option("tokens", key[8], 0.0, 1.0),
                                      "head": Option("head", key[8], 0.0, 1.0)}) == 8
    assert finetune_copies(analysis, {"head": Option("head", key[16], 0.0, 1.0)}) == 0  # that setting dropped them
    assert finetune_copies(analysis, {}) == 0


def test_budget_finetune_feeds_the_chosen_layers_copies(pooled, tmp_path, monkeypatch):
    import halut_onnx.budget_convert as budget_convert
    import halut_onnx.finetune as finetune_module

    seen = []

    def fake_finetune(work, plan, layers, learn_feeds, *args, **kwargs):  # the layers as learned
        seen.append(([c.name for c in plan], len(learn_feeds)))
        return layers, finetune_module.FinetuneReport("nmse", history=[(0, 0.0, 0.5)])

    def tune_the_choice(chosen, budget, search, tune):  # nmse=1 leaves no wider budget: tune the choice itself
        tune(chosen)
        return None, []

    monkeypatch.setattr(finetune_module, "finetune", fake_finetune)
    monkeypatch.setattr(budget_convert, "widen", tune_the_choice)
    rng = np.random.default_rng(5)
    (tmp_path / "held").mkdir()
    for k in range(2):
        np.savez(tmp_path / "held" / f"{k}.npz", x=rng.standard_normal((20, 16, 32)).astype(np.float32))
    options = ConvertOptions(progress=False, codebooks=8, budget="nmse=1", objective="macs", finetune=True,
                             heldout_data=str(tmp_path / "held"))
    result = convert_model(pooled / "m.onnx", pooled / "calib", None, options)
    assert [(r.name, r.copies) for r in result.converted] == [("tokens", 0), ("head", 8)]
    assert seen == [(["tokens", "head"], 3 * 9)]  # 3 learn files, each with the head's 8 copies


@pytest.mark.parametrize("encoder,copies", [("pq", 0), ("tree", 8)])
def test_the_analysis_gives_no_copies_to_a_layer_it_will_not_learn(pooled, tmp_path, encoder, copies):
    # the head (D = 32, M = 16, C = 8): a pq encode costs 16 D = 512 multiply-adds a row, as many as the layer, so
    # by the macs objective no pq setting is learned and the head needs no copies; tree's 4 C does save
    from halut_onnx.analyze import AnalyzeOptions, analyze

    rng = np.random.default_rng(5)
    (tmp_path / "held").mkdir()
    for k in range(2):
        np.savez(tmp_path / "held" / f"{k}.npz", x=rng.standard_normal((20, 16, 32)).astype(np.float32))
    options = AnalyzeOptions(ConvertOptions(progress=False, heldout_data=str(tmp_path / "held")), codebooks=(8,),
                             encoders=(encoder,), timing=False, objective="macs")
    analysis = analyze(pooled / "m.onnx", pooled / "calib", options)
    head = analysis.row("head", f"{encoder} C=8")
    assert (head.skipped is not None) == (copies == 0)
    assert (analysis.learn_rows["head"].rows_seen, analysis.learn_rows["head"].copies) == (120 * (copies + 1), copies)
    assert head.copies == copies
