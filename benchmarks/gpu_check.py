"""Correctness and speed of the Halut CUDA kernels inside onnxruntime's CUDA execution provider (docs/cuda.md).

Two halves, because the GPU machine has neither onnx nor the project's learning dependencies:

    python benchmarks/gpu_check.py --prepare .gpu_check      # here (CPU): models, inputs, expected outputs, library
    python benchmarks/gpu_check.py --dry-run .gpu_check      # here: runs every prepared check on the CPU provider
    python benchmarks/gpu_check.py .gpu_check                # on the GPU machine (benchmarks/gpu_check.sh)

--prepare writes single-node models of all six ops for the shapes the CPU tests use (random weights and the
learned weights and real activations of converted models), the expected outputs from halut_onnx.reference, the
converted digits MLP (also in float16), digits 1-D CNN and PP-OCR rec (Conv layers) with inputs and CPU outputs,
the speed models,
and a copy of the built custom-op library. The GPU run needs only numpy, onnxruntime-gpu and (for the cuBLAS rows) torch; it checks
each op bit for bit, checks that the Halut nodes ran on the CUDA provider, compares the real models with the CPU
within float tolerance, times the kernels against cuBLAS, prints aligned tables and exits 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from halut_onnx import reference  # noqa: E402  (numpy only: importable on the GPU machine)
from halut_onnx import ops  # noqa: E402  (plain names)

ENCODE_TREE, ENCODE_PQ, LOOKUP = ops.ENCODE_TREE, ops.ENCODE_PQ, ops.LOOKUP
ENCODE_TREE_CONV, ENCODE_PQ_CONV, LOOKUP_CONV = ops.ENCODE_TREE_CONV, ops.ENCODE_PQ_CONV, ops.LOOKUP_CONV
HALUT_OPS = set(ops.ALL_OPS)
WEIGHTS = {
    ENCODE_TREE: ("split_dims", "thresholds"), ENCODE_PQ: ("vectors", "biases"), LOOKUP: ("lut", "scale", "offset"),
    ENCODE_TREE_CONV: ("split_dims", "thresholds"), ENCODE_PQ_CONV: ("vectors", "biases"),
    LOOKUP_CONV: ("lut", "scale", "offset"),
}
# Speed grid (issue 6): N x (D, M), C = 32; K parallel copies of a node per run so that onnxruntime's per-run
# overhead is paid once and the launches overlap the previous kernels.
SPEED_N = (4096, 65536)
# (D, M, C): issue 6's shapes at C = 32, and 512 x 512 at the converter's C = 128 for D >= 256 (a 64-column LUT tile:
# docs/cuda.md, "The widest tile that fits").
SPEED_LAYERS = ((512, 512, 32), (768, 3072, 32), (512, 512, 128))
SPEED_C = 32  # the profiled lookup (--profile-lookup)
SPEED_K = 8
# Conv speed (per layer against cuDNN through torch): (label, B, Cin, H, W, kernel, M, C); C = the converter's
# default for these D (the power of two nearest D / 2, at most 64), padding keeps H x W.
SPEED_CONV = (("3x3 128->128 28x28 b8", 8, 128, 28, 28, 3, 128, 64),
              ("1x1 256->256 56x56 b8", 8, 256, 56, 56, 1, 256, 64))
MODEL_RTOL, MODEL_ATOL = 1e-3, 1e-6  # real models: |diff| <= rtol * max|expected| + atol (other ops differ by provider)


def table(headers, rows) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[k]) for r in cells) for k in range(len(headers))]

    def number(s):
        try:
            float(s.rstrip("%x"))
            return True
        except ValueError:
            return False

    right = [all(number(r[k]) for r in cells[1:]) and len(cells) > 1 for k in range(len(headers))]
    out = []
    for i, r in enumerate(cells):
        out.append("  ".join(c.rjust(widths[k]) if right[k] else c.ljust(widths[k]) for k, c in enumerate(r)))
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------------------
# --prepare (CPU machine: needs onnx and the project)


def _single_cases(rng: np.random.Generator):
    """(id, op, first input, weights, attrs, constant) over the CPU tests' shapes."""
    from conv_models import GEOMETRIES
    from ops_models import lookup_weights, pq_weights, tree_weights
    from test_ops_kernels import ENCODE_SHAPES, LOOKUP_SHAPES

    def activations(lead, D):
        X = rng.standard_normal((*lead, D)).astype(np.float32)
        if X.size:
            flat = X.reshape(-1)
            flat[rng.integers(0, flat.size, size=max(1, flat.size // 50))] = 0.0
        return X

    for lead, D, C in ENCODE_SHAPES:
        X = activations(lead, D)
        w = tree_weights(rng, D, C)
        w["thresholds"][:, 0] = 0.0  # ties
        yield f"tree lead={lead} D={D} C={C}", ENCODE_TREE, X, w, None, True
        yield f"pq lead={lead} D={D} C={C}", ENCODE_PQ, X, pq_weights(rng, D, C), None, True
    for lead, C, M in LOOKUP_SHAPES:
        if int(np.prod(lead)) * M > 600_000:  # the CPU's 4 MB streaming-store case: awkward N kept, size capped
            lead = (1031,)
        codes = rng.integers(0, 256, size=(*lead, C), dtype=np.uint8)
        yield f"lookup lead={lead} C={C} M={M}", LOOKUP, codes, lookup_weights(rng, M, C), None, True
    # NaN / inf / ties, extreme tables.
    Xs = np.array([[np.nan] * 4, [0, 0, 0, 0], [np.inf, -np.inf, np.inf, np.nan]], np.float32)
    yield "tree NaN goes left", ENCODE_TREE, Xs, {"split_dims": np.array([[0, 1, 2, 3]], np.int64),
                                                  "thresholds": np.full((1, 15), -1.0, np.float32)}, None, True
    biases = np.array([[5, 3, 3, 7, np.nan, 1, 1, 2, 9, 9, 9, 9, 9, 9, 9, 9],
                       [np.nan, 0, -1, -2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]], np.float32)
    yield "pq NaN and ties", ENCODE_PQ, np.ones((3, 4), np.float32), {"vectors": np.zeros((16, 4), np.float32),
                                                                      "biases": biases}, None, True
    lut = np.full((20, 300, 16), -128, np.int8)
    lut[10:] = 127
    yield "lookup extreme tables C=300", LOOKUP, rng.integers(0, 16, size=(40, 300), dtype=np.uint8), \
        {"lut": lut, "scale": np.ones(20, np.float32), "offset": np.zeros(20, np.float32)}, None, True
    # Large M and row counts off every block size, on both lookup kernels' tiles (shared and global LUT paths), and
    # each plan of the row-major lookup on an H100 / H200: 3 blocks of 256 threads (C = 32), one of 768 with the
    # 128-column tile (C = 64), 64 columns (C = 128), 16 columns (C = 600), global memory (C = 1500).
    for N, C, M in ((200, 32, 3072), (333, 1500, 40), (257, 64, 1030), (301, 128, 200), (100, 600, 48)):
        yield f"lookup N={N} C={C} M={M}", LOOKUP, rng.integers(0, 256, size=(N, C), dtype=np.uint8), \
            lookup_weights(rng, M, C), None, True
    for gid, shape, attrs in GEOMETRIES:
        D = shape[1] * attrs["kernel_shape"][0] * attrs["kernel_shape"][1]
        X = rng.standard_normal(shape).astype(np.float32)
        yield f"tree_conv {gid}", ENCODE_TREE_CONV, X, tree_weights(rng, D, max(1, min(D, 13))), attrs, True
        yield f"pq_conv {gid}", ENCODE_PQ_CONV, X, pq_weights(rng, D, max(1, min(D, 7))), attrs, True
    for B, Ho, Wo, M, C in ((2, 7, 9, 20, 13), (1, 17, 19, 64, 32), (3, 1, 1, 5, 4), (2, 0, 3, 4, 4),
                            (2, 33, 35, 96, 32), (1, 5, 7, 24, 1500)):
        codes = rng.integers(0, 256, size=(B, Ho, Wo, C), dtype=np.uint8)
        yield f"lookup_conv B={B} {Ho}x{Wo} M={M} C={C}", LOOKUP_CONV, codes, lookup_weights(rng, M, C), None, True


def _expected(op, first, w, attrs):
    geo = {k: (tuple(v) if isinstance(v, list) else v) for k, v in (attrs or {}).items()}
    if op == ENCODE_TREE:
        D = first.shape[-1]
        return reference.encode_tree(first.reshape(-1, D), w["split_dims"], w["thresholds"]).reshape(
            *first.shape[:-1], w["split_dims"].shape[0])
    if op == ENCODE_PQ:
        D = first.shape[-1]
        return reference.encode_pq(first.reshape(-1, D), w["vectors"], w["biases"]).reshape(
            *first.shape[:-1], w["biases"].shape[0])
    if op == LOOKUP:
        C = first.shape[-1]
        return reference.lookup(first.reshape(-1, C), w["lut"], w["scale"], w["offset"]).reshape(
            *first.shape[:-1], w["lut"].shape[0])
    if op == ENCODE_TREE_CONV:
        return reference.encode_tree_conv(first, w["split_dims"], w["thresholds"], **geo)
    if op == ENCODE_PQ_CONV:
        return reference.encode_pq_conv(first, w["vectors"], w["biases"], **geo)
    return reference.lookup_conv(first, w["lut"], w["scale"], w["offset"])


def _node_model(op, first, w, attrs, constant=True, copies=1):
    """One node of ``op`` (or ``copies`` parallel ones on the same input, outputs out0..), ir_version 10."""
    from onnx import helper, numpy_helper

    first_name = "codes" if op in (LOOKUP, LOOKUP_CONV) else "X"
    elem = helper.np_dtype_to_tensor_dtype(first.dtype)
    inputs = [helper.make_tensor_value_info(first_name, elem, [f"d{i}" for i in range(first.ndim)])]
    inits = []
    for name in WEIGHTS[op]:
        value = np.asarray(w[name])
        if constant:
            inits.append(numpy_helper.from_array(value, name))
        else:
            inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype),
                                                        list(value.shape)))
    out_type = 1 if op in (LOOKUP, LOOKUP_CONV) else 2
    nodes = [helper.make_node(op, [first_name, *WEIGHTS[op]], [f"out{k}"], name=f"{op}_{k}", domain="ai.halut",
                              **(attrs or {})) for k in range(copies)]
    outputs = [helper.make_tensor_value_info(f"out{k}", out_type, None) for k in range(copies)]
    graph = helper.make_graph(nodes, op, inputs, outputs, inits)
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17),
                                                                   helper.make_opsetid("ai.halut", 1)])


def _layer_model(kind, D, M, C, rng, copies, conv_attrs=None):
    """encode (tree or pq) -> lookup, ``copies`` independent layers on the same X: the converter's pattern (its Conv
    form with ``conv_attrs``, X NCHW)."""
    from onnx import helper, numpy_helper
    from ops_models import lookup_weights, pq_weights, tree_weights

    conv = conv_attrs is not None
    enc = {("tree", False): ENCODE_TREE, ("pq", False): ENCODE_PQ, ("tree", True): ENCODE_TREE_CONV,
           ("pq", True): ENCODE_PQ_CONV}[kind, conv]
    lookup = LOOKUP_CONV if conv else LOOKUP
    w = (tree_weights if kind == "tree" else pq_weights)(rng, D, C)
    lw = lookup_weights(rng, M, C)
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in {**w, **lw}.items()]
    nodes, outputs = [], []
    for k in range(copies):
        nodes.append(helper.make_node(enc, ["X", *WEIGHTS[enc]], [f"codes{k}"], name=f"enc{k}", domain="ai.halut",
                                      **(conv_attrs or {})))
        nodes.append(helper.make_node(lookup, [f"codes{k}", *WEIGHTS[lookup]], [f"out{k}"], name=f"lut{k}",
                                      domain="ai.halut"))
        outputs.append(helper.make_tensor_value_info(f"out{k}", 1, None))
    x_shape = ["B", "Cin", "H", "W"] if conv else ["N", D]
    graph = helper.make_graph(nodes, f"layer_{kind}", [helper.make_tensor_value_info("X", 1, x_shape)], outputs,
                              inits)
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17),
                                                                    helper.make_opsetid("ai.halut", 1)])
    return model, {**w, **lw}


def _learned_cases(model_path: Path, feeds: dict, tag: str):
    """Every Halut node of a converted model as a single-node case: its learned weights, the activation it really
    receives (captured by running the model on the CPU with the library)."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    import halut_onnx

    model = onnx.load(str(model_path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.domain == "ai.halut"]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for n in nodes:
        if n.input[0] not in existing:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(n.input[0]))
            existing.add(n.input[0])
    options = halut_onnx.session_options()
    options.log_severity_level = 3
    sess = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    values = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    for n in nodes:
        if not all(name in inits for name in n.input[1:]):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        attrs = {k: (v.decode() if isinstance(v, bytes) else list(v) if isinstance(v, (list, tuple)) else v)
                 for k, v in attrs.items()}
        w = dict(zip(WEIGHTS[n.op_type], (inits[name] for name in n.input[1:])))
        first = values[n.input[0]]
        if first.ndim == 4:
            first = first[:1]  # one image: the carried folder must stay small
        yield f"{tag} {n.name}", n.op_type, first, w, attrs or None, True


def build_variant(rev: str, out: Path) -> Path:
    """The custom-op library as of git revision `rev` (CUDA on, sm_90), for the device run's A/B speed tables: a
    kernel change is timed against the build it replaces in the same device call."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "custom_ops"], capture_output=True)
        if archive.returncode != 0:
            sys.exit(f"gpu_check: git archive {rev} failed: {archive.stderr.decode().strip()}")
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        build = Path(tmp) / "build"
        for cmd in (["cmake", "-S", f"{tmp}/custom_ops", "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                     "-DHALUT_ONNX_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=90-real"],
                    ["cmake", "--build", str(build), "-j2"]):
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"gpu_check: building {rev} failed:\n{(done.stdout + done.stderr)[-3000:]}")
        (out / "variants").mkdir(exist_ok=True)
        target = out / "variants" / f"{rev}.so"
        shutil.copy(next(build.rglob("libhalut_ops.so")), target)
    return target


def prepare(out: Path, real: bool, baselines: list[str]) -> None:
    import onnx

    import halut_onnx

    rng = np.random.default_rng(6)
    if out.exists():
        shutil.rmtree(out)
    (out / "ops").mkdir(parents=True)
    manifest = {"ops": [], "errors": [], "models": [], "speed": []}

    def add_case(cid, op, first, w, attrs, constant):
        i = len(manifest["ops"])
        onnx.save(_node_model(op, first, w, attrs, constant), str(out / "ops" / f"{i:03d}.onnx"))
        np.savez_compressed(out / "ops" / f"{i:03d}.npz", first=first, expected=_expected(op, first, w, attrs))
        manifest["ops"].append({"file": f"ops/{i:03d}", "id": cid, "op": op})

    for case in _single_cases(rng):
        add_case(*case)

    # Errors: the CUDA kernels must fail with the CPU kernels' messages (run-time checks) and reject non-constant
    # weights at session creation.
    from ops_models import lookup_weights, pq_weights, tree_weights

    errors = [
        ("pq X with another D", ENCODE_PQ, rng.standard_normal((4, 12)).astype(np.float32), pq_weights(rng, 10, 2),
         None, True, "input 'X' has D = 12 columns but 'vectors' has 10"),
        ("tree split dim past D", ENCODE_TREE, rng.standard_normal((4, 8)).astype(np.float32),
         {"split_dims": np.array([[0, 1, 2, 9]], np.int64), "thresholds": np.zeros((1, 15), np.float32)}, None, True,
         "input 'split_dims' has 9, outside X's columns 0 .. 7"),
        ("lookup codes C mismatch", LOOKUP, np.zeros((3, 5), np.uint8), lookup_weights(rng, 4, 6), None, True,
         "input 'codes' dim 1 (C, lut's dim 1) must be 6, found 5"),
        ("conv X not rank 4", ENCODE_TREE_CONV, np.zeros((2, 3, 4), np.float32), tree_weights(rng, 27, 4),
         {"kernel_shape": [3, 3]}, True, "input 'X' must have rank 4, found rank 3"),
        ("lookup weights as graph inputs", LOOKUP, np.zeros((3, 5), np.uint8), lookup_weights(rng, 4, 5), None,
         False, "the CUDA kernel needs 'lut', 'scale' and 'offset' to be constant initializers"),
    ]
    for i, (cid, op, first, w, attrs, constant, message) in enumerate(errors):
        onnx.save(_node_model(op, first, w, attrs, constant), str(out / "ops" / f"err{i}.onnx"))
        feeds = {"first": first}
        if not constant:
            feeds.update({f"w_{k}": np.asarray(v) for k, v in w.items()})
        np.savez_compressed(out / "ops" / f"err{i}.npz", **feeds)
        manifest["errors"].append({"file": f"ops/err{i}", "id": cid, "op": op, "message": message,
                                   "cuda_only": not constant})

    if real:
        work = out / "work"
        env = dict(os.environ)
        examples = (("digits_mlp.py", "digits"), ("digits_conv1d.py", "conv1d"), ("ppocr_rec_conv.py", "ppocr"))
        for script, sub in examples:
            print(f"running examples/{script} --quick (converted models for the real-model check)", flush=True)
            subprocess.run([sys.executable, str(ROOT / "examples" / script), "--quick", "--out", str(work / sub)],
                           check=True, env=env, stdout=subprocess.DEVNULL)
        # The float16 case: the layers' Casts and the model's float16 ops on the device around the Halut ops.
        sys.path.insert(0, str(ROOT / "examples"))
        import example_tools

        digits = work / "digits"
        digits16 = example_tools.float16_model(digits / "digits_mlp.onnx", digits / "digits_mlp.float16.onnx")
        example_tools.convert(digits16, digits / "calib", digits / "digits_mlp.float16.pq.onnx")
        real_models = [("digits MLP pq", work / "digits" / "digits_mlp.default.onnx", work / "digits" / "eval"),
                       ("digits MLP in float16 (Casts around the ops, pq)",
                        work / "digits" / "digits_mlp.float16.pq.onnx", work / "digits" / "eval"),
                       ("digits MLP tree", work / "digits" / "digits_mlp.tree.onnx", work / "digits" / "eval"),
                       ("digits 1-D CNN (3 Conv1d in Unsqueeze / Squeeze, pq)",
                        work / "conv1d" / "digits_conv1d.default.onnx", work / "conv1d" / "calib"),
                       ("PP-OCR rec (4 Conv layers, pq)", work / "ppocr" / "rec_conv.onnx", work / "ppocr" / "calib")]
        (out / "models").mkdir()
        for i, (name, path, data) in enumerate(real_models):
            feeds = dict(np.load(sorted(data.glob("*.npz"))[0]))
            feeds = {k: v[:1] if "ppocr" in str(path) else v for k, v in feeds.items()}
            options = halut_onnx.session_options()
            options.log_severity_level = 3
            import onnxruntime as ort

            sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            outputs = sess.run(None, feeds)
            shutil.copy(path, out / "models" / f"{i}.onnx")
            np.savez_compressed(out / "models" / f"{i}.npz", **{f"in_{k}": v for k, v in feeds.items()},
                     **{f"out_{j}": o for j, o in enumerate(outputs)})
            manifest["models"].append({"file": f"models/{i}", "id": name})
            for case in _learned_cases(path, feeds, name.split(" (")[0]):
                add_case(*case)
        shutil.rmtree(work)

    (out / "speed").mkdir()
    for D, M, C in SPEED_LAYERS:
        shape = f"{D}x{M}_c{C}"
        for kind in ("tree", "pq"):
            model, w = _layer_model(kind, D, M, C, rng, SPEED_K)
            onnx.save(model, str(out / "speed" / f"layer_{kind}_{shape}.onnx"))
            np.savez_compressed(out / "speed" / f"layer_{kind}_{shape}.npz", **w)
            enc = ENCODE_TREE if kind == "tree" else ENCODE_PQ
            onnx.save(_node_model(enc, np.zeros((1, D), np.float32), w, None, True, SPEED_K),
                      str(out / "speed" / f"enc_{kind}_{shape}.onnx"))
            if kind == "tree":
                onnx.save(_node_model(LOOKUP, np.zeros((1, C), np.uint8), w, None, True, SPEED_K),
                          str(out / "speed" / f"lookup_{shape}.onnx"))
        manifest["speed"].append({"D": D, "M": M, "C": C})
    manifest["speed_conv"] = []
    for label, B, Cin, H, W, k, M, C in SPEED_CONV:
        attrs = dict(kernel_shape=[k, k], pads=[k // 2] * 4)
        for kind in ("tree", "pq"):
            model, w = _layer_model(kind, Cin * k * k, M, C, rng, SPEED_K, attrs)
            onnx.save(model, str(out / "speed" / f"conv_{kind}_{k}x{k}_{Cin}.onnx"))
            np.savez_compressed(out / "speed" / f"conv_{kind}_{k}x{k}_{Cin}.npz", **w)
        manifest["speed_conv"].append({"label": label, "B": B, "Cin": Cin, "H": H, "W": W, "k": k, "M": M, "C": C})
    shutil.copy(halut_onnx.get_library_path(), out / "libhalut_ops.so")
    for rev in baselines:
        print(f"built {build_variant(rev, out)} (speed tables beside the working tree's)")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"prepared {len(manifest['ops'])} op cases, {len(manifest['errors'])} error cases, "
          f"{len(manifest['models'])} real models, {len(manifest['speed'])} speed shapes in {out} "
          f"({size / 2**20:.1f} MiB)")


# ---------------------------------------------------------------------------------------------------------------
# The check (GPU machine; --dry-run runs the same on the CPU provider)


class Runner:
    def __init__(self, folder: Path, provider: str, library: Path | None = None):
        import onnxruntime as ort

        self.ort = ort
        self.folder = folder
        self.provider = provider
        self.library = str(library or folder / "libhalut_ops.so")

    def options(self, strict: bool, profile: bool = False, optimize: bool = True):
        options = self.ort.SessionOptions()
        options.register_custom_ops_library(self.library)
        options.log_severity_level = 4  # failures are reported in the tables, with onnxruntime's message
        if strict and self.provider == "CUDAExecutionProvider":
            # Any node left to the CPU fails session creation: a Halut node must run on the CUDA provider.
            options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        if profile:
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "prof")
        if not optimize:
            options.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return options

    def session(self, path, strict=True, profile=False, optimize=True):
        # TF32 off: the other MatMul / Conv nodes of the real models stay close to the CPU's float32.
        # Strict sessions name the CUDA provider alone: onnxruntime refuses a CPU provider listed beside a disabled
        # CPU fallback.
        if self.provider == "CPUExecutionProvider":
            providers = [self.provider]
        else:
            providers = [(self.provider, {"use_tf32": "0"})] + ([] if strict else ["CPUExecutionProvider"])
        return self.ort.InferenceSession(str(path), self.options(strict, profile, optimize), providers=providers)


def check_ops(run: Runner, manifest) -> tuple[list, int]:
    rows, failures = [], 0
    for case in manifest["ops"]:
        data = np.load(run.folder / f"{case['file']}.npz")
        first, expected = data["first"], data["expected"]
        status = "ok"
        try:
            sess = run.session(run.folder / f"{case['file']}.onnx")
            got = sess.run(None, {sess.get_inputs()[0].name: first})[0]
            if got.shape != expected.shape or got.dtype != expected.dtype:
                status = f"MISMATCH shape/dtype {got.shape} {got.dtype} vs {expected.shape} {expected.dtype}"
            elif got.dtype == np.float32:
                bad = int(np.sum(got.view(np.uint32) != expected.view(np.uint32)))
                status = "ok" if bad == 0 else f"MISMATCH {bad} of {got.size} values differ in bits"
            else:
                bad = int(np.sum(got != expected))
                status = "ok" if bad == 0 else f"MISMATCH {bad} of {got.size} codes differ"
        except Exception as e:  # noqa: BLE001 - every failure is reported, the run goes on
            status = f"ERROR {str(e).splitlines()[0][:160]}"
        failures += status != "ok"
        rows.append([case["id"], case["op"], "x".join(map(str, first.shape)), status])
    for case in manifest["errors"]:
        if case["cuda_only"] and run.provider != "CUDAExecutionProvider":
            rows.append([case["id"], case["op"], "-", "skipped (CUDA only)"])
            continue
        data = dict(np.load(run.folder / f"{case['file']}.npz"))
        try:
            sess = run.session(run.folder / f"{case['file']}.onnx")
            feeds = {sess.get_inputs()[0].name: data["first"]}
            feeds.update({k[2:]: v for k, v in data.items() if k.startswith("w_")})
            sess.run(None, feeds)
            status = "MISMATCH: no error raised"
        except Exception as e:  # noqa: BLE001
            text = str(e)
            status = "ok (error as on the CPU)" if case["message"] in text and case["op"] in text else \
                f"MISMATCH message: {text.splitlines()[0][:160]}"
        failures += not status.startswith("ok")
        rows.append([case["id"], case["op"], "error", status])
    return rows, failures


def halut_providers(profile_file: str) -> dict:
    """op type -> set of providers its nodes ran on, from an onnxruntime profile."""
    seen: dict = {}
    for event in json.loads(Path(profile_file).read_text()):
        args = event.get("args", {})
        if event.get("cat") == "Node" and args.get("op_name") in HALUT_OPS:
            seen.setdefault(args["op_name"], set()).add(args.get("provider", "?"))
    return seen


def check_models(run: Runner, manifest) -> tuple[list, int]:
    rows, failures = [], 0
    for case in manifest["models"]:
        data = dict(np.load(run.folder / f"{case['file']}.npz"))
        feeds = {k[3:]: v for k, v in data.items() if k.startswith("in_")}
        expected = [data[f"out_{j}"] for j in range(sum(k.startswith("out_") for k in data))]
        try:
            sess = run.session(run.folder / f"{case['file']}.onnx", strict=False, profile=True)
            got = sess.run(None, feeds)
            providers = halut_providers(sess.end_profiling())
            on_device = all(p == {run.provider} for p in providers.values()) and providers
            # cuDNN / cuBLAS round the unconverted layers differently, which may move an encode decision that sits
            # on a threshold: outputs pass when close everywhere, or when >= 99 % of the values are close and the
            # class decisions (argmax over the last axis) agree on >= 99.5 %.
            worst, agree, close = 0.0, 1.0, 1.0
            ok = len(got) == len(expected)
            for g, e in zip(got, expected):
                if g.shape != e.shape:
                    ok = False
                elif g.dtype.kind == "f":
                    tol = MODEL_RTOL * float(np.max(np.abs(e), initial=0.0)) + MODEL_ATOL
                    diff = np.abs(g.astype(np.float64) - e)
                    worst = max(worst, float(np.max(diff, initial=0.0)) / tol)
                    frac = float(np.mean(diff <= tol)) if diff.size else 1.0
                    same = float(np.mean(np.argmax(g, -1) == np.argmax(e, -1))) if g.ndim and g.shape[-1] > 1 else 1.0
                    close, agree = min(close, frac), min(agree, same)
                    ok &= frac == 1.0 or (frac >= 0.99 and same >= 0.995)
                else:
                    ok &= bool(np.array_equal(g, e))
            status = "ok" if ok and on_device else ("MISMATCH outputs" if not ok else
                                                   f"MISMATCH Halut nodes ran on {providers}")
            detail = f"{worst:.3f} / {100 * close:.2f}% / {100 * agree:.2f}%"
        except Exception as e:  # noqa: BLE001
            status, detail = f"ERROR {str(e).splitlines()[0][:160]}", "-"
        failures += status != "ok"
        rows.append([case["id"], detail, status])
    return rows, failures


def _median_run(fn, warmup=2, reps=10) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


NOMINAL_BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12}  # bytes/s, SXM parts


def _time_copies(run: Runner, name: str, first_name: str, value, device: str):
    """Seconds per node of speed model ``name`` (SPEED_K parallel copies on one device-resident input), and its
    binding (outputs out0..)."""
    sess = run.session(run.folder / "speed" / f"{name}.onnx", optimize=False)
    binding = sess.io_binding()
    binding.bind_ortvalue_input(first_name, value)
    for k in range(SPEED_K):
        binding.bind_output(f"out{k}", device)
    return _median_run(lambda: sess.run_with_iobinding(binding)) / SPEED_K, binding


def _torch_times(torch, set_tf32, fn, *operands) -> dict:
    """cuBLAS / cuDNN seconds of fn(*operands) in fp32, TF32 and bf16; set_tf32(flag) is the library's TF32 switch."""
    times = {}
    for label, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                               ("bf16", torch.bfloat16, False)):
        set_tf32(tf32)
        cast = [o.to(dtype) for o in operands]
        times[label] = _cuda_time(torch, lambda: fn(*cast))
    set_tf32(False)
    return times


def _ms(t: float) -> str:
    return f"{t * 1e3:.3f}"


def _ratio(reference_times: dict, times: dict, key: str, kind: str) -> str:
    return f"{reference_times[key] / times[kind]:.2f}x" if key in reference_times else "-"


def speed(run: Runner, manifest, quick: bool) -> tuple[list, list, list, int]:
    """Per-layer times (onnxruntime CUDA provider vs cuBLAS through torch) and kernel bandwidth fractions."""
    ort = run.ort
    gpu = run.provider == "CUDAExecutionProvider"
    device = "cuda" if gpu else "cpu"
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        torch = None
        print(f"torch not importable ({e}): cuBLAS columns and the copy bandwidth are skipped")
    peak, copy_bw = None, None
    if torch is not None and gpu:
        name = torch.cuda.get_device_name()
        for key, value in NOMINAL_BANDWIDTH.items():
            if key in name:
                peak = value
        a = torch.empty(2**28, dtype=torch.float32, device="cuda")
        b = torch.empty_like(a)
        copy_t = _cuda_time(torch, lambda: b.copy_(a))
        copy_bw = 2 * a.numel() * 4 / copy_t
        print(f"GPU: {name}; device-to-device copy {copy_bw / 1e9:.0f} GB/s (read + write), nominal "
              f"{(peak or 0) / 1e9:.0f} GB/s")
        peak = peak or copy_bw
        del a, b
    failures = 0
    layer_rows, kernel_rows = [], []
    rng = np.random.default_rng(7)
    Ns = (256,) if quick else SPEED_N
    for shape in manifest["speed"]:
        D, M, C = shape["D"], shape["M"], shape["C"]
        name = f"{D}x{M}_c{C}"
        for N in Ns:
            X = rng.standard_normal((N, D)).astype(np.float32)
            x_dev = ort.OrtValue.ortvalue_from_numpy(X, device, 0)
            times = {}
            outputs = {}
            for kind in ("tree", "pq"):
                times[kind], binding = _time_copies(run, f"layer_{kind}_{name}", "X", x_dev, device)
                outputs[kind] = binding.get_outputs()[0].numpy()[:256]
                # Bit-exact on the first rows against the reference (the whole output is too slow in numpy).
                w = dict(np.load(run.folder / "speed" / f"layer_{kind}_{name}.npz"))
                codes = (reference.encode_tree(X[:256], w["split_dims"], w["thresholds"]) if kind == "tree" else
                         reference.encode_pq(X[:256], w["vectors"], w["biases"]))
                ref = reference.lookup(codes, w["lut"], w["scale"], w["offset"])
                if not np.array_equal(outputs[kind].view(np.uint32), ref.view(np.uint32)):
                    failures += 1
                    print(f"MISMATCH speed layer {kind} N={N} {D}x{M}: first 256 rows differ from the reference")
                # Kernels alone: encode, then lookup on device-resident codes.
                times[f"enc_{kind}"], eb = _time_copies(run, f"enc_{kind}_{name}", "X", x_dev, device)
                if kind == "tree":
                    times["lookup"], _ = _time_copies(run, f"lookup_{name}", "codes", eb.get_outputs()[0], device)
            blas = {}
            if torch is not None and gpu:
                blas = _torch_times(torch, lambda on: setattr(torch.backends.cuda.matmul, "allow_tf32", on),
                                    lambda a, b: a @ b, torch.from_numpy(X).cuda(), torch.randn(D, M, device="cuda"))
            layer_rows.append([N, f"{D}x{M}", C, _ms(times["tree"]), _ms(times["pq"]),
                               *(_ms(blas[k]) if k in blas else "-" for k in ("fp32", "tf32", "bf16")),
                               *(_ratio(blas, times, k, kind) for k, kind in (("fp32", "tree"), ("tf32", "tree"),
                                                                              ("bf16", "tree"), ("bf16", "pq")))])
            moved = {"enc_tree": N * D * 4 + N * C, "enc_pq": N * D * 4 + N * C, "lookup": N * C + N * M * 4}
            for kernel, nbytes in moved.items():
                rate = nbytes / times[kernel]
                frac = f"{100 * rate / peak:.1f}%" if peak else "-"
                of_copy = f"{100 * rate / copy_bw:.1f}%" if copy_bw else "-"
                target = ""
                if kernel == "lookup" and N == 65536 and C == 32 and peak:
                    target = "target met" if rate / peak >= 0.7 else "below 70% target"
                kernel_rows.append([kernel, N, f"{D}x{M}", C, _ms(times[kernel]), f"{nbytes / 2**20:.1f}",
                                    f"{rate / 1e9:.0f}", frac, of_copy, target])
    conv_rows = []
    for g in manifest.get("speed_conv", []):
        B, Cin, H, W, k, M, C = (g[key] for key in ("B", "Cin", "H", "W", "k", "M", "C"))
        X = rng.standard_normal((1 if quick else B, Cin, H, W)).astype(np.float32)
        x_dev = ort.OrtValue.ortvalue_from_numpy(X, device, 0)
        times = {}
        for kind in ("tree", "pq"):
            name = f"conv_{kind}_{k}x{k}_{Cin}"
            times[kind], binding = _time_copies(run, name, "X", x_dev, device)
            # Bit-exact on the first image against the reference.
            w = dict(np.load(run.folder / "speed" / f"{name}.npz"))
            geo = dict(kernel_shape=(k, k), pads=(k // 2,) * 4)
            codes = (reference.encode_tree_conv(X[:1], w["split_dims"], w["thresholds"], **geo) if kind == "tree"
                     else reference.encode_pq_conv(X[:1], w["vectors"], w["biases"], **geo))
            ref = reference.lookup_conv(codes, w["lut"], w["scale"], w["offset"])
            if not np.array_equal(binding.get_outputs()[0].numpy()[:1].view(np.uint32), ref.view(np.uint32)):
                failures += 1
                print(f"MISMATCH conv speed layer {kind} {g['label']}: the first image differs from the reference")
        dnn = {}
        if torch is not None and gpu:
            dnn = _torch_times(torch, lambda on: setattr(torch.backends.cudnn, "allow_tf32", on),
                               lambda a, b: torch.nn.functional.conv2d(a, b, padding=k // 2),
                               torch.from_numpy(X).cuda(), torch.randn(M, Cin, k, k, device="cuda"))
        conv_rows.append([g["label"], C, _ms(times["tree"]), _ms(times["pq"]),
                          *(_ms(dnn[key]) if key in dnn else "-" for key in ("fp32", "tf32", "bf16")),
                          *(_ratio(dnn, times, key, kind) for key, kind in (("fp32", "tree"), ("tf32", "tree"),
                                                                            ("bf16", "tree"), ("tf32", "pq")))])
    return layer_rows, kernel_rows, conv_rows, failures


def _cuda_time(torch, fn, warmup=3, reps=20) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def check(folder: Path, dry_run: bool, library: Path | None = None, speed_only: bool = False) -> int:
    import onnxruntime as ort

    provider = "CPUExecutionProvider" if dry_run else "CUDAExecutionProvider"
    print(f"onnxruntime {ort.__version__}, providers {ort.get_available_providers()}; checking on {provider}")
    if provider not in ort.get_available_providers():
        print(f"FAIL: {provider} is not available in this onnxruntime (is onnxruntime-gpu installed and "
              "LD_LIBRARY_PATH set to the CUDA/cuDNN libraries?)")
        return 1
    manifest = json.loads((folder / "manifest.json").read_text())
    run = Runner(folder, provider, library)
    print(f"library {run.library}")
    failures = 0
    sections = [] if speed_only else [("ops", check_ops, ["case", "op", "input", "result"]),
                                      ("models", check_models, ["model", "max diff/tol / close / argmax agree",
                                                                "result"])]
    for title, fn, headers in sections:
        start = time.perf_counter()
        try:
            rows, bad = fn(run, manifest)
        except Exception:  # noqa: BLE001
            traceback.print_exc()
            rows, bad = [], 1
        failures += bad
        print(f"\n== {title}: {len(rows)} checks, {bad} failed ({time.perf_counter() - start:.1f} s)")
        print(table(headers, rows))
    try:
        layer_rows, kernel_rows, conv_rows, bad = speed(run, manifest, quick=dry_run)
        failures += bad
        print("\n== per layer (encode + lookup, ms per layer; ratios = cuBLAS time / Halut time, above 1: Halut faster)")
        print(table(["N", "DxM", "C", "tree ms", "pq ms", "fp32 ms", "tf32 ms", "bf16 ms", "fp32/tree",
                     "tf32/tree", "bf16/tree", "bf16/pq"], layer_rows))
        print("\n== kernels (bytes each must move / time, against the GPU's nominal bandwidth and its measured "
              "device-to-device copy)")
        print(table(["kernel", "N", "DxM", "C", "ms", "MiB moved", "GB/s", "of peak", "of copy", ""], kernel_rows))
        print("\n== conv layers (encode + lookup, ms per layer; ratios = cuDNN time / Halut time, above 1: Halut faster)")
        print(table(["layer", "C", "tree ms", "pq ms", "fp32 ms", "tf32 ms", "bf16 ms", "fp32/tree", "tf32/tree",
                     "bf16/tree", "tf32/pq"], conv_rows))
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        failures += 1
    print(f"\n{'PASS' if failures == 0 else 'FAIL'}: {failures} failed checks")
    return 1 if failures else 0


def profile_lookup(folder: Path) -> int:
    """One run of the lookup speed model (N = 65536, 512 x 512, C = 32) for a profiler (gpu_check.sh, HALUT_NCU=1)."""
    import onnxruntime as ort

    run = Runner(folder, "CUDAExecutionProvider")
    codes = np.random.default_rng(7).integers(0, 16, size=(65536, SPEED_C), dtype=np.uint8)
    sess = run.session(folder / "speed" / f"lookup_512x512_c{SPEED_C}.onnx", optimize=False)
    binding = sess.io_binding()
    binding.bind_ortvalue_input("codes", ort.OrtValue.ortvalue_from_numpy(codes, "cuda", 0))
    for k in range(SPEED_K):
        binding.bind_output(f"out{k}", "cuda")
    sess.run_with_iobinding(binding)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="the prepared folder")
    parser.add_argument("--prepare", action="store_true", help="build the folder (CPU machine with the project)")
    parser.add_argument("--no-real-models", action="store_true", help="with --prepare: skip the converted examples")
    parser.add_argument("--baseline", action="append", default=[], metavar="REV",
                        help="with --prepare: also build the library at git revision REV into variants/ (A/B)")
    parser.add_argument("--dry-run", action="store_true", help="run the checks on the CPU provider")
    parser.add_argument("--profile-lookup", action="store_true", help="one lookup run at N=65536 for a profiler")
    parser.add_argument("--library", type=Path, help="another build of the library (default: the folder's copy)")
    parser.add_argument("--speed-only", action="store_true", help="only the speed tables (with --library: A/B runs)")
    args = parser.parse_args(argv)
    if args.profile_lookup:
        return profile_lookup(args.folder)
    if args.prepare:
        prepare(args.folder, real=not args.no_real_models, baselines=args.baseline)
        return 0
    return check(args.folder, args.dry_run, args.library, args.speed_only)


if __name__ == "__main__":
    sys.exit(main())
