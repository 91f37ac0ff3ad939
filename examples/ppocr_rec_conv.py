"""PP-OCR text recognition with its Conv layers replaced by Halut table lookups (the conv ops: encode straight from
NCHW, lookup into NCHW), and the character error rate on rendered English text lines before and after.

    python examples/ppocr_rec_conv.py [--out DIR] [--quick] [--calib 200] [--eval 100]

Data as in ppocr_rec.py (disjoint sentences for calibration and evaluation, rapidocr's preprocessing). The rec model
has 57 Conv nodes: 43 group-1 (4 stem convs 3x3 / 2x2, 39 pointwise 1x1) are candidates, the 14 depthwise ones are
skipped by design. Each setting converts a set of Conv layers only (the MatMul layers stay: ppocr_rec.py covers
them) and prints: layers converted, the per-layer error (held-out NMSE of the int8 lookup on calibration patches,
median and worst), CER of the original and converted model, and top-1 frame agreement.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import example_tools as tools  # noqa: E402
import ppocr_data  # noqa: E402
from ppocr_rec import top1_agreement  # noqa: E402

from halut_onnx.convert import ConvertOptions, convert_model  # noqa: E402

STEM = r"^Conv\.[0-3]$"  # the 4 non-pointwise group-1 convs (3x3 s2, 2x2, 2x2, 3x3 s2)
SETTINGS_FULL = [
    ("stem convs, default C", dict(include=(STEM,))),
    ("stem convs, tree", dict(include=(STEM,), encoder="tree")),
    ("Conv.3 (3x3, Cin 96), default C = 64", dict(include=(r"^Conv\.3$",))),
    ("Conv.3 (3x3, Cin 96), C = Cin = 96", dict(include=(r"^Conv\.3$",), codebooks=96)),
    ("first 1x1 block (Conv.4-9)", dict(include=(r"^Conv\.[4-9]$",))),
    ("last 1x1 convs (Conv.47-55)", dict(include=(r"^Conv\.(4[7-9]|5[0-5])$",))),
    ("all 43 group-1 convs", dict(include=(r"^Conv\.",))),
]
SETTINGS_QUICK = [("stem convs, default C", dict(include=(STEM,)))]


def run(out: Path, quick: bool, n_calib: int, n_eval: int, max_rows: int) -> tuple[dict, list[dict]]:
    out.mkdir(parents=True, exist_ok=True)
    model = ppocr_data.rec_model_path()
    charset = ppocr_data.rec_charset(model)
    name = ppocr_data.input_name(model)
    calib_lines, eval_lines = ppocr_data.rec_lines(n_calib, n_eval, model)
    calib = ppocr_data.make_rec_set(calib_lines, seed=0)
    evaluation = ppocr_data.make_rec_set(eval_lines, seed=1)
    ppocr_data.write_set(out / "calib", name, calib.batches)
    texts, frames = ppocr_data.run_rec(tools.session(model), evaluation.batches, charset)
    original_cer = ppocr_data.cer(evaluation.references, texts)
    print(f"model {model.name}: {n_calib} calibration lines, {n_eval} evaluation lines; "
          f"original CER {100 * original_cer:.2f} %", file=sys.stderr)
    results = []
    for label, settings in SETTINGS_QUICK if quick else SETTINGS_FULL:
        start = time.perf_counter()
        result = convert_model(model, out / "calib", out / "rec_conv.onnx",
                               ConvertOptions(progress=False, max_rows=max_rows, **settings))
        seconds = time.perf_counter() - start
        layers = [r for r in result.converted if r.op_type == "Conv"]
        nmse = np.array([r.heldout_nmse_int8 for r in layers])
        conv_texts, conv_frames = ppocr_data.run_rec(tools.session(out / "rec_conv.onnx", halut=True),
                                                     evaluation.batches, charset)
        results.append({
            "setting": label, "layers": len(layers), "per_layer": {r.name: (r.D, r.M, r.C, r.heldout_nmse_int8)
                                                                   for r in layers},
            "nmse_median": float(np.median(nmse)), "nmse_max": float(nmse.max()),
            "cer_original": original_cer, "cer_converted": ppocr_data.cer(evaluation.references, conv_texts),
            "agreement": top1_agreement(frames, conv_frames), "convert_s": seconds,
        })
        print(results[-1], file=sys.stderr)
    return {"cer": original_cer}, results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for models and data (default: a temp dir)")
    parser.add_argument("--quick", action="store_true", help="48 + 24 lines, the stem setting only")
    parser.add_argument("--calib", type=int, default=200, help="calibration lines")
    parser.add_argument("--eval", type=int, default=100, help="evaluation lines")
    parser.add_argument("--max-rows", type=int, default=65536, help="calibration patches kept per layer")
    args = parser.parse_args(argv)
    n_calib, n_eval = (48, 24) if args.quick else (args.calib, args.eval)
    with tempfile.TemporaryDirectory() as tmp:
        _, results = run(args.out or Path(tmp), args.quick, n_calib, n_eval, args.max_rows)
    print(f"Halut custom-op library: {tools.library_status()}")
    print(tools.format_table(
        ["setting", "convs converted", "layer NMSE median", "layer NMSE max", "CER original %", "CER converted %",
         "top-1 agreement %", "convert s"],
        [[r["setting"], r["layers"], f"{r['nmse_median']:.4f}", f"{r['nmse_max']:.4f}",
          f"{100 * r['cer_original']:.2f}", f"{100 * r['cer_converted']:.2f}", f"{100 * r['agreement']:.2f}",
          f"{r['convert_s']:.0f}"] for r in results]))
    print("\nper layer (last setting): name, D, M, C, held-out NMSE")
    for name, (D, M, C, nmse) in results[-1]["per_layer"].items():
        print(f"  {name:10s} D={D:4d} M={M:4d} C={C:3d} NMSE={nmse:.4f}")


if __name__ == "__main__":
    main()
