"""Accuracy budgets on real models: for each budget, the layers `convert --budget` chose, the share of the eligible
multiply-adds converted, the measured end metric and the measured speedup (docs/budget.md).

    python examples/budget_tables.py digits [--out DIR] [--quick] [--finetune]
    python examples/budget_tables.py rec [--out DIR] [--calib 96] [--eval 48] [--max-rows 8192] [--quick]
        [--heldout-files 0.25] [--budgets ctc=0.99,...] [--sequential] [--finetune]
    python examples/budget_tables.py rec-layers --out DIR [--calib 96] [--eval 48]   # after `rec --out DIR`
    python examples/budget_tables.py det [--out DIR] [--calib 8] [--eval 4] [--quick] [--budgets cosine=0.99,...]
        [--heldout-files 0.25] [--finetune]
    python examples/budget_tables.py sequential [--out DIR]    # independent vs --sequential calibration

One sensitivity analysis per model (halut_onnx.analyze), reused by every budget; each budget's model (as learned,
and with --sequential / --finetune when asked for) is written, measured on the held-out files (the budget metric;
digits: the model's validation rows, --heldout-data), on separate evaluation data (digits: test accuracy; rec: CER
and top-1 agreement on non-blank frames; det: F1 and IoU of the binarised map against the original's, and line
recall) and timed against the original (halut_onnx.bench, 1 thread). The analysis is pickled in --out and
reused by a rerun with other --budgets.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import example_tools as tools  # noqa: E402

from halut_onnx.analyze import AnalyzeOptions, analyze  # noqa: E402
from halut_onnx.bench import bench  # noqa: E402
from halut_onnx.budget_convert import convert_under_budget, default_objective  # noqa: E402
from halut_onnx.options import ConvertOptions  # noqa: E402

def cached_analysis(path: Path, model, calib, options: AnalyzeOptions):
    """The analysis of ``model``, pickled at ``path`` with the options that shape it, so that a rerun (other
    budgets) does not redo it; a pickle made with other options (rows, encoders, held-out share) is redone."""
    import pickle

    key = dataclasses.replace(options, convert=dataclasses.replace(options.convert, progress=False))
    if path.exists():
        with open(path, "rb") as f:
            saved = pickle.load(f)
        if isinstance(saved, tuple) and saved[0] == key:
            return saved[1]
        print(f"{path}: made with other options, analysing again", file=sys.stderr)
    analysis = analyze(model, calib, options)
    with open(path, "wb") as f:
        pickle.dump((key, analysis), f)
    return analysis


def model_analysis(out: Path, stem: str, model, options: AnalyzeOptions):
    """The analysis of ``model`` on ``out/calib``, pickled in ``out`` (one per objective), and the line that says
    what it covered and cost."""
    analysis = cached_analysis(out / f"{stem}_{options.objective}_analysis.pkl", model, out / "calib", options)
    measured = sum(r.skipped is None and r.error is None for r in analysis.rows)
    return analysis, (f"analysis: {len(analysis.rows)} settings of {len({r.layer for r in analysis.rows})} layers "
                      f"({measured} learned and measured, the others save nothing or next to nothing by "
                      f"{options.objective}) in "
                      f"{analysis.seconds:.0f} s")


HEADERS = ["budget", "mode", "layers", "MACs converted %", "held-out metric ± s.e. (predicted)", "end metric",
           "speedup measured", "on a held-out file", "speedup expected"]


def modes(sequential: bool, finetune: bool) -> list[str]:
    """The ways each budget is converted: independent learning, and --sequential / --finetune when asked for."""
    return ["independent"] + ["sequential"] * sequential + ["finetune"] * finetune


def _budget_rows(model, calib, out, analysis, budgets, mode_names, convert: ConvertOptions, end_metric, bench_data,
                 bench_runs=20, objective=None):
    """One row per (budget, mode), each converted with the analysis' own ``convert`` options (rows, held-out files)."""
    rows = []
    for budget in budgets:
        for mode in mode_names:
            path = out / f"{model.stem}.{budget.replace('=', '')}{'' if mode == 'independent' else '.' + mode}.onnx"
            options = dataclasses.replace(convert, progress=mode == "finetune", budget=budget,
                                          sequential=mode == "sequential", finetune=mode == "finetune",
                                          objective=objective)
            start = time.perf_counter()
            try:
                result = convert_under_budget(model, calib, path, options, analysis)
            except ValueError as exc:
                rows.append([budget, mode, 0, "0.0", f"({exc})", "-", "-", "-", "-"])
                continue
            seconds = time.perf_counter() - start
            report = result.budget
            timing = bench(model, path, threads=1, runs=bench_runs, warmup=2, data_dir=bench_data)
            rows.append([
                budget, mode, f"{len(result.converted)}/{len({r.layer for r in analysis.rows})}",
                f"{100 * report.macs_share:.1f}", measured_cell(report), end_metric(path),
                f"{timing.speedup:.2f}x", "-" if report.measured_speedup is None else f"{report.measured_speedup:.2f}x",
                "-" if report.expected_speedup is None else f"{report.expected_speedup:.2f}x",
            ])
            print(f"{budget} {mode}: {len(result.converted)} layers in {seconds:.0f} s; "
                  f"{[(n, k) for n, k, _ in report.chosen]}; verifications {report.history}", file=sys.stderr)
    return rows


def measured_cell(report) -> str:
    """The held-out metric, its standard error where there is one (under 10 samples there is none), and the
    knapsack's prediction."""
    se = f" ± {report.measured_se:.4f}" if math.isfinite(report.measured_se) else ""
    return f"{report.measured:.4f}{se} ({report.predicted:.4f})"


def digits(out: Path, quick: bool, max_rows: int, objective: str | None = None, finetune: bool = False) -> None:
    import digits_mlp

    model, split = digits_mlp.train()
    x_test, y_test = split.x_test, split.y_test
    original = digits_mlp.export(model, out / "digits_mlp.onnx")
    # the model's fit rows to learn from, its validation rows (never trained on) to measure the budgets on
    calib = tools.write_batches(out / "calib", digits_mlp.INPUT, split.x_fit, 64)
    val = tools.write_batches(out / "val", digits_mlp.INPUT, split.x_val, 64)
    (out / "test").mkdir(exist_ok=True)
    np.savez(out / "test" / "test.npz", X=x_test)
    base = digits_mlp.accuracy(original, x_test, y_test, halut=False)
    options = AnalyzeOptions(ConvertOptions(progress=False, max_rows=max_rows, heldout_data=str(val)),
                             divisors=(8, 4, 2) if quick else (16, 8, 4, 2))
    analysis = analyze(original, calib, options)
    print(f"analysis: {len(analysis.rows)} settings in {analysis.seconds:.0f} s; test accuracy original "
          f"{100 * base:.2f} %")

    def end_metric(path):
        return f"{100 * digits_mlp.accuracy(path, x_test, y_test, halut=True):.2f} % (orig {100 * base:.2f})"

    budgets = ["agreement=0.99"] if quick else ["agreement=0.995", "agreement=0.99", "agreement=0.98",
                                                 "agreement=0.95"]
    rows = _budget_rows(original, calib, out, analysis, budgets, modes(not quick, finetune), options.convert,
                        end_metric, out / "test", objective=objective)
    print(tools.format_table(HEADERS, rows))


def rec(out: Path, quick: bool, max_rows: int, n_calib: int, n_eval: int, budgets: list[str] | None = None,
        heldout_files: float = 0.25, sequential: bool = False, objective: str | None = None,
        finetune: bool = False, encoders: tuple[str, ...] = ("pq", "tree")) -> None:
    import ppocr_data
    from ppocr_rec import top1_agreement

    model = ppocr_data.rec_model_path()
    charset = ppocr_data.rec_charset(model)
    name = ppocr_data.input_name(model)
    calib_lines, eval_lines = ppocr_data.rec_lines(n_calib, n_eval, model)
    calib = ppocr_data.make_rec_set(calib_lines, seed=0)
    evaluation = ppocr_data.make_rec_set(eval_lines, seed=1)
    ppocr_data.write_set(out / "calib", name, calib.batches)
    ppocr_data.write_set(out / "eval", name, evaluation.batches)
    texts, frames = ppocr_data.run_rec(tools.session(model), evaluation.batches, charset)
    base = ppocr_data.cer(evaluation.references, texts)
    convert = ConvertOptions(progress=False, max_rows=max_rows, heldout_files=heldout_files)
    options = AnalyzeOptions(convert, encoders=encoders, objective=default_objective(objective),
                             **({} if quick else {"divisors": (4, 2)}))
    analysis, covered = model_analysis(out, "rec", model, options)
    print(f"{covered}; {n_calib} calibration lines, {n_eval} evaluation lines, original CER {100 * base:.2f} %")

    def end_metric(path):
        conv_texts, conv_frames = ppocr_data.run_rec(tools.session(path, halut=True), evaluation.batches, charset)
        return (f"CER {100 * ppocr_data.cer(evaluation.references, conv_texts):.2f} %, agreement "
                f"{100 * top1_agreement(frames, conv_frames):.2f} %")

    budgets = budgets or ["ctc=0.99", "ctc=0.98", "agreement=0.99"]
    rows = _budget_rows(model, out / "calib", out, analysis, budgets, modes(sequential, finetune), convert,
                        end_metric, out / "eval", bench_runs=5, objective=objective)
    print(tools.format_table(HEADERS, rows))


def rec_layers(out: Path, n_calib: int, n_eval: int) -> None:
    """Each layer of a ``rec`` run's analysis (pickled in ``out``) converted alone, on the evaluation lines: how
    many frames change their arg-max, how many of those take a neighbouring frame's class (a character moved by a
    frame), and whether the decoded text changes (docs/budget.md, why the ctc metric)."""
    import pickle

    import ppocr_data

    from halut_onnx.analyze import model_session
    from halut_onnx.passes import LayerRewrite, rewrite_model

    pickles = sorted(out.glob("rec_*_analysis.pkl"), key=lambda p: p.stat().st_mtime)
    if not pickles:
        raise SystemExit(f"rec-layers: no rec analysis in {out} (run `budget_tables.py rec --out {out}` first)")
    with open(pickles[-1], "rb") as f:
        _, analysis = pickle.load(f)
    model = ppocr_data.rec_model_path()
    charset = ppocr_data.rec_charset(model)
    _, eval_lines = ppocr_data.rec_lines(n_calib, n_eval, model)
    evaluation = ppocr_data.make_rec_set(eval_lines, seed=1)
    texts, frames = ppocr_data.run_rec(tools.session(model), evaluation.batches, charset)
    rows = []
    for (name, key), layer in analysis.learned.items():
        single = model_session(rewrite_model(analysis.work, [LayerRewrite(analysis.candidates[name], layer, "")]))
        probs = [single.run(None, {"x": batch})[0] for batch in evaluation.batches]
        conv_texts = [t for p in probs for t in ppocr_data.ctc_greedy_decode(p, charset)]
        changed, moved, non_blank = 0, 0, [0, 0]
        for ref, p in zip(frames, probs):
            top = p.argmax(axis=2)
            diff = top != ref
            padded = np.pad(ref, ((0, 0), (1, 1)), constant_values=-1)
            changed += int(diff.sum())
            moved += int(((top == padded[:, :-2]) | (top == padded[:, 2:]))[diff].sum())
            non_blank[0] += int((~diff & (ref != 0)).sum())
            non_blank[1] += int((ref != 0).sum())
        row = analysis.row(name, key)
        total = sum(f.size for f in frames)
        rows.append([name, key, f"{100 * row.macs / analysis.total_macs:.1f}", f"{1 - changed / total:.4f}",
                     f"{non_blank[0] / non_blank[1]:.4f}", changed, f"{100 * moved / max(changed, 1):.0f}",
                     f"{100 * ppocr_data.cer(evaluation.references, conv_texts):.2f}",
                     f"{100 * ppocr_data.cer(texts, conv_texts):.2f}", f"{row.agreement:.4f}", f"{row.ctc:.4f}"])
    print(tools.format_table(["layer", "setting", "MACs %", "agreement", "non-blank agreement", "frames changed",
                              "of those moved %", "CER %", "text changed %", "held-out agreement",
                              "held-out ctc"], rows))
    print(f"{n_eval} evaluation lines, {sum(f.size for f in frames)} frames ({sum(int((f != 0).sum()) for f in frames)} "
          f"non-blank); original CER {100 * ppocr_data.cer(evaluation.references, texts):.2f} %")


def det(out: Path, quick: bool, max_rows: int, n_calib: int, n_eval: int, budgets: list[str] | None = None,
        encoders: tuple[str, ...] = ("pq", "tree"), sequential: bool = False, objective: str | None = None,
        finetune: bool = False, heldout_files: float = 0.25) -> None:
    """The PP-OCR detector: budgets on the cosine of its probability map, end metrics against the original's
    output: the hmean of the text boxes rapidocr's post-processing finds (matched to the original's at IoU >= 0.5),
    the F1 and IoU of the binarised map; and the line recall on the evaluation pages (examples/ppocr_data.py)."""
    import ppocr_data

    model = ppocr_data.det_model_path()
    name = ppocr_data.input_name(model)
    lines_per_page = 12
    calib_lines, eval_lines = ppocr_data.rec_lines(n_calib * lines_per_page, n_eval * lines_per_page,
                                                   ppocr_data.rec_model_path())
    calib_pages, _, _ = ppocr_data.make_det_set(calib_lines, n_calib, lines_per_page, seed=0)
    eval_pages, boxes, scales = ppocr_data.make_det_set(eval_lines, n_eval, lines_per_page, seed=1)
    ppocr_data.write_set(out / "calib", name, calib_pages)
    ppocr_data.write_set(out / "eval", name, eval_pages)
    original = tools.session(model)
    ref_maps = [original.run(None, {name: page})[0] for page in eval_pages]
    ref_boxes = [ppocr_data.det_boxes(m) for m in ref_maps]
    base_recall = np.mean([ppocr_data.det_box_recall(m, b, s) for m, b, s in zip(ref_maps, boxes, scales)])
    # both encoders: most det layers have few outputs (M = 24..96), where pq's encode (16 D multiply-adds per
    # row) costs about as much as the layer and only the tree encoder (4 C comparisons) saves
    options = AnalyzeOptions(ConvertOptions(progress=False, max_rows=max_rows, heldout_files=heldout_files),
                             encoders=encoders,
                             objective=default_objective(objective), **({} if quick else {"divisors": (4, 2)}))
    analysis, covered = model_analysis(out, "det", model, options)
    print(f"{covered}; {n_calib} calibration pages, {n_eval} evaluation pages, original line recall "
          f"{100 * base_recall:.1f} %")

    def end_metric(path):
        session = tools.session(path, halut=True)
        maps = [session.run(None, {name: page})[0] for page in eval_pages]
        agree = [ppocr_data.det_map_agreement(r, m) for r, m in zip(ref_maps, maps)]
        recall = np.mean([ppocr_data.det_box_recall(m, b, s) for m, b, s in zip(maps, boxes, scales)])
        boxes_hmean = ppocr_data.det_hmean(ref_boxes, [ppocr_data.det_boxes(m) for m in maps])
        return (f"box hmean {100 * boxes_hmean['hmean']:.2f} % of {boxes_hmean['boxes']}, map F1 "
                f"{100 * np.mean([a['f1'] for a in agree]):.2f} %, IoU {100 * np.mean([a['iou'] for a in agree]):.2f} "
                f"%, line recall {100 * recall:.1f} %")

    budgets = budgets or ["cosine=0.99", "cosine=0.98", "cosine=0.95"]
    rows = _budget_rows(model, out / "calib", out, analysis, budgets, modes(sequential, finetune), options.convert,
                        end_metric, out / "eval", bench_runs=3, objective=objective)
    print(tools.format_table(HEADERS, rows))


def sequential_gain(out: Path, max_rows: int, n_calib: int, n_eval: int) -> None:
    """Independent against sequential calibration, every eligible layer converted: digits (test accuracy) and the
    PP-OCR rec MatMul layers (CER, agreement)."""
    import digits_mlp
    import ppocr_data
    from ppocr_rec import top1_agreement

    from halut_onnx.convert import convert_model

    model, split = digits_mlp.train()
    x_test, y_test = split.x_test, split.y_test
    original = digits_mlp.export(model, out / "digits_mlp.onnx")
    digits_mlp.write_rows(out / "digits_calib", split.x_fit)
    base = digits_mlp.accuracy(original, x_test, y_test, halut=False)
    rows = []
    for C in (8, 16, 32):
        for encoder in ("pq", "tree"):
            accs = []
            for sequential in (False, True):
                path = out / f"digits.C{C}.{encoder}.{sequential}.onnx"
                convert_model(original, out / "digits_calib", path, ConvertOptions(
                    codebooks=C, encoder=encoder, sequential=sequential, progress=False, max_rows=max_rows))
                accs.append(digits_mlp.accuracy(path, x_test, y_test, halut=True))
            rows.append(["digits MLP", f"-C {C} --encoder {encoder}", f"{100 * base:.2f}", f"{100 * accs[0]:.2f}",
                         f"{100 * accs[1]:.2f}", f"{100 * (accs[1] - accs[0]):+.2f}"])
    print(tools.format_table(["model", "setting", "original", "independent", "sequential", "gain (points)"], rows))

    rec_model = ppocr_data.rec_model_path()
    charset = ppocr_data.rec_charset(rec_model)
    calib_lines, eval_lines = ppocr_data.rec_lines(n_calib, n_eval, rec_model)
    calib = ppocr_data.make_rec_set(calib_lines, seed=0)
    evaluation = ppocr_data.make_rec_set(eval_lines, seed=1)
    ppocr_data.write_set(out / "rec_calib", ppocr_data.input_name(rec_model), calib.batches)
    texts, frames = ppocr_data.run_rec(tools.session(rec_model), evaluation.batches, charset)
    matmuls = tuple(f"^{name}$" for name in tools.matmul_layer_names(rec_model))
    rows = []
    for C in (16, None):
        cells = []
        for sequential in (False, True):
            path = out / f"rec.{C}.{sequential}.onnx"
            convert_model(rec_model, out / "rec_calib", path, ConvertOptions(
                codebooks=C, include=matmuls, sequential=sequential, progress=False, max_rows=max_rows))
            conv_texts, conv_frames = ppocr_data.run_rec(tools.session(path, halut=True), evaluation.batches, charset)
            cells.append((ppocr_data.cer(evaluation.references, conv_texts), top1_agreement(frames, conv_frames)))
        rows.append(["PP-OCR rec, 9 MatMuls", f"-C {C or 'default'} pq",
                     f"{100 * cells[0][0]:.2f} / {100 * cells[0][1]:.2f}", f"{100 * cells[1][0]:.2f} / "
                     f"{100 * cells[1][1]:.2f}"])
    print(tools.format_table(["model", "setting", "independent CER % / agreement %",
                              "sequential CER % / agreement %"], rows))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=["digits", "rec", "rec-layers", "det", "sequential"])
    parser.add_argument("--out", type=Path, default=None, help="folder for models and data (default: a temp dir)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer settings and budgets (rec, det: the default grid, C = D/2 and 64 beside 128; "
                             "else D/4 too)")
    parser.add_argument("--max-rows", type=int, default=8192, help="calibration rows kept per layer")
    parser.add_argument("--budgets", default=None, help="rec, det: comma-separated budgets instead of the defaults")
    parser.add_argument("--calib", type=int, default=96, help="rec: calibration lines (det: pages)")
    parser.add_argument("--eval", type=int, default=48, help="rec: evaluation lines (det: pages)")
    parser.add_argument("--encoders", default="pq,tree", help="rec, det: encoders analysed")
    parser.add_argument("--heldout-files", type=float, default=0.25, help="rec, det: share of the calibration files held out")
    parser.add_argument("--sequential", action="store_true", help="rec, det: each budget also with --sequential")
    parser.add_argument("--finetune", action="store_true", help="each budget also with --finetune")
    parser.add_argument("--objective", choices=["macs", "time"], default=None,
                        help="what a budget maximises (convert --objective; default: convert's)")
    args = parser.parse_args(argv)
    print(f"Halut custom-op library: {tools.library_status()}")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        if args.model == "digits":
            digits(out, args.quick, args.max_rows, args.objective, args.finetune)
        elif args.model == "rec-layers":
            rec_layers(out, args.calib, args.eval)
        elif args.model == "det":
            det(out, args.quick, args.max_rows, args.calib, args.eval,
                args.budgets.split(",") if args.budgets else None, tuple(args.encoders.split(",")), args.sequential,
                args.objective, args.finetune, args.heldout_files)
        elif args.model == "sequential":
            sequential_gain(out, args.max_rows, args.calib, args.eval)
        else:
            rec(out, args.quick, args.max_rows, args.calib, args.eval,
                args.budgets.split(",") if args.budgets else None, args.heldout_files, args.sequential,
                args.objective, args.finetune, tuple(args.encoders.split(",")))


if __name__ == "__main__":
    main()
