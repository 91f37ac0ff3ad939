"""Compare a converted model with its original on data: per-output NMSE, cosine similarity, top-1 agreement.

Statistics are accumulated file by file (float64 sums), so memory does not grow with the data set.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from .calibrate import CalibrationSet, model_inputs
from .model_io import load_model
from .runtime import make_session


@dataclass
class OutputMetrics:
    """How close one output of the converted model is to the original's, over all evaluation samples."""

    name: str
    shape: tuple[int, ...] = ()  # of the last batch
    sq_err: float = 0.0  # sum (converted - original)^2
    sq_ref: float = 0.0  # sum original^2
    sq_conv: float = 0.0
    dot: float = 0.0
    top1_same: int = 0
    top1_rows: int = 0  # rows compared for top-1 (0: not a classifier-like output)
    classifier: bool | None = None

    @property
    def nmse(self) -> float:
        return self.sq_err / self.sq_ref if self.sq_ref > 0 else (0.0 if self.sq_err == 0 else math.inf)

    @property
    def cosine(self) -> float:
        denom = math.sqrt(self.sq_ref * self.sq_conv)
        return self.dot / denom if denom > 0 else (1.0 if self.sq_err == 0 else 0.0)

    @property
    def top1_agreement(self) -> float | None:
        return self.top1_same / self.top1_rows if self.top1_rows else None

    def add(self, ref: np.ndarray, conv: np.ndarray) -> None:
        if ref.shape != conv.shape:
            raise ValueError(f"output {self.name!r}: the original gives shape {list(ref.shape)}, "
                             f"the converted model {list(conv.shape)}")
        self.shape = tuple(ref.shape)
        if ref.dtype.kind not in "fc":
            # integer outputs (labels): only agreement means something
            self.sq_err += float(np.count_nonzero(ref != conv))
            self.sq_ref += float(ref.size)
            return
        r, c = ref.astype(np.float64), conv.astype(np.float64)
        self.sq_err += float(np.sum((c - r) ** 2))
        self.sq_ref += float(np.sum(r * r))
        self.sq_conv += float(np.sum(c * c))
        self.dot += float(np.sum(r * c))
        # Classifier-like: float [N, classes] with several classes.
        is_classifier = ref.ndim == 2 and ref.shape[1] > 1
        self.classifier = is_classifier if self.classifier is None else (self.classifier and is_classifier)
        if is_classifier:
            self.top1_same += int(np.sum(np.argmax(ref, axis=1) == np.argmax(conv, axis=1)))
            self.top1_rows += ref.shape[0]


@dataclass
class EvalResult:
    outputs: list[OutputMetrics] = field(default_factory=list)
    files: int = 0
    library_loaded: bool = False


def evaluate(original: str | os.PathLike, converted: str | os.PathLike, data_dir: str | os.PathLike,
             threads: int | None = None, progress: bool = True) -> EvalResult:
    """Run both models on every file of ``data_dir`` (the calibration format) and compare their outputs."""
    from tqdm.auto import tqdm

    model = load_model(original)
    load_model(converted)  # a clear error for a missing or non-ONNX converted file
    data = CalibrationSet(data_dir, model_inputs(model))
    ref_session, _ = make_session(original, threads)
    conv_session, loaded = make_session(converted, threads, halut=True)
    names = [o.name for o in ref_session.get_outputs()]
    missing = [n for n in names if n not in {o.name for o in conv_session.get_outputs()}]
    if missing:
        raise ValueError(f"{converted} has no output {missing[0]!r} (an output of {original})")
    result = EvalResult([OutputMetrics(n) for n in names], len(data), loaded)
    for path, feed in tqdm(data, total=len(data), desc="evaluating", unit="file", disable=not progress):
        ref = ref_session.run(names, feed)
        conv = conv_session.run(names, feed)
        for metrics, r, c in zip(result.outputs, ref, conv):
            metrics.add(np.asarray(r), np.asarray(c))
    return result
