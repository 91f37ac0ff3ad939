"""Handwritten digits with a small MLP: train in scikit-learn, export with skl2onnx, replace its three MatMuls by
Halut table lookups, compare test accuracy.

    python examples/digits_mlp.py [--out DIR] [--quick] [--seed N]

The classifier is MLPClassifier(hidden_layer_sizes=(128, 64), random_state=0) trained on scikit-learn's digits
(8x8 images, 64 features in 0..16, no scaling), split as every digits example splits them
(example_tools.digits_split: 70/30 train / test stratified, the training part 80/20 into fit / validation rows).
skl2onnx exports it without ZipMap, so the model's outputs are plain tensors, ``label`` (int64) and
``probabilities`` ([N, 10]); the ai.onnx.ml ArrayFeatureExtractor that maps argmax to class labels stays in the
graph. The fit rows (the model's training rows) are the calibration data, the validation rows the budget's
held-out data (``--heldout-data``), the test rows the evaluation data. ``--quick`` converts with the default
settings (pq encoder, ``--augment auto``), the tree encoder and ``--augment 0`` only.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import example_tools as tools  # noqa: E402

INPUT = "X"
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}  # read by onnxruntime >= 1.15; skl2onnx lowers it to what the model needs
# --augment: the layers see one row per sample, 1005 in all, under 4 per LUT entry, so the default (--augment auto)
# learns them from noisy copies too; --augment 0 shows what that gains (docs/learning.md)
SETTINGS_QUICK = [("default", []), ("--encoder tree", ["--encoder", "tree"]), ("--augment 0", ["--augment", "0"])]
SETTINGS_FULL = SETTINGS_QUICK + [("--augment 8", ["--augment", "8"]),
                                  ("--augment 8 --encoder tree", ["--augment", "8", "--encoder", "tree"])] + [
    (f"-C {c} --encoder {enc}", ["-C", str(c), "--encoder", enc]) for enc in ("tree", "pq") for c in (16, 32, 64)
] + [("--budget agreement=0.99", ["--budget", "agreement=0.99"]),
     ("--budget agreement=0.99 --augment 0", ["--budget", "agreement=0.99", "--augment", "0"])]
CALIB_BATCH = 256


def train(seed: int = 0):
    """The classifier (``random_state=seed``) and its data: (model, example_tools.DigitsSplit, float32 features)."""
    from sklearn.neural_network import MLPClassifier

    split = tools.digits_split().features(lambda x: x.astype(np.float32))
    model = MLPClassifier(hidden_layer_sizes=(128, 64), random_state=seed, max_iter=1000)
    model.fit(split.x_fit, split.y_fit)
    return model, split


def export(model, path: Path) -> Path:
    """skl2onnx export without ZipMap; ir_version capped at 10 for onnxruntime."""
    import onnx
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onx = convert_sklearn(
        model,
        initial_types=[(INPUT, FloatTensorType([None, model.n_features_in_]))],
        target_opset=TARGET_OPSET,
        options={id(model): {"zipmap": False}},
    )
    onx.ir_version = min(onx.ir_version, 10)
    onnx.checker.check_model(onx)
    onnx.save(onx, str(path))
    return path


def write_rows(folder: Path, rows: np.ndarray) -> Path:
    return tools.write_batches(folder, INPUT, rows, CALIB_BATCH)


def accuracy(model_path: Path, rows: np.ndarray, labels: np.ndarray, halut: bool) -> float:
    predicted = tools.session(model_path, halut=halut).run(["label"], {INPUT: rows})[0]
    return float(np.mean(predicted.reshape(-1) == labels))


def run(out: Path, quick: bool, seed: int = 0) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    model, split = train(seed)
    x_test, y_test = split.x_test, split.y_test
    original = export(model, out / "digits_mlp.onnx")
    write_rows(out / "calib", split.x_fit)
    write_rows(out / "val", split.x_val)
    write_rows(out / "eval", x_test)

    sklearn_acc = float(model.score(x_test, y_test))
    onnx_acc = accuracy(original, x_test, y_test, halut=False)
    if abs(onnx_acc - sklearn_acc) > 1e-12:
        raise RuntimeError(f"the ONNX export disagrees with scikit-learn: accuracy {onnx_acc} vs {sklearn_acc}")
    print(f"scikit-learn test accuracy {100 * sklearn_acc:.2f} % ({model.n_iter_} iterations); ONNX export equal")
    print(f"constant-weight MatMul/Gemm layers: {tools.matmul_layers(original)}")

    return tools.convert_settings(original, out, SETTINGS_QUICK if quick else SETTINGS_FULL,
                                  lambda path: accuracy(path, x_test, y_test, halut=True), onnx_acc, 3)


def main(argv=None) -> None:
    tools.accuracy_example_main(__doc__.split("\n\n")[0], run, argv)

if __name__ == "__main__":
    main()
