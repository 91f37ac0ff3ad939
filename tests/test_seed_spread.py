"""benchmarks/seed_spread.py: the per-seed drops of an example's rows, and their mean, standard deviation and range,
on a stand-in example whose results are known."""

from __future__ import annotations

import statistics
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "examples"))

import seed_spread  # noqa: E402

DROPS = {0: (0.0100, 0.0300), 1: (0.0200, 0.0500), 2: (-0.0020, 0.0100)}  # seed -> (default, budget) drops


@pytest.fixture
def stand_in(monkeypatch):
    calls = []

    def run(out: Path, quick: bool, seed: int = 0) -> list[dict]:
        calls.append((out.name, quick, seed))
        original = 0.97 + seed / 100
        default, budget = DROPS[seed]
        return [{"setting": "default", "layers": "3 of 3", "original": original, "converted": original - default,
                 "drop": default},
                {"setting": "--budget agreement=0.99", "layers": f"{seed % 2} of 3", "original": original,
                 "converted": original - budget, "drop": budget}]

    monkeypatch.setitem(sys.modules, "stand_in_example", types.SimpleNamespace(run=run))
    monkeypatch.setitem(seed_spread.EXAMPLES, "stand-in", ("stand_in_example", {}))
    return calls


def test_rows_hold_each_seed_and_their_summary(stand_in, tmp_path):
    rows = seed_spread.spread("stand-in", 3, full=True, out=tmp_path)
    assert stand_in == [("seed0", False, 0), ("seed1", False, 1), ("seed2", False, 2)]
    assert [row[:2] for row in rows] == [["stand-in", "original accuracy %"], ["stand-in", "default (3 of 3)"],
                                         ["stand-in", "--budget agreement=0.99 (0 of 3, 1 of 3)"]]
    assert rows[0][2:5] == ["97.00", "98.00", "99.00"]
    default = [100 * d for d, _ in DROPS.values()]
    assert rows[1][2:] == ["1.00", "2.00", "-0.20", f"{statistics.fmean(default):.2f}",
                           f"{statistics.stdev(default):.2f}", "-0.20 .. 2.00"]
    assert rows[2][-3:] == ["3.00", "2.00", "1.00 .. 5.00"]


def test_the_table_prints_one_column_per_seed(stand_in, capsys):
    seed_spread.main(["stand-in", "--seeds", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["model", "row", "seed", "0", "seed", "1", "mean", "sd", "range"]
    assert lines[4].split() == ["stand-in", "default", "(3", "of", "3)", "1.00", "2.00", "1.50", "0.71", "1.00", "..",
                                "2.00"]
    assert [call[1:] for call in stand_in] == [(True, 0), (True, 1)]  # quick settings without --full


def test_one_seed_has_no_standard_deviation(stand_in, tmp_path):
    rows = seed_spread.spread("stand-in", 1, full=False, out=tmp_path)
    assert rows[1][2:] == ["1.00", "1.00", "nan", "1.00 .. 1.00"]


def test_seeds_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        seed_spread.main(["mlp", "--seeds", "0"])
    assert "--seeds must be >= 1, got 0" in capsys.readouterr().err
