"""The custom-op library as a whole: found by the package, loads into onnxruntime, serves the ai.halut domain."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from ops_models import lookup_weights, make_session, single_node_model

import halut_onnx
from halut_onnx import reference
from halut_onnx.ops import LOOKUP


def test_library_path_exists_and_registers():
    path = halut_onnx.get_library_path()
    assert path.endswith("libhalut_ops.so")
    options = halut_onnx.session_options()
    assert isinstance(options, ort.SessionOptions)


def test_two_sessions_with_separate_options_both_run(rng):
    """RegisterCustomOps runs once per SessionOptions: each call needs its own domain."""
    codes = rng.integers(0, 16, size=(4, 3), dtype=np.uint8)
    w = lookup_weights(rng, 5, 3)
    model = single_node_model(LOOKUP, codes, w)
    first, second = make_session(model), make_session(model)
    expected = reference.lookup(codes, w["lut"], w["scale"], w["offset"])
    for session in (first, second):
        np.testing.assert_array_equal(session.run(None, {"codes": codes})[0], expected)


def test_model_without_the_library_fails_cleanly(rng):
    codes = rng.integers(0, 16, size=(4, 3), dtype=np.uint8)
    model = single_node_model(LOOKUP, codes, lookup_weights(rng, 5, 3))
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own error: the op is unknown without the library
        assert "HalutLookup" in str(e)
    else:
        raise AssertionError("a Halut model must not load without the custom-op library")


def test_forced_isa_runs_only_where_the_cpu_has_it():
    """Each forced path runs when the CPU has it and is refused, listing the supported paths, when it does not."""
    script = (
        "import numpy as np, sys; sys.path.insert(0, 'tests'); from ops_models import *\n"
        "w = lookup_weights(np.random.default_rng(0), 4, 2)\n"
        "try:\n"
        "    run_op('HalutLookup', np.zeros((1, 2), np.uint8), w)\n"
        "    print('ran')\n"
        "except Exception as e:\n"
        "    print(e)\n"
    )
    from ops_models import ISA_FLAGS, cpu_flags

    flags = cpu_flags()
    for isa, needed in ISA_FLAGS.items():
        out = subprocess.run([sys.executable, "-c", script], env={**os.environ, "HALUT_ONNX_ISA": isa},
                             capture_output=True, text=True, cwd=str(Path(__file__).parent.parent), timeout=60).stdout
        if needed <= flags:
            assert out.strip() == "ran"
        else:
            assert f"HALUT_ONNX_ISA={isa} but this CPU lacks it (supported: scalar" in out


def test_old_onnxruntime_gets_a_clear_error():
    """RegisterCustomOps against a fake onnxruntime 1.16 (GetApi(17) is NULL) reports the version through API 1."""
    import ctypes

    lib = ctypes.CDLL(halut_onnx.get_library_path())
    get_api_t = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_uint32)
    version_t = ctypes.CFUNCTYPE(ctypes.c_void_p)
    create_status_t = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p)

    class OrtApiBase(ctypes.Structure):
        _fields_ = [("GetApi", get_api_t), ("GetVersionString", version_t)]

    statuses = []
    fake_status = 0x5EED

    def create_status(code, message):
        statuses.append((code, message.decode()))
        return fake_status

    create_status_fn = create_status_t(create_status)
    api_v1 = (ctypes.c_void_p * 1)(ctypes.cast(create_status_fn, ctypes.c_void_p))  # slot 0: CreateStatus
    version = ctypes.create_string_buffer(b"1.16.3")
    requested = []

    def get_api(v):
        requested.append(v)
        return ctypes.addressof(api_v1) if v == 1 else None

    base = OrtApiBase(get_api_t(get_api), version_t(lambda: ctypes.addressof(version)))
    lib.RegisterCustomOps.restype = ctypes.c_void_p
    lib.RegisterCustomOps.argtypes = [ctypes.c_void_p, ctypes.POINTER(OrtApiBase)]
    assert lib.RegisterCustomOps(None, ctypes.byref(base)) == fake_status
    assert requested == [17, 1]
    assert statuses == [(1, "halut-onnx needs onnxruntime >= 1.17 (C API 17); this onnxruntime is 1.16.3")]
