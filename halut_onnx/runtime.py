"""onnxruntime sessions for the eval and bench commands: same threads and execution provider for both models, our
library when found."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import Counter
from pathlib import Path

from . import ops

log = logging.getLogger(__name__)

# --provider names and the execution providers a session asks for, in order: onnxruntime runs a node on the first
# that has a kernel for it, so with "cuda" a Halut node without a CUDA kernel falls back to the CPU.
PROVIDERS = {"cpu": ("CPUExecutionProvider",), "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider")}


def execution_providers(provider: str) -> list[str]:
    """The execution providers for ``--provider``; a one-line ValueError when this onnxruntime lacks them."""
    import onnxruntime as ort

    if provider not in PROVIDERS:
        raise ValueError(f"--provider {provider!r}: expected one of {', '.join(PROVIDERS)}")
    wanted, available = PROVIDERS[provider][0], ort.get_available_providers()
    if wanted not in available:
        raise ValueError(f"--provider {provider}: this onnxruntime ({ort.__version__}) has no {wanted}, only "
                         f"{', '.join(available)}; install onnxruntime-gpu (docs/cuda.md)")
    return list(PROVIDERS[provider])


def make_session(path: str | os.PathLike, threads: int | None = None, halut: bool = False, provider: str = "cpu",
                 profile_dir: str | os.PathLike | None = None):
    """(session, library_loaded) for the model at ``path`` on ``provider`` (a PROVIDERS name).

    With ``halut``, the Halut custom-op library is registered when it is installed; without it the converted model
    still runs, through its ONNX function fallbacks (slowly). With ``profile_dir`` the session writes an onnxruntime
    profile there. Errors loading the model are ValueErrors.
    """
    import onnxruntime as ort

    providers = execution_providers(provider)

    from .library import session_options

    def fresh():
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        if profile_dir is not None:
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(profile_dir) / "profile")
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
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime's own exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"onnxruntime cannot load {path}: {first}") from None
    return session, loaded


def halut_placement(path: str | os.PathLike, feed: dict, threads: int | None = None,
                    provider: str = "cpu") -> dict[str, int]:
    """Execution provider -> how many of the converted model's Halut nodes it ran, from one profiled run on
    ``feed`` (empty when the library is not loaded: the nodes then run as their ONNX functions' plain ops)."""
    with tempfile.TemporaryDirectory() as tmp:
        session, _ = make_session(path, threads, halut=True, provider=provider, profile_dir=tmp)
        session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    nodes = {}
    for event in events:
        args = event.get("args", {})
        if event.get("cat") == "Node" and args.get("op_name") in ops.ALL_OPS:
            nodes[event.get("name")] = args.get("provider", "?")
    return dict(Counter(nodes.values()))
