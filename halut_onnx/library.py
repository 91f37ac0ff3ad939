"""Locating the custom-op library and registering it with onnxruntime (the onnxruntime-extensions convention)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

_NAMES = {"linux": "libhalut_ops.so", "darwin": "libhalut_ops.dylib", "win32": "halut_ops.dll"}


def get_library_path() -> str:
    """Absolute path of the Halut custom-op library built and installed with this package.

    ``HALUT_ONNX_LIBRARY`` overrides it (a library built by hand with CMake, for example).
    """
    override = os.environ.get("HALUT_ONNX_LIBRARY")
    if override:
        if not Path(override).is_file():
            raise FileNotFoundError(f"HALUT_ONNX_LIBRARY points to {override}, which is not a file")
        return str(Path(override).resolve())
    name = _NAMES.get(sys.platform, "libhalut_ops.so")
    # An editable install keeps the Python sources here and the built library in site-packages: search both.
    import halut_onnx

    for folder in list(getattr(halut_onnx, "__path__", [])) + [str(Path(__file__).parent)]:
        candidate = Path(folder) / name
        if candidate.is_file():
            return str(candidate.resolve())
    raise FileNotFoundError(
        f"the Halut custom-op library {name} was not found next to the halut_onnx package; "
        "reinstall with `pip install -e .` so that its C++ library is built"
    )


def session_options(options=None):
    """``onnxruntime.SessionOptions`` with the Halut custom-op library registered (a new object unless given one)."""
    import onnxruntime as ort

    options = options if options is not None else ort.SessionOptions()
    options.register_custom_ops_library(get_library_path())
    return options
