"""What every example does the same way: call the halut-onnx command line, open converted models in onnxruntime,
count converted layers, print an aligned table."""

from __future__ import annotations

import dataclasses
import functools
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from halut_onnx.ops import DOMAIN as HALUT_DOMAIN
from halut_onnx.ops import LOOKUP, LOOKUP_CONV


def halut_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``halut-onnx ARGS`` with this interpreter (so the example uses the halut_onnx it imports)."""
    command = [sys.executable, "-m", "halut_onnx.cli", *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"halut-onnx {' '.join(args)} failed ({result.returncode}):\n{result.stderr.strip()}")
    return result


def convert(model: Path, calib: Path, out: Path, options: Sequence[str] = ()) -> Path:
    halut_cli(*convert_args(model, calib, out, options))
    return out


def convert_args(model: Path, calib: Path, out: Path, options: Sequence[str]) -> tuple[str, ...]:
    """``halut_cli``'s arguments for converting ``model`` with ``options``, without progress bars."""
    return ("convert", str(model), "--calib", str(calib), "-o", str(out), "--no-progress", *options)


NO_LAYER_FITS = "Error: no layer can be converted within --budget"


def convert_setting(model: Path, calib: Path, out: Path, options: Sequence[str]) -> Path | None:
    """``convert``, or None where the options' ``--budget`` fits no layer (halut-onnx then writes nothing and says
    why, which is printed): the model stays as it is, a result to report."""
    result = halut_cli(*convert_args(model, calib, out, options), check=False)
    if result.returncode == 0:
        return out
    last = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""  # after the learning's warnings
    if "--budget" in options and last.startswith(NO_LAYER_FITS):
        print(f"{' '.join(options)}: {last.removeprefix('Error: ')}")
        return None
    raise RuntimeError(f"halut-onnx convert {' '.join(options)} failed ({result.returncode}):\n"
                       f"{result.stderr.strip()}")


def budgets_on(folder: Path, options: Sequence[str]) -> list[str]:
    """``options``, with ``--heldout-data folder`` where they set a ``--budget``: the digits examples measure
    their budgets on validation rows the model never saw."""
    return [*options, "--heldout-data", str(folder)] if "--budget" in options else list(options)


def float16_model(model: Path, out: Path) -> Path:
    """``model`` converted to float16 by onnxruntime's own converter into ``out``, its inputs and outputs kept
    float32 (as deployed float16 models often are)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(model), keep_io_types=True), out)
    return out


@functools.lru_cache(maxsize=1)
def library_status() -> str:
    """``"registered"`` when the Halut custom-op library loads into onnxruntime, else why not (one line)."""
    import halut_onnx

    try:
        halut_onnx.session_options()
    except FileNotFoundError as exc:
        return f"not built ({exc})"
    except Exception as exc:  # onnxruntime raises its own Fail type when the library lacks its entry points
        return f"not loadable ({str(exc).splitlines()[0]})"
    return "registered"


def session(model_path: str | Path, halut: bool = False):
    """An onnxruntime CPU session; for a converted model (``halut``) with the Halut custom-op library registered
    when it loads. Without the library a converted model runs through its model-local ONNX functions."""
    import onnxruntime as ort

    options = None
    if halut and library_status() == "registered":
        import halut_onnx

        options = halut_onnx.session_options()
    return ort.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])


def converted_layers(model_path: str | Path) -> int:
    """Number of replaced layers: one lookup node (HalutLookup or HalutLookupConv) per layer in the main graph."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return sum(node.op_type in (LOOKUP, LOOKUP_CONV) and node.domain == HALUT_DOMAIN for node in graph.node)


def matmul_layer_names(model_path: str | Path) -> list[str]:
    """Names of the MatMul / Gemm nodes whose second input is a constant (the matrix layers the pass can replace)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    constants = {init.name for init in graph.initializer}
    constants |= {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    return [node.name for node in graph.node if node.op_type in ("MatMul", "Gemm") and node.input[1] in constants]


def matmul_layers(model_path: str | Path) -> int:
    return len(matmul_layer_names(model_path))


def only_layers(names: Sequence[str]) -> list[str]:
    """``--include`` options that restrict a conversion to exactly these node names (Conv layers stay as they are)."""
    if not names or not all(names):
        raise ValueError("only_layers needs named nodes")
    return ["--include", "^(?:" + "|".join(re.escape(name) for name in names) + ")$"]


def write_batches(folder: Path, name: str, rows, batch: int) -> Path:
    """Calibration / evaluation files: ``folder/0000.npz``, ... with array ``name`` of up to ``batch`` rows each (the
    folder's old .npz files removed first)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.npz"):
        old.unlink()
    for k, start in enumerate(range(0, len(rows), batch)):
        np.savez(folder / f"{k:04d}.npz", **{name: rows[start : start + batch]})
    return folder


@dataclass(frozen=True)
class DigitsSplit:
    """scikit-learn's digits as every digits example splits them: ``fit``, the rows the model is trained on (and
    Halut learns from); ``val``, validation rows the model never sees, where the examples measure their budgets
    (``--heldout-data``: a budget holds only on data like its held-out files, docs/budget.md); ``test``, the rows
    every accuracy is reported on."""

    x_fit: np.ndarray
    x_val: np.ndarray
    x_test: np.ndarray
    y_fit: np.ndarray
    y_val: np.ndarray
    y_test: np.ndarray

    def features(self, transform) -> "DigitsSplit":
        """The same split with ``transform`` applied to each part's features."""
        return dataclasses.replace(self, x_fit=transform(self.x_fit), x_val=transform(self.x_val),
                                   x_test=transform(self.x_test))


def digits_split() -> DigitsSplit:
    """70/30 train / test, stratified (random_state=0), then the training part 80/20 into fit / validation rows
    (stratified, random_state=0): 1005 / 252 / 540 rows of 64 features, float64 in 0..16."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    features, labels = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(features, labels, test_size=0.3, random_state=0,
                                                        stratify=labels)
    x_fit, x_val, y_fit, y_val = train_test_split(x_train, y_train, test_size=0.2, random_state=0, stratify=y_train)
    return DigitsSplit(x_fit, x_val, x_test, y_fit, y_val, y_test)


def train_classifier(build, x_train, y_train, epochs: int, optimizer, schedule=None, batch: int = 64, seed: int = 0):
    """A torch classifier from ``build()``, trained by ``optimizer(parameters)`` (and ``schedule(optimizer,
    total steps)``, stepped per batch) on shuffled batches of cross-entropy; torch seed ``seed`` and one thread, so
    that the same sums run in the same order on every machine. Returns it in eval mode."""
    import torch
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net = build()
        opt = optimizer(net.parameters())
        sched = schedule(opt, epochs * -(-len(x_train) // batch)) if schedule else None
        x, y = torch.from_numpy(x_train), torch.from_numpy(y_train)
        for _ in tqdm(range(epochs), desc="training", unit="epoch", leave=False):
            order = torch.randperm(len(x))
            for start in range(0, len(x), batch):
                rows = order[start : start + batch]
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net(x[rows]), y[rows]).backward()
                opt.step()
                if sched is not None:
                    sched.step()
    finally:
        torch.set_num_threads(threads)
    return net.eval()


def convert_settings(original: Path, out: Path, settings, accuracy, original_accuracy: float,
                     eligible: int) -> list[dict]:
    """The accuracy examples' rows: ``original`` converted at each (label, options) of ``settings``, learned on
    ``out/calib`` (budgets measured on ``out/val``), scored by ``accuracy(path)``. A budget no layer fits is a row
    of 0 layers at the original's accuracy."""
    results = []
    for label, options in settings:
        slug = (label.replace("--encoder ", "").replace("-C ", "C").replace("--budget ", "")
                .replace("--objective ", "").replace("--augment ", "augment").replace(" ", "_"))
        path = convert_setting(original, out / "calib", out / f"{original.stem}.{slug}.onnx",
                               budgets_on(out / "val", options))
        acc = original_accuracy if path is None else accuracy(path)
        layers = 0 if path is None else converted_layers(path)
        results.append({"setting": label, "layers": f"{layers} of {eligible}", "original": original_accuracy,
                        "converted": acc, "drop": original_accuracy - acc})
    return results


def accuracy_example_main(description: str, run, argv=None, extra: dict | None = None) -> None:
    """The command line of the accuracy examples: ``[--out DIR] [--quick] [--seed N]`` and the options of ``extra``
    (flag -> ``add_argument`` keywords with a ``dest``), then ``run(out, quick, seed, **extra values)``'s results
    (dicts of setting, layers, original, converted, drop) as a table."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=None, help="folder for models and data (default: a temp dir)")
    parser.add_argument("--quick", action="store_true", help="a few settings only, the ones the tests run")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the model's training (the data split stays): another model of the same kind")
    for flag, options in (extra or {}).items():
        parser.add_argument(flag, **options)
    args = parser.parse_args(argv)
    values = {options["dest"]: getattr(args, options["dest"]) for options in (extra or {}).values()}
    with tempfile.TemporaryDirectory() as tmp:
        results = run(args.out or Path(tmp), args.quick, args.seed, **values)
    print(f"Halut custom-op library: {library_status()}")
    print(format_table(
        ["setting", "layers converted", "acc original %", "acc converted %", "drop (points)"],
        [[r["setting"], r["layers"], f"{100 * r['original']:.2f}", f"{100 * r['converted']:.2f}",
          f"{100 * r['drop']:.2f}"] for r in results],
    ))


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """An aligned text table: text columns left-aligned, numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[k]) for row in cells) for k in range(len(headers))]
    numeric = [all(_is_number(row[k]) for row in cells[1:]) for k in range(len(headers))]
    lines = []
    for i, row in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if numeric[k] else c.ljust(w) for k, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _is_number(text: str) -> bool:
    try:
        float(text.rstrip("%"))
    except ValueError:
        return False
    return True
