"""What a converted model holds: its Halut layers (from the graph and its metadata) and the skipped layers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from .ops import DOMAIN, ENCODE_PQ, ENCODE_PQ_CONV, ENCODE_TREE, ENCODE_TREE_CONV, LOOKUP, LOOKUP_CONV
from .records import KEY_SETTINGS, KEY_VERSION, LayerRecord, get_metadata, read_records

ENCODER_NAMES = {ENCODE_TREE: "tree", ENCODE_PQ: "pq", ENCODE_TREE_CONV: "tree", ENCODE_PQ_CONV: "pq"}
LOOKUP_SUFFIX = "/halut_lookup"


@dataclass
class HalutLayerInfo:
    name: str
    op_type: str | None  # the replaced op (from the metadata)
    D: int | None
    M: int
    C: int
    encoder: str | None
    lut_bytes: int
    heldout_nmse: float | None  # int8 LUT, from the metadata
    speedup: float | None = None  # the kernels' speed against onnxruntime's op at conversion (LayerRecord.speedup)


@dataclass
class ModelSummary:
    version: str | None  # halut-onnx version that converted the model
    settings: str | None
    layers: list[HalutLayerInfo]
    skipped: list[LayerRecord]


def summarize(model: onnx.ModelProto) -> ModelSummary:
    """The Halut layers of ``model`` as found in its graph (shapes from the initializers), with the measurements
    the converter recorded in its metadata; a layer without a record still shows its shapes."""
    converted, skipped = read_records(model)
    records = {r.name: r for r in converted}
    inits = {t.name: t for t in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    layers = []
    for node in model.graph.node:
        if node.domain != DOMAIN or node.op_type not in (LOOKUP, LOOKUP_CONV):
            continue
        name = node.name[: -len(LOOKUP_SUFFIX)] if node.name.endswith(LOOKUP_SUFFIX) else node.name
        lut_shape = tuple(inits[node.input[1]].dims) if node.input[1] in inits else None
        M, C = (int(lut_shape[0]), int(lut_shape[1])) if lut_shape else (0, 0)
        encode = producers.get(node.input[0])
        encoder = ENCODER_NAMES.get(encode.op_type) if encode is not None and encode.domain == DOMAIN else None
        record = records.get(name)
        D = record.D if record else None
        if D is None and encoder == "pq" and encode.input[1] in inits:
            D = int(inits[encode.input[1]].dims[1])
        lut_bytes = int(np.prod(lut_shape)) if lut_shape else 0  # int8: one byte per entry
        layers.append(
            HalutLayerInfo(
                name, record.op_type if record else None, D, M, C, encoder, lut_bytes,
                record.heldout_nmse_int8 if record else None, record.speedup if record else None,
            )
        )
    meta = get_metadata(model)
    return ModelSummary(meta.get(KEY_VERSION), meta.get(KEY_SETTINGS), layers, skipped)
