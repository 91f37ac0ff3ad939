"""Conversion options: one typed field per ``halut-onnx convert`` flag, with the defaults in one place.

Kept free of heavy imports so the CLI can build its options and help texts from these defaults.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass


def compile_patterns(patterns, flag: str) -> list[re.Pattern]:
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise ValueError(f"{flag} {pattern!r} is not a valid regular expression: {exc}") from None
    return compiled


DEFAULT_HELDOUT_FILES = 0.25


@dataclass(frozen=True)
class ConvertOptions:
    """Conversion settings; each field is one ``halut-onnx convert`` flag (``--max-rows`` for ``max_rows``...)."""

    codebooks: int | None = None  # -C/--codebooks: fixed C for every layer; None: selection.default_codebooks(D)
    # --encoder: "tree" or "pq"; None: pq (learn.LearnOptions' default: see docs/learning.md), and with --budget
    # both are analysed (a given --encoder is the only one analysed: half the settings)
    encoder: str | None = None
    include: tuple[str, ...] = ()  # --include: regexes over node names; convert only matching layers
    exclude: tuple[str, ...] = ()  # --exclude: regexes over node names; never convert matching layers
    min_dim: int = 16  # --min-dim: layers with fewer input columns D are skipped
    max_rows: int = 65536  # --max-rows: calibration rows kept per layer (uniform random sample)
    ridge: float | None = None  # --ridge: LUT ridge lambda; None picks it on the held-out rows
    heldout_fraction: float = 0.2  # --heldout-fraction: calibration rows held out to measure each layer
    # --augment K: each calibration file fed K more times with noise on its float inputs; None (--augment auto): copies
    # only for the layers with few calibration rows per LUT entry (augment.py)
    augment: int | None = None
    seed: int = 0  # --seed: row sampling and learning
    memory_mb: int = 2048  # --memory-mb: row samples held at once; more layers -> more passes over the data
    progress: bool = True  # --progress/--no-progress: tqdm bars on stderr
    budget: str | None = None  # --budget METRIC=VALUE: convert the layers and settings that save most within it
    sequential: bool = False  # --sequential: learn each layer on the inputs the converted layers before it produce
    # --heldout-files: the share of the calibration files held out to measure the budget metric; None:
    # DEFAULT_HELDOUT_FILES, or none at all with --heldout-data
    heldout_files: float | None = None
    # --heldout-data DIR: files the budget metric is measured on instead (every --calib file is learned from): data
    # the model was not fitted to, such as a validation split, so that the budget holds on new data
    heldout_data: str | None = None
    # --objective: what a budget maximises: "time", the measured time saved in the model, or "macs", the
    # multiply-adds removed (deterministic); None: "time" when the custom-op library loads (the kernels can be
    # timed), else "macs"
    objective: str | None = None
    metric_output: str | None = None  # --metric-output: the output the budget metric compares (default: first float)
    finetune: bool = False  # --finetune: with --budget, fine-tune the chosen layers' LUTs together (needs torch)

    @property
    def layer_encoder(self) -> str:
        """The encoder of the layers converted without a budget."""
        return self.encoder or "pq"

    def validate(self) -> None:
        if self.codebooks is not None and self.codebooks < 1:
            raise ValueError(f"--codebooks must be >= 1, got {self.codebooks}")
        if self.encoder not in (None, "tree", "pq"):
            raise ValueError(f"--encoder must be 'tree' or 'pq', got {self.encoder!r}")
        if self.min_dim < 1:
            raise ValueError(f"--min-dim must be >= 1, got {self.min_dim}")
        if self.max_rows < 1:
            raise ValueError(f"--max-rows must be >= 1, got {self.max_rows}")
        if self.ridge is not None and not (math.isfinite(self.ridge) and self.ridge > 0):
            raise ValueError(f"--ridge must be > 0, got {self.ridge}")
        if not 0 <= self.heldout_fraction < 1:
            raise ValueError(f"--heldout-fraction must be in [0, 1), got {self.heldout_fraction}")
        if self.ridge is None and self.heldout_fraction == 0:
            raise ValueError("--heldout-fraction 0 leaves no rows to choose the ridge on: give --ridge too")
        if self.augment is not None and self.augment < 0:
            raise ValueError(f"--augment must be >= 0, got {self.augment}")
        if self.memory_mb < 1:
            raise ValueError(f"--memory-mb must be >= 1, got {self.memory_mb}")
        compile_patterns(self.include, "--include")
        compile_patterns(self.exclude, "--exclude")
        if self.budget is not None:
            from .budget import parse_budget

            parse_budget(self.budget)
        if self.objective not in (None, "macs", "time"):
            raise ValueError(f"--objective must be 'macs' or 'time', got {self.objective!r}")
        if self.finetune and self.budget is None:
            raise ValueError("--finetune needs --budget: the fine-tuned model is scored on the budget's held-out files")
        if self.heldout_files is not None and not 0 < self.heldout_files < 1:
            raise ValueError(f"--heldout-files must be in (0, 1), got {self.heldout_files}")
        if self.heldout_data is not None and self.heldout_files is not None:
            raise ValueError("--heldout-files and --heldout-data both given: with --heldout-data no calibration file "
                             "is held out")

    def settings(self) -> dict:
        """The options that shape the output (recorded in the model's metadata)."""
        out = dataclasses.asdict(self)
        out.pop("progress")
        out["include"], out["exclude"] = list(self.include), list(self.exclude)
        if self.augment is None:
            out["augment"] = "auto"  # as the flag spells it: a reader of the metadata would not guess it from null
        return out
