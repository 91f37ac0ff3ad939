"""Latency of an original and a converted model in onnxruntime, on the same inputs, thread count and execution
provider."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from .calibrate import CalibrationSet, InputSpec, model_inputs
from .model_io import load_model
from .runtime import halut_placement, make_session


@dataclass
class BenchResult:
    original_ms: float  # median latency of one run
    converted_ms: float
    runs: int
    threads: int
    library_loaded: bool
    feed_shapes: dict[str, list[int]]
    provider: str = "cpu"
    placement: dict[str, int] | None = None  # execution provider -> Halut nodes it ran (--provider cuda)

    @property
    def speedup(self) -> float:
        """original / converted latency: above 1 the converted model is faster."""
        return self.original_ms / self.converted_ms if self.converted_ms > 0 else float("inf")


def random_feed(inputs: list[InputSpec], batch: int, dims: dict[str, int], rng: np.random.Generator) -> dict:
    """Inputs with the declared shapes: a dynamic leading dim is ``batch``, a named dynamic dim ``dims[name]``."""
    feed = {}
    for spec in inputs:
        if spec.shape is None:
            raise ValueError(f"input {spec.name!r} has no declared shape; give --data")
        shape = []
        for axis, d in enumerate(spec.shape):
            if isinstance(d, int):
                shape.append(d)
            elif isinstance(d, str) and d in dims:
                shape.append(dims[d])
            elif axis == 0:
                shape.append(batch)
            else:
                raise ValueError(
                    f"input {spec.name!r} has dynamic dim {axis} ({d or 'unnamed'}); set it with --dim "
                    f"{d or 'NAME'}=VALUE or give --data"
                )
        dtype = spec.dtype or np.dtype(np.float32)
        if dtype.kind == "f":
            feed[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            feed[spec.name] = np.zeros(shape, dtype=dtype)
        else:
            feed[spec.name] = rng.integers(0, 2, shape).astype(dtype)
    return feed


def median_ms(session, feed: dict, runs: int, warmup: int) -> float:
    """Median latency (ms) of ``runs`` runs of an onnxruntime session on ``feed``, after ``warmup`` runs."""
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def bench(original: str | os.PathLike, converted: str | os.PathLike, threads: int = 1, runs: int = 50,
          warmup: int = 5, batch: int = 1, dims: dict[str, int] | None = None,
          data_dir: str | os.PathLike | None = None, seed: int = 0, provider: str = "cpu") -> BenchResult:
    """Median latency of both models on one feed (the first file of ``data_dir``, or random inputs), on
    ``provider``. On a GPU the times are what ``session.run`` with host arrays costs, copies included, for both
    models alike; ``placement`` says which provider ran the Halut nodes."""
    if threads < 1 or runs < 1 or warmup < 0 or batch < 1:
        raise ValueError("--threads, --runs and --batch must be >= 1 and --warmup >= 0")
    model = load_model(original)
    load_model(converted)
    inputs = model_inputs(model)
    if data_dir is not None:
        data = CalibrationSet(data_dir, inputs)
        feed = data.read(data.files[0])
    else:
        feed = random_feed(inputs, batch, dims or {}, np.random.default_rng(seed))
    ref_session, _ = make_session(original, threads, provider=provider)
    conv_session, loaded = make_session(converted, threads, halut=True, provider=provider)
    placement = halut_placement(converted, feed, threads, provider) if provider != "cpu" else None
    ref_ms, conv_ms = latencies(ref_session, conv_session, feed, runs, warmup)
    return BenchResult(ref_ms, conv_ms, runs, threads, loaded, {k: list(v.shape) for k, v in feed.items()},
                       provider, placement)


def latencies(ref_session, conv_session, feed: dict, runs: int, warmup: int) -> tuple[float, float]:
    """Median latency (ms) of two onnxruntime sessions on ``feed``, measured interleaved twice and the better of
    each kept, so that a slow phase of the machine hits both."""
    ref_ms = median_ms(ref_session, feed, runs, warmup)
    conv_ms = median_ms(conv_session, feed, runs, warmup)
    return min(ref_ms, median_ms(ref_session, feed, runs, 0)), min(conv_ms, median_ms(conv_session, feed, runs, 0))
