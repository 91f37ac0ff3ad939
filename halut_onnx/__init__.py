"""halut-onnx: learned table-lookup (MADDNESS / Halut) replacement of MatMul, Gemm and Conv in ONNX models."""

from importlib.metadata import PackageNotFoundError, version

from .library import get_library_path, session_options

try:
    __version__ = version("halut-onnx")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "get_library_path", "session_options"]
