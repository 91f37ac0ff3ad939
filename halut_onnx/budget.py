"""Accuracy budgets: ``--budget METRIC=VALUE``, the held-out calibration files it is measured on, and the choice
of layers and settings that removes the most cost within it (docs/budget.md).

The choice is a multiple-choice knapsack: each layer is left as it is or converted with one of its settings, each
setting with a measured single-layer loss and a saving; the predicted loss of a combination is the sum of its
single-layer losses. Losses compound in ways a sum does not capture, so the combination is then measured and, while
it misses the budget, the knapsack is solved again within a budget shrunk by the compounding seen, and then its
worst offender (largest single-layer loss) is upgraded to a more accurate setting or dropped (``back_off``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .metrics import METRICS, loss

#: bins of the loss budget in the knapsack's dynamic programme (losses are rounded up to a bin: never optimistic)
BINS = 2000


@dataclass(frozen=True)
class Budget:
    metric: str  # one of metrics.METRICS
    value: float

    @property
    def max_loss(self) -> float:
        """The largest loss (metrics.loss) within the budget."""
        return loss(self.metric, self.value)

    def widened(self, factor: float) -> "Budget":
        """The budget whose largest loss is ``factor`` times this one's."""
        if self.metric == "nmse":
            return Budget(self.metric, self.value * factor)
        return Budget(self.metric, max(1e-9, 1.0 - (1.0 - self.value) * factor))

    def met_by(self, value: float) -> bool:
        return value <= self.value if self.metric == "nmse" else value >= self.value

    def __str__(self) -> str:
        return f"{self.metric}={self.value:g}"


def parse_budget(text: str) -> Budget:
    """``METRIC=VALUE`` -> Budget, or a one-line ValueError naming the problem."""
    where = f"--budget {text!r}"
    metric, sep, raw = text.partition("=")
    metric, raw = metric.strip(), raw.strip()
    if not sep or not metric or not raw:
        raise ValueError(f"{where}: expected METRIC=VALUE, e.g. agreement=0.99 (metrics: {', '.join(METRICS)})")
    if metric not in METRICS:
        raise ValueError(f"{where}: unknown metric {metric!r} (expected {', '.join(METRICS)})")
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{where}: VALUE {raw!r} is not a number") from None
    if metric == "nmse":
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{where}: nmse must be a finite number >= 0, got {raw}")
    elif not 0 < value <= 1:
        raise ValueError(f"{where}: {metric} must be in (0, 1], got {raw}")
    return Budget(metric, value)


def split_files(files: Sequence, fraction: float, seed: int = 0) -> tuple[list, list]:
    """(learn files, held-out files): whole calibration files held out, never rows of a file used to learn.

    ``round(fraction * n)`` files (at least 1, at most n - 1) are drawn by a generator seeded with ``seed``; both
    lists keep the files' order.
    """
    n = len(files)
    if not 0 < fraction < 1:
        raise ValueError(f"--heldout-files must be in (0, 1), got {fraction}")
    if n < 2:
        raise ValueError(f"a budget needs at least 2 calibration files (one to learn from, one held out); found {n}")
    k = min(n - 1, max(1, int(round(fraction * n))))
    held = set(np.random.default_rng([seed, 7]).choice(n, k, replace=False).tolist())
    return [f for i, f in enumerate(files) if i not in held], [f for i, f in enumerate(files) if i in held]


@dataclass(frozen=True)
class Option:
    """One way to convert one layer: its setting key, single-layer loss and saving (larger is better)."""

    layer: str
    setting: str
    loss: float
    saving: float


def choose(options: Sequence[Option], max_loss: float, bins: int = BINS) -> dict[str, Option]:
    """At most one option per layer, maximising the total saving with the summed loss within ``max_loss``.

    Options with no saving are never chosen; a negative loss (the layer happened to improve the metric) counts
    as 0, so one layer cannot pay for another. Exact up to the rounding of losses up to ``max_loss / bins``.
    """
    layers: dict[str, list[Option]] = {}
    for opt in options:
        if opt.saving > 0 and math.isfinite(opt.loss):
            layers.setdefault(opt.layer, []).append(opt)
    if max_loss <= 0:
        # only free options fit
        return {name: max((o for o in opts if o.loss <= 0), key=lambda o: o.saving)
                for name, opts in layers.items() if any(o.loss <= 0 for o in opts)}
    names = list(layers)
    best = np.zeros(bins + 1)  # best[b]: largest saving with weight <= b
    picks = []
    for name in names:
        new = best.copy()
        pick = np.full(bins + 1, -1)
        for j, opt in enumerate(layers[name]):
            w = 0 if opt.loss <= 0 else math.ceil(opt.loss / max_loss * bins - 1e-9)
            if w > bins:
                continue
            cand = np.full(bins + 1, -np.inf)
            cand[w:] = best[: bins + 1 - w] + opt.saving
            better = cand > new
            new[better] = cand[better]
            pick[better] = j
        picks.append(pick)
        best = new
    chosen: dict[str, Option] = {}
    b = bins
    for name, pick in zip(reversed(names), reversed(picks)):
        j = pick[b]
        if j >= 0:
            opt = layers[name][j]
            chosen[name] = opt
            b -= 0 if opt.loss <= 0 else math.ceil(opt.loss / max_loss * bins - 1e-9)
    return chosen


def back_off(chosen: dict[str, Option], options: Sequence[Option]) -> tuple[dict[str, Option], str]:
    """One step back from a choice that missed the budget: its worst offender (largest loss, then least saving)
    gets the setting of the next smaller loss that still saves (the largest saving among those), or is dropped.

    Returns the new choice and what was done (for the report).
    """
    if not chosen:
        raise ValueError("nothing left to back off from")
    worst = max(chosen.values(), key=lambda o: (o.loss, -o.saving))
    better = [o for o in options if o.layer == worst.layer and o.loss < worst.loss and o.saving > 0]
    out = dict(chosen)
    if better:
        pick = max(better, key=lambda o: (o.saving, -o.loss))
        out[worst.layer] = pick
        return out, f"{worst.layer}: {worst.setting} -> {pick.setting}"
    del out[worst.layer]
    return out, f"{worst.layer}: dropped ({worst.setting})"


def select_within(options: Sequence[Option], budget: Budget, measure: Callable[[dict[str, Option]], float],
                  max_steps: int | None = None, rescales: int = 3, grows: int = 4,
                  refines: int = 2) -> tuple[dict[str, Option], list[tuple[str, float]]]:
    """``choose``, then measure the combination (``measure(choice)``: the budget metric's value of the combined
    model) until it meets the budget; an empty choice always does (the original model).

    The knapsack's loss budget is rescaled by what the measurements show about compounding: on a miss it shrinks by
    (budget / measured loss), at most ``rescales`` times and only while that gives a choice not measured yet, then
    ``back_off`` removes one worst offender at a time; when a choice meets the budget with room left (losses added
    up less than their sum), it grows the same way, at most ``grows`` times (capped at 4x each); once a grown choice
    misses, the geometric middle of the largest passing and the smallest missing loss budget is tried, at most
    ``refines`` times. The choice that saves the most among those that met the budget is kept.

    Returns the final choice and the history: (what was tried, measured value) per verification.
    """
    max_loss = budget.max_loss
    chosen = choose(options, max_loss)
    history: list[tuple[str, float]] = []
    tried: dict[tuple, bool] = {}  # choice -> met the budget
    best: dict[str, Option] | None = None
    passed_at = missed_at = None  # largest passing / smallest missing knapsack loss budget after a pass
    action = "knapsack choice"
    steps = 0
    while chosen:
        value = measure(chosen)
        history.append((action, value))
        measured_loss = loss(budget.metric, value)
        met = budget.met_by(value)
        tried[choice_key(chosen)] = met
        if met:
            if best is None or _saving(chosen) > _saving(best):
                best = chosen
            passed_at = max(passed_at or 0.0, max_loss)
        elif best is not None:
            missed_at = max_loss if missed_at is None else min(missed_at, max_loss)
        if best is not None:
            if missed_at is None:
                if not (grows > 0 and 0 <= measured_loss < budget.max_loss):
                    break
                grows -= 1
                max_loss *= min(4.0, budget.max_loss / max(measured_loss, budget.max_loss / 4))
                nxt, action = choose(options, max_loss), f"knapsack within a loss of {max_loss:.3g} (room left)"
                if choice_key(nxt) in tried or _saving(nxt) <= _saving(best):
                    break
            else:
                nxt = None
                while refines > 0 and nxt is None:
                    refines -= 1
                    max_loss = math.sqrt(passed_at * missed_at)
                    nxt = choose(options, max_loss)
                    if choice_key(nxt) in tried:  # the middle gives a choice already measured: narrow without measuring
                        met_there = tried[choice_key(nxt)]
                        passed_at, missed_at = (max_loss, missed_at) if met_there else (passed_at, max_loss)
                        nxt = None
                if nxt is None or _saving(nxt) <= _saving(best):
                    break
                action = f"knapsack within a loss of {max_loss:.3g} (between a pass and a miss)"
            chosen = nxt
            continue
        steps += 1
        if max_steps is not None and steps > max_steps:
            chosen = {}
            history.append(("gave up: nothing converted", math.nan))
            break
        if rescales > 0 and measured_loss > 0:
            rescales -= 1
            max_loss *= budget.max_loss / measured_loss
            rescaled = choose(options, max_loss)
            if rescaled and choice_key(rescaled) not in tried:
                chosen, action = rescaled, f"knapsack within a loss of {max_loss:.3g} (compounding seen)"
                continue
        chosen, action = back_off(chosen, options)
    return (best or {}), history


def _saving(choice: dict[str, Option]) -> float:
    return sum(o.saving for o in choice.values())


def choice_key(choice: dict[str, Option]) -> tuple:
    """A hashable identity of a choice: its (layer, setting) pairs, sorted."""
    return tuple(sorted((name, o.setting) for name, o in choice.items()))


def climb(choice: dict[str, Option], options: Sequence[Option], budget: Budget,
          measure: Callable[[dict[str, Option]], tuple[float, float]],
          tried: Callable[[dict[str, Option]], bool] = lambda c: False,
          ) -> tuple[dict[str, Option], list[tuple[str, float]]]:
    """Greedy additions to a choice that meets the budget: each layer left out is tried once, with its most
    efficient setting (saving per unit of single-layer loss), most efficient first, and kept when the combined
    model meets the budget by at least one standard error of the measurement.

    The knapsack adds up single-layer losses; measured, a combination can lose much less (errors cancel, or a
    layer that flips frames changes no decoded text), and the knapsack's search can stop short of what fits
    (``select_within``). ``measure(choice)`` is (the budget metric of the combined model, its standard error over
    the held-out samples). Without the margin, dozens of trials keep whichever happen to pass by the noise of the
    held-out files: on PP-OCR rec a climb that met ctc=0.99 on them lost 1.27 % of the characters on other lines.
    ``tried(choice)`` skips choices measured already. Returns the final choice and the history of the trials.
    """
    best = dict(choice)
    history: list[tuple[str, float]] = []
    candidates = []
    for layer in {o.layer for o in options} - set(best):
        usable = [o for o in options if o.layer == layer and o.saving > 0 and math.isfinite(o.loss)]
        if usable:
            candidates.append(max(usable, key=_efficiency))
    for opt in sorted(candidates, key=lambda o: (-_efficiency(o), o.layer)):
        trial = {**best, opt.layer: opt}
        if tried(trial):
            continue
        value, se = measure(trial)
        history.append((f"added {opt.layer} ({opt.setting})", value))
        if loss(budget.metric, value) + se <= budget.max_loss:
            best = trial
    return best, history


def _efficiency(o: Option) -> float:
    return o.saving / max(o.loss, 1e-12)


#: the widenings of the budget ``widen`` searches within, in turn, when the layers are fine-tuned
WIDENINGS = (1.5, 2, 3, 4)


def widen(chosen: dict[str, Option], budget: Budget, search: Callable[[Budget], dict[str, Option]],
          tune: Callable[[dict[str, Option]], tuple[float, float, object]], widenings: Sequence[float] = WIDENINGS,
          bisections: int = 1) -> tuple[tuple[dict[str, Option], object] | None, list[tuple[str, float]]]:
    """Fine-tuning (finetune.py) lowers a choice's loss, which leaves room within the budget: for each factor in
    turn, the search's choice within the budget widened by it (``search(budget)``) is fine-tuned (``tune(choice)``:
    measured value, its standard error, what to keep) and kept when it meets the budget by one standard error (by
    the value alone when there are too few samples for one). A choice that saves no more than ``chosen`` (the
    search's choice within the budget itself, which meets it as learned) or than one kept is skipped. The widening
    stops at the first miss: the next factor's choice holds more layers and loses more. Then ``bisections`` times
    the geometric middle of the largest factor that passed (1: the budget itself) and the smallest that missed is
    tried: the factors are coarse (PP-OCR det passed 1.5 with 13 layers and missed 2 with 17). Returns the largest
    kept (choice, what ``tune`` gave), or None, and the history of the measurements."""
    best = None
    history: list[tuple[str, float]] = []
    passed, missed = 1.0, None

    def attempt(factor: float) -> bool | None:
        """Whether the choice within ``factor`` met the budget fine-tuned (kept then); None: it saves no more."""
        nonlocal best
        wider = budget.widened(factor)
        choice = search(wider)
        if _saving(choice) <= _saving(best[0] if best else chosen):
            return None
        value, se, kept = tune(choice)
        history.append((f"fine-tuned the choice within {wider} ({len(choice)} layers)", value))
        if loss(budget.metric, value) + (se if math.isfinite(se) else 0.0) > budget.max_loss:
            return False
        best = (choice, kept)
        return True

    for factor in widenings:
        if attempt(factor) is False:
            missed = factor
            break
        passed = factor  # met, or its choice saves no more than one that did: nothing to look for below it
    for _ in range(bisections if missed is not None else 0):
        factor = math.sqrt(passed * missed)
        if attempt(factor) is False:
            missed = factor
        else:
            passed = factor
    return best, history
