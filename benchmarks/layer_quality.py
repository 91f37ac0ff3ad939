"""Quality of learned Halut layers on real activations, layer by layer.

    python benchmarks/layer_quality.py [--quick] [--calib-lines 200] [--eval-lines 60]

(a) scikit-learn's MLPClassifier(hidden_layer_sizes=(128, 64), random_state=0) on load_digits (stratified 70/30
    split, random_state=0): each layer's input computed from coefs_/intercepts_ (relu hidden layers); learned on the
    training rows (learn_layer holds out 20 % of them), evaluated on the test rows; plus the test accuracy with all
    three layers replaced (each fed the previous Halut layer's output).
(b) The PP-OCR recognition model shipped with rapidocr: the inputs of its constant-weight MatMul nodes (plus the
    constant of a following Add, if any, as bias), captured with onnxruntime on rendered English text lines
    (examples/ppocr_data.py); learned on calibration lines, evaluated on other lines.

NMSE = ||Y - Yhat||^2 / ||Y||^2 with Y = A W + b. Codes come from the reference encode ops; the lookups are the
bit-exact numba twins of the reference lookups (halut_onnx.learn.lut, tested equal), for the 18710-wide classifier.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from halut_onnx.learn import LearnOptions, learn_layer
from halut_onnx.learn.layer import heldout_errors

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))


@dataclass
class Layer:
    model: str
    name: str
    A_calib: np.ndarray
    A_eval: np.ndarray
    W: np.ndarray
    bias: np.ndarray | None


def digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    X, y = load_digits(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    clf = MLPClassifier(hidden_layer_sizes=(128, 64), random_state=0).fit(X_tr, y_tr)

    def inputs(X):
        acts = [X.astype(np.float32)]
        for W, b in zip(clf.coefs_[:-1], clf.intercepts_[:-1]):
            acts.append(np.maximum(acts[-1] @ W.astype(np.float32) + b.astype(np.float32), 0))
        return acts

    a_tr, a_te = inputs(X_tr), inputs(X_te)
    layers = [Layer("digits", f"dense{i}", a_tr[i], a_te[i], clf.coefs_[i].astype(np.float32),
                    clf.intercepts_[i].astype(np.float32)) for i in range(3)]
    return layers, clf, X_te.astype(np.float32), y_te


def ppocr(n_calib: int, n_eval: int) -> list[Layer]:
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    import ppocr_data

    path = ppocr_data.rec_model_path()
    calib_lines, eval_lines = ppocr_data.rec_lines(n_calib, n_eval, path)
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    consumers = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    layers = []
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        W = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        bias = None
        nxt = consumers.get(node.output[0], [])
        if len(nxt) == 1 and nxt[0].op_type == "Add":
            other = [n for n in nxt[0].input if n != node.output[0]]
            if other and other[0] in inits:
                b = numpy_helper.to_array(inits[other[0]]).astype(np.float32)
                bias = b if b.shape == (W.shape[1],) else None
        layers.append((node.name, node.input[0], W, bias))
    for _, name, _, _ in layers:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name

    def capture(lines, seed):
        batches = ppocr_data.make_rec_set(lines, seed=seed).batches
        outs = [session.run([n for _, n, _, _ in layers], {feed: b}) for b in batches]
        return [np.concatenate([o[i].reshape(-1, o[i].shape[-1]) for o in outs]) for i in range(len(layers))]

    calib, evals = capture(calib_lines, 0), capture(eval_lines, 1)
    return [Layer("ppocr-rec", name, calib[i], evals[i], W, b) for i, (name, _, W, b) in enumerate(layers)]


def nmse_eval(layer, A, W, b) -> tuple[float, float]:
    """(float, int8) NMSE of the layer on rows A."""
    b32 = np.zeros(W.shape[1], dtype=np.float32) if b is None else np.asarray(b, dtype=np.float32)
    sse = heldout_errors(A, layer.encode(A), np.asarray(W, dtype=np.float32), b32, layer.lut, layer.lut_bias, layer)
    return sse["float"] / sse["ss"], sse["int8"] / sse["ss"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="C=32 only, fewer text lines")
    ap.add_argument("--calib-lines", type=int, default=200)
    ap.add_argument("--eval-lines", type=int, default=60)
    ap.add_argument("--skip-ppocr", action="store_true")
    args = ap.parse_args()
    logging.getLogger("halut_onnx").setLevel(logging.ERROR)  # the table marks report warnings with "!"
    Cs = (32,) if args.quick else (16, 32, 64)
    if args.quick:
        args.calib_lines, args.eval_lines = min(args.calib_lines, 60), min(args.eval_lines, 20)

    learn_layer(np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32), np.eye(8, dtype=np.float32),
                options=LearnOptions(codebooks=2, encoder="tree"))  # compile / load the numba kernels
    learn_layer(np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32), np.eye(8, dtype=np.float32),
                options=LearnOptions(codebooks=2, encoder="pq"))

    dl, clf, X_te, y_te = digits()
    layers = list(dl)
    if not args.skip_ppocr:
        layers += ppocr(args.calib_lines, args.eval_lines)

    head = (f"{'model':<10}{'layer':<10}{'D':>4}{'M':>6}{'rows':>7}{'eval':>6}{'C':>4} {'enc':<5}"
            f"{'train':>8}{'heldout':>9}{'held i8':>9}{'eval':>9}{'eval i8':>9}{'ridge':>9}{'sec':>6}")
    print(head)
    print("-" * len(head))
    results = {}
    learned = {}
    for L in layers:
        D, M = L.W.shape
        for C in Cs:
            if C > D:
                continue
            for enc in ("tree", "pq"):
                t = time.perf_counter()
                h = learn_layer(L.A_calib, L.W, L.bias, LearnOptions(codebooks=C, encoder=enc))
                sec = time.perf_counter() - t
                ev, ev8 = nmse_eval(h, L.A_eval, L.W, L.bias)
                r = h.report
                results[(L.model, L.name, C, enc)] = (r.heldout_nmse, ev, ev8)
                learned[(L.model, L.name, C, enc)] = h
                warn = " !" if r.warnings else ""
                print(f"{L.model:<10}{L.name:<10}{D:>4}{M:>6}{len(L.A_calib):>7}{len(L.A_eval):>6}{C:>4} {enc:<5}"
                      f"{r.train_nmse:>8.4f}{r.heldout_nmse:>9.4f}{r.heldout_nmse_int8:>9.4f}{ev:>9.4f}{ev8:>9.4f}"
                      f"{r.ridge:>9.3g}{sec:>6.1f}{warn}", flush=True)

    print("\nrows: calibration rows (80 % train, 20 % held out by learn_layer); eval: rows of other samples/lines;"
          " ! = report warning (too few rows)")
    print("\nSummary: eval NMSE (float LUT), geometric mean over layers, and layers where pq beats tree")
    for model in dict.fromkeys(L.model for L in layers):
        for C in Cs:
            keys = [(m, n) for (m, n, c, e) in results if m == model and c == C and e == "tree"]
            if not keys:
                continue
            tree = np.array([results[(m, n, C, "tree")][1] for m, n in keys])
            pq = np.array([results[(m, n, C, "pq")][1] for m, n in keys])
            tree8 = np.array([results[(m, n, C, "tree")][2] for m, n in keys])
            pq8 = np.array([results[(m, n, C, "pq")][2] for m, n in keys])
            gm = lambda v: float(np.exp(np.mean(np.log(v))))  # noqa: E731
            print(f"  {model:<10} C={C:<3} tree {gm(tree):.4f} (int8 {gm(tree8):.4f})  pq {gm(pq):.4f} "
                  f"(int8 {gm(pq8):.4f})  pq better on {int(np.sum(pq < tree))}/{len(keys)} layers")

    # End to end on digits: all three layers replaced, each fed the previous Halut layer's output.
    print("\ndigits test accuracy, all three layers replaced (int8 lookups):")
    print(f"  fp32 {np.mean(clf.predict(X_te) == y_te):.4f}")
    for C in Cs:
        for enc in ("tree", "pq"):
            x = X_te
            for i in range(3):
                h = learned.get(("digits", f"dense{i}", C, enc))
                if h is None:
                    break
                x = h.forward(x)
                x = np.maximum(x, 0) if i < 2 else x
            else:
                print(f"  C={C:<3} {enc:<5}{np.mean(x.argmax(axis=1) == y_te):.4f}")


if __name__ == "__main__":
    main()
