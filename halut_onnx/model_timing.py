"""What each layer costs inside the original model, as onnxruntime runs it (1 thread).

A layer timed alone (kernel_timing) is slower than inside the model, where onnxruntime fuses it with its neighbours
and, for Convs, runs a blocked (NCHWc) layout: on PP-OCR rec a 384 -> 768 Conv takes 19.5 ms alone and 7.8 ms in
the model. The saving of converting it is what it costs in the model minus what the Halut ops cost (they fuse with
nothing, so their time alone is theirs). This profiles the model once and finds each layer's node in onnxruntime's
optimised graph by its weight: the optimiser reorders, pads and renames weights but keeps their values, so the sum
and the sum of squares of a weight identify it.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import onnx

log = logging.getLogger(__name__)

_RUNS = 5


def _fingerprint(w: np.ndarray) -> tuple[float, float]:
    w = np.asarray(w, dtype=np.float64).ravel()
    return float(w.sum()), float(np.dot(w, w))


def _same(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return all(np.isclose(x, y, rtol=1e-6, atol=1e-9) for x, y in zip(a, b))


def layer_times_in_model(model: onnx.ModelProto, feed: dict, weights: dict[str, str]) -> dict[str, float]:
    """Median ms of each layer's node(s) when ``model`` runs ``feed`` at 1 thread. ``weights`` maps a layer name to
    the name of its weight initializer (layers may share one). Layers whose weight is not found in the optimised
    graph (a fusion that changed its values) are left out; a node that holds several layers' weights is shared between
    them equally."""
    import onnxruntime as ort

    from .library import session_options

    try:
        options = session_options()
    except Exception:  # no library: the original model needs none
        options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        for _ in range(_RUNS + 1):
            session.run(None, feed)
        with open(session.end_profiling()) as f:
            events = json.load(f)
        optimized = onnx.load(options.optimized_model_filepath)

    node_us: dict[str, list[float]] = defaultdict(list)
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            node_us[event["name"][: -len("_kernel_time")]].append(float(event["dur"]))
    # the first run includes one-time work (allocations, weight packing): not counted
    node_ms = {name: float(np.median(durations[1:] or durations)) / 1e3 for name, durations in node_us.items()}

    inits = {t.name: t for t in model.graph.initializer}
    opt_inits = {t.name: t for t in optimized.graph.initializer}
    fingerprints = defaultdict(list)  # optimised node -> fingerprints of its weight-like initializers
    for node in optimized.graph.node:
        for name in node.input:
            t = opt_inits.get(name)
            if t is not None and len(t.dims) >= 2:
                fingerprints[node.name].append(_fingerprint(onnx.numpy_helper.to_array(t)))
    holder: dict[str, str] = {}  # layer -> the one optimised node that holds its weight
    sharing: dict[str, list[str]] = defaultdict(list)  # weight -> its layers, in graph order
    for layer, weight in weights.items():
        if weight in inits:
            sharing[weight].append(layer)
    for weight, layers in sharing.items():
        fp = _fingerprint(onnx.numpy_helper.to_array(inits[weight]))
        found = [node for node, fps in fingerprints.items() if any(_same(fp, other) for other in fps)]
        # Layers that share one weight (torch's exporter deduplicates equal parameters) hold it in as many nodes,
        # which the optimised graph keeps in graph order.
        if len(found) == len(layers) and all(node in node_ms for node in found):
            holder.update(zip(layers, found))
    share = Counter(holder.values())
    out = {layer: node_ms[node] / share[node] for layer, node in holder.items()}
    missing = sorted(set(weights) - set(out))
    if missing:
        log.info("no node of onnxruntime's optimised graph holds the weight of %s: timed alone", ", ".join(missing))
    return out
