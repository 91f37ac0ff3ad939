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
from halut_onnx.selection import default_codebooks  # noqa: E402


MODELS = ["rec", "det", "conv1d", "magika"]


def spatial_convs(model: onnx.ModelProto) -> list[str]:
    weights = {i.name: i for i in model.graph.initializer}
    names = []
    for node in model.graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        w = weights.get(node.input[1]) if node.op_type == "Conv" else None
        if w is not None and group == 1 and int(np.prod(w.dims[2:])) > 1:
            names.append(node.name)
    return names


def conv_inputs(path: Path, feeds: list[dict]) -> list[tuple[str, list[np.ndarray], np.ndarray, dict]]:
    """(name, input batches, weight as [Cout, Cin, kh, kw], attributes as 2-D) of every spatial conv."""
    model = onnx.load(str(path))
    names = spatial_convs(model)
    nodes = {n.name: n for n in model.graph.node}
    inputs = [nodes[name].input[0] for name in names]
    model.graph.output.extend(onnx.helper.make_tensor_value_info(i, onnx.TensorProto.FLOAT, None) for i in inputs)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    runs = [session.run(inputs, feed) for feed in feeds]
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out = []
    for k, name in enumerate(names):
        node = nodes[name]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        w = weights[node.input[1]]
        batches = [run[k] for run in runs]
        if w.ndim == 3:  # 1-D: the height-1 image the converter sees
            w, batches = w[:, :, None, :], [b[:, :, None, :] for b in batches]
            pads = attrs.get("pads", [0, 0])
            attrs = {"strides": [1, *attrs.get("strides", [1])], "dilations": [1, *attrs.get("dilations", [1])],
                     "pads": [0, pads[0], 0, pads[1]]}
        out.append((name, batches, w, attrs))
    return out


def patch_rows(batches: list[np.ndarray], w: np.ndarray, attrs: dict) -> np.ndarray:
    """[rows, Cin, kh, kw] patches (explicit pads only: these models have no auto_pad)."""
    _, cin, kh, kw = w.shape
    sh, sw = attrs.get("strides", [1, 1])
    dh, dw = attrs.get("dilations", [1, 1])
    top, left, bottom, right = attrs.get("pads", [0, 0, 0, 0])
    rows = []
    for x in batches:
        x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
        ho = (x.shape[2] - (kh - 1) * dh - 1) // sh + 1
        wo = (x.shape[3] - (kw - 1) * dw - 1) // sw + 1
        p = np.empty((x.shape[0], ho, wo, cin, kh, kw), np.float32)
        for ky in range(kh):
            for kx in range(kw):
                window = x[:, :, ky * dh : ky * dh + (ho - 1) * sh + 1 : sh, kx * dw : kx * dw + (wo - 1) * sw + 1 : sw]
                p[..., ky, kx] = window.transpose(0, 2, 3, 1)
        rows.append(p.reshape(-1, cin, kh, kw))
    return np.concatenate(rows)


def compare(model: str, name: str, patches: np.ndarray, w: np.ndarray, max_rows: int) -> list[str]:
    if len(patches) > max_rows:
        patches = patches[np.random.default_rng(0).choice(len(patches), max_rows, replace=False)]
    cout, cin, kh, kw = w.shape
    D = cin * kh * kw
    C = default_codebooks(D)
    orders = {"channel-major": (patches.reshape(-1, D), w.reshape(cout, D).T),
              "tap-major": (patches.transpose(0, 2, 3, 1).reshape(-1, D), w.transpose(0, 2, 3, 1).reshape(cout, D).T)}
    nmse = {(order, enc): learn_layer(np.ascontiguousarray(a), wm, None, LearnOptions(codebooks=C, encoder=enc))
            .report.heldout_nmse for order, (a, wm) in orders.items() for enc in ("pq", "tree")}
    return [model, name, f"{cin}x{kh}x{kw}", C, len(patches)] + [
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

        x_train, x_test, y_train, _ = digits_conv1d.load()
        path = digits_conv1d.export(digits_conv1d.train(x_train, y_train), x_test,
                                    Path(tempfile.mkdtemp()) / "digits_conv1d.onnx")
        return path, [{digits_conv1d.INPUT: x_train}]
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
        for name, batches, w, attrs in conv_inputs(path, feeds):
            rows.append(compare(model, name, patch_rows(batches, w, attrs), w, args.max_rows))
    print("held-out NMSE: channel-major (the ops' order), tap-major, ratio")
    print(tools.format_table(["model", "conv", "Cin x kh x kw", "C", "rows", "pq", "tree"], rows))


if __name__ == "__main__":
    main()
