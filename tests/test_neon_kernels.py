"""The AArch64 NEON kernels (custom_ops/src/cpu/neon.cc) against halut_onnx.reference, bit for bit, on an x86-64
machine: cross-compiled with tests/neon/harness.cc and run under qemu-aarch64. Also the whole library's aarch64
build. Skipped where the cross toolchain is missing (`apt install g++-aarch64-linux-gnu qemu-user`); on an AArch64
machine the ISA-parametrized tests (tests/test_ops_kernels.py, "neon") run the kernels natively instead."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from ops_models import lookup_weights, pq_weights, tree_weights

from halut_onnx import reference

ROOT = Path(__file__).resolve().parent.parent
CXX, QEMU = shutil.which("aarch64-linux-gnu-g++"), shutil.which("qemu-aarch64")
pytestmark = pytest.mark.skipif(not (CXX and QEMU), reason="needs aarch64-linux-gnu-g++ and qemu-aarch64 "
                                "(apt install g++-aarch64-linux-gnu qemu-user)")
# The library's flags (custom_ops/CMakeLists.txt): no contraction into FMA, which AArch64 has in its baseline.
FLAGS = ["-std=c++17", "-O3", "-ffp-contract=off", "-fno-fast-math", "-Wall", "-Wextra", "-Werror"]


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Path:
    exe = tmp_path_factory.mktemp("neon") / "harness"
    cpu = ROOT / "custom_ops" / "src" / "cpu"
    sources = [ROOT / "tests" / "neon" / "harness.cc", cpu / "neon.cc", cpu / "scalar.cc", cpu / "pack.cc"]
    subprocess.run([CXX, *FLAGS, "-static", "-o", str(exe), *map(str, sources)], check=True)
    return exe


def _run(harness: Path, op: int, sizes: tuple, arrays: list, dtype, shape) -> np.ndarray:
    blob = np.array([op, *sizes], np.int64).tobytes() + b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)
    out = subprocess.run([QEMU, str(harness)], input=blob, capture_output=True, check=True).stdout
    return np.frombuffer(out, dtype).reshape(shape)


def encode_pq(harness, X, w):
    (rows, D), C = X.shape, w["biases"].shape[0]
    return _run(harness, 1, (rows, D, C), [X, w["vectors"], w["biases"]], np.uint8, (rows, C))


def lookup(harness, codes, w):
    (rows, C), M = codes.shape, w["lut"].shape[0]
    return _run(harness, 2, (rows, M, C), [codes, w["lut"], w["scale"], w["offset"]], np.float32, (rows, M))


def encode_tree(harness, X, w):
    (rows, D), C = X.shape, w["split_dims"].shape[0]
    return _run(harness, 3, (rows, D, C), [X, w["split_dims"], w["thresholds"]], np.uint8, (rows, C))


# (rows, D, C): a single row, rows off the 4-row groups, D % C != 0, C == D, C = 1, C past 256
@pytest.mark.parametrize("rows,D,C", [(1, 32, 8), (7, 50, 16), (130, 64, 32), (9, 24, 24), (5, 10, 1),
                                      (6, 300, 300)])
def test_encode_pq(harness, rng, rows, D, C):
    X = rng.standard_normal((rows, D)).astype(np.float32)
    X.reshape(-1)[rng.integers(0, X.size, max(1, X.size // 50))] = 0.0
    w = pq_weights(rng, D, C)
    np.testing.assert_array_equal(encode_pq(harness, X, w), reference.encode_pq(X, w["vectors"], w["biases"]))


def test_encode_pq_nan_inf_and_ties_follow_the_scan(harness):
    """Equal scores go to the lowest index (also +0 against -0); a NaN never wins; a NaN at prototype 0 keeps 0."""
    D = 4
    vectors = np.zeros((16, D), np.float32)
    biases = np.array([[5, 3, 3, 7, np.nan, 1, 1, 2, 9, 9, 9, 9, 9, 9, 9, 9],
                       [np.nan, 0, -1, -2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                       [1, 0.0, -0.0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
                       [np.inf, np.inf, np.nan, np.inf, np.inf, np.inf, np.inf, np.inf, np.inf, np.inf, np.inf,
                        np.inf, np.inf, np.inf, -np.inf, -np.inf]], np.float32)
    X = np.ones((3, D), np.float32)
    w = {"vectors": vectors, "biases": biases}
    got = encode_pq(harness, X, w)
    np.testing.assert_array_equal(got, reference.encode_pq(X, vectors, biases))
    np.testing.assert_array_equal(got[0], [5, 0, 1, 14])


# (rows, C, M): blocks of 16 rows and groups of 4 outputs cut anywhere, C not a multiple of 4, C past the int16
# chunk of 256 codebooks, more rows than one call takes (the harness cuts them as the host layer does)
@pytest.mark.parametrize("rows,C,M", [(1, 8, 33), (17, 16, 7), (130, 32, 64), (5, 5, 19), (64, 1, 1),
                                      (70, 300, 17), (600, 33, 24), (16, 512, 5)])
def test_lookup(harness, rng, rows, C, M):
    codes = rng.integers(0, 256, size=(rows, C), dtype=np.uint8)  # high bits set: only code & 15 may count
    w = lookup_weights(rng, M, C)
    got = lookup(harness, codes, w)
    expected = reference.lookup(codes, w["lut"], w["scale"], w["offset"])
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))


def test_lookup_extreme_tables_are_exact(harness, rng):
    """All -128 or all 127 over 256 and 300 codebooks: the int16 chunk sums reach -32768 and must not wrap."""
    for C in (256, 300):
        M = 20
        lut = np.full((M, C, 16), -128, dtype=np.int8)
        lut[M // 2 :] = 127
        w = {"lut": lut, "scale": np.ones(M, np.float32), "offset": np.zeros(M, np.float32)}
        got = lookup(harness, rng.integers(0, 16, size=(40, C), dtype=np.uint8), w)
        np.testing.assert_array_equal(got[:, : M // 2], -128.0 * C)
        np.testing.assert_array_equal(got[:, M // 2 :], 127.0 * C)


def test_encode_tree(harness, rng):
    """The scalar trees, as the NEON kernel set uses them, compiled for AArch64: NaN goes left, ties go left."""
    X = rng.standard_normal((37, 40)).astype(np.float32)
    X[::5, ::3] = np.nan
    w = tree_weights(rng, 40, 7)
    w["thresholds"][:, 0] = 0.0
    X[:, w["split_dims"][:, 0]] = np.where(rng.random((37, 7)) < 0.3, 0.0, X[:, w["split_dims"][:, 0]])
    np.testing.assert_array_equal(encode_tree(harness, X, w),
                                  reference.encode_tree(X, w["split_dims"], w["thresholds"]))


def test_the_library_builds_for_aarch64(tmp_path):
    """The package's CMake build, cross-compiled (no CUDA): neon.cc in, the x86 kernels out, no warnings."""
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake not found")
    build = tmp_path / "build"
    configure = [cmake, "-S", str(ROOT / "custom_ops"), "-B", str(build), "-DCMAKE_SYSTEM_NAME=Linux",
                 "-DCMAKE_SYSTEM_PROCESSOR=aarch64", f"-DCMAKE_CXX_COMPILER={CXX}", "-DHALUT_ONNX_CUDA=OFF",
                 "-DCMAKE_CXX_FLAGS=-Werror"]
    subprocess.run(configure, check=True, capture_output=True)
    subprocess.run([cmake, "--build", str(build), "-j", "2"], check=True, capture_output=True)
    (library,) = build.glob("libhalut_ops*.so")
    header = library.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # e_machine: EM_AARCH64
    symbols = subprocess.run([shutil.which("aarch64-linux-gnu-nm") or "nm", "-C", str(library)],
                             capture_output=True, text=True).stdout
    assert "neon_kernels" in symbols and "avx2_kernels" not in symbols
