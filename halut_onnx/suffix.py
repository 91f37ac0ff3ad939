"""The part of a model downstream of one tensor: all that a layer converted alone changes.

The sensitivity analysis runs the model once per (layer, setting) with that layer alone converted. Everything
upstream of the layer's input is the original's, so only the nodes that read the input (directly or through other
nodes) need to run, fed with the original's values of the tensors they read from upstream: the *boundary*. On
PP-OCR the part downstream of a layer holds half of the model's Conv and MatMul nodes on average.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper


def downstream(graph: onnx.GraphProto, start: str, outputs: Sequence[str]) -> tuple[list[int], list[str]] | None:
    """The nodes that read ``start`` directly or through other nodes and that ``outputs`` need (indices, graph
    order), and the boundary: the tensors they read that are made upstream of them, ``start`` first (graph inputs
    among them; initializers not). None when the graph has a node with a subgraph (If, Loop, Scan): its body may
    read tensors by name, which no node input shows."""
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for node in graph.node
           for a in node.attribute):
        return None
    consumers: dict[str, list[int]] = {}
    producer: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
        for name in node.output:
            producer[name] = i
    after: set[int] = set()
    stack = [start]
    while stack:
        for i in consumers.get(stack.pop(), ()):
            if i not in after:
                after.add(i)
                stack.extend(graph.node[i].output)
    needed: set[int] = set()
    stack = [producer[name] for name in outputs if producer.get(name) in after]
    while stack:
        i = stack.pop()
        if i in needed:
            continue
        needed.add(i)
        stack.extend(producer[name] for name in graph.node[i].input if producer.get(name) in after)
    nodes = sorted(needed)
    constants = {t.name for t in graph.initializer}
    made = {name for i in nodes for name in graph.node[i].output}
    boundary = [start]
    for i in nodes:
        for name in graph.node[i].input:
            if name and name not in made and name not in constants and name not in boundary:
                boundary.append(name)
    return nodes, boundary


def suffix_model(model: onnx.ModelProto, nodes: Sequence[int], boundary: dict[str, np.ndarray],
                 outputs: Sequence[str]) -> onnx.ModelProto:
    """``model`` cut to ``nodes`` (from ``downstream``), with the boundary tensors as its inputs (dtype and rank
    of the example values in ``boundary``, sizes left open) and ``outputs`` as its outputs, with the initializers
    the nodes read and all the model-local functions."""
    graph = model.graph
    keep = [graph.node[i] for i in nodes]
    read = {name for node in keep for name in node.input}
    inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), [None] * value.ndim)
              for name, value in boundary.items()]
    outs = [o for o in graph.output if o.name in outputs]
    sub = helper.make_graph(keep, f"{graph.name}_suffix", inputs, outs,
                            [t for t in graph.initializer if t.name in read])
    out = helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version)
    out.functions.extend(model.functions)
    return out
