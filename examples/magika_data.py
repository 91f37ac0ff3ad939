"""Google's Magika file-type model (the ONNX model the ``magika`` package ships) and real files to run it on.

Magika reads up to 4 KiB from each end of a file, strips whitespace, keeps ``beg_size`` bytes from the start and
``end_size`` from the end (padded with ``padding_token``), and classifies the 2048 byte values into one of 214
content types. The model (``standard_v3_3``, exported from JAX through jax2tf) is an embedding MatMul (257 -> 64
per byte), one large convolution (1280 -> 512, kernel 5 over 512 positions) and a dense classifier (512 -> 214).

The files are this machine's own: the Python installation and, where they exist, ``/usr/share``, ``/usr/include``
and ``/usr/lib`` (source, bytecode, shared objects, compressed archives, images, documentation...). They are
deduplicated by their features, at most ``per_type`` per file extension so that no one type dominates, and split
into calibration and evaluation by a hash of their features: the same file is on the same side on every machine.
The figures therefore differ a little between machines; within one machine they are fixed.

The metric is top-1 agreement with the original model: the share of files the converted model gives the label
Magika itself would give (before Magika's own thresholds and overrides, which act on the model's label and score).
"""

from __future__ import annotations

import json
import os
import sys
import sysconfig
import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

INPUT = "bytes"
OUTPUT = "target_label"
MODEL_NAME = "standard_v3_3"
SYSTEM_ROOTS = ("/usr/share", "/usr/include", "/usr/lib")


@dataclass(frozen=True)
class Config:
    """The feature extraction settings in the model's ``config.min.json``."""

    beg_size: int
    end_size: int
    padding_token: int
    block_size: int
    min_file_size_for_dl: int
    labels: tuple[str, ...]


def model_dir() -> Path:
    import magika

    folder = Path(magika.__file__).resolve().parent / "models" / MODEL_NAME
    if not (folder / "model.onnx").is_file():
        raise FileNotFoundError(f"{folder / 'model.onnx'}: not in the installed magika package (pip install magika)")
    return folder


def model_path() -> Path:
    return model_dir() / "model.onnx"


def load_config() -> Config:
    raw = json.loads((model_dir() / "config.min.json").read_text())
    if raw["mid_size"] != 0 or raw["use_inputs_at_offsets"]:
        raise ValueError(f"{MODEL_NAME}: features from the middle or at offsets are not implemented here")
    return Config(raw["beg_size"], raw["end_size"], raw["padding_token"], raw["block_size"],
                  raw["min_file_size_for_dl"], tuple(raw["target_labels_space"]))


def features(path: Path, config: Config) -> np.ndarray | None:
    """The model input of one file as Magika computes it (magika.Magika._extract_features_from_seekable), or None
    for a file Magika labels without its model (too few bytes left after stripping whitespace)."""
    size = path.stat().st_size
    if size < config.min_file_size_for_dl:
        return None
    block = min(config.block_size, size)
    with open(path, "rb") as stream:
        beg = stream.read(block).lstrip()[: config.beg_size]
        stream.seek(size - block)
        end = stream.read(block).rstrip()
        end = end[len(end) - min(len(end), config.end_size):]
    pad = config.padding_token
    row = np.full(config.beg_size + config.end_size, pad, dtype=np.int32)
    row[: len(beg)] = np.frombuffer(beg, dtype=np.uint8)
    row[len(row) - len(end):] = np.frombuffer(end, dtype=np.uint8)
    if row[config.min_file_size_for_dl - 1] == pad:
        return None
    return row


def extension_labels(config: Config) -> dict[str, int]:
    """Extension -> model label index, for the extensions that Magika's content-type knowledge base gives exactly
    one of the model's labels (``py`` -> python, ``gz`` -> gzip; not ``txt``, which four labels claim)."""
    import magika

    kb = json.loads((Path(magika.__file__).resolve().parent / "config" / "content_types_kb.min.json").read_text())
    index = {label: k for k, label in enumerate(config.labels)}
    claims: dict[str, list[int]] = defaultdict(list)
    for label, info in kb.items():
        if label in index:
            for ext in info.get("extensions", []):
                claims[ext.lower()].append(index[label])
    return {ext: labels[0] for ext, labels in claims.items() if len(labels) == 1}


def candidate_files(roots: Iterable[Path]) -> list[Path]:
    """Regular files (no links) under the roots, in a fixed order."""
    found = []
    for root in roots:
        for folder, dirs, names in os.walk(root):
            dirs.sort()
            for name in sorted(names):
                path = Path(folder) / name
                if not path.is_symlink() and path.is_file() and os.access(path, os.R_OK):
                    found.append(path)
    return found


def python_library() -> Path:
    """The standard library's folder (with site-packages inside it on some installs): varied files every machine
    with Python has, the quick runs' data."""
    return Path(sysconfig.get_paths()["stdlib"])


def default_roots() -> list[Path]:
    roots = {Path(sys.base_prefix) / "lib", Path(sys.prefix) / "lib"}
    roots |= {Path(r) for r in SYSTEM_ROOTS if Path(r).is_dir()}
    # a root inside another would count its files twice
    return sorted(r for r in roots if r.is_dir() and not any(o != r and o in r.parents for o in roots))


@dataclass
class Corpus:
    calib: np.ndarray  # [files, 2048] int32
    evaluation: np.ndarray
    eval_paths: list[Path]

    def truth(self, config: Config) -> np.ndarray:
        """Per evaluation file the index of the one model label its extension names, or -1 where the extension
        names none or several (Magika's knowledge base maps content types to extensions)."""
        labels = extension_labels(config)
        return np.array([labels.get(p.suffix.lower().lstrip("."), -1) for p in self.eval_paths])


def make_corpus(calib_files: int, eval_files: int, roots: Sequence[Path] | None = None, per_type: int = 100,
                eval_share: float = 0.5) -> Corpus:
    """Distinct files by features, at most ``per_type`` per extension, split by the features' CRC-32: a file whose
    hash falls below ``eval_share`` is an evaluation file. Takes the first ``calib_files`` / ``eval_files`` of each
    side in hash order (a deterministic sample across extensions)."""
    config = load_config()
    # (digest, path) only: the features of the few files kept are read again at the end
    by_type: dict[str, list[tuple[int, Path]]] = defaultdict(list)
    seen = set()
    for path in candidate_files(roots or default_roots()):
        try:
            row = features(path, config)
        except OSError:
            continue
        if row is None:
            continue
        digest = zlib.crc32(row.tobytes())
        if digest in seen:
            continue
        seen.add(digest)
        by_type[path.suffix.lower()].append((digest, path))
    kept = []
    for entries in by_type.values():
        entries.sort(key=_order)
        kept += entries[:per_type]
    kept.sort(key=_order)
    threshold = eval_share * 2**32
    evaluation = [e for e in kept if e[0] < threshold][:eval_files]
    calib = [e for e in kept if e[0] >= threshold][:calib_files]
    if len(calib) < calib_files or len(evaluation) < eval_files:
        raise ValueError(f"only {len(calib)} calibration and {len(evaluation)} evaluation files found under "
                         f"{', '.join(map(str, roots or default_roots()))}; asked for {calib_files} and {eval_files}")
    width = config.beg_size + config.end_size

    def rows(entries) -> np.ndarray:
        return np.array([features(path, config) for _, path in entries], np.int32).reshape(-1, width)

    return Corpus(rows(calib), rows(evaluation), [path for _, path in evaluation])


def _order(entry) -> int:
    """A second hash of the features: which files a type keeps, and in which order, independent of the split."""
    return zlib.crc32(entry[0].to_bytes(4, "little"), 1)


def labels_of(session, rows: np.ndarray, batch: int = 256) -> np.ndarray:
    """The model's top-1 label index per row."""
    out = [session.run([OUTPUT], {INPUT: rows[k : k + batch]})[0].argmax(axis=1) for k in range(0, len(rows), batch)]
    return np.concatenate(out)
