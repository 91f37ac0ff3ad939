"""Find the layers a Halut rewrite can replace: MatMul / Gemm nodes with a constant 2-D weight, and 1-D or 2-D Conv
nodes (group 1) with a constant weight. Constant: an initializer or a Constant node's output, also through the
value-preserving ops of WEIGHT_CHAIN_OPS.

A layer is ``Y = A @ W_eff + b_eff`` with ``A`` an activation (float32, float16 or float64, rank >= 2), ``W_eff``
a (D, M) constant and ``b_eff`` an optional (M,) constant: Gemm's ``alpha * op(B)`` and ``beta * C``, or a MatMul
whose only consumer is an Add of a constant bias (folded into the lookup's offset). A Conv is the same product over
its patch rows (docs/ops.md, "Conv ops"): ``W_eff = W.reshape(Cout, Cin * kh * kw).T`` and its bias input; a 1-D
Conv is the 2-D one with kernel ``(1, k)`` over its input seen as ``[B, Cin, 1, L]``. Every other MatMul / Gemm /
Conv node is reported as skipped with a reason; all other nodes are never touched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

#: ops reported in the skipped list when they cannot be converted (all others are not layers)
LAYER_OPS = ("MatMul", "Gemm", "Conv")

#: other default-domain ops that multiply by a constant weight: no Halut rewrite replaces them, and a model made of
#: them should say so in the skipped list rather than report no layer at all
OTHER_WEIGHT_OPS = {
    "ConvTranspose": "ConvTranspose is not converted (the Halut ops replace MatMul, Gemm and Conv)",
    "Einsum": "Einsum is not converted (the Halut ops replace MatMul, Gemm and Conv)",
    **dict.fromkeys(("LSTM", "GRU", "RNN"), "recurrent layer: its weights multiply inside the op at every time "
                                             "step, which no lookup replaces"),
    **dict.fromkeys(("MatMulInteger", "QLinearMatMul", "ConvInteger", "QLinearConv"),
                    "an integer (quantized) layer; convert the float model"),
}

#: the float types a layer may compute in. The Halut ops take float32; the rewrite casts a float16 or float64
#: layer's input to float32 and the lookup's output back, as onnxruntime's CPU provider itself does around the
#: float16 ops it lacks, so a float16 model converts as it is (docs/design.md, "Float types").
LAYER_FLOAT_TYPES = ("float32", "float16", "float64")


@dataclass(frozen=True)
class ConvGeometry:
    """The geometry attributes of a 2-D Conv, as the Halut conv encode ops take them (defaults filled in).

    ``conv1d``: the node is a 1-D Conv, this the same product over its input ``[B, Cin, L]`` unsqueezed to
    ``[B, Cin, 1, L]`` (kernel ``(1, k)``, no padding in the height); its output is squeezed back to ``[B, M, Lo]``.
    """

    kernel_shape: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)
    auto_pad: str = "NOTSET"
    conv1d: bool = False

    def as_nchw(self, x):
        """An input of the node (numpy array or torch tensor) as the NCHW image the 2-D geometry applies to."""
        return x[:, :, None, :] if self.conv1d else x

    def kwargs(self) -> dict:
        """Keyword arguments of ``halut_onnx.reference.im2col``."""
        return dict(kernel_shape=self.kernel_shape, strides=self.strides, pads=self.pads, dilations=self.dilations,
                    auto_pad=self.auto_pad)

    def attributes(self) -> dict:
        """Node attributes of the conv encode ops (pads only with auto_pad NOTSET, as ONNX Conv wants)."""
        attrs = dict(kernel_shape=list(self.kernel_shape), strides=list(self.strides),
                     dilations=list(self.dilations), auto_pad=self.auto_pad)
        if self.auto_pad == "NOTSET":
            attrs["pads"] = list(self.pads)
        return attrs


@dataclass
class LayerCandidate:
    """One replaceable layer: ``output = input @ weight + bias`` (rows of ``input``'s last dim)."""

    name: str  # the (unique) name of the MatMul / Gemm node
    op_type: str
    input_name: str  # A
    output_name: str  # the tensor the lookup will produce (the folded Add's output when there is one)
    weight: np.ndarray  # (D, M) float32 (whatever the model's type), alpha and transB applied
    bias: np.ndarray | None  # (M,) float32, beta applied; None when the layer has no bias
    weight_name: str  # the initializer (or Constant output) the weight is computed from
    bias_node: str | None = None  # the node folded into the lookup, if any: a bias Add (a Conv's: or BatchNormalization)
    input_rank: int | None = None  # A's rank when shape inference knows it
    description: str = ""  # what the rewrite replaces, for the lookup node's doc_string
    conv: ConvGeometry | None = None  # set for a Conv: the rows are its patches (input NCHW, output NCHW)
    dtype: np.dtype = np.dtype(np.float32)  # the layer's type in the model (A, weight, output): LAYER_FLOAT_TYPES

    @property
    def D(self) -> int:
        return int(self.weight.shape[0])

    @property
    def M(self) -> int:
        return int(self.weight.shape[1])

    @property
    def replaced_nodes(self) -> list[str]:
        return [self.name] + ([self.bias_node] if self.bias_node else [])


@dataclass
class SkippedLayer:
    name: str
    op_type: str
    reason: str


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every top-level node a unique non-empty name, in place (``<op>_<index>`` for unnamed or clashing ones).

    Layers are selected, named and reported by node name, so names must identify nodes.
    """
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            base = node.name or node.op_type
            node.name = f"{base}_{index}"
            while node.name in seen:
                node.name += "_"
        seen.add(node.name)


#: value-preserving ops that exporters put between a weight and its layer: torch writes Identity for a parameter
#: shared by several layers, fp16-stored models Cast their weights up, some exporters Transpose a Linear's weight
WEIGHT_CHAIN_OPS = ("Identity", "Cast", "Transpose")


def constant_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of an initializer or of a Constant node's output, also through WEIGHT_CHAIN_OPS on one; None for
    an activation."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    if len(tensor.inputs) != 1 or tensor.inputs[0].domain not in ("", None):
        return None
    node = tensor.inputs[0]
    if node.op == "Constant":
        value = node.attrs.get("value")
        return np.asarray(value.values) if isinstance(value, gs.Constant) else None
    if node.op not in WEIGHT_CHAIN_OPS or len(node.inputs) != 1:
        return None
    value = constant_value(node.inputs[0])
    if value is None or node.op == "Identity":
        return value
    if node.op == "Transpose":
        perm = node.attrs.get("perm")
        return np.ascontiguousarray(np.transpose(value, None if perm is None else [int(a) for a in perm]))
    to = node.attrs.get("to")
    if to is None:
        return None
    return value.astype(onnx.helper.tensor_dtype_to_np_dtype(int(to)))


def constant_source(tensor: gs.Tensor) -> gs.Tensor:
    """The initializer or Constant output that ``tensor`` is computed from through WEIGHT_CHAIN_OPS (itself if
    none): the name onnxruntime's optimised graph keeps, its optimiser removing the Identity nodes."""
    while len(tensor.inputs) == 1 and tensor.inputs[0].op in WEIGHT_CHAIN_OPS and len(tensor.inputs[0].inputs) == 1:
        tensor = tensor.inputs[0].inputs[0]
    return tensor


def _rank(tensor: gs.Tensor) -> int | None:
    shape = getattr(tensor, "shape", None)
    return None if shape is None else len(shape)


def _bias_vector(value: np.ndarray, n: int, rank: int, axis: int) -> np.ndarray | None:
    """``value`` as an (n,) vector when adding it to an output of rank ``rank`` adds one entry per index along
    ``axis`` (a MatMul's last axis, a Conv's channel axis 1), the same to every other position; else None."""
    if value.ndim > rank:  # adding it would broadcast the output to a higher rank
        return None
    full = (1,) * (rank - value.ndim) + value.shape  # numpy broadcasting aligns shapes on the right
    axis %= rank
    if any(d != 1 for i, d in enumerate(full) if i != axis) or full[axis] not in (1, n):
        return None
    return np.broadcast_to(value.reshape(-1), (n,)).astype(np.float32)


def _follower(out: gs.Tensor, graph_outputs: set[str]) -> gs.Node | None:
    """The default-domain node that alone reads a layer's output ``out`` (not a graph output): what the layer's
    lookup may fold in."""
    if out.name in graph_outputs or len(out.outputs) != 1:
        return None
    node = out.outputs[0]
    return node if node.domain in ("", None) else None


def _added_bias(node: gs.Node, y: gs.Tensor, n: int, rank: int, axis: int) -> np.ndarray | None:
    """The (n,) bias ``node`` adds to ``y`` when it is an Add of ``y`` and a float constant that is the same along
    every axis but ``axis`` (``_bias_vector``); else None."""
    if node.op != "Add" or len(node.inputs) != 2:
        return None
    other = node.inputs[1] if node.inputs[0] is y else node.inputs[0]
    value = None if other is y else constant_value(other)
    if value is None or value.dtype.name not in LAYER_FLOAT_TYPES:
        return None
    return _bias_vector(value, n, rank, axis)


def _type_name(dtype) -> str:
    if isinstance(dtype, (int, np.integer)):  # graphsurgeon keeps the ONNX enum of a type numpy lacks (bfloat16)
        return onnx.TensorProto.DataType.Name(int(dtype)).lower()
    return np.dtype(dtype).name


def _type_problem(what: str, dtype) -> str | None:
    """Why a tensor of ``dtype`` cannot be part of a layer, or None when it can (LAYER_FLOAT_TYPES)."""
    name = _type_name(dtype)
    if name in LAYER_FLOAT_TYPES:
        return None
    return f"{what} is {name}; only float32, float16 and float64 layers are converted"


def _check_activation(node: gs.Node, a: gs.Tensor) -> str | None:
    if constant_value(a) is not None:
        return "input A is a constant (constant folding, not a lookup, removes this node)"
    dtype = getattr(a, "dtype", None)
    problem = None if dtype is None else _type_problem("input A", dtype)
    if problem:
        return problem
    rank = _rank(a)
    if rank is not None and rank < 2:
        return f"input A has rank {rank}; needs rank >= 2"
    return None


def _mixed_types(a: gs.Tensor, weight: np.ndarray, what: str) -> str | None:
    """Why A and the weight do not make a layer of one type (ONNX types them alike; onnxruntime refuses the
    model otherwise), or None."""
    dtype = getattr(a, "dtype", None)
    if dtype is not None and _type_name(dtype) != weight.dtype.name:
        return f"input A is {_type_name(dtype)} but {what} is {weight.dtype.name}"
    return None


def _dequantized(tensor: gs.Tensor) -> bool:
    """``tensor`` is a DequantizeLinear of a constant: a weight of a QDQ-quantized model."""
    producer = tensor.inputs[0] if len(tensor.inputs) == 1 else None
    return producer is not None and producer.op == "DequantizeLinear" and bool(producer.inputs) \
        and constant_value(producer.inputs[0]) is not None


QUANTIZED = "a DequantizeLinear of an integer constant (a quantized model); convert the float model"


def _weight(node: gs.Node, b: gs.Tensor) -> tuple[np.ndarray | None, str | None]:
    value = constant_value(b)
    if value is None and _dequantized(b):
        return None, f"input B is {QUANTIZED}"
    if value is None:
        return None, "input B is an activation (activation x activation product)"
    if value.ndim != 2:
        return None, f"constant B has rank {value.ndim}; needs a 2-D weight"
    problem = _type_problem("constant B", value.dtype) or _mixed_types(node.inputs[0], value, "constant B")
    if problem:
        return None, problem
    return value, None


def _channel_affine(node: gs.Node, y: gs.Tensor, Cout: int, rank: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(a, b)`` when ``node`` (a ``_follower``) maps a Conv's output ``y`` (rank ``rank``, channels on axis 1) to
    ``a * y + b`` per output channel with constants: an Add of a per-channel (or scalar) constant, or a
    BatchNormalization in inference mode. None for anything else."""
    bias = _added_bias(node, y, Cout, rank, 1)
    if bias is not None:
        return np.ones(Cout, np.float32), bias
    if node.op == "BatchNormalization" and len(node.inputs) == 5 and not int(node.attrs.get("training_mode", 0)):
        if any(o.outputs for o in node.outputs[1:]):  # running statistics read downstream: a training graph
            return None
        values = [constant_value(t) for t in node.inputs[1:]]
        if any(v is None or v.shape != (Cout,) for v in values):
            return None
        scale, shift, mean, var = (v.astype(np.float64) for v in values)
        a = scale / np.sqrt(var + float(node.attrs.get("epsilon", 1e-5)))
        return a.astype(np.float32), (shift - mean * a).astype(np.float32)
    return None


def _matmul(node: gs.Node, graph_outputs: set[str]) -> LayerCandidate | str:
    a, b = node.inputs[0], node.inputs[1]
    reason = _check_activation(node, a)
    if reason:
        return reason
    weight, reason = _weight(node, b)
    if reason:
        return reason
    out = node.outputs[0]
    candidate = LayerCandidate(
        name=node.name, op_type="MatMul", input_name=a.name, output_name=out.name,
        weight=weight.astype(np.float32, copy=False), bias=None, weight_name=constant_source(b).name,
        input_rank=_rank(a), dtype=weight.dtype,
    )
    # Fold a following bias Add: the MatMul's only consumer, the other operand a constant per-column vector.
    add = _follower(out, graph_outputs)
    bias = None if add is None else _added_bias(add, out, candidate.M, candidate.input_rank or 2, -1)
    if bias is not None:
        candidate.bias = bias
        candidate.bias_node = add.name
        candidate.output_name = add.outputs[0].name
    candidate.description = f"MatMul {node.name!r} (B {b.name!r} {list(weight.shape)})" + (
        f" + Add {candidate.bias_node!r} (bias folded)" if candidate.bias_node else ""
    )
    return candidate


def _gemm(node: gs.Node) -> LayerCandidate | str:
    if int(node.attrs.get("transA", 0)):
        return "Gemm with transA=1 is not supported"
    a, b = node.inputs[0], node.inputs[1]
    reason = _check_activation(node, a)
    if reason:
        return reason
    weight, reason = _weight(node, b)
    if reason:
        return reason
    alpha = np.float32(node.attrs.get("alpha", 1.0))
    beta = np.float32(node.attrs.get("beta", 1.0))
    dtype = weight.dtype
    weight = weight.astype(np.float32, copy=False)
    if int(node.attrs.get("transB", 0)):
        weight = weight.T
    weight = np.ascontiguousarray(weight * alpha if alpha != 1 else weight, dtype=np.float32)
    bias = None
    if len(node.inputs) > 2 and node.inputs[2].name:
        value = constant_value(node.inputs[2])
        if value is None:
            return "bias C is an activation"
        problem = _type_problem("bias C", value.dtype)
        if problem:
            return problem
        bias = _bias_vector(value, weight.shape[1], 2, -1)
        if bias is None:
            return f"bias C of shape {tuple(value.shape)} differs between rows"
        bias = (bias * beta).astype(np.float32) if beta != 1 else bias
    attrs = ", ".join(f"{k}={node.attrs[k]}" for k in ("transB", "alpha", "beta") if k in node.attrs)
    return LayerCandidate(
        name=node.name, op_type="Gemm", input_name=a.name, output_name=node.outputs[0].name, weight=weight,
        bias=bias, weight_name=constant_source(b).name, input_rank=2, dtype=dtype,
        description=f"Gemm {node.name!r} (B {b.name!r} {list(np.shape(constant_value(b)))}"
        + (f", {attrs}" if attrs else "") + (", bias C" if bias is not None else "") + ")",
    )


def _conv(node: gs.Node, graph_outputs: set[str]) -> LayerCandidate | str:
    x, w = node.inputs[0], node.inputs[1]
    reason = _check_activation(node, x)
    if reason:
        return reason
    weight = constant_value(w)
    if weight is None:
        return f"weight W is {QUANTIZED}" if _dequantized(w) else "weight W is an activation"
    problem = _type_problem("weight W", weight.dtype) or _mixed_types(x, weight, "weight W")
    if problem:
        return problem
    dtype, weight = weight.dtype, weight.astype(np.float32, copy=False)
    if weight.ndim not in (3, 4):
        return f"{weight.ndim - 2}-D Conv (weight rank {weight.ndim}); only 1-D and 2-D Conv are converted"
    conv1d = weight.ndim == 3
    rank = _rank(x)
    if rank is not None and rank != weight.ndim:
        layout = "NCL (rank 3)" if conv1d else "NCHW (rank 4)"
        return f"input X has rank {rank}; a {weight.ndim - 2}-D Conv needs {layout}"
    group = int(node.attrs.get("group", 1))
    Cout, per_group, *kernel_dims = (int(d) for d in weight.shape)
    taps = int(np.prod(kernel_dims))
    if group != 1:
        if per_group == 1:
            return (f"depthwise Conv (group={group}, D={taps} per output channel): too few inputs per "
                    "output for table lookup (accuracy collapses) and already cheap")
        return (f"grouped Conv (group={group}, D={per_group * taps} per group) is not converted: "
                "it would need one encoder and LUT per group (docs/conv.md)")
    kernel = tuple(int(k) for k in node.attrs.get("kernel_shape", kernel_dims))
    if kernel != tuple(kernel_dims):
        return f"kernel_shape {list(kernel)} differs from the weight's {kernel_dims}"
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    spatial = len(kernel_dims)
    pads = tuple(int(p) for p in node.attrs.get("pads", (0,) * 2 * spatial))
    strides = tuple(int(v) for v in node.attrs.get("strides", (1,) * spatial))
    dilations = tuple(int(v) for v in node.attrs.get("dilations", (1,) * spatial))
    if len(pads) != 2 * spatial or min(pads) < 0:
        return f"pads {list(pads)} are not {2 * spatial} ints >= 0"
    if len(strides) != spatial or len(dilations) != spatial:
        return f"strides {list(strides)} or dilations {list(dilations)} do not have {spatial} values"
    if conv1d:  # the same product over a height-1 image: nothing to pad, stride or dilate in the height
        kernel, strides, dilations, pads = (1, *kernel), (1, *strides), (1, *dilations), (0, pads[0], 0, pads[1])
    # ONNX pads are [top, left, bottom, right] (x1_begin, x2_begin, x1_end, x2_end): the ops' order.
    geometry = ConvGeometry(kernel_shape=kernel, strides=strides, pads=pads, dilations=dilations,
                            auto_pad=auto_pad if auto_pad else "NOTSET", conv1d=conv1d)
    if geometry.auto_pad not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
        return f"auto_pad {geometry.auto_pad!r} is not a Conv mode"
    bias = None
    if len(node.inputs) > 2 and node.inputs[2].name:
        value = constant_value(node.inputs[2])
        if value is None:
            return "bias B is an activation"
        bias = np.asarray(value, dtype=np.float32).reshape(-1)
        if bias.shape != (Cout,):
            return f"bias B has shape {list(value.shape)}, expected [{Cout}]"
    D = per_group * taps
    W_eff = np.ascontiguousarray(weight.reshape(Cout, D).T)
    description = (f"Conv {node.name!r} (W {w.name!r} {list(weight.shape)}, "
                   + ("1-D, as 2-D over [B, Cin, 1, L]: " if conv1d else "") + f"{geometry.attributes()}"
                   + (", bias B" if bias is not None else "") + ")")
    # Fold the bias Add or BatchNormalization that follows (exporters such as paddle2onnx write a Conv's bias as an
    # Add): onnxruntime fuses it into the original Conv, so left outside the lookup it would be one more pass over
    # the output that only the converted model pays; folded, the layer also learns the output the model uses.
    out, folded = node.outputs[0], None
    follower = _follower(out, graph_outputs)
    if follower is not None:
        affine = _channel_affine(follower, out, Cout, weight.ndim)
        if affine is not None:
            a, b = affine
            W_eff = np.ascontiguousarray(W_eff * a, dtype=np.float32)
            bias = (b if bias is None else a * bias + b).astype(np.float32)
            folded = follower
            description += f" + {follower.op} {follower.name!r} (folded)"
    return LayerCandidate(
        name=node.name, op_type="Conv", input_name=x.name,
        output_name=(folded or node).outputs[0].name, weight=W_eff, bias=bias, weight_name=constant_source(w).name,
        bias_node=folded.name if folded is not None else None, input_rank=weight.ndim, description=description,
        conv=geometry, dtype=dtype,
    )


def find_layers(model: onnx.ModelProto) -> tuple[list[LayerCandidate], list[SkippedLayer]]:
    """The replaceable layers of ``model``'s main graph, and the MatMul / Gemm / Conv nodes that are not.

    ``model`` should carry inferred shapes (``onnx.shape_inference``) so that A's dtype and rank can be checked;
    nodes must have unique names (``name_nodes``).
    """
    graph = gs.import_onnx(model)
    graph_outputs = {t.name for t in graph.outputs}
    candidates: list[LayerCandidate] = []
    skipped: list[SkippedLayer] = []
    for node in graph.nodes:
        if node.domain not in ("", None):
            continue
        if node.op in OTHER_WEIGHT_OPS and any(constant_value(t) is not None or _dequantized(t)
                                               for t in node.inputs if t.name):
            skipped.append(SkippedLayer(node.name, node.op, OTHER_WEIGHT_OPS[node.op]))
            continue
        if node.op not in LAYER_OPS:
            continue
        if node.op == "Conv":
            found = _conv(node, graph_outputs)
        elif node.op == "MatMul":
            found = _matmul(node, graph_outputs)
        else:
            found = _gemm(node)
        if isinstance(found, str):
            skipped.append(SkippedLayer(node.name, node.op, found))
            continue
        if found.dtype != np.float32:
            found.description += f" in {found.dtype.name}, cast to float32 around the Halut ops"
        candidates.append(found)
    skipped.extend(_subgraph_layers(model.graph))
    return candidates, skipped


def _subgraph_layers(graph: onnx.GraphProto, path: str = "") -> list[SkippedLayer]:
    """The MatMul / Gemm / Conv nodes inside the subgraphs of If / Loop / Scan nodes, as skipped layers (named
    ``<node>/<attribute>/<inner node>``): the rewrite replaces main-graph layers only, and a model whose layers all
    sit in a loop body should say so rather than report no layer at all."""
    found = []
    for node in graph.node:
        for attr in node.attribute:
            bodies = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for body in bodies:
                prefix = f"{path}{node.name or node.op_type}/{attr.name}/"
                for index, inner in enumerate(body.node):
                    if inner.op_type in LAYER_OPS and inner.domain in ("", "ai.onnx"):
                        found.append(SkippedLayer(
                            prefix + (inner.name or f"{inner.op_type}_{index}"), inner.op_type,
                            f"inside the {attr.name!r} subgraph of {node.op_type} {node.name!r}: only layers of "
                            "the main graph are converted"))
                found.extend(_subgraph_layers(body, prefix))
    return found
