"""Which candidate layers to convert, and with how many codebooks (the rule is documented in docs/cli.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .options import compile_patterns
from .passes import LayerCandidate, SkippedLayer

MIN_DEFAULT_CODEBOOKS = 4
MAX_DEFAULT_CODEBOOKS = 64
# The default aims at 2 input columns per codebook, up to 64 codebooks: on the digits MLP (examples/digits_mlp.py,
# D = 64, 128, 64) D/8 lost 5.6 accuracy points, D/4 2.8, D/2 0.56 (pq). Fewer codebooks are faster: use -C.
COLUMNS_PER_CODEBOOK = 2


def default_codebooks(D: int) -> int:
    """C for a layer with D input columns: the power of two nearest to D / 2, within [4, 64], and at most D."""
    target = max(D / COLUMNS_PER_CODEBOOK, 1.0)
    C = 2 ** round(math.log2(target))
    return int(min(max(C, MIN_DEFAULT_CODEBOOKS), MAX_DEFAULT_CODEBOOKS, D))


@dataclass
class SelectedLayer:
    candidate: LayerCandidate
    codebooks: int
    note: str | None = None  # e.g. "-C 64 > D=32: C=D"


def select_layers(
    candidates: list[LayerCandidate],
    include=(),
    exclude=(),
    codebooks: int | None = None,
    min_dim: int = 16,
) -> tuple[list[SelectedLayer], list[SkippedLayer]]:
    """Split ``candidates`` into the layers to convert (with their C) and the skipped ones (with a reason).

    ``include`` / ``exclude`` are regular expressions searched in node names: a layer is converted when it matches
    some ``include`` (or there is none) and no ``exclude``.
    """
    includes = compile_patterns(include, "--include")
    excludes = compile_patterns(exclude, "--exclude")
    selected: list[SelectedLayer] = []
    skipped: list[SkippedLayer] = []
    for cand in candidates:
        reason = None
        if includes and not any(p.search(cand.name) for p in includes):
            reason = "not matched by --include"
        else:
            hit = next((p.pattern for p in excludes if p.search(cand.name)), None)
            if hit is not None:
                reason = f"matched by --exclude {hit!r}"
        if reason is None and cand.D < min_dim:
            reason = f"D={cand.D} is below --min-dim {min_dim}: too small to gain from a lookup"
        if reason is not None:
            skipped.append(SkippedLayer(cand.name, cand.op_type, reason))
            continue
        note = None
        C = default_codebooks(cand.D) if codebooks is None else codebooks
        if C > cand.D:
            note = f"-C {C} is more than D={cand.D}: C=D"
            C = cand.D
        selected.append(SelectedLayer(cand, C, note))
    return selected, skipped
