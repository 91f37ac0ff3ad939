"""Handwritten digits with a small 1-D CNN: train in torch, export with torch.onnx, replace its three Conv1d layers
and its Linear by Halut table lookups, compare test accuracy.

    python examples/digits_conv1d.py [--out DIR] [--quick] [--seed N]

Each 8x8 digit is read as a sequence of 8 steps (the image columns) of 8 channels (the rows), pixels scaled to
0..1, split as in digits_mlp.py (fit / validation / test). The network: Conv1d 8->32 (k=3, pad 1), ReLU,
Conv1d 32->64 (k=3, stride 2, pad 1), ReLU, Conv1d 64->64 (k=3, pad 1), ReLU, Flatten, Linear 256->10; trained with
Adam for 60 epochs (torch seed 0, one thread). torch.onnx's default (dynamo) exporter writes it with a dynamic
batch. The fit rows are the calibration data, the validation rows the budget's held-out data (``--heldout-data``),
the test rows the evaluation data. ``--quick`` converts with the default settings (pq encoder) and with the tree
encoder only.

It needs torch and onnxscript, which torch.onnx's default exporter uses (the ``test`` extra has both).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import example_tools as tools  # noqa: E402

INPUT, OUTPUT = "x", "logits"
SETTINGS_QUICK = [("default", []), ("--encoder tree", ["--encoder", "tree"])]
SETTINGS_FULL = SETTINGS_QUICK + [
    (f"-C {c} --encoder {enc}", ["-C", str(c), "--encoder", enc]) for enc in ("pq", "tree") for c in (8, 16)
] + [("--budget agreement=0.99", ["--budget", "agreement=0.99"])]
CALIB_BATCH = 128
EPOCHS = 60


def load() -> tools.DigitsSplit:
    """The digits as [N, 8 channels, 8 steps] float32 in 0..1."""
    return tools.digits_split().features(lambda x: (x / 16.0).astype(np.float32).reshape(-1, 8, 8))


def train(x_train: np.ndarray, y_train: np.ndarray, seed: int = 0):
    import torch

    def build():
        return torch.nn.Sequential(
            torch.nn.Conv1d(8, 32, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv1d(32, 64, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv1d(64, 64, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Flatten(), torch.nn.Linear(64 * 4, 10),
        )

    return tools.train_classifier(build, x_train, y_train, EPOCHS, lambda p: torch.optim.Adam(p, lr=3e-3),
                                  seed=seed)


def export(net, example: np.ndarray, path: Path) -> Path:
    """torch.onnx's default exporter, batch dynamic; its progress lines go to stderr."""
    import contextlib

    import torch

    with contextlib.redirect_stdout(sys.stderr):
        torch.onnx.export(net, (torch.from_numpy(example[:2]),), str(path), input_names=[INPUT],
                          output_names=[OUTPUT], dynamic_shapes=({0: torch.export.Dim("batch")},))
    return path


def write_rows(folder: Path, rows: np.ndarray) -> Path:
    return tools.write_batches(folder, INPUT, rows, CALIB_BATCH)


def accuracy(model_path: Path, rows: np.ndarray, labels: np.ndarray, halut: bool) -> float:
    logits = tools.session(model_path, halut=halut).run([OUTPUT], {INPUT: rows})[0]
    return float(np.mean(logits.argmax(1) == labels))


def run(out: Path, quick: bool, seed: int = 0) -> list[dict]:
    import torch

    out.mkdir(parents=True, exist_ok=True)
    split = load()
    x_test, y_test = split.x_test, split.y_test
    net = train(split.x_fit, split.y_fit, seed)
    with torch.no_grad():
        torch_acc = float((net(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
    original = export(net, x_test, out / "digits_conv1d.onnx")
    write_rows(out / "calib", split.x_fit)
    write_rows(out / "val", split.x_val)
    onnx_acc = accuracy(original, x_test, y_test, halut=False)
    if abs(onnx_acc - torch_acc) > 1e-12:
        raise RuntimeError(f"the ONNX export disagrees with torch: accuracy {onnx_acc} vs {torch_acc}")
    print(f"torch test accuracy {100 * torch_acc:.2f} %; ONNX export equal")

    return tools.convert_settings(original, out, SETTINGS_QUICK if quick else SETTINGS_FULL,
                                  lambda path: accuracy(path, x_test, y_test, halut=True), onnx_acc, 4)


def main(argv=None) -> None:
    tools.accuracy_example_main(__doc__.split("\n\n")[0], run, argv)

if __name__ == "__main__":
    main()
