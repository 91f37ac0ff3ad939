"""halut-onnx: learned table-lookup (MADDNESS / Halut) replacement of MatMul, Gemm and Conv in ONNX models."""

from importlib.metadata import PackageNotFoundError, version

from .library import get_library_path, session_options

try:
    __version__ = version("halut-onnx")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["ConvertOptions", "__version__", "convert_model", "get_library_path", "session_options"]


def __getattr__(name: str):
    # The conversion API pulls in onnx and onnx-graphsurgeon: import it on first use, so that registering the
    # custom-op library with onnxruntime stays a light import.
    if name in ("convert_model", "ConvertOptions"):
        from . import convert

        return getattr(convert, name)
    raise AttributeError(f"module 'halut_onnx' has no attribute {name!r}")
