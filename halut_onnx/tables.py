"""Plain-text tables with aligned columns (numbers right-aligned), for the CLI's reports."""

from __future__ import annotations

import math
from typing import Sequence


def fmt_number(x, digits: int = 4) -> str:
    """A float in ``digits`` significant digits ('-' for None or NaN); ints as they are."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def format_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    cells = [[fmt_number(c) if not isinstance(c, str) else c for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [all(_is_number(r[i]) for r in rows) and rows != [] for i in range(len(headers))]

    def line(values) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)


def _is_number(x) -> bool:
    return x is None or (isinstance(x, (int, float)) and not isinstance(x, bool))
