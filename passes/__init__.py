"""Graph passes that rewrite an ONNX graph (onnx + onnx-graphsurgeon). Installed as ``halut_onnx.passes``."""

from .candidates import LayerCandidate, SkippedLayer, find_layers, name_nodes
from .functions import functions_for
from .halut_rewrite import LayerRewrite, initializer_name, node_names, rewrite_model

__all__ = [
    "LayerCandidate",
    "LayerRewrite",
    "SkippedLayer",
    "find_layers",
    "functions_for",
    "initializer_name",
    "name_nodes",
    "node_names",
    "rewrite_model",
]
