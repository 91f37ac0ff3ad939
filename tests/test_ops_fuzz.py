"""Fuzzing the custom ops in a subprocess: a crash fails this test instead of killing pytest."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("seed", [0, 1])
def test_fuzzed_inputs_give_results_or_clean_errors(seed):
    script = Path(__file__).with_name("ops_fuzz.py")
    done = subprocess.run([sys.executable, str(script), str(seed), "400"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    assert done.stdout.strip().endswith("ok 400")
