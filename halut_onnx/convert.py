"""The public conversion API: ``convert_model(model, calib_dir, output_path, options) -> ConvertResult``.

Stages, each in its own module: find the replaceable layers (passes.candidates) -> select them and choose C
(selection) -> sample their input rows from the calibration data (calibrate) -> learn each layer (learn) -> rewrite
the graph (passes.halut_rewrite) -> record, check and write the model (records, model_io).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from . import __version__
from .augment import collect_layer_rows, learned_copies
from .calibrate import CalibrationSet, CollectedRows, model_inputs
from .errors import ConversionError
from .kernel_timing import library_available, time_candidate
from .learn import LearnOptions, LearnReport, learn_layer
from .ops import NUM_CODES
from .model_io import EXTERNAL_DATA_THRESHOLD, load_model, same_file, save_model_atomic, with_min_opset
from .options import ConvertOptions
from .passes import LayerCandidate, LayerRewrite, find_layers, name_nodes, rewrite_model
from .passes.functions import MIN_OPSET
from .records import LayerRecord, write_records
from .selection import SelectedLayer, select_layers

log = logging.getLogger(__name__)

# A layer's held-out NMSE above which convert says so in its notes. Measured: PP-OCR rec's MatMuls at the default
# C (0.01-0.02) cost 0.14 points of CER; Magika's conv (0.42) leaves 31 % label agreement; transformer projections
# at 0.2-0.5 collapsed a 6-layer encoder (docs/examples.md, README).
HIGH_NMSE = 0.1

__all__ = ["ConvertOptions", "ConvertResult", "convert_model"]


@dataclass
class ConvertResult:
    model: onnx.ModelProto  # the converted model
    output_path: Path | None
    layers: list[LayerRecord] = field(default_factory=list)  # every MatMul / Gemm / Conv node, in graph order

    @property
    def converted(self) -> list[LayerRecord]:
        return [r for r in self.layers if r.converted]

    @property
    def skipped(self) -> list[LayerRecord]:
        return [r for r in self.layers if not r.converted]


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with inferred shapes when onnx can infer them (unknown ops or a huge model: as it is)."""
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # inference is an aid here: layers whose types stay unknown are checked on the data
        log.info("shape inference failed (%s); checking layer inputs on the calibration data instead", exc)
        return model


def _groups(selected: list[SelectedLayer], max_rows: int, memory_mb: int) -> list[list[SelectedLayer]]:
    """Consecutive groups of layers whose row samples fit in ``memory_mb`` together (one data pass per group)."""
    budget = memory_mb * 2**20
    groups: list[list[SelectedLayer]] = []
    used = 0
    for sel in selected:
        size = 4 * max_rows * sel.candidate.D
        if not groups or used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(sel)
        used += size
    return groups


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.4g}"


def _doc_string(sel: SelectedLayer, record: LayerRecord) -> str:
    return (
        f"Halut replacement of {sel.candidate.description}: D={record.D}, M={record.M}, C={record.C} codebooks, "
        f"encoder={record.encoder}; learned on {record.rows_train + record.rows_heldout} calibration rows "
        f"({record.rows_train} train, {record.rows_heldout} held out, {record.rows_seen} seen); "
        f"held-out NMSE {_fmt(record.heldout_nmse_int8)} (int8 LUT), {_fmt(record.heldout_nmse)} (float LUT). "
        f"halut-onnx {__version__}."
    )


def copies_notes(rows: CollectedRows, codebooks: int, options: ConvertOptions, report: LearnReport) -> list[str]:
    """A layer's note on the noisy copies --augment auto gave it and whether it kept them (none when it gave none,
    or copies were asked for)."""
    if not rows.copies or options.augment is not None:
        return []
    head = (f"{rows.rows_seen // (rows.copies + 1)} calibration rows for {NUM_CODES * codebooks} LUT entries per "
            "output: learned from them")
    if report.other_nmse_int8 is None:
        return [f"{head} and {rows.copies} noisy copies of each (--augment auto; --augment 0 learns from the "
                "calibration rows alone)"]
    ours, other = _fmt(report.heldout_nmse_int8), _fmt(report.other_nmse_int8)
    if report.copies:
        return [f"{head} and {rows.copies} noisy copies of each (--augment auto: held-out NMSE {ours} with the "
                f"copies, {other} without)"]
    return [f"{head} alone (--augment auto: held-out NMSE {ours} without noisy copies, {other} with "
            f"{rows.copies} of each)"]


def learn_options(options: ConvertOptions, codebooks: int, encoder: str) -> LearnOptions:
    """How one layer is learned at ``codebooks`` with ``encoder`` under ``options``: the one mapping of convert's
    options onto the learning's, for convert, the budget analysis and sequential learning alike."""
    return LearnOptions(codebooks=codebooks, encoder=encoder, ridge=options.ridge,
                        heldout_fraction=options.heldout_fraction, seed=options.seed,
                        try_without_copies=options.augment is None)


def time_record(record: LayerRecord, cand: LayerCandidate, rows: CollectedRows) -> None:
    """Time a converted layer's kernels on the first calibration file's rows (``kernel_timing.time_candidate``: its
    shape, random values, 1 thread) into ``record``: speed is what a conversion is for, and a layer too small to
    gain (the digits MLP's, 64 wide) makes the model slower."""
    n = rows.first_file_rows or rows.rows_seen
    t = time_candidate(n, cand, rows.image_shape, record.C, record.encoder)
    record.timed_rows, record.original_ms, record.halut_ms = n, t.matmul_ms, t.halut_ms


def _learn(sel: SelectedLayer, rows, options: ConvertOptions, bar, timed: bool) -> tuple[LayerRecord, object | None]:
    cand = sel.candidate
    record = LayerRecord(
        cand.name, cand.op_type, "skipped", D=cand.D, M=cand.M, C=sel.codebooks, encoder=options.layer_encoder,
        bias_node=cand.bias_node, rows_seen=rows.rows_seen, copies=rows.copies, notes=[sel.note] if sel.note else [],
    )
    if rows.problem:
        record.reason = f"not converted: {rows.problem}"
        return record, None
    try:
        layer = learn_layer(
            rows.rows, cand.weight, cand.bias, learn_options(options, sel.codebooks, options.layer_encoder),
            sources=rows.sources,
            progress=lambda stage: bar.set_postfix_str(f"{cand.name}: {stage}", refresh=True),
        )
    except ValueError as exc:  # e.g. too few calibration rows for this layer: skip it, convert the rest
        record.reason = f"learning failed: {exc}"
        return record, None
    rep = layer.report
    record.status = "converted"
    record.copies = learned_copies(rows, rep)
    record.notes += copies_notes(rows, sel.codebooks, options, rep)
    record.rows_train, record.rows_heldout, record.ridge = rep.rows_train, rep.rows_heldout, float(rep.ridge)
    record.train_nmse, record.heldout_nmse = float(rep.train_nmse), float(rep.heldout_nmse)
    record.heldout_nmse_int8 = float(rep.heldout_nmse_int8)
    record.lut_bytes = int(layer.lut_q.nbytes)
    record.notes += list(rep.warnings)
    if timed:
        time_record(record, cand, rows)
    if record.heldout_nmse_int8 > HIGH_NMSE:
        record.notes.append(
            f"held-out NMSE {record.heldout_nmse_int8:.3g}: above {HIGH_NMSE:g} a layer keeps too little of its output "
            "for most models' end metrics; measure the model with `halut-onnx eval`, or convert with --budget"
        )
    return record, layer


def _check(converted: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """check_model(full_check=True) on the output (strict shape inference through the ops' function bodies).

    A model that fails it only because its input already did is written anyway, with a warning.
    """
    try:
        onnx.checker.check_model(converted, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        try:
            onnx.checker.check_model(original, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as original_exc:
            log.warning("the input model does not pass onnx.checker.check_model(full_check=True) either (%s); "
                        "the converted model fails it with: %s", str(original_exc).splitlines()[0], exc)
            return
        raise


def convert_model(
    model: str | os.PathLike | onnx.ModelProto,
    calib_dir: str | os.PathLike,
    output_path: str | os.PathLike | None = None,
    options: ConvertOptions = ConvertOptions(),
) -> ConvertResult:
    """Convert the eligible MatMul / Gemm / Conv layers of ``model`` to Halut lookups learned on ``calib_dir``.

    ``model`` is a path or a ModelProto; it is never modified. With ``output_path`` the converted model is written
    there atomically. Raises ValueError subclasses (ConversionError, CalibrationError, ModelFileError) for problems
    a user can fix; layers that cannot be converted are skipped, each with its reason in ``result.layers``.
    """
    options.validate()
    if options.budget is None:
        # the held-out files measure a budget and nothing else: ignoring them would hide that none was set
        for flag, value in (("--heldout-files", options.heldout_files), ("--heldout-data", options.heldout_data)):
            if value is not None:
                raise ConversionError(f"{flag} needs --budget: held-out files measure the budget metric")
    if options.budget is not None or options.sequential:
        # docs/budget.md: analysis, selection and sequential learning live in budget_convert
        from .budget_convert import convert_sequential, convert_under_budget

        run = convert_under_budget if options.budget is not None else convert_sequential
        return run(model, calib_dir, output_path, options)
    if output_path is not None and not Path(output_path).resolve().parent.is_dir():
        # before the calibration and learning, not after
        raise ConversionError(f"output folder {Path(output_path).parent} does not exist")
    source = "the model"
    if isinstance(model, onnx.ModelProto):
        original = model
    else:
        source = str(model)
        if output_path is not None and same_file(model, output_path):
            raise ConversionError(f"the output path {output_path} is the input model; write the output elsewhere")
        original = load_model(model)
    work = onnx.ModelProto()
    work.CopyFrom(with_min_opset(original, MIN_OPSET, source))
    name_nodes(work)

    candidates, not_eligible = find_layers(_infer(work))
    selected, not_selected = select_layers(
        candidates, options.include, options.exclude, options.codebooks, options.min_dim
    )
    skipped = {s.name: LayerRecord(s.name, s.op_type, "skipped", reason=s.reason) for s in not_eligible + not_selected}
    if not selected:
        reasons = "; ".join(f"{s.name}: {s.reason}" for s in list(skipped.values())[:3])
        more = f" (and {len(skipped) - 3} more)" if len(skipped) > 3 else ""
        found = (f"{len(skipped)} layer{'s' if len(skipped) > 1 else ''} skipped: {reasons}{more}" if skipped
                 else "no MatMul, Gemm or Conv node")
        raise ConversionError(f"no eligible layer in {source}: {found}")

    calibration = CalibrationSet(calib_dir, model_inputs(work))
    from tqdm.auto import tqdm

    records: dict[str, LayerRecord] = {}
    rewrites: list[LayerRewrite] = []
    timed = library_available()  # without the library the function bodies would run: their speed means nothing
    groups = _groups(selected, options.max_rows, options.memory_mb)
    with tqdm(total=len(selected), desc="learning", unit="layer", disable=not options.progress) as bar:
        for index, group in enumerate(groups):
            targets = {sel.candidate.name: (sel.candidate.input_name, sel.candidate.D, sel.candidate.conv)
                       for sel in group}
            desc = "calibrating" + (f" ({index + 1}/{len(groups)})" if len(groups) > 1 else "")
            collected = collect_layer_rows(work, calibration, targets, {s.candidate.name: s.codebooks for s in group},
                                           options.augment, options.max_rows, options.seed, options.progress, desc)
            for sel in group:
                record, layer = _learn(sel, collected.pop(sel.candidate.name), options, bar, timed)
                records[record.name] = record
                if layer is not None:
                    rewrites.append(LayerRewrite(sel.candidate, layer, _doc_string(sel, record)))
                bar.update(1)
    if not rewrites:
        reasons = "; ".join(f"{r.name}: {r.reason}" for r in list(records.values())[:3])
        raise ConversionError(f"no layer of {source} could be converted: {reasons}")

    converted = rewrite_model(work, rewrites)
    order = [n.name for n in work.graph.node]
    all_records = {**skipped, **records}
    layers = [all_records[name] for name in order if name in all_records]
    write_records(converted, __version__, options.settings(), layers)
    if converted.ByteSize() < EXTERNAL_DATA_THRESHOLD:
        _check(converted, original)
    result = ConvertResult(converted, None, layers)
    if output_path is not None:
        result.output_path = save_model_atomic(converted, output_path)
        log.info("wrote %s: %d layers converted, %d skipped", output_path, len(result.converted), len(result.skipped))
    return result
