"""The CUDA part of the library as far as a machine without a GPU can check it: the build links the CUDA runtime
statically (the library loads without a driver or toolkit, which the rest of the suite exercises), the CUDA op
records are compiled in when nvcc was found, and the kernels' launch geometry holds for every shape class."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import halut_onnx

ROOT = Path(__file__).resolve().parent.parent


def _library_has_cuda() -> bool:
    return b"CUDAExecutionProvider" in Path(halut_onnx.get_library_path()).read_bytes()


def test_cuda_runtime_is_linked_statically():
    """No libcudart / libcuda among the library's dependencies: machines without CUDA still load it."""
    if not _library_has_cuda():
        pytest.skip("the library was built without the CUDA kernels (HALUT_ONNX_CUDA=OFF or no nvcc)")
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf not installed")
    dynamic = subprocess.run([readelf, "-d", halut_onnx.get_library_path()], capture_output=True, text=True,
                             check=True).stdout
    needed = [line.split("[", 1)[1].rstrip("]") for line in dynamic.splitlines() if "(NEEDED)" in line]
    assert needed, dynamic
    assert not [n for n in needed if "cuda" in n.lower() or "nvidia" in n.lower()], needed


def test_nvcc_builds_include_the_cuda_records():
    """The default build (HALUT_ONNX_CUDA=AUTO) compiles the CUDA kernels wherever nvcc is on PATH."""
    cache = list((ROOT / "build").glob("*/CMakeCache.txt"))
    if not cache or shutil.which("nvcc") is None:
        pytest.skip("no nvcc or no scikit-build build folder here")
    settings = cache[0].read_text()
    if "HALUT_ONNX_CUDA:STRING=OFF" in settings:
        pytest.skip("built with HALUT_ONNX_CUDA=OFF")
    assert _library_has_cuda()


def test_launch_geometry(tmp_path):
    """tests/cuda_plan_test.cc: grid limits (gridDim.y <= 65535), column coverage, shared-memory budget, thread
    layout and the rows-per-LUT-tile rule for rows 1 .. 2^31, C 1 .. 5000, M 1 .. 3072 on two device profiles."""
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    exe = tmp_path / "cuda_plan_test"
    subprocess.run([compiler, "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", "-o", str(exe),
                    str(ROOT / "tests" / "cuda_plan_test.cc")], check=True)
    result = subprocess.run([str(exe)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout


def test_gpu_check_prepares_and_passes_on_the_cpu(tmp_path):
    """benchmarks/gpu_check.py, the device check, builds its models and references and passes its own checks on
    the CPU provider (--dry-run), and fails (exit 1) when an expected output is off by one bit."""
    import sys

    import numpy as np

    folder = tmp_path / "gpu_check"
    script = str(ROOT / "benchmarks" / "gpu_check.py")
    subprocess.run([sys.executable, script, "--prepare", "--no-real-models", str(folder)], check=True,
                   capture_output=True)
    result = subprocess.run([sys.executable, script, "--dry-run", str(folder)], capture_output=True, text=True)
    assert result.returncode == 0 and "PASS: 0 failed checks" in result.stdout, result.stdout[-3000:]
    case = folder / "ops" / "002.npz"  # the first non-empty case (tree, one row)
    data = dict(np.load(case))
    data["expected"].reshape(-1)[0] ^= 1
    np.savez_compressed(case, **data)
    result = subprocess.run([sys.executable, script, "--dry-run", str(folder)], capture_output=True, text=True)
    assert result.returncode == 1 and "FAIL: 1 failed checks" in result.stdout, result.stdout[-3000:]
