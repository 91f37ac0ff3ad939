"""Halut against onnxruntime's own int8 quantization, whole models, one run per model: end metric on held-out
evaluation data, speedup over fp32 at one thread, and the time each conversion or quantization took.

    python benchmarks/compare_int8.py digits [--out DIR] [--quick] [--runs 30]
    python benchmarks/compare_int8.py conv1d [--out DIR] [--quick]
    python benchmarks/compare_int8.py vit|vit-tiny [--out DIR] [--quick]
    python benchmarks/compare_int8.py rec [--out DIR] [--quick] [--calib 144] [--eval 48] [--max-rows 16384]
        [--heldout-files 0.34]
    python benchmarks/compare_int8.py det [--out DIR] [--quick] [--calib 8] [--eval 16] [--max-rows 16384]
    python benchmarks/compare_int8.py magika [--out DIR] [--quick] [--calib 1024] [--eval 2000]
    python benchmarks/compare_int8.py encoder [--out DIR] [--quick] [--calib 16] [--layers 4]

Rows: the fp32 original; onnxruntime int8 dynamic (``quantize_dynamic``, int8 weights, per tensor and per channel);
int8 static QDQ (``quantize_static``, QuantFormat.QDQ, uint8 activations, int8 per-channel weights, MinMax
calibration on the calibration files Halut learns from); ``halut-onnx convert`` at its defaults, every eligible
layer; and ``halut-onnx convert --budget`` with the budget the examples use for that model. Both int8 rows quantize
the model after ``quant_pre_process`` (shape inference, no graph optimisation: its MatMul + Add -> Gemm fusion
makes per-channel QDQ quantization fail in onnxruntime 1.32).

The models and data are the examples' (examples/digits_mlp.py, digits_conv1d.py, digits_vit.py, ppocr_data.py,
budget_tables.py, magika_data.py), imported, not copied. ``encoder`` is the exception, a speed case: BERT-base-shaped
encoder layers with torch's random initialisation on random embeddings, where Halut's per-layer gains are largest
(transformer-sized layers over many rows); no real transformer weights can be had offline, so its metric, the
output's cosine to fp32's, says how far the conversion moves the output on data with no structure, not an
accuracy. Speed: each model against the fp32 original with ``halut_onnx.bench.latencies`` (medians, measured twice
interleaved, the better kept), all in this process at one thread, Halut models with the custom-op library
registered. Conversion times are wall times: ``halut-onnx convert`` as a command (its start-up included),
the quantizers as Python calls (pre-processing and, for static, calibration included). Nothing is written outside
--out (default: a temp dir). Timings are noisy on a shared machine: compare ratios from one run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import example_tools as tools  # noqa: E402

from halut_onnx.bench import latencies  # noqa: E402
from halut_onnx.runtime import make_session  # noqa: E402

MATRIX_OPS = ("MatMul", "Gemm", "Conv")
INTEGER_OPS = ("MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv", "DynamicQuantizeMatMul")
QDQ_OPSET = 13  # DequantizeLinear's axis (per-channel) is opset 13
HEADERS = ["model", "row", "layers", "metric", "vs fp32", "speedup 1 thread", "build s"]


@dataclass
class Case:
    """One model, its data and its end metric (value for a model path and whether it is a Halut model)."""

    name: str
    model: Path
    calib: Path  # .npz files, one batch each: Halut's --calib and the static quantizer's calibration data
    feed: dict[str, np.ndarray]  # what is timed
    feed_note: str
    metric: Callable[[Path, bool], float]
    metric_name: str  # e.g. "test acc %": the metric column shows 100 * value
    higher_is_better: bool
    budget: list[str] | None  # halut-onnx convert options of the budget row; None: no budget row
    halut_options: list[str] = field(default_factory=list)  # options every Halut row adds (--max-rows)
    extra_halut: list[tuple[str, list[str]]] = field(default_factory=list)  # (label, options) more Halut rows
    # the budget row's --heldout-data: validation rows the model was not trained on (the digits models); None: a
    # share of the calibration files is held out (their data is not the models' training data)
    heldout: Path | None = None


# ------------------------------------------------------------------------------------------ building the rows
def eligible_layers(path: Path) -> int:
    """MatMul / Gemm / Conv nodes whose weight (second input) is an initializer or Constant."""
    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {init.name for init in graph.initializer}
    constants |= {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    return sum(node.op_type in MATRIX_OPS and len(node.input) > 1 and node.input[1] in constants
               for node in graph.node)


def quantized_layers(path: Path) -> int:
    """Integer matrix ops of a dynamic model, or float matrix ops whose weight is a dequantized initializer (QDQ;
    not a MatMul of two dequantized activations, as attention's)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {init.name for init in graph.initializer}
    dequantized = {out for node in graph.node if node.op_type == "DequantizeLinear" and node.input[0] in inits
                   for out in node.output}
    return sum(node.op_type in INTEGER_OPS or (node.op_type in MATRIX_OPS and node.input[1] in dequantized)
               for node in graph.node)


class FolderReader:
    """onnxruntime's CalibrationDataReader over a calibration folder: one feed per .npz file, in name order."""

    def __init__(self, folder: Path):
        self.files = iter(sorted(folder.glob("*.npz")))

    def get_next(self) -> dict[str, np.ndarray] | None:
        path = next(self.files, None)
        if path is None:
            return None
        with np.load(path) as data:
            return {key: data[key] for key in data.files}


def preprocess(model: Path, out: Path) -> Path:
    """onnxruntime's recommended pre-processing: symbolic shape inference, or ONNX's own where the symbolic one
    gives up (PP-OCR rec: "Incomplete symbolic shape inference")."""
    import os

    from onnxruntime.quantization.shape_inference import quant_pre_process

    model, out = model.resolve(), out.resolve()
    # where symbolic shape inference fails it saves the model (sym_shape_infer_temp.onnx and a <uuid>.data) in the
    # current directory: run it in the output folder (os.chdir: contextlib.chdir needs Python 3.11)
    cwd = os.getcwd()
    os.chdir(out.parent)
    try:
        try:
            quant_pre_process(str(model), str(out), skip_optimization=True)
        except Exception as exc:
            print(f"{model.name}: quant_pre_process: {str(exc).strip().splitlines()[-1]}; again with ONNX shape "
                  "inference only", file=sys.stderr)
            quant_pre_process(str(model), str(out), skip_optimization=True, skip_symbolic_shape=True)
    finally:
        os.chdir(cwd)
    processed = onnx.load(str(out))
    opset = next((o.version for o in processed.opset_import if o.domain in ("", "ai.onnx")), QDQ_OPSET)
    if opset < QDQ_OPSET:
        # the quantizers write per-channel DequantizeLinear (an axis attribute) whatever the opset; the PP-OCR
        # models are opset 11, where onnxruntime then refuses the model
        from onnx import version_converter

        onnx.save(version_converter.convert_version(processed, QDQ_OPSET), str(out))
    return out


def int8_dynamic(case: Case, out: Path, per_channel: bool) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    pre = preprocess(case.model, out.with_suffix(".pre.onnx"))
    quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8, per_channel=per_channel)
    return out


def int8_static(case: Case, out: Path, op_types: Sequence[str] | None = None) -> Path:
    """Static QDQ int8 of every op type the quantizer handles, or of ``op_types`` only (the layers Halut replaces:
    the default also quantizes Add, Mul and the like, which breaks Magika's LayerNorms)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(FolderReader, CalibrationDataReader):
        pass

    pre = preprocess(case.model, out.with_suffix(".pre.onnx"))
    # no CalibMaxIntermediateOutputs: in onnxruntime 1.32 it drops each full chunk of outputs without taking its
    # ranges ("No data is collected"); MinMax keeps only each tensor's min and max per file, so none is needed
    quantize_static(str(pre), str(out), Reader(case.calib), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    op_types_to_quantize=list(op_types) if op_types else None)
    return out


def halut(case: Case, out: Path, options: Sequence[str]) -> Path:
    return tools.convert(case.model, case.calib, out, [*case.halut_options, *options])


def variants(case: Case, out: Path) -> list[tuple[str, Callable[[], Path], bool]]:
    """(label, build, is_halut) of every row after fp32."""
    stem = case.model.stem
    rows = [
        ("ORT int8 dynamic", lambda: int8_dynamic(case, out / f"{stem}.dyn.onnx", False), False),
        ("ORT int8 dynamic per-channel", lambda: int8_dynamic(case, out / f"{stem}.dynpc.onnx", True), False),
        ("ORT int8 static QDQ", lambda: int8_static(case, out / f"{stem}.qdq.onnx"), False),
        ("ORT int8 static QDQ, matrix ops only",
         lambda: int8_static(case, out / f"{stem}.qdqmat.onnx", MATRIX_OPS), False),
        ("halut default", lambda: halut(case, out / f"{stem}.halut.onnx", []), True),
    ]
    for k, (label, options) in enumerate(case.extra_halut):
        rows.append((label, lambda k=k, options=options: halut(case, out / f"{stem}.extra{k}.onnx", options), True))
    if case.budget is not None:
        held, shown = [], []
        if case.heldout is not None:  # the label names the folder, not its temporary path
            held, shown = ["--heldout-data", str(case.heldout)], ["--heldout-data", case.heldout.name]
        rows.append((" ".join(["halut", *case.budget, *shown]),
                     lambda: halut(case, out / f"{stem}.budget.onnx", [*case.budget, *held]), True))
    return rows


def compare(case: Case, out: Path, runs: int) -> list[list[str]]:
    """Build every row's model, measure its end metric, then time all of them against fp32 in this process."""
    import onnxruntime.quantization  # noqa: F401  (imported before the clock runs: not part of the first build)

    base = case.metric(case.model, False)
    built = []
    for label, build, is_halut in variants(case, out):
        start = time.perf_counter()
        try:
            path = build()
        except Exception as exc:  # a quantizer or converter failure is a result to report, not a crash
            reason = str(exc).strip().splitlines()[-1]
            print(f"{case.name}, {label}: failed: {reason}", file=sys.stderr)
            # a budget no layer fits leaves the model as it is: a result, shown apart from a failure
            built.append((label, "none fits" if reason.startswith(tools.NO_LAYER_FITS) else None, is_halut,
                          time.perf_counter() - start))
            continue
        built.append((label, path, is_halut, time.perf_counter() - start))
        print(f"{case.name}, {label}: built in {built[-1][3]:.1f} s", file=sys.stderr)

    reference, _ = make_session(case.model, threads=1)
    rows = [[case.name, "fp32", f"{eligible_layers(case.model)} eligible", f"{100 * base:.2f}", "-", "1.00x", "-"]]
    for label, path, is_halut, seconds in built:
        if path == "none fits":
            rows.append([case.name, label, "0: none fits", f"{100 * base:.2f}", "+0.00", "-", f"{seconds:.2f}"])
            continue
        if path is None:
            rows.append([case.name, label, "failed", "-", "-", "-", f"{seconds:.2f}"])
            continue
        try:
            value = case.metric(path, is_halut)
            session, loaded = make_session(path, threads=1, halut=is_halut)
        except Exception as exc:
            print(f"{case.name}, {label}: does not run: {str(exc).strip().splitlines()[-1]}", file=sys.stderr)
            rows.append([case.name, label, "does not run", "-", "-", "-", f"{seconds:.2f}"])
            continue
        if is_halut and not loaded:
            raise RuntimeError("the Halut custom-op library did not load: timings would be of the ONNX fallbacks")
        ref_ms, ms = latencies(reference, session, case.feed, runs, warmup=2)
        layers = tools.converted_layers(path) if is_halut else quantized_layers(path)
        rows.append([case.name, label, layers, f"{100 * value:.2f}", f"{100 * (value - base):+.2f}",
                     f"{ref_ms / ms:.2f}x", f"{seconds:.2f}"])
    return rows


# ------------------------------------------------------------------------------------------------ the models
def digits_case(out: Path, args) -> Case:
    import digits_mlp

    model, split = digits_mlp.train()
    x_test, y_test = split.x_test, split.y_test
    original = digits_mlp.export(model, out / "digits_mlp.onnx")
    # the example's layout: noisy copies (--augment) are drawn per file, so it takes the same files to get its rows
    calib = digits_mlp.write_rows(out / "calib", split.x_fit)
    val = digits_mlp.write_rows(out / "val", split.x_val)
    return Case("digits MLP", original, calib, {digits_mlp.INPUT: x_test}, f"the {len(x_test)} test rows at once",
                lambda path, is_halut: digits_mlp.accuracy(path, x_test, y_test, halut=is_halut), "test acc %", True,
                ["--budget", "agreement=0.99"], heldout=val,
                # its layers see one row per sample: the default learns them from noisy copies too
                extra_halut=[("halut --augment 0", ["--augment", "0"])])


def conv1d_case(out: Path, args) -> Case:
    import digits_conv1d

    split = digits_conv1d.load()
    x_test, y_test = split.x_test, split.y_test
    net = digits_conv1d.train(split.x_fit, split.y_fit)
    original = digits_conv1d.export(net, x_test, out / "digits_conv1d.onnx")
    calib = digits_conv1d.write_rows(out / "calib", split.x_fit)
    return Case("digits 1-D CNN", original, calib, {digits_conv1d.INPUT: x_test},
                f"the {len(x_test)} test sequences at once",
                lambda path, is_halut: digits_conv1d.accuracy(path, x_test, y_test, halut=is_halut), "test acc %",
                True, ["--budget", "agreement=0.99"], heldout=digits_conv1d.write_rows(out / "val", split.x_val))


def vit_case(out: Path, args, size_name: str = "small") -> Case:
    import digits_conv1d
    import digits_vit

    size = digits_vit.SIZES[size_name]
    split = digits_vit.load(size)
    x_test, y_test = split.x_test, split.y_test
    net = digits_vit.train(split.x_fit, split.y_fit, size)
    original = digits_conv1d.export(net, x_test, out / f"digits_vit_{size_name}.onnx")
    calib = digits_conv1d.write_rows(out / "calib", split.x_fit)
    extra = [("halut --encoder tree", ["--encoder", "tree"])]
    if size_name == "tiny":
        extra.append(("halut -C 32 --encoder tree", ["-C", "32", "--encoder", "tree"]))
    return Case(f"digits ViT {size_name}", original, calib, {digits_conv1d.INPUT: x_test},
                f"the {len(x_test)} test images at once",
                lambda path, is_halut: digits_conv1d.accuracy(path, x_test, y_test, halut=is_halut), "test acc %",
                True, ["--budget", "agreement=0.99"], heldout=digits_conv1d.write_rows(out / "val", split.x_val),
                extra_halut=extra)


def rec_case(out: Path, args) -> Case:
    import ppocr_data

    model = ppocr_data.rec_model_path()
    charset = ppocr_data.rec_charset(model)
    name = ppocr_data.input_name(model)
    calib_lines, eval_lines = ppocr_data.rec_lines(args.calib, args.eval, model)
    calib = ppocr_data.make_rec_set(calib_lines, seed=0)
    evaluation = ppocr_data.make_rec_set(eval_lines, seed=1)
    ppocr_data.write_set(out / "calib", name, calib.batches)

    def cer(path: Path, is_halut: bool) -> float:
        texts, _ = ppocr_data.run_rec(tools.session(path, halut=is_halut), evaluation.batches, charset)
        return ppocr_data.cer(evaluation.references, texts)

    matmuls = tools.only_layers(tools.matmul_layer_names(model))
    budget = None if args.quick else ["--budget", "ctc=0.99", "--objective", "macs", "--heldout-files",
                                      str(args.heldout_files)]
    return Case(f"{model.stem}", model, out / "calib", {name: evaluation.batches[0]},
                f"one evaluation batch {list(evaluation.batches[0].shape)}", cer, "CER %", False, budget,
                ["--max-rows", str(args.max_rows)], [("halut default, MatMuls only", matmuls)])


def det_case(out: Path, args) -> Case:
    import ppocr_data

    model = ppocr_data.det_model_path()
    name = ppocr_data.input_name(model)
    lines_per_page = 12  # budget_tables.py det's pages
    calib_lines, eval_lines = ppocr_data.rec_lines(args.calib * lines_per_page, args.eval * lines_per_page,
                                                   ppocr_data.rec_model_path())
    calib_pages, _, _ = ppocr_data.make_det_set(calib_lines, args.calib, lines_per_page, seed=0)
    eval_pages, _, _ = ppocr_data.make_det_set(eval_lines, args.eval, lines_per_page, seed=1)
    ppocr_data.write_set(out / "calib", name, calib_pages)
    original = tools.session(model)
    ref_boxes = [ppocr_data.det_boxes(original.run(None, {name: page})[0]) for page in eval_pages]

    def hmean(path: Path, is_halut: bool) -> float:
        session = tools.session(path, halut=is_halut)
        boxes = [ppocr_data.det_boxes(session.run(None, {name: page})[0]) for page in eval_pages]
        return ppocr_data.det_hmean(ref_boxes, boxes)["hmean"]

    budget = None if args.quick else ["--budget", "cosine=0.97", "--heldout-files", str(args.heldout_files)]
    return Case(f"{model.stem}", model, out / "calib", {name: eval_pages[0]},
                f"one evaluation page {list(eval_pages[0].shape)}", hmean, "box hmean % vs fp32's boxes", True,
                budget, ["--max-rows", str(args.max_rows)])


def magika_case(out: Path, args) -> Case:
    import magika_data

    corpus = magika_data.make_corpus(args.calib, args.eval)
    calib = tools.write_batches(out / "calib", magika_data.INPUT, corpus.calib, 64)
    model = magika_data.model_path()
    reference = magika_data.labels_of(tools.session(model), corpus.evaluation)

    def agreement(path: Path, is_halut: bool) -> float:
        labels = magika_data.labels_of(tools.session(path, halut=is_halut), corpus.evaluation)
        return float(np.mean(labels == reference))

    feed = corpus.evaluation[:100]
    # by time no layer fits: the embedding is lossless but no faster, the conv too lossy
    budget = None if args.quick else ["--budget", "agreement=0.99", "--objective", "macs"]
    return Case("Magika standard_v3_3", model, calib, {magika_data.INPUT: feed}, f"{len(feed)} evaluation files",
                agreement, "label agreement % with fp32", True, budget,
                extra_halut=[("halut --encoder tree", ["--encoder", "tree"])])


def encoder_case(out: Path, args) -> Case:
    """``args.layers`` post-LayerNorm encoder layers of BERT-base's shape (width 768, 12 heads, GELU feed-forward
    3072; one 768 x 2304 QKV projection), exported by torch.onnx (dynamo): per layer 4 MatMuls + bias Adds. Inputs
    [8, 128, 768] standard normal (8 sequences of 128 tokens: 1024 rows per layer)."""
    import torch

    width, heads, hidden = 768, 12, 3072

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv, self.out = torch.nn.Linear(width, 3 * width), torch.nn.Linear(width, width)
            self.ff1, self.ff2 = torch.nn.Linear(width, hidden), torch.nn.Linear(hidden, width)
            self.ln1, self.ln2 = torch.nn.LayerNorm(width), torch.nn.LayerNorm(width)

        def forward(self, x):
            B, S, _ = x.shape
            q, k, v = self.qkv(x).view(B, S, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
            attention = torch.softmax(q @ k.transpose(-1, -2) / (width // heads) ** 0.5, -1) @ v
            x = self.ln1(x + self.out(attention.transpose(1, 2).reshape(B, S, width)))
            return self.ln2(x + self.ff2(torch.nn.functional.gelu(self.ff1(x))))

    torch.manual_seed(0)
    net = torch.nn.Sequential(*[Layer() for _ in range(args.layers)]).eval()
    rng = np.random.default_rng(0)
    batch = lambda: rng.standard_normal((8, 128, width)).astype(np.float32)  # noqa: E731
    path = out / "encoder.onnx"
    torch.onnx.export(net, (torch.from_numpy(batch()),), str(path), input_names=["x"], output_names=["y"],
                      dynamo=True)
    (out / "calib").mkdir(exist_ok=True)
    for k in range(args.calib):
        np.savez(out / "calib" / f"{k:04d}.npz", x=batch())
    evaluation = [batch() for _ in range(2)]
    reference = [tools.session(path).run(None, {"x": x})[0] for x in evaluation]

    def cosine(model: Path, is_halut: bool) -> float:
        session = tools.session(model, halut=is_halut)
        got = np.concatenate([session.run(None, {"x": x})[0].reshape(-1) for x in evaluation]).astype(np.float64)
        want = np.concatenate([r.reshape(-1) for r in reference]).astype(np.float64)
        return float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want)))

    return Case(f"encoder, {args.layers} BERT-base-shaped layers, random weights", path, out / "calib",
                {"x": evaluation[0]}, "8 sequences of 128 tokens", cosine, "output cosine % to fp32's (random "
                "weights: not an accuracy)", True, None, extra_halut=[("halut --encoder tree", ["--encoder", "tree"])])


CASES = {"digits": digits_case, "conv1d": conv1d_case, "vit": vit_case,
         "vit-tiny": lambda out, args: vit_case(out, args, "tiny"), "rec": rec_case, "det": det_case,
         "magika": magika_case, "encoder": encoder_case}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=list(CASES))
    parser.add_argument("--out", type=Path, default=None, help="folder for models and data (default: a temp dir)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer timing runs; rec, det, magika: fewer lines/pages/files and no budget row")
    parser.add_argument("--runs", type=int, default=None,
                        help="timed runs per model (default 30; rec 10, det 5, magika 10)")
    parser.add_argument("--calib", type=int, default=None,
                        help="rec: calibration lines (144); det: pages (8); magika: files (1024); "
                        "encoder: batches (16)")
    parser.add_argument("--layers", type=int, default=None, help="encoder: layers (4; 1 with --quick)")
    parser.add_argument("--eval", type=int, default=None,
                        help="rec: evaluation lines (48); det: pages (16); magika: files (2000)")
    parser.add_argument("--max-rows", type=int, default=16384, help="rec, det: halut-onnx convert --max-rows")
    parser.add_argument("--heldout-files", type=float, default=0.34, help="rec, det: the budget row's share of "
                        "held-out calibration files")
    args = parser.parse_args(argv)
    big = args.model in ("rec", "det", "magika")
    if args.calib is None:
        args.calib = {"rec": 48 if args.quick else 144, "det": 4 if args.quick else 8,
                      "magika": 256 if args.quick else 1024, "encoder": 4 if args.quick else 16}.get(args.model, 0)
    if args.layers is None:
        args.layers = 1 if args.quick else 4
    if args.eval is None:
        args.eval = {"rec": 24 if args.quick else 48, "det": 4 if args.quick else 16,
                     "magika": 256 if args.quick else 2000}.get(args.model, 0)
    runs = args.runs or (5 if args.quick else {"rec": 10, "det": 5, "magika": 10, "encoder": 10}.get(args.model, 30))
    import onnxruntime as ort

    print(f"onnxruntime {ort.__version__}; Halut custom-op library: {tools.library_status()}")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        case = CASES[args.model](out, args)
        rows = compare(case, out, runs)
    unit = {"det": "pages", "magika": "files"}.get(args.model, "lines")
    sizes = f"; {args.calib} calibration, {args.eval} evaluation {unit}" if big else ""
    print(f"{case.name}: metric {case.metric_name} ({'higher' if case.higher_is_better else 'lower'} is better)"
          f"{sizes}; timed on {case.feed_note}, {runs} runs")
    print(tools.format_table(HEADERS, rows))


if __name__ == "__main__":
    main()
