"""Text, JSON and CSV forms of a sensitivity analysis and of a budget's outcome (for the CLI and for plotting)."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import fields
from pathlib import Path

from .analyze import Analysis, SensitivityRow
from .tables import fmt_number, format_table

HEADERS = ["layer", "op", "D", "M", "encoder", "C", "rows/sample", "train rows", "train NMSE", "held-out NMSE",
           "file NMSE", "agreement", "cosine", "NMSE", "ctc", "MACs/sample", "MACs removed", "MatMul ms", "in model ms",
           "Halut ms"]


def _row(r: SensitivityRow) -> list:
    return [r.layer, r.op_type, r.D, r.M, r.encoder, r.C, r.rows_per_sample, r.rows_train, r.train_nmse,
            r.heldout_nmse, r.file_nmse, r.agreement, r.cosine, r.nmse, r.ctc, r.macs, r.macs_removed, r.matmul_ms,
            r.in_model_ms, r.halut_ms]


def _copies_text(analysis: Analysis, layer: str, copies: int) -> str:
    """``layer copies``, and how many of its learned settings kept them (--augment auto keeps them where they lower
    the held-out error)."""
    learned = [r for r in analysis.rows if r.layer == layer and r.rows_train is not None]
    kept = sum(1 for r in learned if r.copies)
    return f"{layer} {copies}" + ("" if kept == len(learned) else f" (kept by {kept} of {len(learned)} settings)")


def analysis_table(analysis: Analysis, budget: str | None = None) -> str:
    """The aligned table, one row per (layer, setting), then what it was measured on and what it cost."""
    lines = [format_table(HEADERS, [_row(r) for r in analysis.rows])]
    errors = [f"  {r.layer} {r.setting.key}: {r.error}" for r in analysis.rows if r.error]
    if errors:
        lines.append("not learned:\n" + "\n".join(errors))
    skipped = [f"  {r.layer} {r.setting.key}: {r.skipped}" for r in analysis.rows if r.skipped]
    if skipped:
        lines.append(f"not learned nor measured, as no budget chooses a setting that saves nothing "
                     f"(objective {analysis.objective}):\n" + "\n".join(skipped))
    copies = [_copies_text(analysis, name, rows.copies) for name, rows in analysis.learn_rows.items() if rows.copies]
    if copies:
        lines.append("learned from noisy copies of each calibration row too (--augment; train rows count them): "
                     + ", ".join(copies))
    overfit = sorted({r.layer for r in analysis.rows if _overfits(r)})
    if overfit:
        lines.append("held-out error over 2x the training error (too few rows per sample to learn from?): "
                     + ", ".join(overfit))
    lines.append(
        f"\nEnd metrics of output {analysis.metric_output!r} with each layer converted alone, on "
        f"{_heldout_phrase(analysis)}. train / held-out NMSE: the layer's output on the learn files' "
        "rows (held-out: rows set aside there); file NMSE: on the held-out files' rows. MACs per sample; "
        "MatMul / Halut ms: the first held-out file's rows through onnxruntime's MatMul (or Conv) alone / encode + "
        "lookup; in model ms: the layer's node inside the original model on that file (1 thread)."
    )
    if analysis.model_ms:
        lines.append(f"Original model: {analysis.model_ms:.3g} ms per held-out file (1 thread).")
    lines.append(f"Analysis took {analysis.seconds:.1f} s for {len(analysis.rows)} settings of "
                 f"{len({r.layer for r in analysis.rows})} layers.")
    if budget:
        from .budget import choose, parse_budget

        b = parse_budget(budget)
        chosen = choose(analysis.options(b.metric, "time" if analysis.timed else "macs"), b.max_loss)
        share = sum(analysis.row(n, o.setting).macs for n, o in chosen.items()) / max(analysis.total_macs, 1)
        picks = ", ".join(f"{n} ({o.setting})" for n, o in chosen.items()) or "none"
        lines.append(f"Within --budget {b} (single-layer losses added, before verification): {picks}; "
                     f"{100 * share:.1f} % of the eligible multiply-adds.")
    return "\n".join(lines)


def _heldout_phrase(analysis: Analysis) -> str:
    """Where the held-out files came from: a share of the calibration files, or their own directory."""
    held, learn = len(analysis.heldout_files), len(analysis.learn_files)
    folders = {str(Path(f).parent) for f in analysis.heldout_files}
    if folders & {str(Path(f).parent) for f in analysis.learn_files}:
        return (f"{held} held-out calibration files ({analysis.samples_heldout} samples); learned on the other "
                f"{learn} files")
    return (f"the {held} files of {', '.join(sorted(folders))} ({analysis.samples_heldout} samples, "
            f"--heldout-data); learned on the {learn} calibration files")


def _overfits(r: SensitivityRow) -> bool:
    t, h = r.train_nmse, r.file_nmse if r.file_nmse is not None else r.heldout_nmse
    return t is not None and h is not None and math.isfinite(h) and h > 2 * t and h > 1e-3


def write_json(analysis: Analysis, path) -> None:
    with open(path, "w") as f:
        json.dump(analysis.to_json(), f, indent=1)


def write_csv(analysis: Analysis, path) -> None:
    names = [f.name for f in fields(SensitivityRow)]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(names)
        for r in analysis.rows:
            row = r.to_json()
            writer.writerow(["" if row[n] is None else row[n] for n in names])


def budget_summary(report) -> str:
    """The chosen layers and the budget's outcome (``budget_convert.BudgetReport``)."""
    a = report.analysis
    rows = [[name, key, loss, a.row(name, key).macs] for name, key, loss in report.chosen]
    lines = [format_table(["chosen layer", "setting", f"single-layer loss ({report.budget.metric})", "MACs/sample"],
                          rows)]
    saving = "measured time saved in the model" if report.objective == "time" else "multiply-adds removed"
    lines.append(f"objective: {report.objective} ({saving}); verifications: "
                 + "; ".join(f"{what}: {fmt_number(v)}" for what, v in report.history))
    m = report.measured_all
    lines.append(
        f"Budget {report.budget}: predicted {fmt_number(report.predicted)}, measured {fmt_number(report.measured)} "
        + (f"(standard error {fmt_number(report.measured_se)} over {a.samples_heldout} samples) "
           if math.isfinite(report.measured_se) else f"(no standard error: {a.samples_heldout} samples) ")
        + f"on {len(a.heldout_files)} held-out files (agreement {fmt_number(m['agreement'])}, cosine "
        f"{fmt_number(m['cosine'])}, NMSE {fmt_number(m['nmse'])}"
        + (f", ctc {fmt_number(m['ctc'])}" if m.get("ctc") is not None else "")
        + f"); {100 * report.macs_share:.1f} % of the eligible "
        "layers' multiply-adds converted"
        + (f"; speedup {report.measured_speedup:.3g}x measured on one held-out file (1 thread)"
           if report.measured_speedup else "")
        + (f", {report.expected_speedup:.3g}x expected from the layer timings" if report.expected_speedup else "")
        + "."
    )
    f = report.finetune
    if f is not None:
        lines.append(
            f"Fine-tuned: held-out {f.metric} {fmt_number(f.before)} as learned -> {fmt_number(f.after)} after epoch "
            f"{f.best_epoch} of {len(f.history) - 1} as trained, {fmt_number(f.after_int8)} with the int8 LUTs "
            f"written, {f.seconds:.0f} s. Train loss per epoch: "
            + ", ".join(fmt_number(loss) for _, loss, _ in f.history[1:]) + ".")
    return "\n".join(lines)
