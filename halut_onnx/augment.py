"""Calibration augmentation (``--augment K``): each calibration file is fed K more times with Gaussian noise on its
float inputs, so that layers with few rows to learn from get more.

A layer after a flatten or a pooling sees one row per sample, and 16 x C LUT entries per output need several
times that many rows (the learning warns when it has fewer). Noisy copies of the model's inputs are not new data,
but the rows they give each layer come through the model itself, so they vary the way its inputs do; on the digits
MLP (1005 calibration rows) 8 copies took the default setting's test-accuracy drop from 3.56 to 1.04 points, mean
of 5 trained models (docs/learning.md, "Few calibration rows"). The held-out files of a budget are never augmented:
they measure the model on real inputs.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from .calibrate import CalibrationSet
from .errors import CalibrationError

#: the noise's standard deviation, as a share of each input's standard deviation in its file
NOISE = 0.1


class AugmentedSet:
    """``base``'s files, each followed by ``copies`` noisy copies of its feed; the same interface as
    CalibrationSet (``inputs``, ``files``, iteration over (path, feed), ``len`` = feeds in all)."""

    def __init__(self, base: CalibrationSet, copies: int, seed: int = 0):
        self.base, self.copies, self.seed = base, copies, seed
        self.inputs, self.files, self.directory = base.inputs, base.files, base.directory
        self.noisy = [spec.name for spec in base.inputs if spec.dtype is None or spec.dtype.kind == "f"]
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


def augmented(calibration: CalibrationSet, copies: int, seed: int = 0):
    """``calibration`` itself for ``copies == 0``, else an AugmentedSet."""
    return calibration if copies == 0 else AugmentedSet(calibration, copies, seed)
