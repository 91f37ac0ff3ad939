"""The halut-onnx command line. Each command is a thin shell over the public API; errors a user can cause are
reported as one line and a non-zero exit, never a traceback."""

from __future__ import annotations

import functools
import logging
import time

import click

from . import __version__
from .options import DEFAULT_HELDOUT_FILES, ConvertOptions
from .runtime import PROVIDERS


def _user_errors(fn):
    """Report the errors a user can cause (bad files, data, options) as ``Error: <one line>`` and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, FileNotFoundError, PermissionError, IsADirectoryError) as exc:
            raise click.ClickException(" ".join(str(exc).split())) from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="halut-onnx")
@click.option("-v", "--verbose", is_flag=True, help="Log each stage (to stderr).")
def main(verbose: bool = False) -> None:
    """Replace the MatMul, Gemm and Conv layers of an ONNX model by learned table lookups (MADDNESS / Halut)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s: %(message)s")


@main.command("library-path")
def library_path() -> None:
    """Print the path of the custom-op library to register with onnxruntime."""
    from .library import get_library_path

    try:
        click.echo(get_library_path())
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None


_DEFAULTS = ConvertOptions()


class _Copies(click.ParamType):
    """--augment: a count of noisy copies, or 'auto' (None: ConvertOptions' default)."""

    name = "copies"

    def convert(self, value, param, ctx):
        if value == "auto":
            return None
        try:
            return int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a whole number nor 'auto'", param, ctx)


_COPIES = _Copies()


@main.command("convert")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--calib", "calib_dir", required=True, type=click.Path(),
              help="Calibration directory: .npz files with arrays named after the model's inputs (or .npy files "
                   "for a single-input model), one sample or a batch per file.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Converted model file.")
@click.option("-C", "--codebooks", type=int, default=_DEFAULTS.codebooks,
              help="Codebooks per layer (default: the power of two nearest D/2, within 4..64); more than a layer's "
                   "D means C=D for that layer.")
@click.option("--encoder", type=click.Choice(["tree", "pq"]), default=_DEFAULTS.encoder,
              help="Encoder: 'tree' (MADDNESS decision trees) or 'pq' (nearest prototype); default pq. With --budget "
                   "the only one analysed (default: both).")
@click.option("--include", multiple=True, metavar="REGEX",
              help="Convert only layers whose node name matches (repeatable).")
@click.option("--exclude", multiple=True, metavar="REGEX",
              help="Never convert layers whose node name matches (repeatable).")
@click.option("--min-dim", type=int, default=_DEFAULTS.min_dim, show_default=True,
              help="Skip layers with fewer input columns D.")
@click.option("--max-rows", type=int, default=_DEFAULTS.max_rows, show_default=True,
              help="Calibration rows kept per layer (uniform random sample).")
@click.option("--ridge", type=float, default=_DEFAULTS.ridge,
              help="LUT ridge lambda (default: chosen on the held-out rows).")
@click.option("--heldout-fraction", type=float, default=_DEFAULTS.heldout_fraction, show_default=True,
              help="Calibration rows held out to choose the ridge and measure each layer.")
@click.option("--augment", type=_COPIES, default=None, show_default="auto", metavar="K|auto",
              help="Feed each calibration file K more times with Gaussian noise on its float inputs (std 0.1 of the "
                   "input's): more rows for layers that see few (one per sample), at K+1 times the calibration time. "
                   "auto: copies only for the layers with fewer than 4 calibration rows per LUT entry, enough for 8 "
                   "(8 copies at most); 0: none.")
@click.option("--seed", type=int, default=_DEFAULTS.seed, show_default=True, help="Seed of sampling and learning.")
@click.option("--memory-mb", type=int, default=_DEFAULTS.memory_mb, show_default=True,
              help="Memory for the row samples held at once; more layers take more passes over the data.")
@click.option("--progress/--no-progress", default=_DEFAULTS.progress, show_default=True,
              help="Progress bars on stderr.")
@click.option("--budget", default=_DEFAULTS.budget, metavar="METRIC=VALUE",
              help="Accuracy budget, e.g. agreement=0.99, cosine=0.99, nmse=0.01 or ctc=0.99 (CTC sequence outputs: "
                   "decoded-sequence error), measured against the original "
                   "on held-out calibration files: convert the layers and settings that save the most within it.")
@click.option("--sequential/--no-sequential", default=_DEFAULTS.sequential, show_default=True,
              help="Learn each layer on the inputs the converted layers before it produce (targets: the "
                   "original model's outputs of that layer).")
@click.option("--heldout-files", type=float, default=None,
              help=f"With --budget: fraction of the calibration files held out to measure the metric (default "
                   f"{DEFAULT_HELDOUT_FILES}).")
@click.option("--heldout-data", type=click.Path(), default=None, metavar="DIR",
              help="With --budget: measure the metric on DIR's files instead (same format as --calib; data the "
                   "model was not fitted to, e.g. a validation split) and learn from every --calib file.")
@click.option("--objective", type=click.Choice(["macs", "time"]), default=_DEFAULTS.objective,
              help="With --budget: maximise the measured time saved in the model ('time', the default when the "
                   "custom-op library loads) or the multiply-adds removed ('macs': more layers converted, less "
                   "speed gained, the same choice on every run).")
@click.option("--metric-output", default=_DEFAULTS.metric_output, metavar="NAME",
              help="With --budget: the model output the metric compares (default: the first float output of "
                   "rank >= 2).")
@click.option("--finetune/--no-finetune", default=_DEFAULTS.finetune, show_default=True,
              help="With --budget: fine-tune the chosen layers' LUTs together, distilling the original model's "
                   "output, and search again within wider budgets (needs torch; minutes per fine-tuning).")
@_user_errors
def convert(model: str, calib_dir: str, output: str, **flags) -> None:
    """Convert MODEL's eligible MatMul / Gemm / Conv layers, learned on the --calib data, and write -o OUTPUT."""
    from .convert import convert_model
    from .tables import format_table

    from tqdm.contrib.logging import logging_redirect_tqdm

    options = ConvertOptions(**flags)  # the flags are the fields, one to one
    start = time.perf_counter()
    with logging_redirect_tqdm():  # warnings print above the progress bars instead of through them
        result = convert_model(model, calib_dir, output, options)
    seconds = time.perf_counter() - start
    rows = [
        [r.name, r.op_type, r.D, r.M, r.C, r.encoder, r.rows_train + r.rows_heldout, r.copies or "-",
         r.heldout_nmse_int8, _speed(r.speedup)]
        for r in result.converted
    ]
    # rows: learned from (noisy copies included, those of held-out rows not); copies: of each calibration row
    click.echo(format_table(["layer", "op", "D", "M", "C", "encoder", "rows", "copies", "held-out NMSE", "speed"],
                            rows))
    if any(r.speedup is not None for r in result.converted):
        click.echo("speed: onnxruntime's time for the layer / the encode + lookup ops' (1 thread, the kernels alone "
                   "on the first calibration file's rows; `halut-onnx bench` times the whole model)")
        slower = [r.name for r in result.converted if r.speedup is not None and r.speedup < 1]
        if slower:
            click.echo(f"{_names(slower)} {'runs' if len(slower) == 1 else 'run'} slower than onnxruntime's own op: "
                       "converted, they slow the model down; --exclude them, or let --budget choose (its time "
                       "objective leaves out layers that save no time)")
    notes = [f"  {r.name}: {note}" for r in result.converted for note in r.notes]
    if notes:
        click.echo("notes:\n" + "\n".join(notes))
    if result.skipped:
        click.echo("")
        click.echo(_skipped_table(result.skipped))
    click.echo(f"\nWrote {output}: {len(result.converted)} layers converted, {len(result.skipped)} skipped, in "
               f"{seconds:.1f} s.")
    report = getattr(result, "budget", None)
    if report is not None:
        from .budget_report import budget_summary

        click.echo("\n" + budget_summary(report))


def _speed(speedup: float | None) -> str:
    return "-" if speedup is None else f"{speedup:.2f}x"


@main.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False))
@_user_errors
def inspect_cmd(model: str) -> None:
    """List the Halut layers of a converted MODEL and the layers the conversion skipped."""
    from .model_io import load_model
    from .summary import summarize
    from .tables import format_table

    summary = summarize(load_model(model))
    if summary.version:
        click.echo(f"Converted by halut-onnx {summary.version}; settings: {summary.settings}")
    if not summary.layers:
        click.echo(f"No Halut layers in {model}.")
    else:
        click.echo(format_table(
            ["layer", "op", "D", "M", "C", "encoder", "LUT bytes", "held-out NMSE", "speed"],
            [[x.name, x.op_type or "?", x.D, x.M, x.C, x.encoder or "?", x.lut_bytes, x.heldout_nmse,
              _speed(x.speedup)] for x in summary.layers],
        ))
    if summary.skipped:
        click.echo("")
        click.echo(_skipped_table(summary.skipped))


@main.command("eval")
@click.argument("original", type=click.Path(dir_okay=False))
@click.argument("converted", type=click.Path(dir_okay=False))
@click.option("--data", "data_dir", required=True, type=click.Path(),
              help="Evaluation data, in the calibration format.")
@click.option("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: onnxruntime's).")
@click.option("--provider", type=click.Choice(list(PROVIDERS)), default="cpu", show_default=True,
              help="onnxruntime execution provider of both models (cuda: onnxruntime-gpu).")
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr.")
@_user_errors
def eval_cmd(original: str, converted: str, data_dir: str, threads: int | None, provider: str,
             progress: bool) -> None:
    """Compare CONVERTED with ORIGINAL on --data: per-output NMSE, mean cosine per sample and top-1 agreement
    (arg-max over the last axis; equal elements for integer outputs)."""
    from .evaluate import evaluate
    from .tables import format_table

    result = evaluate(original, converted, data_dir, threads, progress, provider)
    click.echo(format_table(
        ["output", "shape", "NMSE", "cosine", "top-1 agreement"],
        [[m.name, "x".join(map(str, m.shape)), m.nmse, m.cosine, m.top1_agreement] for m in result.outputs],
    ))
    click.echo(f"\n{result.files} files; " + (
        "Halut ops run by the custom-op library." if result.library_loaded
        else "custom-op library not found: Halut ops ran through their ONNX function fallbacks."
    ))
    if result.placement is not None:
        click.echo(_placement_line(result.placement))


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected comma-separated integers, e.g. 8,16,32") from None


@main.command("analyze")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--calib", "calib_dir", required=True, type=click.Path(), help="Calibration directory (as convert).")
@click.option("--codebooks-list", default="", metavar="C,C,...",
              help="Codebook counts to try (default per layer: the power of two nearest D/2, up to 128 where "
                   "D >= 256, and 64 beside 128).")
@click.option("--encoders", default="pq,tree", show_default=True, help="Encoders to try (comma-separated).")
@click.option("--budget", default=None, metavar="METRIC=VALUE",
              help="Also show the layers and settings a convert --budget would start from (before verification).")
@click.option("--include", multiple=True, metavar="REGEX", help="Analyze only layers whose node name matches.")
@click.option("--exclude", multiple=True, metavar="REGEX", help="Never analyze layers whose node name matches.")
@click.option("--min-dim", type=int, default=_DEFAULTS.min_dim, show_default=True,
              help="Skip layers with fewer input columns D.")
@click.option("--max-rows", type=int, default=_DEFAULTS.max_rows, show_default=True,
              help="Calibration rows kept per layer.")
@click.option("--heldout-files", type=float, default=None,
              help=f"Fraction of the calibration files held out to measure each setting (default "
                   f"{DEFAULT_HELDOUT_FILES}).")
@click.option("--heldout-data", type=click.Path(), default=None, metavar="DIR",
              help="Measure each setting on DIR's files instead and learn from every --calib file.")
@click.option("--augment", type=_COPIES, default=None, show_default="auto", metavar="K|auto",
              help="Learn from each calibration file and K noisy copies of it (as convert).")
@click.option("--metric-output", default=None, metavar="NAME", help="The model output the end metrics compare.")
@click.option("--seed", type=int, default=_DEFAULTS.seed, show_default=True, help="Seed of sampling and learning.")
@click.option("--sensitivity-files", type=int, default=0, show_default=True,
              help="Held-out files each single-layer end metric is measured on (0: all; fewer is faster).")
@click.option("--timing/--no-timing", default=True, show_default=True,
              help="Time MatMul against encode + lookup for each layer shape.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the table as JSON.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None, help="Write the table as CSV.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars on stderr.")
@_user_errors
def analyze_cmd(model, calib_dir, codebooks_list, encoders, budget, include, exclude, min_dim, max_rows,
                heldout_files, heldout_data, augment, metric_output, seed, sensitivity_files, timing, json_path,
                csv_path, progress) -> None:
    """Sensitivity of MODEL to each eligible layer converted alone, at each codebook count and encoder."""
    from .analyze import AnalyzeOptions, analyze
    from .budget_report import analysis_table, write_csv, write_json

    options = AnalyzeOptions(
        ConvertOptions(include=include, exclude=exclude, min_dim=min_dim, max_rows=max_rows, seed=seed,
                       heldout_files=heldout_files, heldout_data=heldout_data, augment=augment,
                       metric_output=metric_output, progress=progress, budget=budget),
        codebooks=_int_list(codebooks_list, "--codebooks-list"),
        encoders=tuple(e.strip() for e in encoders.split(",") if e.strip()), timing=timing,
        sensitivity_files=sensitivity_files,
    )
    result = analyze(model, calib_dir, options)
    click.echo(analysis_table(result, budget))
    if json_path:
        write_json(result, json_path)
    if csv_path:
        write_csv(result, csv_path)


def _names(names: list[str]) -> str:
    """Up to three names, or the first two and how many more."""
    if len(names) > 3:
        return f"{names[0]}, {names[1]} and {len(names) - 2} more"
    return ", ".join(names[:-1]) + (" and " if len(names) > 1 else "") + names[-1]


def _skipped_table(records) -> str:
    """The skipped layers; many layers skipped for the same reason (e.g. every Conv) share one row."""
    from .tables import format_table

    groups: dict[tuple[str, str], list[str]] = {}
    for r in records:
        groups.setdefault((r.op_type, r.reason), []).append(r.name)
    rows = []
    for (op, reason), names in groups.items():
        if len(names) > 3:
            rows.append([_names(names), op, reason])
        else:
            rows += [[name, op, reason] for name in names]
    return format_table(["skipped layer", "op", "reason"], rows)


def _placement_line(placement: dict[str, int]) -> str:
    """Which execution providers ran the Halut nodes; a warning when some fell back to the CPU."""
    if not placement:
        return "Halut nodes: none ran as custom ops (the library is not loaded)."
    line = "Halut nodes ran on: " + ", ".join(f"{p} {n}" for p, n in sorted(placement.items()))
    on_cpu = placement.get("CPUExecutionProvider", 0)
    if on_cpu:
        line += (f"\nwarning: {on_cpu} Halut nodes ran on the CPU, with copies to and from the GPU around them: "
                 "the custom-op library has no CUDA kernels for them (built without nvcc? docs/cuda.md)")
    return line


def _parse_dims(values) -> dict[str, int]:
    dims = {}
    for value in values:
        name, sep, number = value.partition("=")
        if not sep or not name or not number.isdigit() or int(number) < 1:
            raise ValueError(f"--dim {value!r}: expected NAME=VALUE with a positive integer VALUE")
        dims[name] = int(number)
    return dims


@main.command("bench")
@click.argument("original", type=click.Path(dir_okay=False))
@click.argument("converted", type=click.Path(dir_okay=False))
@click.option("--threads", type=int, default=1, show_default=True, help="onnxruntime intra-op threads (both).")
@click.option("--runs", type=int, default=50, show_default=True, help="Timed runs per model (median reported).")
@click.option("--warmup", type=int, default=5, show_default=True, help="Untimed runs first.")
@click.option("--batch", type=int, default=1, show_default=True, help="Size of a dynamic leading input dim.")
@click.option("--dim", "dims", multiple=True, metavar="NAME=VALUE", help="Size of a named dynamic input dim.")
@click.option("--data", "data_dir", type=click.Path(), default=None,
              help="Time on the first file of this directory (calibration format) instead of random inputs.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--provider", type=click.Choice(list(PROVIDERS)), default="cpu", show_default=True,
              help="onnxruntime execution provider of both models (cuda: onnxruntime-gpu; times include the copies "
                   "of inputs and outputs, as session.run does them).")
@_user_errors
def bench_cmd(original, converted, threads, runs, warmup, batch, dims, data_dir, seed, provider) -> None:
    """Median latency of ORIGINAL and CONVERTED in onnxruntime on the same inputs, threads and provider."""
    from .bench import bench
    from .tables import format_table

    result = bench(original, converted, threads, runs, warmup, batch, _parse_dims(dims), data_dir, seed, provider)
    click.echo(format_table(["model", "median ms"], [[original, result.original_ms], [converted, result.converted_ms]]))
    shapes = ", ".join(f"{k} {v}" for k, v in result.feed_shapes.items())
    where = "" if result.provider == "cpu" else f", {result.provider}"
    click.echo(f"\nspeedup (original / converted): {result.speedup:.3g}x  ({result.threads} threads{where}, "
               f"{result.runs} runs, inputs {shapes})")
    if result.placement is not None:
        click.echo(_placement_line(result.placement))
    if not result.library_loaded:
        click.echo("note: custom-op library not found: the converted model ran its ONNX function fallbacks.")


if __name__ == "__main__":
    main()
