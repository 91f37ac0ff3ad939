"""Replace learned layers by Halut encode + lookup nodes (onnx-graphsurgeon), keeping the rest of the model as is.

Each converted layer ``<name>`` becomes ``<name>/halut_encode`` (``HalutEncodeTree`` or ``HalutEncodePQ``) feeding
``<name>/halut_codes`` into ``<name>/halut_lookup`` (``HalutLookup``), which produces the replaced node's (or the
folded Add's) output tensor under its original name. A Conv becomes the conv forms of the ops
(``HalutEncodeTreeConv`` / ``HalutEncodePQConv`` with the Conv's geometry attributes, ``HalutLookupConv``), which
read NCHW and write NCHW; a 1-D Conv's input is unsqueezed to a height-1 image for them and their output squeezed
back (``<name>/halut_unsqueeze``, ``<name>/halut_squeeze``). A float16 or float64 layer's input is cast to the ops'
float32 and the lookup's output back to the layer's type (``<name>/halut_cast_in``, ``<name>/halut_cast_out``).
The op parameters are initializers named ``<name>.halut.<input>`` (split_dims, thresholds or vectors, biases; lut,
scale, offset).

graphsurgeon's export rebuilds the ModelProto, so the model-level fields it does not carry (IR version, opset
imports of every domain, model doc_string and version, metadata_props) are copied back from the input model here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper

from halut_onnx.ops import (
    DOMAIN,
    DOMAIN_VERSION,
    ENCODE_PQ,
    ENCODE_PQ_CONV,
    ENCODE_TREE,
    ENCODE_TREE_CONV,
    LOOKUP,
    LOOKUP_CONV,
)
from halut_onnx.model_io import default_opset

from .candidates import WEIGHT_CHAIN_OPS, LayerCandidate, constant_value
from .functions import functions_for

ENCODER_OPS = {"tree": ENCODE_TREE, "pq": ENCODE_PQ}
CONV_ENCODER_OPS = {"tree": ENCODE_TREE_CONV, "pq": ENCODE_PQ_CONV}


@dataclass
class LayerRewrite:
    """A learned layer to put in place of a candidate: ``layer`` has the fields of ``halut_onnx.learn.HalutLayer``."""

    candidate: LayerCandidate
    layer: Any
    doc_string: str


def node_names(name: str) -> dict[str, str]:
    """The names the rewrite gives to the nodes and the tensors between them of layer ``name`` (a 1-D Conv also
    gets the Unsqueeze / Squeeze to and from the 2-D image the conv ops take, a layer that is not float32 the Casts
    to and from the ops' float32)."""
    return {"encode": f"{name}/halut_encode", "lookup": f"{name}/halut_lookup", "codes": f"{name}/halut_codes",
            "unsqueeze": f"{name}/halut_unsqueeze", "squeeze": f"{name}/halut_squeeze",
            "image": f"{name}/halut_image", "image_out": f"{name}/halut_image_out",
            "cast_in": f"{name}/halut_cast_in", "cast_out": f"{name}/halut_cast_out",
            "float_in": f"{name}/halut_float_in", "float_out": f"{name}/halut_float_out"}


def initializer_name(name: str, op_input: str) -> str:
    return f"{name}.halut.{op_input}"


def _encoder_inputs(name: str, layer) -> tuple[str, list[gs.Constant]]:
    if layer.encoder == "tree":
        params = {
            "split_dims": np.ascontiguousarray(layer.split_dims, dtype=np.int64),
            "thresholds": np.ascontiguousarray(layer.thresholds, dtype=np.float32),
        }
    elif layer.encoder == "pq":
        params = {
            "vectors": np.ascontiguousarray(layer.pq_vectors, dtype=np.float32),
            "biases": np.ascontiguousarray(layer.pq_biases, dtype=np.float32),
        }
    else:
        raise ValueError(f"layer {name!r}: unknown encoder {layer.encoder!r} (expected 'tree' or 'pq')")
    return ENCODER_OPS[layer.encoder], [gs.Constant(initializer_name(name, k), v) for k, v in params.items()]


def _height_axis(op: str, tensor: gs.Tensor, name: str, opset: int) -> tuple[list[gs.Tensor], dict]:
    """Inputs and attributes of an Unsqueeze / Squeeze of axis 2 (the height a 1-D Conv's input lacks): the axes
    are an attribute before opset 13 and an input from it on."""
    if opset < 13:
        return [tensor], {"axes": [2]}
    return [tensor, gs.Constant(initializer_name(name, f"{op.lower()}_axes"), np.array([2], np.int64))], {}


def _drop_dead_weight_chain(graph: gs.Graph, tensor: gs.Tensor) -> None:
    """Remove the Constant / Identity / Cast / Transpose nodes that only produced a replaced layer's weight (no
    consumer left, not a graph output), so that the converted model does not keep the original weights."""
    if constant_value(tensor) is None:
        return
    outputs = {t.name for t in graph.outputs}
    while isinstance(tensor, gs.Variable) and not tensor.outputs and tensor.name not in outputs \
            and len(tensor.inputs) == 1:
        node = tensor.inputs[0]
        if node.op not in ("Constant", *WEIGHT_CHAIN_OPS) or node.domain not in ("", None) or len(node.outputs) != 1:
            return
        upstream = node.inputs[0] if node.inputs else None
        node.inputs.clear()
        node.outputs.clear()
        graph.nodes.remove(node)
        tensor = upstream


def rewrite_model(model: onnx.ModelProto, rewrites: list[LayerRewrite]) -> onnx.ModelProto:
    """A new model with every layer of ``rewrites`` replaced; ``model`` (with unique node names) is not changed."""
    opset = default_opset(model)
    if not opset:
        raise ValueError("the model imports no default-domain (ai.onnx) opset")
    graph = gs.import_onnx(model)
    nodes = {node.name: node for node in graph.nodes}
    tensors = graph.tensors()
    docs: dict[str, str] = {}
    used_ops: set[str] = set()
    freed: list[gs.Tensor] = []  # inputs of the replaced nodes
    for rewrite in rewrites:
        cand, layer = rewrite.candidate, rewrite.layer
        names = node_names(cand.name)
        x, y = tensors[cand.input_name], tensors[cand.output_name]
        if isinstance(x, gs.Variable) and x.dtype is None:
            # The layer's type is its weight's (ONNX types A and B alike); typing X lets shape inference go through
            # the function body when X comes from an op onnx cannot infer (ai.onnx.ml, custom domains).
            x.dtype = cand.dtype
        for old in cand.replaced_nodes:
            freed.extend(nodes[old].inputs)
            nodes[old].outputs.clear()
            nodes[old].inputs.clear()
            graph.nodes.remove(nodes[old])
        if cand.dtype != np.float32:
            x32, y32 = gs.Variable(names["float_in"], np.float32), gs.Variable(names["float_out"], np.float32)
            graph.nodes.append(gs.Node("Cast", names["cast_in"], {"to": TensorProto.FLOAT}, [x], [x32]))
            graph.nodes.append(gs.Node("Cast", names["cast_out"], {"to": helper.np_dtype_to_tensor_dtype(cand.dtype)},
                                       [y32], [y]))
            x, y = x32, y32
        encode_op, params = _encoder_inputs(cand.name, layer)
        lookup_op, encode_attrs = LOOKUP, {}
        if cand.conv is not None:
            encode_op, lookup_op = CONV_ENCODER_OPS[layer.encoder], LOOKUP_CONV
            encode_attrs = cand.conv.attributes()
            if cand.conv.conv1d:
                image, image_out = gs.Variable(names["image"], np.float32), gs.Variable(names["image_out"], np.float32)
                inputs, attrs = _height_axis("Unsqueeze", x, cand.name, opset)
                graph.nodes.append(gs.Node("Unsqueeze", names["unsqueeze"], attrs, inputs, [image]))
                inputs, attrs = _height_axis("Squeeze", image_out, cand.name, opset)
                graph.nodes.append(gs.Node("Squeeze", names["squeeze"], attrs, inputs, [y]))
                x, y = image, image_out
        codes = gs.Variable(names["codes"])
        lookup_params = {
            "lut": np.ascontiguousarray(layer.lut_q, dtype=np.int8),
            "scale": np.ascontiguousarray(layer.scale, dtype=np.float32),
            "offset": np.ascontiguousarray(layer.offset, dtype=np.float32),
        }
        graph.nodes.append(gs.Node(encode_op, names["encode"], attrs=encode_attrs, inputs=[x, *params],
                                   outputs=[codes], domain=DOMAIN))
        graph.nodes.append(
            gs.Node(
                lookup_op, names["lookup"], domain=DOMAIN, outputs=[y],
                inputs=[codes, *(gs.Constant(initializer_name(cand.name, k), v) for k, v in lookup_params.items())],
            )
        )
        docs[names["encode"]] = docs[names["lookup"]] = rewrite.doc_string
        used_ops.update((encode_op, lookup_op))
    for tensor in freed:  # after every rewrite, so that the activations the encoders now read are not taken
        _drop_dead_weight_chain(graph, tensor)
    graph.toposort()
    out = gs.export_onnx(graph)

    for node in out.graph.node:
        if node.name in docs:
            node.doc_string = docs[node.name]
    out.ir_version = model.ir_version
    del out.opset_import[:]
    out.opset_import.extend(op for op in model.opset_import if op.domain != DOMAIN)
    if used_ops:
        out.opset_import.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    for field in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(out, field, getattr(model, field))
    del out.metadata_props[:]
    out.metadata_props.extend(model.metadata_props)
    existing = {(f.domain, f.name) for f in out.functions}
    out.functions.extend(f for f in functions_for(used_ops, opset) if (f.domain, f.name) not in existing)
    return out
