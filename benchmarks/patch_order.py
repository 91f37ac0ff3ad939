"""Does the order of a conv patch's elements matter to Halut's learning? Held-out NMSE of real conv layers learned on
their patch rows in the ops' order (channel-major, ``d = (ci * kh + ky) * kw + kx``, docs/ops.md) against tap-major
(``d = (ky * kw + kx) * Cin + ci``: one codebook slice holds channels of one kernel tap).

    python benchmarks/patch_order.py [rec] [det] [conv1d] [magika] [--max-rows 32768]

Codebooks are contiguous slices of the patch, so the order decides what each 4-bit code summarises: a few channels
over every tap, or many channels at one tap. Only convs with a kernel larger than 1 x 1 differ (group 1, constant
weight): PP-OCRv6 rec's 4 and det's 5 (calibration images from examples/ppocr_data.py), the digits 1-D CNN's 3
(examples/digits_conv1d.py) and Magika's one (examples/magika_data.py). Each layer is learned with
``learn_layer`` at convert's default C, both encoders, on the same sampled rows in both orders (weights permuted to
match), seed 0.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import example_tools as tools  # noqa: E402

from halut_onnx.learn.layer import LearnOptions, learn_layer  # noqa: E402
from halut_onnx.passes import find_layers  # noqa: E402
from halut_onnx.reference import im2col  # noqa: E402
from halut_onnx.selection import default_codebooks  # noqa: E402


MODELS = ["rec", "det", "conv1d", "magika"]


def conv_rows(path: Path, feeds: list[dict]) -> list[tuple[str, np.ndarray, np.ndarray, tuple[int, int, int]]]:
    """(name, patch rows in the ops' order, weight (D, M), (Cin, kh, kw)) of every convertible conv with a kernel
    larger than 1 x 1: the converter's own candidates and patch rows (a 1-D conv as its height-1 image), the
    weight unfolded (no follower folded in)."""
    model = onnx.load(str(path))
    candidates, _ = find_layers(model)
    convs = [c for c in candidates if c.conv is not None and np.prod(c.conv.kernel_shape) > 1]
    model.graph.output.extend(onnx.helper.make_tensor_value_info(c.input_name, onnx.TensorProto.FLOAT, None)
                              for c in convs)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    runs = [session.run([c.input_name for c in convs], feed) for feed in feeds]
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out = []
    for k, c in enumerate(convs):
        w = weights[c.weight_name]
        rows = np.concatenate([im2col(c.conv.as_nchw(run[k]), **c.conv.kwargs()) for run in runs])
        kh, kw = c.conv.kernel_shape
        out.append((c.name, rows, w.reshape(len(w), -1).T, (rows.shape[1] // (kh * kw), kh, kw)))
    return out


def compare(model: str, name: str, rows: np.ndarray, w: np.ndarray, patch: tuple[int, int, int],
            max_rows: int) -> list[str]:
    if len(rows) > max_rows:
        rows = rows[np.random.default_rng(0).choice(len(rows), max_rows, replace=False)]
    D, M = w.shape
    C = default_codebooks(D)

    def tap_major(a: np.ndarray) -> np.ndarray:  # (n, Cin * kh * kw) -> (n, kh * kw * Cin)
        return a.reshape(len(a), *patch).transpose(0, 2, 3, 1).reshape(len(a), D)

    orders = {"channel-major": (rows, w), "tap-major": (tap_major(rows), tap_major(w.T).T)}
    nmse = {(order, enc): learn_layer(np.ascontiguousarray(a), np.ascontiguousarray(wm), None,
                                      LearnOptions(codebooks=C, encoder=enc)).report.heldout_nmse
            for order, (a, wm) in orders.items() for enc in ("pq", "tree")}
    return [model, name, "x".join(map(str, patch)), C, len(rows)] + [
        f"{nmse['channel-major', enc]:.4f}  {nmse['tap-major', enc]:.4f}  "
        f"{nmse['tap-major', enc] / nmse['channel-major', enc]:.2f}" for enc in ("pq", "tree")]


def feeds_of(model: str) -> tuple[Path, list[dict]]:
    if model in ("rec", "det"):
        import ppocr_data

        rec = ppocr_data.rec_model_path()
        if model == "rec":
            name = ppocr_data.input_name(rec)
            lines, _ = ppocr_data.rec_lines(96, 8, rec)
            return rec, [{name: b} for b in ppocr_data.make_rec_set(lines, seed=0).batches]
        det = ppocr_data.det_model_path()
        lines, _ = ppocr_data.rec_lines(6 * 12, 12, rec)
        pages, _, _ = ppocr_data.make_det_set(lines, 6, 12, seed=0)
        return det, [{ppocr_data.input_name(det): p} for p in pages]
    if model == "conv1d":
        import digits_conv1d

        split = digits_conv1d.load()
        path = digits_conv1d.export(digits_conv1d.train(split.x_fit, split.y_fit), split.x_test,
                                    Path(tempfile.mkdtemp()) / "digits_conv1d.onnx")
        return path, [{digits_conv1d.INPUT: split.x_fit}]
    import magika_data

    corpus = magika_data.make_corpus(256, 0)
    return magika_data.model_path(), [{magika_data.INPUT: corpus.calib[k : k + 64]} for k in range(0, 256, 64)]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", help=f"any of {', '.join(MODELS)} (default: all)")
    parser.add_argument("--max-rows", type=int, default=32768, help="patch rows sampled per layer")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model {', '.join(unknown)}: choose from {', '.join(MODELS)}")
    rows = []
    for model in args.models or MODELS:
        path, feeds = feeds_of(model)
        for name, patches, w, patch in conv_rows(path, feeds):
            rows.append(compare(model, name, patches, w, patch, args.max_rows))
    print("held-out NMSE: channel-major (the ops' order), tap-major, ratio")
    print(tools.format_table(["model", "conv", "Cin x kh x kw", "C", "rows", "pq", "tree"], rows))


if __name__ == "__main__":
    main()
