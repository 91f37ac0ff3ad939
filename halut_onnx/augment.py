"""Calibration augmentation (``--augment K|auto``): each calibration file is fed K more times with Gaussian noise on
its float inputs, so that layers with few rows to learn from get more.

A layer after a flatten or a pooling sees one row per sample, and 16 x C LUT entries per output need several
times that many rows (the learning warns when it has fewer). Noisy copies of the model's inputs are not new data,
but the rows they give each layer come through the model itself, so they vary the way its inputs do; on the digits
MLP (1005 calibration rows) they took the test-accuracy drop from 2.70 points to 1.37 (auto) and 1.15 (8 copies),
mean of 5 trained models (docs/learning.md, "Few calibration rows"). The held-out files of a budget are never
augmented: they measure the model on real inputs.

The default, ``--augment auto`` (``ConvertOptions.augment = None``), gives copies only to the layers that need them:
the files are read once as they are, and the layers that saw fewer than AUTO_MIN_ROWS_PER_ENTRY rows per LUT entry
get their rows again from one more pass over the files with enough copies to reach AUTO_ROWS_PER_ENTRY
(``collect_layer_rows``); each such layer is then learned with and without its copies and keeps the lower held-out
error (``LearnOptions.try_without_copies``, ``learned_copies``).
"""

from __future__ import annotations

import logging
import math
from typing import Iterator

import numpy as np

from .calibrate import CalibrationSet, CollectedRows, collect_rows
from .errors import CalibrationError
from .learn import LearnReport
from .ops import NUM_CODES

log = logging.getLogger(__name__)

#: the noise's standard deviation, as a share of each input's standard deviation in its file
NOISE = 0.1
# --augment auto: a layer that saw fewer calibration rows than AUTO_MIN_ROWS_PER_ENTRY per LUT entry (16 C) gets
# enough copies to reach AUTO_ROWS_PER_ENTRY, AUTO_MAX_COPIES at most. Measured (docs/learning.md): the digits MLP's
# three layers (2 and 1 rows per entry) all gain from copies (copies for the underdetermined second layer alone:
# 1.96 points lost, for all three 1.15-1.33, in a one-off numpy run); 8 copies everywhere (16 rows per entry) were
# within the spread of auto's 4 / 8 / 4. PP-OCR rec's MatMuls at 12
# calibration lines (1 row per entry): CER 2.99 % -> 0.35 %; at its example's 400 lines (31) it is left alone. The
# small digits ViT's head (2 rows per entry) lost 0.19 points more with its copies than without, within the spread.
AUTO_MIN_ROWS_PER_ENTRY = 4
AUTO_ROWS_PER_ENTRY = 8
AUTO_MAX_COPIES = 8


class AugmentedSet:
    """``base``'s files, each followed by ``copies`` noisy copies of its feed; the same interface as
    CalibrationSet (``inputs``, ``files``, iteration over (path, feed), ``len`` = feeds in all)."""

    def __init__(self, base: CalibrationSet, copies: int, seed: int = 0):
        self.base, self.copies, self.seed = base, copies, seed
        self.inputs, self.files, self.directory = base.inputs, base.files, base.directory
        self.noisy = float_inputs(base)
        if not self.noisy:
            found = ", ".join(f"{spec.name!r} ({spec.dtype.name})" for spec in base.inputs)
            raise CalibrationError(f"--augment adds noise to float model inputs; this model's inputs are {found}")

    def __len__(self) -> int:
        return len(self.base) * (self.copies + 1)

    def __iter__(self) -> Iterator[tuple]:
        for index, (path, feed) in enumerate(self.base):
            yield path, feed
            rng = np.random.default_rng([self.seed, index, 5])
            # an input declared without a type may turn out not to be float: it stays as it is
            scales = {name: NOISE * float(np.std(value, dtype=np.float64)) for name, value in feed.items()
                      if name in self.noisy and value.dtype.kind == "f"}
            for _ in range(self.copies):
                yield path, {name: (value + rng.normal(0.0, scales[name], value.shape)).astype(value.dtype)
                             if name in scales else value for name, value in feed.items()}


def float_inputs(base: CalibrationSet) -> list[str]:
    """The inputs noise can be added to: float ones, and those declared without a type."""
    return [spec.name for spec in base.inputs if spec.dtype is None or spec.dtype.kind == "f"]


def augmented(calibration: CalibrationSet, copies: int, seed: int = 0):
    """``calibration`` itself for ``copies == 0``, else an AugmentedSet."""
    return calibration if copies == 0 else AugmentedSet(calibration, copies, seed)


def auto_copies(rows: int, codebooks: int) -> int:
    """The noisy copies ``--augment auto`` gives a layer that saw ``rows`` calibration rows, learned at C =
    ``codebooks``: none from AUTO_MIN_ROWS_PER_ENTRY rows per LUT entry up, else enough to reach
    AUTO_ROWS_PER_ENTRY, AUTO_MAX_COPIES at most."""
    entries = NUM_CODES * codebooks
    if rows >= AUTO_MIN_ROWS_PER_ENTRY * entries:
        return 0
    return min(AUTO_MAX_COPIES, math.ceil(AUTO_ROWS_PER_ENTRY * entries / max(rows, 1)) - 1)


def learned_copies(rows: CollectedRows, report: LearnReport) -> int:
    """The noisy copies of each calibration row a layer learned from: those it was given, unless learning without
    them did better on its held-out rows (``LearnOptions.try_without_copies``)."""
    return rows.copies if report.copies is not False else 0


def collect_layer_rows(model, base: CalibrationSet, targets: dict, codebooks: dict[str, int], copies: int | None,
                       max_rows: int, seed: int = 0, progress: bool = True,
                       desc: str = "calibrating") -> dict[str, CollectedRows]:
    """``calibrate.collect_rows`` of ``targets`` from ``base`` with ``copies`` noisy copies of each file (``--augment
    K``), or, for ``copies=None`` (``--augment auto``), from the files as they are and then, for the layers
    ``auto_copies`` gives copies (learned at ``codebooks[layer]``; a layer not in it gets none), from one more pass
    over the files and their copies, each layer taking as many copies as it needs and ``max_rows`` holds. Each
    layer's ``CollectedRows.copies`` says how many it got.
    """
    if copies is not None:
        return collect_rows(model, augmented(base, copies, seed), targets, max_rows, seed, progress, desc)
    rows = collect_rows(model, base, targets, max_rows, seed, progress, desc)
    # copies past the row cap would only take real rows' places in the sample
    wanted = {name: min(auto_copies(r.rows_seen, codebooks[name]), max_rows // max(r.rows_seen, 1) - 1)
              for name, r in rows.items() if r.problem is None and name in codebooks}
    few = [name for name, k in wanted.items() if k > 0]
    if not few:
        return rows
    if not float_inputs(base):
        log.info("%d layers saw fewer than %d calibration rows per LUT entry, but the model has no float input to "
                 "add noise to", len(few), AUTO_MIN_ROWS_PER_ENTRY)
        return rows
    most = max(wanted[name] for name in few)
    rows.update(collect_rows(model, AugmentedSet(base, most, seed), {name: targets[name] for name in few},
                             max_rows, seed, progress, f"{desc}: noisy copies for {len(few)} layers",
                             {name: wanted[name] for name in few}))
    return rows
