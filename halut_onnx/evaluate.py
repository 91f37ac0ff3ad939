"""Compare a converted model with its original on data: per-output NMSE, mean cosine, top-1 agreement.

Statistics are accumulated file by file (float64 sums), so memory does not grow with the data set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from .calibrate import CalibrationSet, model_inputs
from .metrics import OutputComparison
from .model_io import load_model
from .runtime import halut_placement, make_session


@dataclass
class OutputMetrics:
    """How close one output of the converted model is to the original's, over all evaluation samples.

    The sums are metrics.OutputComparison's, the same that ``--budget`` and ``analyze`` measure; an integer output
    (labels) has only an agreement (the fraction of equal elements).
    """

    name: str
    shape: tuple[int, ...] = ()  # of the last batch
    integer: bool = False
    comparison: OutputComparison = field(default_factory=OutputComparison)

    def add(self, ref: np.ndarray, conv: np.ndarray) -> None:
        if ref.shape != conv.shape:
            raise ValueError(f"output {self.name!r}: the original gives shape {list(ref.shape)}, "
                             f"the converted model {list(conv.shape)}")
        self.shape = tuple(ref.shape)
        self.integer = ref.dtype.kind not in "fc"
        self.comparison.add(ref, conv)

    @property
    def nmse(self) -> float | None:
        return None if self.integer else self.comparison.nmse

    @property
    def cosine(self) -> float | None:
        return None if self.integer else self.comparison.cosine

    @property
    def top1_agreement(self) -> float | None:
        return self.comparison.agreement


@dataclass
class EvalResult:
    outputs: list[OutputMetrics] = field(default_factory=list)
    files: int = 0
    library_loaded: bool = False
    placement: dict[str, int] | None = None  # execution provider -> Halut nodes it ran (--provider cuda)


def evaluate(original: str | os.PathLike, converted: str | os.PathLike, data_dir: str | os.PathLike,
             threads: int | None = None, progress: bool = True, provider: str = "cpu") -> EvalResult:
    """Run both models on every file of ``data_dir`` (the calibration format) on ``provider`` and compare their
    outputs."""
    from tqdm.auto import tqdm

    model = load_model(original)
    load_model(converted)  # a clear error for a missing or non-ONNX converted file
    data = CalibrationSet(data_dir, model_inputs(model))
    ref_session, _ = make_session(original, threads, provider=provider)
    conv_session, loaded = make_session(converted, threads, halut=True, provider=provider)
    names = [o.name for o in ref_session.get_outputs()]
    missing = [n for n in names if n not in {o.name for o in conv_session.get_outputs()}]
    if missing:
        raise ValueError(f"{converted} has no output {missing[0]!r} (an output of {original})")
    result = EvalResult([OutputMetrics(n) for n in names], len(data), loaded)
    if provider != "cpu":
        result.placement = halut_placement(converted, data.read(data.files[0]), threads, provider)
    for path, feed in tqdm(data, total=len(data), desc="evaluating", unit="file", disable=not progress):
        ref = ref_session.run(names, feed)
        conv = conv_session.run(names, feed)
        for metrics, r, c in zip(result.outputs, ref, conv):
            metrics.add(np.asarray(r), np.asarray(c))
    return result
