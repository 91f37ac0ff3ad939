"""Reading and writing model files: clear errors for files that are not ONNX models, atomic writes, and the opset
upgrade of models older than the rewrite can work in."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from .errors import ConversionError, ModelFileError

log = logging.getLogger(__name__)

#: above this many bytes a model is written with its tensors in an external data file (protobuf's 2 GiB limit)
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**24


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """The model at ``path`` (with its external data), or a ModelFileError saying why it cannot be read."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file {path} does not exist")
    if not path.is_file():
        raise ModelFileError(f"{path} is not a file")
    try:
        model = onnx.load(str(path))
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"{path} is not an ONNX model ({first})") from None
    # Protobuf parses many non-model byte strings without complaint: a model has an IR version and a graph.
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise ModelFileError(f"{path} is not an ONNX model (no IR version or no graph)")
    return model


#: the default-domain opset an older model is upgraded to: the first with Unsqueeze / Squeeze axes as inputs
UPGRADE_OPSET = 13


def default_opset(model: onnx.ModelProto) -> int:
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def with_min_opset(model: onnx.ModelProto, minimum: int, source: str) -> onnx.ModelProto:
    """``model`` when its default-domain opset is at least ``minimum``; else the model upgraded to UPGRADE_OPSET by
    onnx's version converter (models exported years ago, opset 7-10, still work: the converted model carries the
    new opset), or a ConversionError when the converter cannot."""
    opset = default_opset(model)
    if opset >= minimum:
        return model
    try:
        upgraded = onnx.version_converter.convert_version(model, UPGRADE_OPSET)
    except Exception as exc:  # the converter raises its own C++ error types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(f"{source} imports default-domain opset {opset}; halut-onnx needs opset >= {minimum} "
                              f"and onnx's version converter could not upgrade it to {UPGRADE_OPSET}: {first}") from None
    log.warning("%s imports default-domain opset %d, older than the %d the rewrite needs: upgraded to opset %d with "
                "onnx's version converter (the converted model has opset %d)", source, opset, minimum, UPGRADE_OPSET,
                UPGRADE_OPSET)
    return upgraded


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    a, b = Path(a), Path(b)
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def save_model_atomic(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write ``model`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    A reader never sees a half-written model. A model over ~2 GiB keeps its tensors in ``<name>.data`` beside it
    (that file is written first; the model file, which points to it, appears last).
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ModelFileError(f"output folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if model.ByteSize() > EXTERNAL_DATA_THRESHOLD:
            large = onnx.ModelProto()
            large.CopyFrom(model)
            onnx.save_model(large, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=f"{path.name}.data", size_threshold=1024)
        else:
            onnx.save_model(model, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
