"""Sequential calibration: learn layers in graph (topological) order, each on the inputs that the layers converted
before it produce, with its LUT fitted to the ORIGINAL model's outputs of that layer.

Rows are paired without storing indices: the reservoir sampler of a layer is seeded by the seed and the layer's
name only, and draws the same slots for the same number of rows, so sampling the converted model's and the
original model's input of one layer over the same files picks the same rows (checked by the row counts).
"""

from __future__ import annotations

import logging

import onnx
from onnx import helper

from .augment import augmented
from .calibrate import CalibrationSet, CollectedRows, collect_rows
from .learn import HalutLayer, learn_layer
from .passes import LayerCandidate, LayerRewrite, rewrite_model

log = logging.getLogger(__name__)


def _prune(model: onnx.ModelProto, tensor: str) -> onnx.ModelProto:
    """``model`` cut to the nodes ``tensor`` depends on, with ``tensor`` as its only output (faster runs)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    keep, todo = set(), [tensor]
    while todo:
        node = producers.get(todo.pop())
        if node is None or id(node) in keep:
            continue
        keep.add(id(node))
        todo.extend(node.input)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = [n for n in model.graph.node if id(n) in keep]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    del out.graph.output[:]
    out.graph.output.append(helper.make_empty_tensor_value_info(tensor))
    return out


def _depends_on(model: onnx.ModelProto, tensor: str, converted_outputs: set[str]) -> bool:
    producers = {out: node for node in model.graph.node for out in node.output}
    seen, todo = set(), [tensor]
    while todo:
        name = todo.pop()
        if name in converted_outputs:
            return True
        node = producers.get(name)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        todo.extend(node.input)
    return False


def learn_sequential(
    work: onnx.ModelProto,
    learn_set: CalibrationSet,
    plan: list[tuple[LayerCandidate, object]],
    original_rows: dict[str, CollectedRows],
    max_rows: int,
    seed: int,
    reuse: dict[str, HalutLayer] | None = None,
    progress: bool = False,
) -> dict[str, HalutLayer]:
    """Learn ``plan`` ((candidate, LearnOptions) in graph order) sequentially; return the layers by name.

    ``original_rows`` are the original model's sampled input rows of each layer (``collect_rows`` with the same
    ``max_rows`` and ``seed``, from ``learn_set`` with each layer's ``copies``). A layer whose input does not depend
    on any layer converted before it sees the original inputs: ``reuse[name]`` (its independently learned layer) is
    taken as it is when given.
    """
    from .analyze import target

    layers: dict[str, HalutLayer] = {}
    rewrites: list[LayerRewrite] = []
    converted_outputs: set[str] = set()
    for cand, options in plan:
        original = original_rows[cand.name]
        if not _depends_on(work, cand.input_name, converted_outputs):
            layer = (reuse or {}).get(cand.name) or learn_layer(original.rows, cand.weight, cand.bias, options,
                                                                sources=original.sources)
        else:
            partial = _prune(rewrite_model(work, rewrites), cand.input_name)
            # the same feeds the original rows came from (noisy copies included), so that the rows pair
            seen = collect_rows(partial, augmented(learn_set, original.copies, seed), {cand.name: target(cand)},
                                max_rows, seed, progress, f"sequential {cand.name}")[cand.name]
            if seen.rows.shape != original.rows.shape or seen.rows_seen != original.rows_seen:
                raise ValueError(f"layer {cand.name}: the converted model's input rows do not pair with the "
                                 f"original's ({seen.rows.shape} vs {original.rows.shape})")
            layer = learn_layer(seen.rows, cand.weight, cand.bias, options, target_inputs=original.rows,
                                sources=original.sources)
        for warning in layer.report.warnings:
            log.warning("%s: %s", cand.name, warning)
        layers[cand.name] = layer
        rewrites.append(LayerRewrite(cand, layer, ""))
        converted_outputs.add(cand.output_name)
    return layers
