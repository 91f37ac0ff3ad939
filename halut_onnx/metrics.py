"""End metrics of a converted model against its original, accumulated file by file: top-1 agreement, mean cosine,
NMSE. ``--budget METRIC=VALUE`` and ``halut-onnx analyze`` read them as a loss (0 = same outputs as the original).

- ``agreement``: fraction of rows whose arg-max over the last axis is the same (rows = all leading dims flattened:
  a ``[N, classes]`` output has N rows, a ``[B, T, classes]`` sequence output B*T). An integer output (labels)
  counts equal elements.
- ``cosine``: mean over samples (leading dim) of the cosine between the two outputs, each sample flattened.
- ``nmse``: ``sum((converted - original)^2) / sum(original^2)`` over everything.
- ``ctc``: for a ``[samples, time, classes]`` output (CTC sequence models; class 0 is the blank), each sample's
  greedy CTC decode (arg-max per frame, repeats merged, blanks dropped) of the converted model against the
  original's: ``1 - sum(edit distances) / sum(lengths of the original's decodes)``, i.e. one minus the converted
  model's character error rate with the original's output as the reference. A frame whose arg-max moves to the
  neighbouring frame changes the frame agreement but not the decoded sequence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numba import njit, prange

METRICS = ("agreement", "cosine", "nmse", "ctc")
MIN_SE_SAMPLES = 10  # samples below which standard_error is infinite
CTC_BLANK = 0  # the blank class of a CTC output (PaddleOCR, torchaudio, wav2vec2 put it first)


def ctc_decode(frames: np.ndarray, blank: int = CTC_BLANK) -> np.ndarray:
    """Greedy CTC decode of one sample's per-frame class indices: repeats merged, blanks dropped."""
    frames = np.asarray(frames).ravel()
    if frames.size == 0:
        return frames
    keep = np.ones(frames.size, bool)
    keep[1:] = frames[1:] != frames[:-1]
    out = frames[keep]
    return out[out != blank]


def edit_distance(a: np.ndarray, b: np.ndarray) -> int:
    """Levenshtein distance between two integer sequences (insertions, deletions, substitutions cost 1)."""
    if len(a) == len(b) and np.array_equal(a, b):  # most decodes of a layer converted alone: no row loop
        return 0
    if len(a) < len(b):
        a, b = b, a
    if len(b) == 0:
        return len(a)
    previous = np.arange(len(b) + 1)
    for i, x in enumerate(a, 1):
        # deletions and substitutions vectorised; insertions need the running minimum along the row
        current = np.empty_like(previous)
        current[0] = i
        current[1:] = np.minimum(previous[1:] + 1, previous[:-1] + (b != x))
        for j in range(1, len(current)):
            if current[j - 1] + 1 < current[j]:
                current[j] = current[j - 1] + 1
        previous = current
    return int(previous[-1])


@njit(parallel=True, cache=True)
def _compare(ref, conv, sums, top_ref, top_conv):
    """One pass over [samples, rows, classes] outputs: per sample the float64 sums of ref^2, conv^2, ref conv and
    (conv - ref)^2 (``sums`` columns 0..3), and per row the arg-max of each (first maximum; a NaN wins, as in
    np.argmax). Fused because a CTC output of 18k classes is tens of MB per file and numpy's separate passes
    (and float64 temporaries) took several times the model's own run."""
    n, rows, classes = ref.shape
    for i in prange(n):
        rr = cc = rc = dd = 0.0
        for t in range(rows):
            br = bc = 0
            nan_r = nan_c = False
            for k in range(classes):
                x = np.float64(ref[i, t, k])
                y = np.float64(conv[i, t, k])
                rr += x * x
                cc += y * y
                rc += x * y
                dd += (y - x) * (y - x)
                if not nan_r and (x != x or x > ref[i, t, br]):
                    br = k
                    nan_r = x != x
                if not nan_c and (y != y or y > conv[i, t, bc]):
                    bc = k
                    nan_c = y != y
            top_ref[i, t] = br
            top_conv[i, t] = bc
        sums[i, 0] = rr
        sums[i, 1] = cc
        sums[i, 2] = rc
        sums[i, 3] = dd


# What OutputComparison keeps per sample, one column each; every metric is a function of the columns' sums.
_SAME, _ROWS, _COS, _SQ_ERR, _SQ_REF, _CTC_ERRORS, _CTC_LENGTH = range(7)


@dataclass
class OutputComparison:
    """Per-sample statistics of one output of the original (``ref``) and the converted (``conv``) model, summed
    into the metrics, and their standard errors over the samples (``standard_error``)."""

    blocks: list = field(default_factory=list)  # one [samples, 7] float64 array per add(): the columns above
    ctc_shape: tuple | None = None  # (dtype, shape) of the first output added; ctc needs float [N, T, classes > 1]

    def add(self, ref: np.ndarray, conv: np.ndarray) -> None:
        ref, conv = np.asarray(ref), np.asarray(conv)
        if ref.shape != conv.shape:
            raise ValueError(f"the original output has shape {list(ref.shape)}, the converted {list(conv.shape)}")
        if self.ctc_shape is None:
            self.ctc_shape = (str(ref.dtype), list(ref.shape))
        if ref.dtype.kind not in "fc":  # labels: each element is a sample, right or wrong
            equal = (ref == conv).ravel().astype(np.float64)
            block = np.zeros((equal.size, 7))
            block[:, _SAME] = block[:, _COS] = equal
            block[:, _ROWS] = block[:, _SQ_REF] = 1.0
            block[:, _SQ_ERR] = 1.0 - equal
            self.blocks.append(block)
            return
        if ref.dtype.kind == "c":  # as float64 casting does: the real parts
            ref, conv = ref.real, conv.real
        n = ref.shape[0] if ref.ndim >= 1 and ref.size else 1
        block = np.zeros((n, 7))
        classes = ref.shape[-1] if ref.ndim >= 2 else 1
        dtype = np.float64 if ref.dtype.itemsize >= 8 else np.float32
        r, c = (np.ascontiguousarray(a, dtype=dtype).reshape(n, -1, max(classes, 1)) for a in (ref, conv))
        sums = np.zeros((n, 4))
        top_ref = np.zeros(r.shape[:2], np.int64)
        top_conv = np.zeros(r.shape[:2], np.int64)
        _compare(r, c, sums, top_ref, top_conv)
        if classes > 1:  # classes on the last axis
            block[:, _SAME] = (top_ref == top_conv).sum(axis=1)
            block[:, _ROWS] = top_ref.shape[1]
            if ref.ndim == 3:
                for i, (ref_frames, conv_frames) in enumerate(zip(top_ref, top_conv)):
                    ref_text = ctc_decode(ref_frames)
                    block[i, _CTC_ERRORS] = edit_distance(ref_text, ctc_decode(conv_frames))
                    block[i, _CTC_LENGTH] = len(ref_text)
        rr, cc, rc, dd = sums.T
        norms = np.sqrt(rr * cc)
        both_zero = (norms == 0) & (dd == 0)
        block[:, _COS] = np.where(norms > 0, rc / np.where(norms > 0, norms, 1.0), np.where(both_zero, 1.0, 0.0))
        block[:, _SQ_ERR], block[:, _SQ_REF] = dd, rr
        self.blocks.append(block)

    @property
    def samples(self) -> int:
        return sum(len(b) for b in self.blocks)

    def _stats(self) -> np.ndarray:
        return np.concatenate(self.blocks) if self.blocks else np.zeros((0, 7))

    def _value(self, metric: str) -> float | None:
        return _metric(metric, self._stats().sum(axis=0), self.samples)

    @property
    def agreement(self) -> float | None:
        return self._value("agreement")

    @property
    def ctc(self) -> float | None:
        """1 - the converted decodes' edit distance per character of the original's (None: not a CTC output)."""
        if not self._is_ctc():
            return None
        return self._value("ctc")

    @property
    def cosine(self) -> float:
        return self._value("cosine")

    @property
    def nmse(self) -> float:
        return self._value("nmse")

    def _is_ctc(self) -> bool:
        if self.ctc_shape is None:
            return False
        dtype, shape = self.ctc_shape
        return np.dtype(dtype).kind in "fc" and len(shape) == 3 and shape[-1] > 1

    def value(self, metric: str) -> float:
        if metric == "agreement":
            if self.agreement is None:
                raise ValueError("top-1 agreement needs an output with a last axis of more than one class "
                                 "(or an integer output); use --budget cosine=... or nmse=...")
            return self.agreement
        if metric == "cosine":
            return self.cosine
        if metric == "nmse":
            return self.nmse
        if metric == "ctc":
            if self.ctc is None:
                dtype, shape = self.ctc_shape or ("?", "?")
                raise ValueError(f"ctc needs a float output [samples, time, classes] with more than one class; the "
                                 f"compared output is {dtype} {shape} (choose another with --metric-output)")
            return self.ctc
        raise ValueError(f"unknown metric {metric!r} (expected {', '.join(METRICS)})")

    def standard_error(self, metric: str) -> float:
        """The jackknife standard error of ``value(metric)`` over the samples: how much the metric would move on
        other held-out data of the same kind. Infinite with fewer than MIN_SE_SAMPLES samples, where a jackknife
        says little (two pages of a detector give a number, not an error bar)."""
        self.value(metric)  # the same errors for a metric this output does not have
        stats = self._stats()
        n = len(stats)
        if n < MIN_SE_SAMPLES:
            return math.inf
        total = stats.sum(axis=0)
        loo = np.array([_metric(metric, total - row, n - 1) for row in stats], dtype=np.float64)
        loo = loo[np.isfinite(loo)]
        if len(loo) < 2:
            return math.inf
        return float(np.sqrt((n - 1) / n * np.sum((loo - loo.mean()) ** 2)))

    def values(self) -> dict[str, float | None]:
        return {"agreement": self.agreement, "cosine": self.cosine, "nmse": self.nmse, "ctc": self.ctc}


def _metric(metric: str, total: np.ndarray, samples: int) -> float | None:
    """A metric from the summed per-sample columns (None: agreement without rows)."""
    if metric == "agreement":
        return float(total[_SAME] / total[_ROWS]) if total[_ROWS] else None
    if metric == "cosine":
        return float(total[_COS] / samples) if samples else 1.0
    if metric == "nmse":
        if total[_SQ_REF] > 0:
            return float(total[_SQ_ERR] / total[_SQ_REF])
        return 0.0 if total[_SQ_ERR] == 0 else math.inf
    if metric == "ctc":
        return float(1.0 - total[_CTC_ERRORS] / max(total[_CTC_LENGTH], 1))
    raise ValueError(f"unknown metric {metric!r} (expected {', '.join(METRICS)})")


def loss(metric: str, value: float) -> float:
    """How far ``value`` of ``metric`` is from the original model's (0 = identical outputs)."""
    return value if metric == "nmse" else 1.0 - value


def metric_output(outputs: list[tuple[str, np.dtype | None, int | None]], name: str | None = None) -> str:
    """The output the end metric compares: ``name``, else the first float output of rank >= 2, else the first.

    ``outputs`` are (name, numpy dtype or None, rank or None) of the model's graph outputs.
    """
    names = [o[0] for o in outputs]
    if name is not None:
        if name not in names:
            raise ValueError(f"--metric-output {name!r} is not an output of the model (its outputs: {', '.join(names)})")
        return name
    for out, dtype, rank in outputs:
        if dtype is not None and dtype.kind == "f" and rank is not None and rank >= 2:
            return out
    return names[0]
