"""Halut's budget layers plus onnxruntime's static int8 for every other layer, on PP-OCR det: does the hybrid beat
static int8 alone (docs/int8.md)?

    python benchmarks/hybrid_int8.py [--out DIR]

The same data, budget (``--budget cosine=0.97 --heldout-files 0.34 --max-rows 16384``) and static quantization
(QDQ, uint8 activations, per-channel int8 weights, calibrated on the calibration pages) as ``compare_int8.py det``;
the hybrid is ``quantize_static`` run on the Halut budget model. onnxruntime's calibrator opens its session without
custom-op libraries and its augmented model keeps no model-local functions, so the Halut library is registered into
that session here (a patch of the calibrator's ``InferenceSession`` for the duration of the call). Prints box hmean
against the fp32 model's boxes and the speedup over fp32 at one thread, all rows timed in this process.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare_int8 as ci  # noqa: E402

import halut_onnx  # noqa: E402
from halut_onnx.bench import latencies  # noqa: E402
from halut_onnx.runtime import make_session  # noqa: E402


def quantize_with_library(case: ci.Case, out: Path) -> Path:
    """``compare_int8.int8_static`` of a converted model: its calibration session gets the Halut library."""
    import onnxruntime
    from onnxruntime.quantization import calibrate

    plain = onnxruntime.InferenceSession

    class WithHalut(plain):
        def __init__(self, path, sess_options=None, **kwargs):
            sess_options = sess_options or onnxruntime.SessionOptions()
            sess_options.register_custom_ops_library(halut_onnx.get_library_path())
            super().__init__(path, sess_options=sess_options, **kwargs)

    calibrate.onnxruntime.InferenceSession = WithHalut
    try:
        return ci.int8_static(case, out)
    finally:
        calibrate.onnxruntime.InferenceSession = plain


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for models and data (default: a temp dir)")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    settings = argparse.Namespace(calib=8, eval=16, max_rows=16384, heldout_files=0.34, quick=False)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        case = ci.det_case(out, settings)
        int8 = ci.int8_static(case, out / "int8_static.onnx")
        budget = ci.halut(case, out / "halut_budget.onnx", case.budget)
        converted = ci.Case(case.name, budget, case.calib, case.feed, case.feed_note, case.metric, case.metric_name,
                            case.higher_is_better, None)
        hybrid = quantize_with_library(converted, out / "hybrid.onnx")
        rows = [("ORT int8 static QDQ", int8, False), ("halut " + " ".join(case.budget), budget, True),
                ("hybrid: that budget + int8 static", hybrid, True)]
        reference, _ = make_session(case.model, threads=1)
        table = []
        for label, path, is_halut in rows:
            session, _ = make_session(path, threads=1, halut=is_halut)
            ref_ms, ms = latencies(reference, session, case.feed, args.runs, warmup=2)
            table.append([label, f"{100 * case.metric(path, is_halut):.2f}", f"{ref_ms / ms:.2f}x"])
    print(ci.tools.format_table(["row", case.metric_name, "speedup 1 thread"], table))


if __name__ == "__main__":
    main()
