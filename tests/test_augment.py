"""--augment: noisy copies of the calibration feeds (halut_onnx/augment.py), learned from and never measured on."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from budget_models import mlp3, write_files
from halut_onnx.analyze import AnalyzeOptions, analyze
from halut_onnx.augment import NOISE, AugmentedSet, augmented
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
        assert b.rows_train + b.rows_heldout == 3 * (a.rows_train + a.rows_heldout)
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
