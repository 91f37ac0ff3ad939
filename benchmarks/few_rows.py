"""Few calibration rows, with and without ``--augment``: PP-OCR rec's 9 constant-weight MatMuls (as
examples/ppocr_rec.py converts them) learned from a few calibration lines without noisy copies, with K of them and
with the default's (``--augment auto``); CER and frame agreement on 48 evaluation lines, how many layers the learning
warned about (fewer training rows than LUT entries), how many learned from auto's copies and how many auto gave
copies that learning dropped (the layer did better on its held-out rows without them).

    python benchmarks/few_rows.py [--lines 12,48] [--augment 4] [--out DIR]

A line gives each MatMul about 80 rows (its time steps); at C = 64 a layer's LUT has 1024 entries per output, so
12 lines leave every layer underdetermined and 48 none, though both are under auto's 4 rows per entry
(docs/learning.md, "Few calibration rows").
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import example_tools as tools  # noqa: E402
import ppocr_data  # noqa: E402
from ppocr_rec import top1_agreement  # noqa: E402

EVAL_LINES = 48
WARNING = "training rows for"  # the learning's note on an underdetermined LUT
COPIED = "noisy copies of each (--augment auto"  # convert's note on a layer that learned from auto's copies
DROPPED = "alone (--augment auto"  # ... on a layer auto gave copies that did better on its held-out rows without


def rows(lines: int, augment: int, out: Path) -> list[list[str]]:
    model = ppocr_data.rec_model_path()
    charset, name = ppocr_data.rec_charset(model), ppocr_data.input_name(model)
    calib_lines, eval_lines = ppocr_data.rec_lines(lines, EVAL_LINES, model)
    evaluation = ppocr_data.make_rec_set(eval_lines, seed=1)
    calib = ppocr_data.write_set(out / f"calib{lines}", name, ppocr_data.make_rec_set(calib_lines, seed=0).batches)
    texts, frames = ppocr_data.run_rec(tools.session(model), evaluation.batches, charset)
    matmuls = tools.only_layers(tools.matmul_layer_names(model))
    table = []
    for encoder in ("pq", "tree"):
        for copies in ("0", str(augment), "auto"):
            start = time.perf_counter()
            converted = out / f"rec.{lines}.{encoder}.{copies}.onnx"
            printed = tools.halut_cli(*tools.convert_args(model, calib, converted,
                                                          [*matmuls, "--encoder", encoder, "--augment", str(copies)]))
            seconds = time.perf_counter() - start
            warned = sum(WARNING in line for line in printed.stdout.splitlines())
            copied = sum(COPIED in line for line in printed.stdout.splitlines())
            dropped = sum(DROPPED in line for line in printed.stdout.splitlines())
            conv_texts, conv_frames = ppocr_data.run_rec(tools.session(converted, halut=True), evaluation.batches,
                                                         charset)
            cer = ppocr_data.cer(evaluation.references, conv_texts)
            table.append([lines, encoder, copies, warned, copied, dropped, f"{100 * cer:.2f}",
                          f"{100 * top1_agreement(frames, conv_frames):.2f}", f"{seconds:.0f}"])
        print(f"{lines} lines, {encoder}: done", file=sys.stderr)
    print(f"{lines} calibration lines: original CER {100 * ppocr_data.cer(evaluation.references, texts):.2f} %",
          file=sys.stderr)
    return table


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", default="12,48", help="calibration line counts, comma-separated")
    parser.add_argument("--augment", type=int, default=4, help="noisy copies in the augmented rows")
    parser.add_argument("--out", type=Path, default=None, help="keep models and data here (default: a temp dir)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        table = [row for n in args.lines.split(",") for row in rows(int(n), args.augment, out)]
    print(f"Halut custom-op library: {tools.library_status()}; {EVAL_LINES} evaluation lines")
    print(tools.format_table(["calibration lines", "encoder", "--augment", "layers warned", "layers copied",
                              "copies dropped", "CER %", "agreement %", "convert s"], table))


if __name__ == "__main__":
    main()
