"""The CUDA kernels' own code run on the CPU, against halut_onnx.reference bit for bit.

No GPU here, so tests/cuda_emu/ compiles the kernels of custom_ops/src/cuda/halut_cuda.cu (extracted verbatim) with
a shim that gives the CUDA built-ins C++ meanings (a std::thread per CUDA thread, std::barrier for __syncthreads,
the launch plans of launch_plan.h) and calls them through ctypes with the device layouts the host layer uploads
(code-major biased LUT, [C][16] thresholds, [D][16] vectors). This checks the kernels' indexing, tiling, shared-tile
layouts, 16-bit-lane sums and conv patch arithmetic; it cannot check what only a GPU has (warp timing, memory
model, real shared-memory limits, onnxruntime's CUDA provider): docs/cuda.md, "What still needs a GPU run".

test_kernels_under_address_sanitizer runs this whole file again with the kernels built with AddressSanitizer
(libasan preloaded into a child interpreter), so a kernel reading or writing past a buffer it was given (codes, X,
the LUT, scale / offset, Y) fails there instead of corrupting memory silently on a GPU.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conv_models import GEOMETRIES, geometry_kwargs, random_geometry
from ops_models import lookup_weights, pq_weights, tree_weights
from test_ops_kernels import ENCODE_SHAPES

from halut_onnx import reference

ROOT = Path(__file__).resolve().parent.parent
H100_SMEM, TINY_SMEM = 227 * 1024, 1024  # the tiny opt-in forces the global-memory LUT paths
P = ctypes.c_void_p
I64, I32 = ctypes.c_int64, ctypes.c_int32
SANITIZE = "HALUT_EMU_ASAN"  # set by test_kernels_under_address_sanitizer for its child run


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    folder = tmp_path_factory.mktemp("cuda_emu")
    source = (ROOT / "custom_ops" / "src" / "cuda" / "halut_cuda.cu").read_text()
    start, end = source.index("// ---- encode: tree"), source.index("bool aligned(")
    (folder / "kernels.inc").write_text(source[start:end])
    library = folder / "libemu.so"
    sanitize = ["-fsanitize=address", "-fno-omit-frame-pointer"] if os.environ.get(SANITIZE) else []
    cmd = [compiler, "-std=c++20", "-O1", *sanitize, "-ffp-contract=off", "-fPIC", "-shared", "-pthread", f"-I{folder}",
           f"-I{ROOT / 'tests' / 'cuda_emu' / 'fake'}", f"-I{ROOT / 'tests' / 'cuda_emu'}",
           f"-I{ROOT / 'custom_ops' / 'src' / 'cuda'}", "-o", str(library), str(ROOT / "tests" / "cuda_emu" / "emu.cc")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 and "barrier" in result.stderr:
        pytest.skip("the C++ compiler lacks C++20 <barrier>")
    assert result.returncode == 0, result.stderr[-3000:]
    lib = ctypes.CDLL(str(library))
    lib.emu_encode_tree.argtypes = [P, I64, I64, P, P, I32, P]
    lib.emu_encode_pq.argtypes = [P, I64, P, P, P, I32, I64, P]
    lib.emu_encode_tree_conv.argtypes = [P, P, P, P, I32, P]
    lib.emu_encode_pq_conv.argtypes = [P, P, P, P, P, I32, I64, P]
    lib.emu_lookup.argtypes = [P, I64, P, P, P, I32, I32, I32, P, ctypes.c_int]
    lib.emu_lookup_nchw.argtypes = [P, I64, I64, P, P, P, I32, I32, I32, P, ctypes.c_int]
    return lib


def ptr(a: np.ndarray):
    return a.ctypes.data_as(P)


def tree_device(w):
    C = w["split_dims"].shape[0]
    thresholds = np.zeros((C, 16), np.float32)
    thresholds[:, :15] = w["thresholds"]
    return np.ascontiguousarray(w["split_dims"], dtype=np.int32), thresholds


def pq_device(w, D):
    C = w["biases"].shape[0]
    return (np.ascontiguousarray(w["vectors"].T, dtype=np.float32), np.ascontiguousarray(w["biases"], np.float32),
            reference.slice_bounds(D, C).astype(np.int64))


def lut_device(w):
    """The host layer's upload: code-major [Cpad][16][Mpad], sign bit flipped (entry + 128), scale/offset padded."""
    M, C, _ = w["lut"].shape
    m_pad, c_pad = (M + 15) // 16 * 16, (C + 3) // 4 * 4
    packed = np.zeros((c_pad, 16, m_pad), np.int8)
    packed[:C, :, :M] = w["lut"].transpose(1, 2, 0)
    biased = (packed.view(np.uint8) ^ 0x80).view(np.int8)
    scale, offset = np.zeros(m_pad, np.float32), np.zeros(m_pad, np.float32)
    scale[:M], offset[:M] = w["scale"], w["offset"]
    return biased, scale, offset, m_pad


@pytest.mark.parametrize("lead,D,C", ENCODE_SHAPES)
def test_encoders(emu, rng, lead, D, C):
    X = rng.standard_normal((*lead, D)).astype(np.float32).reshape(-1, D)
    if X.size:
        X.reshape(-1)[rng.integers(0, X.size, size=max(1, X.size // 50))] = 0.0
    N = X.shape[0]
    w = tree_weights(rng, D, C)
    w["thresholds"][:, 0] = 0.0
    dims, thresholds = tree_device(w)
    codes = np.full((N, C), 99, np.uint8)
    emu.emu_encode_tree(ptr(X), N, D, ptr(dims), ptr(thresholds), C, ptr(codes))
    np.testing.assert_array_equal(codes, reference.encode_tree(X, w["split_dims"], w["thresholds"]))
    w = pq_weights(rng, D, C)
    vt, biases, bounds = pq_device(w, D)
    codes = np.full((N, C), 99, np.uint8)
    emu.emu_encode_pq(ptr(X), N, ptr(vt), ptr(biases), ptr(bounds), C, D, ptr(codes))
    np.testing.assert_array_equal(codes, reference.encode_pq(X, w["vectors"], w["biases"]))


@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "unaligned"])
def test_encode_pq_four_float_loads(emu, rng, offset):
    """D and every slice bound a multiple of 4 (X read 4 floats per load), and X one float past 16-byte alignment
    (the launcher must fall back to single loads)."""
    N, D, C = 45, 64, 8
    X = rng.standard_normal(N * D + offset).astype(np.float32)[offset:].reshape(N, D)
    assert (X.ctypes.data % 16 == 0) == (offset == 0)
    w = pq_weights(rng, D, C)
    vt, biases, bounds = pq_device(w, D)
    assert np.all(bounds % 4 == 0)
    codes = np.full((N, C), 99, np.uint8)
    emu.emu_encode_pq(ptr(X), N, ptr(vt), ptr(biases), ptr(bounds), C, D, ptr(codes))
    np.testing.assert_array_equal(codes, reference.encode_pq(X, w["vectors"], w["biases"]))


def test_encoder_nan_and_ties(emu):
    X = np.array([[np.nan] * 4, [0, 0, 0, 0], [np.inf, -np.inf, np.inf, np.nan]], np.float32)
    w = {"split_dims": np.array([[0, 1, 2, 3]], np.int64), "thresholds": np.full((1, 15), -1.0, np.float32)}
    dims, thresholds = tree_device(w)
    codes = np.zeros((3, 1), np.uint8)
    emu.emu_encode_tree(ptr(X), 3, 4, ptr(dims), ptr(thresholds), 1, ptr(codes))
    np.testing.assert_array_equal(codes[:, 0], [0, 15, 10])
    biases = np.array([[5, 3, 3, 7, np.nan, 1, 1, 2, 9, 9, 9, 9, 9, 9, 9, 9],
                       [np.nan, 0, -1, -2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]], np.float32)
    w = {"vectors": np.zeros((16, 4), np.float32), "biases": biases}
    vt, b, bounds = pq_device(w, 4)
    X = np.ones((3, 4), np.float32)
    codes = np.zeros((3, 2), np.uint8)
    emu.emu_encode_pq(ptr(X), 3, ptr(vt), ptr(b), ptr(bounds), 2, 4, ptr(codes))
    np.testing.assert_array_equal(codes, reference.encode_pq(X, w["vectors"], w["biases"]))
    np.testing.assert_array_equal(codes[0], [5, 0])


# (N, C, M): odd M, M not a multiple of 4 or 16, C not a multiple of 4 (byte code loads), of 4 but not 16 (word
# loads), of 16 (16-byte loads, with and without a second load per lane chunk), C past the 256-codebook lane chunk
# (272: 16-byte loads across it), large M over several column tiles, and the 64 / 32 / 16-column tiles of large C.
LOOKUP_CASES = [(0, 8, 16), (1, 8, 33), (17, 16, 7), (130, 32, 64), (66, 12, 40), (3, 16, 3072), (70, 300, 17),
                (64, 1, 1), (600, 20, 19), (300, 64, 1030), (40, 513, 24), (50, 48, 140), (45, 272, 40),
                (20, 96, 300), (33, 1500, 36)]


def _check_lookup(emu, rng, codes, M, smem):
    """The emulated row-major lookup of ``codes`` with random tables, bit for bit against the reference."""
    N, C = codes.shape
    w = lookup_weights(rng, M, C)
    lut, scale, offset, m_pad = lut_device(w)
    Y = np.full((N, M), np.nan, np.float32)
    emu.emu_lookup(ptr(codes), N, ptr(lut), ptr(scale), ptr(offset), M, C, m_pad, ptr(Y), smem)
    expected = reference.lookup(codes, w["lut"], w["scale"], w["offset"])
    np.testing.assert_array_equal(Y.view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("smem", [H100_SMEM, TINY_SMEM], ids=["shared", "global"])
@pytest.mark.parametrize("N,C,M", LOOKUP_CASES)
def test_lookup(emu, rng, N, C, M, smem):
    _check_lookup(emu, rng, rng.integers(0, 256, size=(N, C), dtype=np.uint8), M, smem)


def test_lookup_unaligned_codes(emu, rng):
    """Codes one byte past a 16-byte boundary: the kernel must fall back from 16-byte and 32-bit code loads."""
    N, C = 37, 32
    codes = rng.integers(0, 256, size=N * C + 1, dtype=np.uint8)[1:].reshape(N, C)
    assert codes.ctypes.data % 4 != 0
    _check_lookup(emu, rng, codes, 48, H100_SMEM)


def test_lookup_extreme_tables(emu, rng):
    C, M = 300, 20
    lut = np.full((M, C, 16), -128, dtype=np.int8)
    lut[M // 2 :] = 127
    w = {"lut": lut, "scale": np.ones(M, np.float32), "offset": np.zeros(M, np.float32)}
    codes = rng.integers(0, 16, size=(40, C), dtype=np.uint8)
    dev = lut_device(w)
    Y = np.zeros((40, M), np.float32)
    emu.emu_lookup(ptr(codes), 40, ptr(dev[0]), ptr(dev[1]), ptr(dev[2]), M, C, dev[3], ptr(Y), H100_SMEM)
    np.testing.assert_array_equal(Y[:, : M // 2], -128.0 * C)
    np.testing.assert_array_equal(Y[:, M // 2 :], 127.0 * C)


@pytest.mark.parametrize("C", [16448, 16449])
def test_lookup_float_conversion_limit(emu, rng, C):
    """The row sums become floats by adding them to the bits of 1.5 * 2^23, exact up to C = 16448 (255 C < 2^22);
    past it the global-memory kernel must convert with an instruction. All-127 and all-(-128) tables put the
    largest and smallest sums on either side of the limit."""
    M, N = 4, 3
    lut = np.full((M, C, 16), 127, dtype=np.int8)
    lut[M // 2 :] = -128
    w = {"lut": lut, "scale": np.array([1, 0.5, 1, 0.25], np.float32), "offset": np.full(M, 3, np.float32)}
    codes = rng.integers(0, 16, size=(N, C), dtype=np.uint8)
    dev = lut_device(w)
    Y = np.zeros((N, M), np.float32)
    emu.emu_lookup(ptr(codes), N, ptr(dev[0]), ptr(dev[1]), ptr(dev[2]), M, C, dev[3], ptr(Y), TINY_SMEM)
    expected = reference.lookup(codes, w["lut"], w["scale"], w["offset"])
    np.testing.assert_array_equal(Y.view(np.uint32), expected.view(np.uint32))
    np.testing.assert_array_equal(Y[:, 0], np.float32(127 * C + 3))


@pytest.mark.parametrize("smem", [H100_SMEM, TINY_SMEM], ids=["shared", "global"])
@pytest.mark.parametrize("B,Ho,Wo,M,C", [(2, 7, 9, 20, 13), (1, 17, 19, 64, 32), (3, 1, 1, 5, 4), (2, 0, 3, 4, 4),
                                         (1, 9, 11, 37, 300), (1, 5, 9, 11, 272)])
def test_lookup_nchw(emu, rng, B, Ho, Wo, M, C, smem):
    _check_lookup_nchw(emu, rng, B, Ho, Wo, M, C, smem)


def _check_lookup_nchw(emu, rng, B, Ho, Wo, M, C, smem):
    codes = rng.integers(0, 256, size=(B, Ho, Wo, C), dtype=np.uint8)
    w = lookup_weights(rng, M, C)
    lut, scale, offset, m_pad = lut_device(w)
    Y = np.full((B, M, Ho, Wo), np.nan, np.float32)
    emu.emu_lookup_nchw(ptr(codes), B, Ho * Wo, ptr(lut), ptr(scale), ptr(offset), M, C, m_pad, ptr(Y), smem)
    expected = reference.lookup_conv(codes, w["lut"], w["scale"], w["offset"])
    np.testing.assert_array_equal(Y.view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("shape,attrs", [g[1:] for g in GEOMETRIES], ids=[g[0] for g in GEOMETRIES])
def test_conv_encoders(emu, rng, shape, attrs):
    _check_conv_encoders(emu, rng, shape, attrs, 13, 7)


@pytest.mark.parametrize("seed", range(3))
def test_random_geometries_and_lookup_shapes(emu, seed):
    """Fuzzing as tests/ops_fuzz.py does for the CPU kernels: random conv geometries (images down to empty) and
    codebook counts for the conv encoders, random N, C, M for both lookups in both LUT placements."""
    rng = np.random.default_rng(seed)
    for _ in range(10):
        shape = (int(rng.integers(0, 3)), int(rng.integers(1, 6)), *(int(v) for v in rng.integers(0, 17, 2)))
        _check_conv_encoders(emu, rng, shape, random_geometry(rng), *(int(c) for c in rng.integers(1, 40, 2)))
    for k in range(8):
        smem = (H100_SMEM, TINY_SMEM)[k % 2]
        N, C, M = int(rng.integers(0, 150)), int(rng.integers(1, 350)), int(rng.integers(1, 160))
        _check_lookup(emu, rng, rng.integers(0, 256, size=(N, C), dtype=np.uint8), M, smem)
        B, Ho, Wo = (int(v) for v in rng.integers(0, 9, 3))
        _check_lookup_nchw(emu, rng, B, Ho, Wo, M, C, smem)


def _check_conv_encoders(emu, rng, shape, attrs, C_tree: int, C_pq: int):
    """Both emulated conv encoders on a random image of ``shape`` under ``attrs``, at most C_tree / C_pq codebooks
    (and at most D), bit for bit against the reference."""
    geo = geometry_kwargs(attrs)
    B, Cin, H, W = shape
    (top, left, _, _), Ho, Wo = reference.conv_pads(H, W, **geo)
    kh, kw = geo["kernel_shape"]
    sh, sw = geo.get("strides", (1, 1))
    dh, dw = geo.get("dilations", (1, 1))
    geometry = np.array([B, Cin, H, W, Ho, Wo, kh, kw, sh, sw, dh, dw, top, left], np.int64)
    D = Cin * kh * kw
    X = rng.standard_normal(shape).astype(np.float32)
    w = tree_weights(rng, D, max(1, min(D, C_tree)))
    C = w["split_dims"].shape[0]
    dims, thresholds = tree_device(w)
    codes = np.full((B, Ho, Wo, C), 99, np.uint8)
    emu.emu_encode_tree_conv(ptr(X), ptr(geometry), ptr(dims), ptr(thresholds), C, ptr(codes))
    np.testing.assert_array_equal(codes, reference.encode_tree_conv(X, w["split_dims"], w["thresholds"], **geo))
    w = pq_weights(rng, D, max(1, min(D, C_pq)))
    C = w["biases"].shape[0]
    vt, biases, bounds = pq_device(w, D)
    codes = np.full((B, Ho, Wo, C), 99, np.uint8)
    emu.emu_encode_pq_conv(ptr(X), ptr(geometry), ptr(vt), ptr(biases), ptr(bounds), C, D, ptr(codes))
    np.testing.assert_array_equal(codes, reference.encode_pq_conv(X, w["vectors"], w["biases"], **geo))


@pytest.mark.skipif(bool(os.environ.get(SANITIZE)), reason="this is the sanitized run")
def test_kernels_under_address_sanitizer(emu, tmp_path):
    """Every test above, the kernels built with AddressSanitizer: numpy's buffers get redzones (libasan preloaded),
    so an out-of-bounds access by a kernel aborts the child with a report."""
    compiler = shutil.which("g++") or shutil.which("c++")
    runtime = subprocess.run([compiler, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(runtime) or not os.path.exists(runtime):
        pytest.skip("the C++ compiler has no AddressSanitizer runtime")
    report = tmp_path / "asan"
    env = {**os.environ, SANITIZE: "1", "LD_PRELOAD": runtime,
           "ASAN_OPTIONS": f"detect_leaks=0:verify_asan_link_order=0:log_path={report}"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    reports = "".join(f.read_text() for f in tmp_path.glob("asan*"))
    assert done.returncode == 0 and not reports, reports[:3000] or done.stdout[-3000:]
