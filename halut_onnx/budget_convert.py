"""``convert --budget`` and ``convert --sequential``: which layers and settings to convert, learned how.

With a budget: analyze (analyze.py) -> knapsack over the single-layer measurements -> learn the chosen layers
(sequentially with ``--sequential``) -> measure the combined model on the held-out files -> back off until it meets
the budget (budget.select_within) -> write. Without a budget, ``--sequential`` learns the layers ``convert`` would
convert, in graph order, each on the outputs of the converted layers before it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from . import __version__
from .analyze import Analysis, AnalyzeOptions, Setting, analyze, model_session, prepare, target
from .augment import augmented, collect_layer_rows, learned_copies
from .bench import latencies
from .budget import Budget, Option, choice_key, climb, parse_budget, select_within, widen
from .calibrate import CalibrationSet, CollectedRows, model_inputs
from .convert import ConvertResult, _check, _doc_string, copies_notes, learn_options, time_record
from .errors import ConversionError
from .kernel_timing import library_available
from .learn import HalutLayer
from .metrics import MIN_SE_SAMPLES
from .model_io import EXTERNAL_DATA_THRESHOLD, same_file, save_model_atomic
from .options import ConvertOptions
from .passes import LayerCandidate, LayerRewrite, rewrite_model
from .records import LayerRecord, write_records
from .selection import SelectedLayer, select_layers
from .sequential import learn_sequential

if TYPE_CHECKING:
    from .finetune import FinetuneReport

log = logging.getLogger(__name__)


@dataclass
class BudgetReport:
    budget: Budget
    chosen: list[tuple[str, str, float]]  # (layer, setting, single-layer loss) in graph order
    predicted: float  # the budget metric if single-layer losses added up
    measured: float  # the budget metric of the written model on the held-out files
    measured_se: float  # its standard error over the held-out samples (jackknife)
    objective: str  # what the choice maximised: "macs" or "time"
    measured_all: dict  # agreement, cosine, nmse, ctc of the written model on the held-out files
    history: list[tuple[str, float]]  # each verification: what was tried, measured value
    macs_share: float  # multiply-adds of the converted layers / of all eligible layers
    expected_speedup: float | None  # from the kernel timings and the original model's time
    measured_speedup: float | None  # the written model against the original on one held-out file, 1 thread
    analysis: Analysis = field(repr=False)
    finetune: FinetuneReport | None = None  # with --finetune: the kept choice's fine-tuning


@dataclass
class BudgetResult(ConvertResult):
    budget: BudgetReport | None = None


def _record(cand: LayerCandidate, setting: Setting, layer: HalutLayer, rows: CollectedRows,
            options: ConvertOptions) -> LayerRecord:
    rep = layer.report
    return LayerRecord(
        cand.name, cand.op_type, "converted", D=cand.D, M=cand.M, C=setting.codebooks, encoder=setting.encoder,
        bias_node=cand.bias_node, rows_seen=rows.rows_seen, copies=learned_copies(rows, rep),
        rows_train=rep.rows_train, rows_heldout=rep.rows_heldout, ridge=float(rep.ridge),
        train_nmse=float(rep.train_nmse), heldout_nmse=float(rep.heldout_nmse),
        heldout_nmse_int8=float(rep.heldout_nmse_int8), lut_bytes=int(layer.lut_q.nbytes),
        notes=copies_notes(rows, setting.codebooks, options, rep) + list(rep.warnings),
    )


def _finish(original, work, plan, layers, rows, skipped, options, output_path, cls=ConvertResult, **extra):
    rewrites, records = [], {}
    timed = library_available()
    for cand, setting in plan:
        record = _record(cand, setting, layers[cand.name], rows[cand.name], options)
        if timed:
            time_record(record, cand, rows[cand.name])
        records[cand.name] = record
        rewrites.append(LayerRewrite(cand, layers[cand.name], _doc_string(SelectedLayer(cand, setting.codebooks),
                                                                            record)))
    converted = rewrite_model(work, rewrites)
    all_records = {**{s.name: LayerRecord(s.name, s.op_type, "skipped", reason=s.reason) for s in skipped}, **records}
    order = [n.name for n in work.graph.node]
    layer_records = [all_records[n] for n in order if n in all_records]
    write_records(converted, __version__, options.settings(), layer_records)
    if converted.ByteSize() < EXTERNAL_DATA_THRESHOLD:
        _check(converted, original)
    result = cls(converted, None, layer_records, **extra)
    if output_path is not None:
        result.output_path = save_model_atomic(converted, output_path)
    return result


def finetune_copies(analysis: Analysis, choice: dict[str, Option]) -> int:
    """The noisy copies of each learn file that fine-tuning ``choice`` learns from: the most any chosen layer
    learned from. Not those of every analysed layer: on PP-OCR rec twelve small convs were given 8 copies and none
    was chosen, and fine-tuning on 9 times the feeds took 29 minutes a run instead of about 3."""
    return max((analysis.row(name, option.setting).copies for name, option in choice.items()), default=0)


def _check_paths(model, output_path) -> None:
    if output_path is not None and not Path(output_path).resolve().parent.is_dir():
        raise ConversionError(f"output folder {Path(output_path).parent} does not exist")
    if output_path is not None and not isinstance(model, onnx.ModelProto) and same_file(model, output_path):
        raise ConversionError(f"the output path {output_path} is the input model; write the output elsewhere")


def convert_sequential(model, calib_dir, output_path, options: ConvertOptions) -> ConvertResult:
    """``convert`` with ``--sequential`` and no budget: the same layers and settings, learned in graph order."""
    options.validate()
    _check_paths(model, output_path)
    original, work, candidates, skipped = prepare(model, options)
    selected, not_selected = select_layers(candidates, codebooks=options.codebooks, min_dim=1)
    calibration = CalibrationSet(calib_dir, model_inputs(work))
    targets = {c.name: target(c) for c in candidates}
    rows = collect_layer_rows(work, calibration, targets, {s.candidate.name: s.codebooks for s in selected},
                              options.augment, options.max_rows, options.seed, options.progress)
    problems = [(s.candidate, rows[s.candidate.name].problem) for s in selected if rows[s.candidate.name].problem]
    if problems:
        raise ConversionError(f"layer {problems[0][0].name}: {problems[0][1]}")
    plan = [(s.candidate, Setting(options.layer_encoder, s.codebooks)) for s in selected]
    learning = [(c, learn_options(options, s.codebooks, s.encoder)) for c, s in plan]
    layers = learn_sequential(work, calibration, learning, rows, options.max_rows, options.seed,
                              progress=options.progress)
    return _finish(original, work, plan, layers, rows, skipped, options, output_path)


def default_objective(objective: str | None) -> str:
    """``--objective``, or its default: "time" when the custom-op library loads (the kernels can be timed), else
    "macs"."""
    from .kernel_timing import library_available

    return objective or ("time" if library_available() else "macs")


def convert_under_budget(model, calib_dir, output_path, options: ConvertOptions,
                         analysis: Analysis | None = None) -> BudgetResult:
    """Convert the layers and settings that remove the most multiply-adds with the budget met on the held-out
    files. ``analysis`` (from ``analyze`` with the same options) is reused when given."""
    options.validate()
    budget = parse_budget(options.budget)
    _check_paths(model, output_path)
    if options.finetune:  # before the analysis's minutes
        from .finetune import require_torch

        require_torch()
    fixed = (options.codebooks,) if options.codebooks else ()
    if analysis is None:
        # only the settings that save something by the objective are learned and measured: the rest are never
        # chosen (a quarter of PP-OCR's settings run slower converted than the layer does in the model)
        encoders = (options.encoder,) if options.encoder else AnalyzeOptions.encoders
        analysis = analyze(model, calib_dir, AnalyzeOptions(convert=options, codebooks=fixed, encoders=encoders,
                                                            objective=default_objective(options.objective)))
    original, work, candidates, skipped = prepare(model, options)
    by_name = {c.name: c for c in candidates}
    order = [c.name for c in candidates]
    evaluator = analysis.evaluator
    measured: dict[tuple, tuple] = {}

    def plan_of(choice: dict[str, Option]):
        return [(by_name[n], _setting(choice[n].setting)) for n in order if n in choice]

    def build(choice: dict[str, Option]) -> dict[str, HalutLayer]:
        plan = plan_of(choice)
        if not options.sequential:
            return {c.name: analysis.learned[(c.name, s.key)] for c, s in plan}
        reuse = {c.name: analysis.learned[(c.name, s.key)] for c, s in plan}
        learning = [(c, learn_options(options, s.codebooks, s.encoder)) for c, s in plan]
        return learn_sequential(work, analysis.learn_set, learning, analysis.learn_rows, options.max_rows, options.seed,
                                reuse)

    def measure_se(choice: dict[str, Option], tuned: dict[str, HalutLayer] | None = None,
                   store: dict[tuple, tuple] = measured) -> tuple[float, float]:
        layers = {**build(choice), **(tuned or {})}  # fine-tuned layers in place of their learned forms
        rewrites = [LayerRewrite(c, layers[c.name], "") for c, _ in plan_of(choice)]
        comparison = evaluator.compare(rewrite_model(work, rewrites))
        value, se = comparison.value(budget.metric), comparison.standard_error(budget.metric)
        store[choice_key(choice)] = (layers, comparison.values(), se)
        return value, se

    # (no measured row at all: the objective left every setting out, which the no-layer error below explains)
    measured_rows = [r for r in analysis.rows if r.error is None and r.skipped is None]
    if budget.metric == "agreement" and measured_rows and all(r.agreement is None for r in measured_rows):
        raise ConversionError(f"--budget {budget}: output {analysis.metric_output!r} has no classes to agree on "
                              "(top-1 agreement needs a last axis of more than one class, or integer labels); "
                              "use cosine=... or nmse=..., or --metric-output")
    if budget.metric == "ctc" and measured_rows and all(r.ctc is None for r in measured_rows):
        raise ConversionError(f"--budget {budget}: output {analysis.metric_output!r} is not a CTC sequence output "
                              "(ctc needs a float output [samples, time, classes] with more than one class); "
                              "use agreement=..., cosine=... or nmse=..., or --metric-output")
    objective = options.objective or ("time" if analysis.timed else "macs")
    if analysis.objective not in (None, objective):
        raise ValueError(f"--objective {objective}: the analysis measured only the settings that save "
                         f"{'time' if analysis.objective == 'time' else 'multiply-adds'} (objective "
                         f"{analysis.objective!r}); analyze again with objective {objective!r} or None")
    options_list = analysis.options(budget.metric, objective)

    def search(within: Budget) -> dict[str, Option]:
        choice, tried = select_within(options_list, within, lambda c: measure_se(c)[0])
        history.extend(tried)
        # a sequential verification relearns the layers (minutes, not seconds); the climb's margin, a standard
        # error, needs held-out samples
        if not options.sequential and analysis.samples_heldout >= MIN_SE_SAMPLES:
            choice, added = climb(choice, options_list, within, measure_se, tried=lambda c: choice_key(c) in measured)
            history.extend(added)
        return choice

    def tune(choice: dict[str, Option]):
        """``choice``'s layers fine-tuned together, measured as written: (value, standard error, (what
        ``measure_se`` stores for it, FinetuneReport))."""
        from .finetune import FinetuneOptions, finetune

        feeds = augmented(analysis.learn_set, finetune_copies(analysis, choice), options.seed)
        tuned, report = finetune(work, [c for c, _ in plan_of(choice)], build(choice), [feed for _, feed in feeds],
                                 evaluator.feeds, evaluator.reference,
                                 analysis.metric_output, budget.metric,
                                 FinetuneOptions(seed=options.seed, progress=options.progress))
        store: dict[tuple, tuple] = {}
        value, se = measure_se(choice, tuned, store)
        log.info("fine-tuned %d layers: held-out %s %.4f -> %.4f (int8 %s), %.4f written", len(choice), budget.metric,
                 report.before, report.after, report.after_int8, value)
        return value, se, (store[choice_key(choice)], report)

    history: list[tuple[str, float]] = []
    chosen = search(budget)
    finetuned = None
    if options.finetune and chosen:
        kept, tuned_history = widen(chosen, budget, search, tune)
        history += tuned_history
        if kept is not None:
            chosen, (entry, finetuned) = kept
            tuned = entry[0]
            # the fine-tuned model may have room left for more layers, as learned: climb from it
            after_tuning = {choice_key(chosen): entry}
            if analysis.samples_heldout >= MIN_SE_SAMPLES:
                chosen, added = climb(chosen, options_list, budget,
                                      lambda c: measure_se(c, tuned, after_tuning),
                                      tried=lambda c: choice_key(c) in after_tuning)
                history += added
            measured[choice_key(chosen)] = after_tuning[choice_key(chosen)]
    if not chosen:
        savers = [o for o in options_list if o.saving is not None and o.saving > 0]
        if not savers and objective == "time":
            raise ConversionError(f"no layer can be converted within --budget {budget}: in the kernel timings no "
                                  "setting of any layer runs faster than the original layer (1 thread); "
                                  "--objective macs converts by multiply-adds removed instead")
        best = min(savers, key=lambda o: o.loss, default=None)
        hint = f"; the best single layer is {best.layer} ({best.setting}) with a loss of {best.loss:.4g}" if best else ""
        # a layer within the budget that the timings say is no faster is a different answer from "too lossy"
        slow = sorted({o.layer for o in options_list if o.loss <= budget.max_loss and o not in savers})
        if slow and objective == "time":
            hint += (f"; {len(slow)} layer(s) fit the budget but run no faster than the original in the kernel "
                     f"timings ({', '.join(slow[:3])}{', ...' if len(slow) > 3 else ''}): --objective macs "
                     "converts them")
        raise ConversionError(f"no layer can be converted within --budget {budget}{hint}")
    layers, values, se = measured[choice_key(chosen)]
    plan = plan_of(chosen)
    total_loss = sum(max(o.loss, 0.0) for o in chosen.values())
    predicted = total_loss if budget.metric == "nmse" else 1.0 - total_loss
    macs = sum(analysis.row(n, o.setting).macs for n, o in chosen.items())
    speedup = None
    if analysis.model_ms:
        saved = sum(analysis.row(n, o.setting).saving("time") for n, o in chosen.items())
        if saved < analysis.model_ms:
            speedup = analysis.model_ms / (analysis.model_ms - saved)
        else:  # single-layer kernel timings can overstate what the layers cost inside the model
            log.warning("the chosen layers' kernel timings save %.3g ms of a %.3g ms model: no expected speedup",
                        saved, analysis.model_ms)
    report = BudgetReport(
        budget, [(c.name, s.key, chosen[c.name].loss) for c, s in plan], predicted, values[budget.metric], se,
        objective, values, history, macs / analysis.total_macs if analysis.total_macs else 0.0, speedup, None,
        analysis, finetuned,
    )
    reason = f"not chosen under --budget {budget}"
    skipped = skipped + [_Skip(n, by_name[n].op_type, reason) for n in order if n not in chosen]
    log.info("budget %s: %d layers, measured %s", budget, len(plan), values)
    result = _finish(original, work, plan, layers, analysis.learn_rows, skipped, options, output_path, BudgetResult,
                     budget=report)
    if analysis.timed:  # the kernels' sum overstates or understates what the model gains: time the model itself
        feed = evaluator.feeds[0]
        runs = int(min(1000, max(10, 200 / max(analysis.model_ms or 1.0, 1e-3))))  # about 0.2 s of each model
        ref_ms, conv_ms = latencies(model_session(work, threads=1), model_session(result.model, threads=1), feed,
                                    runs=runs, warmup=2)
        report.measured_speedup = ref_ms / conv_ms
    return result


@dataclass
class _Skip:
    name: str
    op_type: str
    reason: str


def _setting(key: str) -> Setting:
    encoder, _, c = key.partition(" C=")
    return Setting(encoder, int(c))
