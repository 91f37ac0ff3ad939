"""PP-OCR text recognition (the rec model rapidocr ships): replace its constant-weight MatMul layers by Halut table
lookups and compare the character error rate on rendered English text lines. Conv layers stay as they are (each
conversion passes ``--include`` with the MatMul node names; ppocr_rec_conv.py covers the Conv layers).

    python examples/ppocr_rec.py [--out DIR] [--quick] [--float16]

Calibration and evaluation lines are rendered from disjoint sets of sentences of Python's documentation and
preprocessed as rapidocr's recognizer does (see ppocr_data.py). Reported per setting: layers converted, CER of the
original and of the converted model against the true text, and top-1 agreement: the fraction of the original's
non-blank frames (CTC time steps) where the converted model's most likely class is the same. ``--float16`` first
converts the model to float16 with onnxruntime's own converter (inputs and outputs kept float32, as deployed float16
models often are) and compares against that model: the converter casts each layer to float32 around the Halut ops.
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

SIZES_FULL = (400, 200)  # calibration lines, evaluation lines
SIZES_QUICK = (48, 24)
SETTINGS_FULL = [
    ("default", []),
    ("--encoder tree", ["--encoder", "tree"]),
    ("-C 16 --encoder pq", ["-C", "16", "--encoder", "pq"]),
    ("-C 32 --encoder pq", ["-C", "32", "--encoder", "pq"]),
    ("-C 32 --encoder tree", ["-C", "32", "--encoder", "tree"]),
]
SETTINGS_QUICK = [("default", [])]


def top1_agreement(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
    """Fraction of the reference's non-blank frames where the candidate's argmax class is the same."""
    agree = total = 0
    for ref, cand in zip(reference, candidate):
        chars = ref != 0
        agree += int(np.sum((ref == cand) & chars))
        total += int(np.sum(chars))
    return agree / max(total, 1)


def run(out: Path, quick: bool, float16: bool = False) -> tuple[dict, list[dict]]:
    out.mkdir(parents=True, exist_ok=True)
    model = ppocr_data.rec_model_path()
    charset = ppocr_data.rec_charset(model)
    if float16:
        model = tools.float16_model(model, out / f"{model.stem}.float16.onnx")
    name = ppocr_data.input_name(model)
    n_calib, n_eval = SIZES_QUICK if quick else SIZES_FULL
    calib_lines, eval_lines = ppocr_data.rec_lines(n_calib, n_eval, model)
    calib = ppocr_data.make_rec_set(calib_lines, seed=0)
    evaluation = ppocr_data.make_rec_set(eval_lines, seed=1)
    ppocr_data.write_set(out / "calib", name, calib.batches)
    ppocr_data.write_set(out / "eval", name, evaluation.batches, labels=evaluation.texts)
    references = evaluation.references

    texts, frames = ppocr_data.run_rec(tools.session(model), evaluation.batches, charset)
    original_cer = ppocr_data.cer(references, texts)
    info = {"model": model, "calib": n_calib, "eval": n_eval, "cer": original_cer,
            "layers": tools.matmul_layers(model)}
    print(f"model {model.name}: {info['layers']} constant-weight MatMul/Gemm layers (Conv layers: ppocr_rec_conv.py)")
    print(f"{n_calib} calibration lines, {n_eval} evaluation lines; original CER {100 * original_cer:.2f} %")

    results = []
    for label, options in SETTINGS_QUICK if quick else SETTINGS_FULL:
        slug = label.replace("--encoder ", "").replace("-C ", "C").replace(" ", "_")
        start = time.perf_counter()
        matmuls_only = tools.only_layers(tools.matmul_layer_names(model))
        converted = tools.convert(model, out / "calib", out / f"rec.{slug}.onnx", [*matmuls_only, *options])
        seconds = time.perf_counter() - start
        conv_texts, conv_frames = ppocr_data.run_rec(tools.session(converted, halut=True), evaluation.batches, charset)
        results.append(
            {
                "setting": label,
                "layers": tools.converted_layers(converted),
                "cer_original": original_cer,
                "cer_converted": ppocr_data.cer(references, conv_texts),
                "agreement": top1_agreement(frames, conv_frames),
                "convert_s": seconds,
            }
        )
    return info, results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for models and data (default: a temp dir)")
    parser.add_argument("--quick", action="store_true", help=f"{SIZES_QUICK[0]} + {SIZES_QUICK[1]} lines, default "
                        "settings only (for tests)")
    parser.add_argument("--float16", action="store_true", help="convert the model to float16 first (onnxruntime's "
                        "converter) and compare against that")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        _, results = run(args.out or Path(tmp), args.quick, args.float16)
    print(f"Halut custom-op library: {tools.library_status()}")
    print(
        tools.format_table(
            ["setting", "layers converted", "CER original %", "CER converted %", "top-1 agreement %", "convert s"],
            [
                [r["setting"], r["layers"], f"{100 * r['cer_original']:.2f}", f"{100 * r['cer_converted']:.2f}",
                 f"{100 * r['agreement']:.2f}", f"{r['convert_s']:.1f}"]
                for r in results
            ],
        )
    )


if __name__ == "__main__":
    main()
