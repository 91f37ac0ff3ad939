"""Seeded fuzzing of the Halut ops (row and conv forms): random shapes, geometries, values and dtypes, valid or
broken by one known mutation.

Every case must either match halut_onnx.reference exactly (valid inputs) or fail with an onnxruntime error naming the
node (broken inputs). Run as a script (``python tests/ops_fuzz.py SEED COUNT``) so that a crash in the library kills
this process, not pytest; prints ``ok <count>`` when every case behaved.
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from conv_models import geometry_kwargs, random_geometry, run_conv_op  # noqa: E402
from ops_models import ISA_FLAGS, cpu_flags, lookup_weights, pq_weights, run_op, tree_weights  # noqa: E402

from halut_onnx import reference  # noqa: E402
from halut_onnx.ops import ENCODE_PQ, ENCODE_PQ_CONV, ENCODE_TREE, ENCODE_TREE_CONV, LOOKUP, LOOKUP_CONV  # noqa: E402

NODE = "fuzzed"


def _values(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    X = (rng.standard_normal(shape) * rng.choice([1e-3, 1.0, 1e3])).astype(np.float32)
    if X.size and rng.random() < 0.3:
        flat = X.reshape(-1)
        specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-40], np.float32)
        flat[rng.integers(0, flat.size, size=3)] = rng.choice(specials, size=3)
    return X


def _case(rng: np.random.Generator):
    """(op, first input, weights, constant, broken?, expected output or None)."""
    op = rng.choice([ENCODE_TREE, ENCODE_PQ, LOOKUP])
    lead = tuple(int(v) for v in rng.integers(0, 5, size=rng.integers(0, 3)))
    if rng.random() < 0.3:
        lead = (int(rng.integers(0, 200)),)
    broken = rng.random() < 0.4
    constant = bool(rng.random() < 0.5)
    if op == LOOKUP:
        C, M = int(rng.integers(1, 70)), int(rng.integers(1, 90))
        first = rng.integers(0, 256, size=(*lead, C), dtype=np.uint8)
        w = lookup_weights(rng, M, C)
        if broken:
            which = rng.integers(0, 5)
            if which == 0:
                first = first.astype(rng.choice([np.int8, np.float32, np.int64]))
            elif which == 1:
                first = rng.integers(0, 16, size=(*lead, C + 1), dtype=np.uint8)
            elif which == 2:
                w["lut"] = w["lut"].astype(np.int32)
            elif which == 3:
                w["scale"] = w["scale"][: M - 1]
            else:
                w["offset"] = np.zeros((M, 1), np.float32)
            return op, first, w, constant, True, None
        expected = reference.lookup(first.reshape(-1, C), w["lut"], w["scale"], w["offset"]).reshape(*lead, M)
        return op, first, w, constant, False, expected
    D = int(rng.integers(1, 120))
    C = int(rng.integers(1, D + 1))
    first = _values(rng, (*lead, D))
    if op == ENCODE_TREE:
        w = tree_weights(rng, D, C)
        w["thresholds"] = _values(rng, (C, 15))
        if broken:
            which = rng.integers(0, 4)
            if which == 0:
                w["split_dims"][rng.integers(0, C), rng.integers(0, 4)] = rng.choice([-5, D, D + 1000])
            elif which == 1:
                first = first.astype(np.float64)
            elif which == 2:
                w["thresholds"] = w["thresholds"][:, :-1]
            else:
                first = _values(rng, (*lead, C - 1)) if C > 1 else first.astype(np.float16)
                w["split_dims"] %= max(C - 1, 1)
            return op, first, w, constant, True, None
        expected = reference.encode_tree(first.reshape(-1, D), w["split_dims"], w["thresholds"]).reshape(*lead, C)
        return op, first, w, constant, False, expected
    w = pq_weights(rng, D, C)
    if broken:
        which = rng.integers(0, 3)
        if which == 0:
            first = _values(rng, (*lead, D + 1))
        elif which == 1:
            w["biases"] = np.zeros((D + 1, 16), np.float32)
        else:
            w["vectors"] = w["vectors"].astype(np.float64)
        return op, first, w, constant, True, None
    with np.errstate(all="ignore"):
        expected = reference.encode_pq(first.reshape(-1, D), w["vectors"], w["biases"]).reshape(*lead, C)
    return op, first, w, constant, False, expected


def _conv_case(rng: np.random.Generator):
    """A conv op case: (op, first input, weights, attributes, constant, broken?, expected output or None)."""
    op = rng.choice([ENCODE_TREE_CONV, ENCODE_PQ_CONV, LOOKUP_CONV])
    attrs = random_geometry(rng)
    B, Cin = int(rng.integers(0, 4)), int(rng.integers(1, 9))
    H, W = (int(v) for v in rng.integers(0, 21, 2))
    broken = rng.random() < 0.4
    constant = bool(rng.random() < 0.5)
    geo = geometry_kwargs(attrs)  # a new dict: the mutations below change attrs only
    _, Ho, Wo = reference.conv_pads(H, W, **geo)
    if op == LOOKUP_CONV:
        C, M = int(rng.integers(1, 70)), int(rng.integers(1, 90))
        first = rng.integers(0, 256, size=(B, Ho, Wo, C), dtype=np.uint8)
        w = lookup_weights(rng, M, C)
        if broken:
            which = rng.integers(0, 3)
            if which == 0:
                first = first.reshape(B * Ho, Wo, C)
            elif which == 1:
                first = rng.integers(0, 16, size=(B, Ho, Wo, C + 1), dtype=np.uint8)
            else:
                w["lut"] = w["lut"][:, :, :15]
            return op, first, w, None, constant, True, None
        return op, first, w, None, constant, False, reference.lookup_conv(first, w["lut"], w["scale"], w["offset"])
    D = Cin * attrs["kernel_shape"][0] * attrs["kernel_shape"][1]
    C = int(rng.integers(1, D + 1))
    first = _values(rng, (B, Cin, H, W))
    w = tree_weights(rng, D, C) if op == ENCODE_TREE_CONV else pq_weights(rng, D, C)
    if op == ENCODE_TREE_CONV:
        w["thresholds"] = _values(rng, (C, 15))
    if broken:
        which = rng.integers(0, 7)
        if which == 0:
            first = first.reshape(B * Cin, H, W)
        elif which == 1 and op == ENCODE_TREE_CONV:  # a split dim outside the patch
            w["split_dims"][rng.integers(0, C), rng.integers(0, 4)] = rng.choice([-1, D, D + 100])
        elif which == 1:
            first = _values(rng, (B, Cin + 1, H, W))  # Cin * kh * kw is no longer the vectors' D
        elif which == 2:
            attrs["kernel_shape"] = attrs["kernel_shape"][:1]
        elif which == 3:
            attrs[str(rng.choice(["strides", "dilations"]))] = [1, int(rng.choice([0, -2]))]
        elif which == 4:
            attrs["auto_pad"] = "SAME"
        elif which == 5:
            attrs.pop("auto_pad", None)
            attrs["pads"] = [0, 1, int(rng.choice([-1, -7])), 0]
        else:
            first = first.astype(np.float64)
        return op, first, w, attrs, constant, True, None
    with np.errstate(all="ignore"):
        codes = (reference.encode_tree_conv(first, w["split_dims"], w["thresholds"], **geo) if op == ENCODE_TREE_CONV
                 else reference.encode_pq_conv(first, w["vectors"], w["biases"], **geo))
    return op, first, w, attrs, constant, False, codes


def main(seed: int, count: int) -> int:
    import onnxruntime

    onnxruntime.set_default_logger_severity(4)
    rng = np.random.default_rng(seed)
    flags = cpu_flags()
    isas = [isa for isa, needed in ISA_FLAGS.items() if needed <= flags]
    for i in range(count):
        if rng.random() < 0.4:
            op, first, w, attrs, constant, broken, expected = _conv_case(rng)
        else:
            (op, first, w, constant, broken, expected), attrs = _case(rng), None
        isa = isas[i % len(isas)]
        os.environ["HALUT_ONNX_ISA"] = isa
        threads = 1 + i % 2
        label = f"case {i} ({op}, {isa}, first {first.dtype}{list(first.shape)}, constant={constant}, {attrs})"
        try:
            if op in (ENCODE_TREE_CONV, ENCODE_PQ_CONV, LOOKUP_CONV):
                got = run_conv_op(op, first, w, attrs, constant=constant, threads=threads, node_name=NODE)
            else:
                got = run_op(op, first, w, constant=constant, threads=threads, node_name=NODE)
        except Exception as e:  # onnxruntime's error types: the message is what matters
            if not broken or f"node '{NODE}'" not in str(e):
                print(f"{label}: unexpected error: {e}")
                return 1
            continue
        if broken:
            print(f"{label}: broken input accepted")
            return 1
        if got.dtype != expected.dtype or got.shape != expected.shape or got.tobytes() != expected.tobytes():
            print(f"{label}: result differs from the reference")
            return 1
    print(f"ok {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2])))
