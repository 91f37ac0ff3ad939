"""onnxruntime sessions for the eval and bench commands: same threads for both models, our library when found."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def make_session(path: str | os.PathLike, threads: int | None = None, halut: bool = False):
    """(session, library_loaded) for the model at ``path``.

    With ``halut``, the Halut custom-op library is registered when it is installed; without it the converted model
    still runs, through its ONNX function fallbacks (slowly). Errors loading the model are ValueErrors.
    """
    import onnxruntime as ort

    from .library import session_options

    def fresh():
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        return options

    options = fresh()
    loaded = False
    if halut:
        try:
            session_options(options)
            loaded = True
        except Exception as exc:  # not found, or onnxruntime refused to load it
            log.warning("%s; running the Halut ops through their ONNX function fallbacks",
                        str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
            options = fresh()
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"onnxruntime cannot load {path}: {first}") from None
    return session, loaded
