"""Sensitivity analysis: every eligible layer converted alone, at each candidate setting (codebooks x encoder),
with its effect on the model's end metric and what it saves (multiply-adds, measured kernel time).

Calibration files are split into learn files and held-out files (budget.split_files). Cost is kept to one pass of
the original model over the learn files (row samples, as ``convert``), one over the held-out files (reference
outputs and per-layer held-out rows), one learning per (layer, setting), and one held-out run per (layer, setting)
of the model with that single layer swapped in. docs/budget.md describes the table.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from .augment import collect_layer_rows, learned_copies
from .budget import Option, split_files
from .calibrate import CalibrationSet, CollectedRows, collect_rows, model_inputs
from .convert import learn_options
from .errors import CalibrationError, ConversionError
from .learn import HalutLayer, learn_layer
from .learn.layer import heldout_errors
from .metrics import OutputComparison, loss, metric_output
from .model_io import load_model, with_min_opset
from .options import DEFAULT_HELDOUT_FILES, ConvertOptions
from .passes import LayerCandidate, LayerRewrite, find_layers, name_nodes, rewrite_model
from .passes.functions import MIN_OPSET
from .selection import MAX_DEFAULT_CODEBOOKS, MIN_DEFAULT_CODEBOOKS, select_layers

log = logging.getLogger(__name__)

#: codebook counts tried by default, as divisors of D (rounded to the nearest power of two; codebook_grid). D / 2
#: only: on PP-OCR the budgets chose C = D/2 and 64 - 128 almost only, and D/16 .. D/2 (3x the settings, 3x the
#: analysis's minutes) converted at most 3 points more of det's multiply-adds (docs/budget.md)
DEFAULT_DIVISORS = (2,)
ANALYSIS_MAX_CODEBOOKS = 128  # the grid's largest C (only where D >= 2 C); convert's default stays at most 64
HELDOUT_ROWS = 16384  # per layer, rows of the held-out files kept to measure the layer's error there
SUFFIX_CACHE_BYTES = 1 << 30  # upstream tensors of the original kept at a time for the single-layer runs
# With an objective, a setting that saves less than this share of what the whole model could (its eligible
# multiply-adds, or its time) is not learned nor run. On PP-OCR (time objective, convert's defaults) that is 29 of
# rec's 134 settings and 38 of det's 148; the layers left with no setting measured hold 0.9 and 1.2 % of the
# eligible multiply-adds, and save next to no time
NEGLIGIBLE_SAVING = 0.002


@dataclass(frozen=True)
class Setting:
    encoder: str
    codebooks: int

    @property
    def key(self) -> str:
        return f"{self.encoder} C={self.codebooks}"


@dataclass(frozen=True)
class AnalyzeOptions:
    convert: ConvertOptions = ConvertOptions()  # shared fields: include/exclude, min_dim, rows, seed, held-out files
    codebooks: tuple[int, ...] = ()  # fixed codebook counts; () : D / each of ``divisors`` per layer
    divisors: tuple[int, ...] = DEFAULT_DIVISORS
    encoders: tuple[str, ...] = ("pq", "tree")
    sensitivity_files: int = 0  # held-out files the single-layer end metrics are measured on (0: all of them;
    # fewer is faster on big models; the combined model of a budget is always verified on all)
    timing: bool = True  # time MatMul against encode + lookup per layer shape (needs the custom-op library)
    # "time" or "macs": a setting that saves nothing by it is timed but neither learned nor run through the model
    # (a budget never chooses it: budget.choose); None measures every setting, as `halut-onnx analyze` does
    objective: str | None = None

    def validate(self) -> None:
        self.convert.validate()
        if any(c < 1 for c in self.codebooks):
            raise ValueError(f"--codebooks-list values must be >= 1, got {list(self.codebooks)}")
        if self.sensitivity_files < 0:
            raise ValueError(f"--sensitivity-files must be >= 0, got {self.sensitivity_files}")
        bad = [e for e in self.encoders if e not in ("tree", "pq")]
        if bad or not self.encoders:
            raise ValueError(f"--encoders must be a comma-separated subset of tree,pq, got {','.join(self.encoders)!r}")
        if self.objective not in (None, "macs", "time"):
            raise ValueError(f"objective must be 'macs', 'time' or None, got {self.objective!r}")


def codebook_grid(D: int, fixed: tuple[int, ...] = (), divisors: tuple[int, ...] = DEFAULT_DIVISORS) -> list[int]:
    """The codebook counts tried for a layer of D columns (each at most D), smallest first.

    Each divisor k gives the power of two nearest D / k, within 4..64 as ``convert``'s default C, except that up
    to ANALYSIS_MAX_CODEBOOKS is allowed where that keeps at least 2 columns per codebook (D >= 256 for 128): on
    PP-OCR rec, C = 128 roughly halved the error of the D = 384 / 768 layers and let a budget convert more
    (docs/budget.md). Where the grid reaches beyond 64, 64 is tried too: it saves more where the layer can afford
    the error (PP-OCR rec's budgets chose it for as many layers as 128)."""
    if fixed:
        return sorted({min(c, D) for c in fixed})
    out = set()
    for k in divisors:
        c = 2 ** round(math.log2(max(D / k, 1.0)))
        c = min(max(c, MIN_DEFAULT_CODEBOOKS), ANALYSIS_MAX_CODEBOOKS, D)
        if c > MAX_DEFAULT_CODEBOOKS and 2 * c > D:
            c = MAX_DEFAULT_CODEBOOKS
        out.add(int(c))
    if max(out) > MAX_DEFAULT_CODEBOOKS:
        out.add(MAX_DEFAULT_CODEBOOKS)
    return sorted(out)


def layer_macs(cand, held: CollectedRows, samples: int) -> tuple[float, int]:
    """(rows the layer sees per held-out sample, its multiply-adds per sample)."""
    per_sample = held.rows_seen / max(samples, 1)
    return per_sample, int(round(per_sample * cand.D * cand.M))


def halut_macs(D: int, M: int, C: int, encoder: str) -> int:
    """Operations per row of a converted layer: encode (pq: 16 multiply-adds per input; tree: 4 comparisons per
    codebook) plus the lookup's C adds per output."""
    return (16 * D if encoder == "pq" else 4 * C) + C * M


@dataclass
class SensitivityRow:
    """One layer converted alone with one setting, measured on the held-out files."""

    layer: str
    op_type: str
    D: int
    M: int
    encoder: str
    C: int
    rows_per_sample: float  # rows the layer sees per sample (1 after a flatten or pooling)
    rows_train: int | None = None
    copies: int = 0  # noisy copies of each calibration row learned from (augment.learned_copies)
    train_nmse: float | None = None  # layer output, learn rows
    heldout_nmse: float | None = None  # layer output, held-out rows of the learn files
    file_nmse: float | None = None  # layer output, rows of the held-out files (int8 LUT)
    agreement: float | None = None  # end metrics of the model with this layer alone converted
    cosine: float | None = None
    nmse: float | None = None
    ctc: float | None = None  # only for a [samples, time, classes] output (metrics.py)
    macs: int = 0  # multiply-adds of the original layer per sample
    macs_removed: int = 0  # per sample: macs minus what the encode + lookup costs
    matmul_ms: float | None = None  # kernel timing for the rows of the first held-out file (the layer alone)
    halut_ms: float | None = None
    in_model_ms: float | None = None  # the original layer inside the model on one held-out file (model_timing.py)
    learn_s: float | None = None
    error: str | None = None  # why this setting could not be learned
    skipped: str | None = None  # why it was not learned nor measured: it saves nothing or next to nothing
    # (AnalyzeOptions.objective, NEGLIGIBLE_SAVING)

    @property
    def setting(self) -> Setting:
        return Setting(self.encoder, self.C)

    def saving(self, objective: str = "macs") -> float | None:
        """What converting saves: multiply-adds per sample ("macs"), or measured ms per held-out file ("time":
        the layer's time inside the model, else alone, minus the Halut ops' time; None when not timed)."""
        if objective == "time":
            if self.matmul_ms is None or self.halut_ms is None:
                return None
            return (self.matmul_ms if self.in_model_ms is None else self.in_model_ms) - self.halut_ms
        return float(self.macs_removed)

    def to_json(self) -> dict:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, float) and not math.isfinite(value):
                out[key] = None
        return out


@dataclass
class Analysis:
    rows: list[SensitivityRow]
    metric_output: str
    learn_files: list[str]
    heldout_files: list[str]
    samples_heldout: int
    model_ms: float | None  # the original model on one held-out file, 1 thread (for the expected speedup)
    total_macs: int  # eligible layers, per sample
    seconds: float
    timed: bool
    skipped: list = field(default_factory=list)  # SkippedLayer
    objective: str | None = None  # AnalyzeOptions.objective, resolved: settings saving nothing by it not measured
    # not serialized: what budget selection reuses
    candidates: dict[str, LayerCandidate] = field(default_factory=dict, repr=False)
    learned: dict[tuple[str, str], HalutLayer] = field(default_factory=dict, repr=False)
    learn_rows: dict[str, CollectedRows] = field(default_factory=dict, repr=False)
    work: onnx.ModelProto | None = field(default=None, repr=False)
    evaluator: "HeldoutEvaluator | None" = field(default=None, repr=False)
    learn_set: CalibrationSet | None = field(default=None, repr=False)

    def options(self, metric: str, objective: str = "macs") -> list[Option]:
        """The knapsack options (budget.Option) for ``metric``: one per learned (layer, setting), saving
        multiply-adds ("macs", deterministic) or measured kernel time ("time", noisy on a busy machine)."""
        if objective == "time" and not self.timed:
            raise ValueError("--objective time needs kernel timings: the custom-op library did not load")
        out = []
        for r in self.rows:
            value = getattr(r, metric)
            if r.error is None and value is not None:
                layer_loss = loss(metric, value)
                if metric == "ctc" and r.agreement is not None:
                    # One layer rarely changes a decoded character on a few held-out files, so text losses alone
                    # are mostly 0 and cannot rank layers; every text change needs a changed frame, so the knapsack
                    # weighs the frame disagreement too and the measured ctc of the combined model sets how much
                    # of it fits (budget.select_within)
                    layer_loss = max(layer_loss, 1.0 - r.agreement)
                out.append(Option(r.layer, r.setting.key, layer_loss, r.saving(objective)))
        return out

    def row(self, layer: str, key: str) -> SensitivityRow:
        return next(r for r in self.rows if r.layer == layer and r.setting.key == key)

    def to_json(self) -> dict:
        return {
            "metric_output": self.metric_output, "learn_files": self.learn_files, "heldout_files": self.heldout_files,
            "samples_heldout": self.samples_heldout, "model_ms": self.model_ms, "total_macs": self.total_macs,
            "seconds": self.seconds, "timed": self.timed, "objective": self.objective,
            "rows": [r.to_json() for r in self.rows],
            "skipped": [{"name": s.name, "op_type": s.op_type, "reason": s.reason} for s in self.skipped],
        }


def subset(calibration: CalibrationSet, files: list) -> CalibrationSet:
    """The same calibration set restricted to ``files``."""
    out = copy.copy(calibration)
    out.files = list(files)
    return out


def learn_and_heldout(calib_dir, inputs, conv: ConvertOptions) -> tuple[CalibrationSet, CalibrationSet]:
    """(learn files, held-out files): ``--heldout-data``'s files beside every calibration file, or else a
    ``--heldout-files`` share of the calibration files (budget.split_files). Only the learn files get noisy copies
    (``--augment``, augment.collect_layer_rows): the held-out ones measure the model on real inputs."""
    calibration = CalibrationSet(calib_dir, inputs)
    if conv.heldout_data is None:
        learn, held = split_files(calibration.files, conv.heldout_files or DEFAULT_HELDOUT_FILES, conv.seed)
        return subset(calibration, learn), subset(calibration, held)
    heldout = CalibrationSet(conv.heldout_data, inputs, role="held-out")
    if heldout.directory.resolve() == calibration.directory.resolve():
        raise CalibrationError(f"--heldout-data {heldout.directory} is the --calib directory: the held-out files "
                               "must be other files than the ones learned from")
    return calibration, heldout


def model_session(model: onnx.ModelProto, threads: int | None = None):
    """A CPU onnxruntime session of an in-memory model, with the Halut custom-op library when it loads."""
    import onnxruntime as ort

    from .library import session_options

    try:
        options = session_options()
    except Exception:  # no library: the model-local functions run the Halut ops
        options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


class HeldoutEvaluator:
    """The original model's metric output on every held-out file, kept in memory, to compare converted models
    (on all files, or on the first ``limit``).

    A model that differs from the original only downstream of one tensor (a layer converted alone) is run from
    that tensor on (``compare(..., start=)``, halut_onnx/suffix.py), fed with the original's values of the tensors
    it reads from upstream. ``plan`` groups those values so that one run of the original over the files gives a
    group's within SUFFIX_CACHE_BYTES (a layer whose own exceed it is a group alone); the group in use is the only
    one kept."""

    def __init__(self, work: onnx.ModelProto, heldout: CalibrationSet, output: str):
        self.work = work
        self.output = output
        self.feeds = [feed for _, feed in heldout]
        session = model_session(work)
        self.reference = [session.run([output], feed)[0] for feed in self.feeds]
        first = next(iter(self.feeds[0].values()))
        self.samples = sum(int(next(iter(f.values())).shape[0]) if first.ndim else 1 for f in self.feeds)
        self._groups: dict[str, frozenset[str]] = {}  # start tensor -> the upstream tensors fetched with it
        self._values: dict[str, list[np.ndarray]] = {}  # the group in use: tensor -> its value per file

    def __getstate__(self):  # a pickled analysis keeps the plan, not the cached tensors
        return {**self.__dict__, "_values": {}}

    def plan(self, starts: list[str], limit: int = 0) -> None:
        """Prepare ``compare(..., start=s)`` for each s of ``starts``, in the order they will be asked for."""
        from .suffix import downstream

        fed = set(self.feeds[0])
        bounds = {}
        for start in dict.fromkeys(starts):
            found = downstream(self.work.graph, start, [self.output])
            if found is not None:
                bounds[start] = [name for name in found[1] if name not in fed]
        names = sorted({name for b in bounds.values() for name in b})
        if not names:
            return
        sizes = dict(zip(names, (a.nbytes for a in self._fetch(names, [self.feeds[0]])[0])))
        files = min(limit or len(self.feeds), len(self.feeds))
        group: set[str] = set()
        members: list[str] = []
        for start, bound in bounds.items():
            grown = group | set(bound)
            if members and files * sum(sizes[n] for n in grown) > SUFFIX_CACHE_BYTES:
                self._groups.update(dict.fromkeys(members, frozenset(group)))
                grown, members = set(bound), []
            group = grown
            members.append(start)
        self._groups.update(dict.fromkeys(members, frozenset(group)))

    def _fetch(self, names: list[str], feeds: list[dict]) -> list[list[np.ndarray]]:
        """The original model's values of tensors ``names`` on each of ``feeds``: onnxruntime computes the whole
        model whatever is asked for, so one run per file gives them all."""
        model = onnx.ModelProto()
        model.CopyFrom(self.work)
        del model.graph.output[:]
        model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names)
        session = model_session(model)
        return [session.run(names, feed) for feed in feeds]

    def compare(self, model: onnx.ModelProto, limit: int = 0, start: str | None = None) -> OutputComparison:
        from .suffix import downstream, suffix_model

        pairs = list(zip(self.feeds, self.reference))
        pairs = pairs[:limit] if limit else pairs
        found = downstream(model.graph, start, [self.output]) if start in self._groups else None
        if found is not None:  # upstream of start, the original's nodes only (rewrites add nodes)
            inside = set(found[0])
            upstream_nodes = {n.name for i, n in enumerate(model.graph.node) if i not in inside}
            if not upstream_nodes <= {n.name for n in self.work.graph.node}:
                found = None
        if found is None:
            session, feeds = model_session(model), [feed for feed, _ in pairs]
        else:
            nodes, boundary = found
            upstream = [name for name in boundary if name not in pairs[0][0]]
            if any(len(self._values.get(name, ())) < len(pairs) for name in upstream):
                names = sorted(self._groups[start] | set(upstream))
                self._values = {}  # the previous group first: the memory bound is per group
                self._values = dict(zip(names, map(list, zip(*self._fetch(names, [f for f, _ in pairs])))))
            feeds = [{name: feed[name] if name in feed else self._values[name][i] for name in boundary}
                     for i, (feed, _) in enumerate(pairs)]
            session = model_session(suffix_model(model, nodes, feeds[0], [self.output]))
        out = OutputComparison()
        for feed, (_, ref) in zip(feeds, pairs):
            out.add(ref, session.run([self.output], feed)[0])
        return out


def _outputs(model: onnx.ModelProto) -> list[tuple[str, np.dtype | None, int | None]]:
    out = []
    for value in model.graph.output:
        t = value.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)) if t.elem_type else None
        out.append((value.name, dtype, len(t.shape.dim) if t.HasField("shape") else None))
    return out


def prepare(model, options: ConvertOptions):
    """(work model with named nodes, eligible candidates in graph order, skipped layers)."""
    original = model if isinstance(model, onnx.ModelProto) else load_model(model)
    work = onnx.ModelProto()
    work.CopyFrom(with_min_opset(original, MIN_OPSET, "the model" if original is model else str(model)))
    name_nodes(work)
    try:
        inferred = onnx.shape_inference.infer_shapes(work)
    except Exception:  # inference is an aid: types left unknown are checked on the data
        inferred = work
    candidates, not_eligible = find_layers(inferred)
    selected, not_selected = select_layers(candidates, options.include, options.exclude, None, options.min_dim)
    if not selected:
        raise ConversionError("no eligible layer in the model: "
                              + "; ".join(f"{s.name}: {s.reason}" for s in (not_eligible + not_selected)[:3]))
    return original, work, [s.candidate for s in selected], not_eligible + not_selected


def target(cand: LayerCandidate) -> tuple:
    """``collect_rows``' target of a layer: (input tensor, D), plus the Conv geometry for a Conv (patch rows)."""
    conv = getattr(cand, "conv", None)
    return (cand.input_name, cand.D) if conv is None else (cand.input_name, cand.D, conv)


def analyze(model: str | os.PathLike | onnx.ModelProto, calib_dir: str | os.PathLike,
            options: AnalyzeOptions = AnalyzeOptions()) -> Analysis:
    """Measure every (eligible layer, setting) converted alone; see the module doc."""
    from tqdm.auto import tqdm

    from .bench import median_ms
    from .kernel_timing import library_available, time_candidate
    from .model_timing import layer_times_in_model

    options.validate()
    conv = options.convert
    start = time.perf_counter()
    _, work, candidates, skipped = prepare(model, conv)
    learn_set, heldout_set = learn_and_heldout(calib_dir, model_inputs(work), conv)
    learn_files, heldout_files = learn_set.files, heldout_set.files
    output = metric_output(_outputs(work), conv.metric_output)

    targets = {c.name: target(c) for c in candidates}
    grids = {c.name: codebook_grid(c.D, options.codebooks, options.divisors) for c in candidates}
    held_rows = collect_rows(work, heldout_set, targets, min(conv.max_rows, HELDOUT_ROWS), conv.seed + 1,
                             conv.progress, "held-out rows")
    evaluator = HeldoutEvaluator(work, heldout_set, output)
    timed = options.timing and library_available()
    if options.timing and not timed:
        log.warning("custom-op library not loadable: savings are multiply-adds, not measured kernel times")
    objective = options.objective
    if objective == "time" and not timed:
        raise ValueError("--objective time needs kernel timings: the custom-op library did not load")
    model_ms = median_ms(model_session(work, threads=1), evaluator.feeds[0], runs=5, warmup=1) if timed else None
    in_model = {}
    if timed:
        try:
            in_model = layer_times_in_model(work, evaluator.feeds[0], {c.name: c.weight_name for c in candidates})
        except Exception as exc:  # an aid, not a requirement: the layers keep their time alone
            log.warning("could not time the layers inside the model (%s): their time alone is used", exc)

    rows: list[SensitivityRow] = []
    learned: dict[tuple[str, str], HalutLayer] = {}
    total = sum(layer_macs(c, held_rows[c.name], evaluator.samples)[1] for c in candidates)
    # what the whole model could save by the objective, for NEGLIGIBLE_SAVING (ms: the model on one held-out file)
    whole = {"time": model_ms, "macs": total}.get(objective)
    plan = [(c, Setting(e, C)) for c in candidates for C in grids[c.name] for e in options.encoders]
    for cand, setting in tqdm(plan, desc="timing" if timed else "sizing", unit="setting",
                              disable=not (conv.progress and timed)):
        rows.append(_sized_row(cand, setting, held_rows[cand.name], evaluator.samples, len(heldout_files),
                               time_candidate if timed else None, in_model.get(cand.name), objective, whole))
    # a layer's copies are those the largest C it learns needs (every setting learns from the same rows); a layer
    # whose every setting saves nothing learns nothing and needs none (PP-OCR det: 21 of 61 layers)
    learns: dict[str, int] = {}
    for (cand, setting), row in zip(plan, rows):
        if row.error is None and row.skipped is None:
            learns[cand.name] = max(learns.get(cand.name, 0), setting.codebooks)
    learn_rows = collect_layer_rows(work, learn_set, targets, learns, conv.augment, conv.max_rows, conv.seed,
                                    conv.progress, "calibrating")
    evaluator.plan([c.input_name for c, _ in plan], options.sensitivity_files)
    with tqdm(total=len(plan), desc="analyzing", unit="setting", disable=not conv.progress) as bar:
        for (cand, setting), row in zip(plan, rows):
            bar.set_postfix_str(f"{cand.name}: {setting.key}", refresh=False)
            if row.error is None and row.skipped is None:
                _measure(row, cand, setting, learn_rows[cand.name], held_rows[cand.name], evaluator, conv, learned,
                         options.sensitivity_files)
            bar.update(1)
    return Analysis(rows, output, [str(f) for f in learn_files], [str(f) for f in heldout_files], evaluator.samples,
                    model_ms, total, time.perf_counter() - start, timed, skipped, objective,
                    {c.name: c for c in candidates}, learned, learn_rows, work, evaluator, learn_set)


def _sized_row(cand, setting, held: CollectedRows, samples: int, n_heldout_files: int, timer,
               in_model_ms: float | None = None, objective: str | None = None,
               whole: float | None = None) -> SensitivityRow:
    """(layer, setting)'s row before any learning: its multiply-adds, its kernel times (``timer``, on the first
    held-out file) and, by ``objective``, why it is not worth learning (``skipped``)."""
    per_sample, macs = layer_macs(cand, held, samples)
    row = SensitivityRow(cand.name, cand.op_type, cand.D, cand.M, setting.encoder, setting.codebooks, per_sample,
                         macs=macs)
    row.macs_removed = int(round(macs - per_sample * halut_macs(cand.D, cand.M, setting.codebooks, setting.encoder)))
    if held.problem:
        row.error = held.problem
        return row
    if timer is not None:
        # the first held-out file, as the model is timed on (model_ms, in_model_ms)
        n = held.first_file_rows or max(1, int(round(held.rows_seen / max(n_heldout_files, 1))))
        t = timer(n, cand, held.image_shape, setting.codebooks, setting.encoder)
        row.matmul_ms, row.halut_ms, row.in_model_ms = t.matmul_ms, t.halut_ms, in_model_ms
    saving = row.saving(objective) if objective else None
    if saving is not None and saving <= 0:
        row.skipped = (f"removes no multiply-adds ({row.macs_removed} per sample)" if objective == "macs" else
                       f"saves no time: {row.halut_ms:.3g} ms converted against {row.halut_ms + saving:.3g} ms")
    elif saving is not None and whole and saving < NEGLIGIBLE_SAVING * whole:
        what = "eligible multiply-adds" if objective == "macs" else "model's time"
        row.skipped = (f"saves {100 * saving / whole:.2g} % of the {what}, "
                       f"under the {100 * NEGLIGIBLE_SAVING:g} % measured")
    return row


def _measure(row: SensitivityRow, cand, setting, rows: CollectedRows, held: CollectedRows,
             evaluator: HeldoutEvaluator, conv: ConvertOptions, learned: dict, sensitivity_files: int = 0) -> None:
    """Learn ``row``'s setting from the learn rows and measure the model with it converted alone, into ``row``."""
    if rows.problem:
        row.error = rows.problem
        return
    t0 = time.perf_counter()
    try:
        options = learn_options(conv, setting.codebooks, setting.encoder)
        layer = learn_layer(rows.rows, cand.weight, cand.bias, options, sources=rows.sources)
    except ValueError as exc:
        row.error = f"learning failed: {exc}"
        return
    row.learn_s = time.perf_counter() - t0
    rep = layer.report
    for warning in rep.warnings:
        log.warning("%s (%s): %s", cand.name, setting.key, warning)
    row.rows_train, row.train_nmse, row.heldout_nmse = rep.rows_train, rep.train_nmse, rep.heldout_nmse_int8
    row.copies = learned_copies(rows, rep)
    if len(held.rows):
        W32 = cand.weight.astype(np.float32)
        b32 = np.zeros(cand.M, np.float32) if cand.bias is None else cand.bias.astype(np.float32)
        sse = heldout_errors(held.rows, layer.encode(held.rows), W32, b32, None, None, layer)  # int8 only
        row.file_nmse = sse["int8"] / sse["ss"] if sse["ss"] > 0 else float("nan")
    single = rewrite_model(evaluator.work, [LayerRewrite(cand, layer, f"analysis: {setting.key}")])
    values = evaluator.compare(single, sensitivity_files, start=cand.input_name).values()
    row.agreement, row.cosine, row.nmse, row.ctc = values["agreement"], values["cosine"], values["nmse"], values["ctc"]
    learned[(cand.name, setting.key)] = layer
