"""Budget parsing, the held-out file split and the layer choice (knapsack + back-off) on synthetic tables."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from halut_onnx.budget import (Budget, Option, back_off, choose, climb, parse_budget, select_within, split_files,
                               widen)
from halut_onnx.metrics import OutputComparison


@pytest.mark.parametrize("text,expected", [
    ("agreement=0.99", Budget("agreement", 0.99)),
    ("cosine = 1", Budget("cosine", 1.0)),
    ("nmse=0.01", Budget("nmse", 0.01)),
    ("nmse=0", Budget("nmse", 0.0)),
])
def test_parse_budget(text, expected):
    assert parse_budget(text) == expected


@pytest.mark.parametrize("text,message", [
    ("agreement", "--budget 'agreement': expected METRIC=VALUE, e.g. agreement=0.99 (metrics: agreement, cosine, nmse, ctc)"),
    ("=0.9", "--budget '=0.9': expected METRIC=VALUE, e.g. agreement=0.99 (metrics: agreement, cosine, nmse, ctc)"),
    ("agreement=", "--budget 'agreement=': expected METRIC=VALUE, e.g. agreement=0.99 (metrics: agreement, cosine, nmse, ctc)"),
    ("accuracy=0.9", "--budget 'accuracy=0.9': unknown metric 'accuracy' (expected agreement, cosine, nmse, ctc)"),
    ("cosine=high", "--budget 'cosine=high': VALUE 'high' is not a number"),
    ("agreement=1.5", "--budget 'agreement=1.5': agreement must be in (0, 1], got 1.5"),
    ("cosine=0", "--budget 'cosine=0': cosine must be in (0, 1], got 0"),
    ("nmse=-0.1", "--budget 'nmse=-0.1': nmse must be a finite number >= 0, got -0.1"),
    ("nmse=inf", "--budget 'nmse=inf': nmse must be a finite number >= 0, got inf"),
])
def test_parse_budget_errors(text, message):
    with pytest.raises(ValueError) as err:
        parse_budget(text)
    assert str(err.value) == message


def test_budget_losses_and_checks():
    assert parse_budget("agreement=0.99").max_loss == pytest.approx(0.01)
    assert parse_budget("nmse=0.02").max_loss == 0.02
    assert parse_budget("cosine=0.95").met_by(0.95) and not parse_budget("cosine=0.95").met_by(0.9499)
    assert parse_budget("nmse=0.02").met_by(0.02) and not parse_budget("nmse=0.02").met_by(0.021)


@pytest.mark.parametrize("n,fraction,held", [(2, 0.25, 1), (8, 0.25, 2), (10, 0.5, 5), (5, 0.99, 4), (20, 0.01, 1)])
def test_split_files_disjoint(n, fraction, held):
    files = [f"{i:03d}.npz" for i in range(n)]
    learn, heldout = split_files(files, fraction, seed=3)
    assert len(heldout) == held and not set(learn) & set(heldout) and sorted(learn + heldout) == files
    assert learn == sorted(learn) and heldout == sorted(heldout)
    assert (learn, heldout) == split_files(files, fraction, seed=3)  # seeded


def test_split_files_errors():
    with pytest.raises(ValueError, match=r"^a budget needs at least 2 calibration files \(one to learn from, one "
                                         r"held out\); found 1$"):
        split_files(["a.npz"], 0.25)
    with pytest.raises(ValueError, match=r"^--heldout-files must be in \(0, 1\), got 1$"):
        split_files(["a.npz", "b.npz"], 1)


def _brute_force(options, max_loss):
    """Every combination of at most one option per layer: the best total saving within max_loss."""
    layers = sorted({o.layer for o in options})
    per = [[None] + [o for o in options if o.layer == name and o.saving > 0] for name in layers]
    best = 0.0
    for combo in itertools.product(*per):
        picked = [o for o in combo if o is not None]
        if sum(max(o.loss, 0) for o in picked) <= max_loss + 1e-12:
            best = max(best, sum(o.saving for o in picked))
    return best


def test_choose_matches_brute_force(rng):
    for _ in range(30):
        options = [Option(f"l{i}", f"s{j}", float(rng.uniform(-0.002, 0.03)), float(rng.integers(-5, 100)))
                   for i in range(5) for j in range(3)]
        max_loss = float(rng.uniform(0.005, 0.06))
        chosen = choose(options, max_loss, bins=100000)
        assert sum(max(o.loss, 0) for o in chosen.values()) <= max_loss + 1e-12
        assert len({o.layer for o in chosen.values()}) == len(chosen)
        assert sum(o.saving for o in chosen.values()) == pytest.approx(_brute_force(options, max_loss))


def test_choose_prefers_cheap_accurate_settings():
    options = [Option("a", "C=4", 0.008, 10), Option("a", "C=16", 0.002, 6),
               Option("b", "C=4", 0.006, 9), Option("b", "C=16", 0.001, 3), Option("c", "C=4", 0.02, 100),
               Option("d", "pq", 0.0, -4)]  # slower than the original: never chosen
    chosen = choose(options, 0.01)
    assert {k: o.setting for k, o in chosen.items()} == {"a": "C=16", "b": "C=4"}  # 15 beats a C=4 + b C=16 (13)
    assert choose(options, 0.0) == {}
    assert choose(options + [Option("e", "x", -0.001, 1)], 0.0) == {"e": Option("e", "x", -0.001, 1)}


def test_back_off_upgrades_then_drops_the_worst_offender():
    options = [Option("a", "C=4", 0.02, 10), Option("a", "C=8", 0.01, 7), Option("a", "C=16", 0.004, 2),
               Option("b", "C=4", 0.015, 9)]
    chosen = {"a": options[0], "b": options[3]}
    step1, what1 = back_off(chosen, options)
    assert what1 == "a: C=4 -> C=8" and step1 == {"a": options[1], "b": options[3]}
    step2, what2 = back_off(step1, options)
    assert what2 == "b: dropped (C=4)" and step2 == {"a": options[1]}


def test_select_within_backs_off_until_the_measured_metric_meets_the_budget():
    # Errors compound: the measured loss is twice the sum of the single-layer losses.
    options = [Option(name, f"C={c}", loss, saving) for name in "abc"
               for c, loss, saving in ((4, 0.004, 10), (8, 0.002, 6), (16, 0.001, 2))]
    budget = parse_budget("agreement=0.99")
    calls = []

    def measure(choice):
        calls.append(dict(choice))
        return 1 - 2 * sum(o.loss for o in choice.values())

    chosen, history = select_within(options, budget, measure, rescales=0, grows=0)
    predicted_first = sum(o.loss for o in calls[0].values())
    assert predicted_first <= 0.01 and 2 * predicted_first > 0.01  # the knapsack's choice misses once measured
    assert budget.met_by(history[-1][1]) and len(history) >= 2
    assert history[0][0] == "knapsack choice" and all(not budget.met_by(v) for _, v in history[:-1])
    assert all(what.endswith(")") or " -> " in what for what, _ in history[1:])  # back-off steps only
    assert 2 * sum(o.loss for o in chosen.values()) <= 0.01 and chosen


def test_select_within_gives_up_to_the_original_model():
    options = [Option("a", "C=4", 0.001, 10)]
    chosen, history = select_within(options, parse_budget("cosine=0.99"), lambda choice: 0.5)
    assert chosen == {} and history == [("knapsack choice", 0.5)]


def test_output_comparison_against_numpy(rng):
    ref = rng.standard_normal((6, 5, 7)).astype(np.float32)
    conv = ref + 0.3 * rng.standard_normal(ref.shape).astype(np.float32)
    cmp = OutputComparison()
    cmp.add(ref[:4], conv[:4])
    cmp.add(ref[4:], conv[4:])
    r, c = ref.reshape(-1, 7), conv.reshape(-1, 7)
    assert cmp.agreement == np.mean(r.argmax(1) == c.argmax(1))
    per = [np.dot(a.ravel(), b.ravel()) / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(ref, conv)]
    assert cmp.cosine == pytest.approx(np.mean(per), rel=1e-6)
    assert cmp.nmse == pytest.approx(np.sum((conv - ref) ** 2) / np.sum(ref**2), rel=1e-6)
    labels = OutputComparison()
    labels.add(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 4]))
    assert labels.agreement == 0.75 and math.isclose(labels.nmse, 0.25)


def test_output_comparison_argmax_ties_nan_and_rank4_like_numpy(rng):
    # the fused pass (metrics._compare) must pick numpy's arg-max: the first maximum, and a NaN over any number
    ref = rng.integers(0, 3, (4, 2, 3, 5)).astype(np.float64)  # small integers: many tied maxima
    conv = rng.integers(0, 3, ref.shape).astype(np.float64)
    conv[1, 0, 2, 3] = np.nan
    ref[2, 1, 0, 1] = np.nan
    cmp = OutputComparison()
    cmp.add(ref, conv)
    assert cmp.agreement == np.mean(ref.reshape(-1, 5).argmax(1) == conv.reshape(-1, 5).argmax(1))
    fine = [s for s in range(4) if s not in (1, 2)]
    part = OutputComparison()
    part.add(ref[fine], conv[fine])
    r, c = ref[fine].reshape(2, -1), conv[fine].reshape(2, -1)
    assert part.cosine == pytest.approx(np.mean(np.sum(r * c, 1) / np.linalg.norm(r, axis=1) /
                                                np.linalg.norm(c, axis=1)), rel=1e-12)
    assert part.nmse == pytest.approx(np.sum((c - r) ** 2) / np.sum(r**2), rel=1e-12)


def test_output_comparison_zero_samples_and_half_precision(rng):
    # a sample that is zero in both models agrees fully (cosine 1), one that is zero in one of them not at all
    ref = rng.standard_normal((3, 4)).astype(np.float16)
    conv = ref.copy()
    ref[0], conv[0] = 0, 0
    conv[1] = 0
    cmp = OutputComparison()
    cmp.add(ref, conv)
    assert cmp.cosine == pytest.approx((1.0 + 0.0 + 1.0) / 3, rel=1e-12)
    r64, c64 = ref.astype(np.float64), conv.astype(np.float64)
    assert cmp.nmse == pytest.approx(np.sum((c64 - r64) ** 2) / np.sum(r64**2), rel=1e-12)


def test_select_within_rescales_for_compounding_before_backing_off():
    # Five equal layers; measured loss = 2 x the summed single-layer losses. Within 0.01 the knapsack takes all
    # five cheap settings (0.002 each); the rescaled budget (0.005) then fits the accurate ones.
    options = [Option(name, setting, loss, saving) for name in "abcde"
               for setting, loss, saving in (("C=4", 0.002, 10), ("C=16", 0.001, 6))]
    budget = parse_budget("nmse=0.01")
    chosen, history = select_within(options, budget, lambda choice: 2 * sum(o.loss for o in choice.values()))
    assert history[0] == ("knapsack choice", pytest.approx(0.02))
    assert history[1][0] == "knapsack within a loss of 0.005 (compounding seen)" and history[1][1] <= 0.01
    assert len(history) == 2 and len(chosen) == 5 and all(o.setting == "C=16" for o in chosen.values())


def test_select_within_grows_when_losses_add_up_to_less():
    # Measured loss = 0.4 x the summed single-layer losses: room left after the first choice.
    options = [Option(name, setting, loss, saving) for name in "abcdef"
               for setting, loss, saving in (("C=4", 0.004, 10), ("C=16", 0.002, 6))]
    budget = parse_budget("nmse=0.01")
    measure = lambda choice: 0.4 * sum(o.loss for o in choice.values())  # noqa: E731
    chosen, history = select_within(options, budget, measure)
    first = choose(options, 0.01)
    assert history[0] == ("knapsack choice", pytest.approx(0.4 * sum(o.loss for o in first.values())))
    assert history[1][0].endswith("(room left)") and all(v <= 0.01 for _, v in history)
    assert sum(o.saving for o in chosen.values()) > sum(o.saving for o in first.values())
    assert measure(chosen) <= 0.01
    # a grown choice that misses is not kept
    strict = lambda choice: 0.4 * sum(o.loss for o in choice.values()) if _total(choice) <= 30 else 1.0  # noqa: E731
    chosen, history = select_within(options, budget, strict, refines=0)
    assert _total(chosen) == _total(first) == 30 and history[-1] == (history[-1][0], 1.0) and len(history) == 2


def test_select_within_bisects_between_a_pass_and_a_miss():
    # Ten equal layers (loss 0.002 each); the measured loss is half the sum up to 7 layers, then breaks down. Within
    # 0.01: 5 layers (0.005, room left) -> grown to 0.02: 10 (miss) -> middle 0.0141: 7 (pass) -> 0.0168: 8 (miss).
    options = [Option(name, "C=8", 0.002, 10) for name in "abcdefghij"]
    measure = lambda choice: 0.5 * sum(o.loss for o in choice.values()) if len(choice) <= 7 else 1.0  # noqa: E731
    chosen, history = select_within(options, parse_budget("nmse=0.01"), measure)
    assert [len(choose(options, x)) for x in (0.01, 0.02, math.sqrt(0.0002), math.sqrt(0.02 * math.sqrt(0.0002)))] \
        == [5, 10, 7, 8]
    assert [v for _, v in history] == [pytest.approx(0.005), 1.0, pytest.approx(0.007), 1.0]
    assert history[2][0] == "knapsack within a loss of 0.0141 (between a pass and a miss)"
    assert len(chosen) == 7


def test_climb_adds_layers_by_efficiency_while_the_measured_model_meets_the_budget():
    # Measured loss: the single-layer losses of a, b, c, f add up, with a standard error of 0.0005; d costs 0.02
    # whatever else is there (never fits).
    options = [Option("a", "C=4", 0.004, 8), Option("a", "C=16", 0.001, 4),  # a's efficient setting: C=16
               Option("b", "C=8", 0.003, 9), Option("c", "C=8", 0.005, 5), Option("d", "C=8", 0.0001, 1),
               Option("e", "C=8", 0.001, 0),  # saves nothing: never tried
               Option("f", "C=8", 0.0008, 0.5)]
    budget = parse_budget("nmse=0.01")
    measure = lambda choice: (sum(0.02 if n == "d" else o.loss for n, o in choice.items()), 0.0005)  # noqa: E731
    chosen, history = climb({"b": options[2]}, options, budget, measure)
    # tried by saving per loss: d (10000), a C=16 (4000), c (1000), f (625); d misses, a fits (0.004), c fits
    # (0.009 + 0.0005); f measures 0.0098, within the budget but not by a standard error: not kept
    assert [what for what, _ in history] == ["added d (C=8)", "added a (C=16)", "added c (C=8)", "added f (C=8)"]
    assert [v for _, v in history] == pytest.approx([0.023, 0.004, 0.009, 0.0098])
    assert chosen == {"b": options[2], "a": options[1], "c": options[3]}
    # choices measured before are not measured again; an empty start climbs too
    seen = {("b", "d")}
    chosen, history = climb({"b": options[2]}, options, budget, measure, tried=lambda c: tuple(sorted(c)) in seen)
    assert [what for what, _ in history] == ["added a (C=16)", "added c (C=8)", "added f (C=8)"]
    chosen, history = climb({}, options, budget, measure)
    assert set(chosen) == {"a", "b", "c"} and len(history) == 5


def test_widened_budget_scales_the_largest_loss():
    assert parse_budget("ctc=0.99").widened(3) == Budget("ctc", pytest.approx(0.97))
    assert parse_budget("nmse=0.01").widened(2) == Budget("nmse", 0.02)
    assert parse_budget("cosine=0.9").widened(20).value > 0  # never a budget no value can meet
    assert parse_budget("agreement=0.98").widened(1) == parse_budget("agreement=0.98")


def test_widen_keeps_the_largest_fine_tuned_choice_that_meets_the_budget():
    a, b, c, d = (Option(n, "C=8", 0.004, s) for n, s in zip("abcd", (4, 3, 2, 1)))
    wider = {1.5: {"a": a}, 2: {"a": a, "b": b}, 3: {"a": a, "b": b, "c": c}, 4: {"a": a, "b": b, "c": c, "d": d},
             5: {"a": a, "b": b, "c": c, "d": d}}
    searched = []

    def search(budget):
        factor = round((1 - budget.value) / 0.01, 6)
        searched.append(factor)
        return wider[factor]

    # fine-tuning halves each layer's loss (0.002 per layer), with a standard error of 0.001
    tune = lambda choice: (1 - 0.002 * len(choice), 0.001, f"tuned {sorted(choice)}")  # noqa: E731
    kept, history = widen({"a": a}, parse_budget("ctc=0.99"), search, tune, widenings=(1.5, 2, 3, 4, 5))  # no miss
    # 1.5: the search's own choice again, not fine-tuned; 2: 0.996; 3: 0.994; 4: 0.992, a loss of 0.008 + 0.001
    # within 0.01: kept; 5: the same choice as 4, not fine-tuned twice
    assert searched == [1.5, 2, 3, 4, 5]
    assert kept == (wider[4], "tuned ['a', 'b', 'c', 'd']")
    assert [v for _, v in history] == pytest.approx([0.996, 0.994, 0.992])
    assert history[0][0] == "fine-tuned the choice within ctc=0.98 (2 layers)"


def test_widen_stops_at_the_first_fine_tuned_choice_that_misses():
    options = {n: Option(n, "C=8", 0.004, 1) for n in "abcd"}
    chains = {1: "a", 1.5: "ab", 2: "abc", 3: "abcd", 4: "abcd"}  # 1: the budget's own choice

    def search(budget):  # the chain of the largest factor up to the widening (a bisection falls between two)
        factor = (1 - budget.value) / 0.01
        return {n: options[n] for n in chains[max(f for f in chains if f <= factor + 1e-9)]}

    # the 3-layer choice misses by its standard error: 0.991 - 0.002 < 0.99
    values = {2: 0.995, 3: 0.991, 4: 0.999}
    tune = lambda choice: (values[len(choice)], 0.002, len(choice))  # noqa: E731
    kept, history = widen({"a": options["a"]}, parse_budget("ctc=0.99"), search, tune)
    # the 3-layer choice missed at 3, so sqrt(2 x 3) is tried: its choice is the 2-layer one again, not re-tuned
    assert kept == ({n: options[n] for n in "ab"}, 2) and len(history) == 2
    # no standard error (too few samples): the value alone decides
    tune = lambda choice: (values[len(choice)], math.inf, len(choice))  # noqa: E731
    kept, history = widen({"a": options["a"]}, parse_budget("ctc=0.99"), search, tune)
    assert kept[1] == 4 and len(history) == 3
    # the first widened choice missing once fine-tuned: nothing kept, nothing more tried
    kept, history = widen({"a": options["a"]}, parse_budget("ctc=0.99"), search,
                          lambda choice: (0.985, 0.001, None))
    assert kept is None and len(history) == 1  # sqrt(1.5): the budget's own choice again, not fine-tuned


def test_widen_bisects_between_the_last_pass_and_the_first_miss():
    options = {n: Option(n, "C=8", 0.004, 1) for n in "abcdef"}
    chains = {1: "a", 1.5: "ab", 1.7: "abc", 2: "abcd", 2.5: "abcde"}
    searched = []

    def search(budget):
        factor = (1 - budget.value) / 0.01
        searched.append(round(factor, 4))
        return {n: options[n] for n in chains[max(f for f in chains if f <= factor + 1e-9)]}

    values = {2: 0.996, 3: 0.992, 4: 0.985, 5: 0.991}  # 3 layers fit fine-tuned, 4 do not
    tune = lambda choice: (values[len(choice)], 0.001, len(choice))  # noqa: E731
    kept, history = widen({"a": options["a"]}, parse_budget("ctc=0.99"), search, tune)
    assert searched == [1.5, 2, round(math.sqrt(3), 4)] and kept[1] == 3
    assert [v for _, v in history] == [0.996, 0.985, 0.992]
    # two bisections: sqrt(3) passes, then sqrt(sqrt(3) x 2) gives the 3-layer choice again
    kept, history = widen({"a": options["a"]}, parse_budget("ctc=0.99"), search, tune, bisections=2)
    assert kept[1] == 3 and len(history) == 3
    # the first widening misses: the middle of the budget itself and 1.5
    values[2] = 0.985
    searched.clear()
    kept, history = widen({"a": options["a"]}, parse_budget("ctc=0.99"), search, tune)
    assert searched == [1.5, round(math.sqrt(1.5), 4)] and kept is None and len(history) == 1


def test_standard_error_is_the_jackknife_over_samples(rng):
    # agreement with one row per sample: the jackknife standard error of a proportion is sqrt(p (1 - p) / (n - 1))
    ref = rng.standard_normal((200, 5)).astype(np.float32)
    conv = ref + 0.5 * rng.standard_normal(ref.shape).astype(np.float32)
    cmp = OutputComparison()
    cmp.add(ref[:120], conv[:120])
    cmp.add(ref[120:], conv[120:])
    p = np.mean(ref.argmax(1) == conv.argmax(1))
    assert 0.5 < p < 1 and cmp.standard_error("agreement") == pytest.approx(np.sqrt(p * (1 - p) / 199), rel=1e-9)
    # cosine is a mean over samples: its standard error is the samples' standard deviation / sqrt(n)
    cos = np.sum(ref * conv, 1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(conv, axis=1)
    assert cmp.standard_error("cosine") == pytest.approx(np.std(cos, ddof=1) / np.sqrt(200), rel=1e-6)
    # nmse, a ratio of sums: against leave-one-out recomputed in numpy
    e, r = np.sum((conv - ref).astype(np.float64) ** 2, 1), np.sum(ref.astype(np.float64) ** 2, 1)
    loo = (e.sum() - e) / (r.sum() - r)
    assert cmp.standard_error("nmse") == pytest.approx(np.sqrt(199 / 200 * np.sum((loo - loo.mean()) ** 2)), rel=1e-6)
    few = OutputComparison()  # below MIN_SE_SAMPLES (10) a jackknife says little: no error bar
    few.add(ref[:9], conv[:9])
    assert few.standard_error("cosine") == math.inf
    few.add(ref[9:10], conv[9:10])
    assert math.isfinite(few.standard_error("cosine"))
    with pytest.raises(ValueError, match=r"^ctc needs a float output \[samples, time, classes\]"):
        cmp.standard_error("ctc")


def _total(choice):
    return sum(o.saving for o in choice.values())


def _greedy_ctc(frames):
    """Reference CTC decode: runs of equal frames collapsed, blanks (0) dropped."""
    return [k for k, _ in itertools.groupby(frames.tolist()) if k != 0]


def _levenshtein(a, b):
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
    return d[-1][-1]


def test_ctc_metric_against_a_reference_decode(rng):
    # [samples, time, classes] with mostly-blank frames and runs, as a CTC recogniser's output
    ref = rng.standard_normal((5, 40, 6)).astype(np.float32)
    ref[:, :, 0] += 1.5
    conv = ref + 0.6 * rng.standard_normal(ref.shape).astype(np.float32)
    cmp = OutputComparison()
    cmp.add(ref[:2], conv[:2])
    cmp.add(ref[2:], conv[2:])
    errors = sum(_levenshtein(_greedy_ctc(r.argmax(1)), _greedy_ctc(c.argmax(1))) for r, c in zip(ref, conv))
    length = sum(len(_greedy_ctc(r.argmax(1))) for r in ref)
    assert 0 < errors < length and cmp.value("ctc") == pytest.approx(1 - errors / length)
    # a frame whose class moves to the neighbouring frame changes the agreement, not the decoded sequence
    a = np.full((1, 6, 3), -5.0, np.float32)
    b = a.copy()
    for t, k in enumerate([0, 1, 1, 0, 2, 0]):
        a[0, t, k] = 0
    for t, k in enumerate([0, 0, 1, 0, 2, 2]):
        b[0, t, k] = 0
    shifted = OutputComparison()
    shifted.add(a, b)
    assert shifted.ctc == 1.0 and shifted.agreement == pytest.approx(4 / 6)
    # no decoded symbol in the original: every inserted one is an error (over a length of at least 1)
    blank = np.zeros((1, 4, 3), np.float32)
    blank[..., 0] = 1
    noisy = blank.copy()
    noisy[0, 1] = [0, 2, 0]
    both = OutputComparison()
    both.add(blank, noisy)
    assert both.ctc == 0.0


@pytest.mark.parametrize("ref", [np.zeros((4, 10), np.float32), np.zeros((2, 5, 1), np.float32),
                                 np.zeros((2, 5, 3), np.int64)])
def test_ctc_metric_needs_a_sequence_output(ref):
    cmp = OutputComparison()
    cmp.add(ref, ref)
    assert cmp.ctc is None
    with pytest.raises(ValueError) as err:
        cmp.value("ctc")
    assert str(err.value) == (f"ctc needs a float output [samples, time, classes] with more than one class; the "
                              f"compared output is {ref.dtype} {list(ref.shape)} (choose another with "
                              "--metric-output)")


def test_parse_ctc_budget():
    assert parse_budget("ctc=0.99") == Budget("ctc", 0.99) and parse_budget("ctc=0.99").max_loss == pytest.approx(0.01)
    with pytest.raises(ValueError, match=r"^--budget 'ctc=2': ctc must be in \(0, 1\], got 2$"):
        parse_budget("ctc=2")
