"""Google's Magika file-type model (a production model shipped in the ``magika`` package, exported from JAX):
convert its three layers and compare the labels it gives real files.

    python examples/magika_filetype.py [--out DIR] [--quick] [--calib 1024] [--eval 2000] [--root DIR ...]

The files are this machine's own (examples/magika_data.py: the Python installation, /usr/share, /usr/include,
/usr/lib; ``--root`` replaces them), deduplicated, at most 100 per extension, split by content hash into
calibration and evaluation files. Two figures per setting: top-1 **agreement** with the original model's label,
and **accuracy** against the file's extension, on the evaluation files whose extension names exactly one of the
model's labels (Magika's own knowledge base: ``.py`` -> python, ``.gz`` -> gzip). ``--quick`` runs the default
setting on 256 calibration and 256 evaluation files of Python's standard library folder (for tests).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import example_tools as tools  # noqa: E402
import magika_data as data  # noqa: E402

CALIB_BATCH = 64
SETTINGS_FULL = [("default", []), ("--encoder tree", ["--encoder", "tree"]), ("-C 128", ["-C", "128"]),
                 ("-C 256", ["-C", "256"]),
                 # by time no layer fits: the embedding is lossless but no faster, the conv too lossy
                 ("--budget agreement=0.99 --objective macs", ["--budget", "agreement=0.99", "--objective", "macs"])]
SETTINGS_QUICK = [("default", [])]


def run(out: Path, quick: bool, calib_files: int, eval_files: int, roots: list[Path] | None) -> list[list[str]]:
    out.mkdir(parents=True, exist_ok=True)
    config = data.load_config()
    corpus = data.make_corpus(calib_files, eval_files, roots)
    tools.write_batches(out / "calib", data.INPUT, corpus.calib, CALIB_BATCH)
    truth = corpus.truth(config)
    known = truth >= 0
    original = data.model_path()
    reference = data.labels_of(tools.session(original), corpus.evaluation)
    print(f"{len(corpus.calib)} calibration, {len(corpus.evaluation)} evaluation files; "
          f"{int(known.sum())} of them with an extension that names one label; "
          f"the original labels {len(set(reference.tolist()))} distinct types among them")

    def row(label: str, layers: object, labels: np.ndarray) -> list[str]:
        return [label, str(layers), f"{100 * np.mean(labels == reference):.2f}",
                f"{100 * np.mean(labels[known] == truth[known]):.2f}"]

    rows = [row("original", "-", reference)]
    for label, options in SETTINGS_QUICK if quick else SETTINGS_FULL:
        slug = label.strip("-").replace(" ", "_").replace("=", "")
        converted = tools.convert(original, out / "calib", out / f"magika.{slug}.onnx", options)
        labels = data.labels_of(tools.session(converted, halut=True), corpus.evaluation)
        rows.append(row(label, tools.converted_layers(converted), labels))
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for models and data (default: a temp dir)")
    parser.add_argument("--quick", action="store_true",
                        help="default setting, 256 + 256 files of Python's standard library")
    parser.add_argument("--calib", type=int, default=None, help="calibration files (default 1024; quick 256)")
    parser.add_argument("--eval", type=int, default=None, help="evaluation files (default 2000; quick 256)")
    parser.add_argument("--root", type=Path, action="append", default=None,
                        help="folder to take files from (repeatable; default: the Python installation and system "
                             "folders)")
    args = parser.parse_args(argv)
    roots = args.root or ([data.python_library()] if args.quick else None)
    calib = args.calib or (256 if args.quick else 1024)
    evaluation = args.eval or (256 if args.quick else 2000)
    with tempfile.TemporaryDirectory() as tmp:
        rows = run(args.out or Path(tmp), args.quick, calib, evaluation, roots)
    print(f"Halut custom-op library: {tools.library_status()}")
    print(tools.format_table(["setting", "layers converted", "agreement %", "extension accuracy %"], rows))


if __name__ == "__main__":
    main()
