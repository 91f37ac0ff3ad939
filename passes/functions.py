"""Model-local ONNX functions for the Halut ops: the same computation as docs/ops.md, in standard ONNX ops.

A converted model carries one FunctionProto per custom op it uses (same domain and name as the op). onnxruntime runs
the registered kernel when our library is loaded and inlines the function body when it is not, so a converted model
runs anywhere (slowly), and Netron shows the ops' named inputs and documentation.

The bodies follow the contract step by step so that the fallback agrees with the kernels: the tree encoder and the
lookup exactly (comparisons and an exact int32 sum, then ``fl32(scale * S) + offset`` as two rounded ops); the PQ
encoder sums ``x * v`` with one MatMul whose order is not the contract's, so a score within a rounding error of a tie
may pick the other prototype.

The bodies use opset 11+ forms only, written for the model's own default-domain opset (a function's imports must
agree with the model's).
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from halut_onnx.ops import (
    DOMAIN,
    ENCODE_PQ,
    ENCODE_PQ_CONV,
    ENCODE_TREE,
    ENCODE_TREE_CONV,
    LOOKUP,
    LOOKUP_CONV,
    NUM_CODES,
    TREE_DEPTH,
    TREE_NODES,
)

MIN_OPSET = 11  # Range, negative Gather axes and input-form Slice


def _const(name: str, values, dtype=TensorProto.INT64, dims=None) -> onnx.NodeProto:
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    dims = [len(values)] if dims is None else dims
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, dtype, dims, values))


def _scalar(name: str, value: int) -> onnx.NodeProto:
    return _const(name, [value], dims=[])


def _function(name: str, inputs, outputs, nodes, opset: int, doc: str) -> onnx.FunctionProto:
    return helper.make_function(
        DOMAIN, name, inputs, outputs, nodes, [helper.make_opsetid("", opset)], doc_string=doc
    )


def lookup_function(opset: int) -> onnx.FunctionProto:
    """HalutLookup(codes, lut, scale, offset) -> Y.

    S contracts the one-hot codes (..., C, 16) with the table as float (C, 16, M) (Einsum; Reshape + MatMul before
    opset 12): every product is 0 or an int8 entry and every partial sum an integer below 2^24 in magnitude, so the
    float sum is exact in any order, as the contract's int32 sum, and memory stays O(rows * (C * 16 + M)), not
    O(rows * C * M) as a Gather of the entries would need.
    """
    n = helper.make_node
    nodes = [
        _scalar("zero", 0),
        _scalar("one", 1),
        _scalar("sixteen", NUM_CODES),
        _const("start0", [0]),
        _const("one_dim", [1]),
        _const("two_dim", [2]),
        _const("end_minus1", [-1]),
        _const("codes_dim", [NUM_CODES]),
        n("Range", ["zero", "sixteen", "one"], ["k"]),  # 0..15
        n("Cast", ["codes"], ["codes64"], to=TensorProto.INT64),
        n("Mod", ["codes64", "sixteen"], ["low4"]),  # == codes & 15 for the non-negative codes
        *(  # Unsqueeze's axes moved from an attribute to an input in opset 13
            [n("Unsqueeze", ["low4", "end_minus1"], ["low4_col"])]
            if opset >= 13
            else [n("Unsqueeze", ["low4"], ["low4_col"], axes=[-1])]
        ),  # (..., C, 1)
        n("Equal", ["low4_col", "k"], ["hit"]),  # (..., C, 16)
        n("Cast", ["hit"], ["onehot3"], to=TensorProto.FLOAT),
        n("Transpose", ["lut"], ["lut_ckm"], perm=[1, 2, 0]),
        n("Cast", ["lut_ckm"], ["lut_float"], to=TensorProto.FLOAT),  # (C, 16, M)
        *(
            # Einsum keeps the leading dims visible to shape inference
            [n("Einsum", ["onehot3", "lut_float"], ["S_float"], equation="...ck,ckm->...m")]
            if opset >= 12
            else [
                n("Shape", ["lut"], ["lut_shape"]),
                n("Slice", ["lut_shape", "one_dim", "two_dim"], ["C_1d"]),
                n("Mul", ["C_1d", "codes_dim"], ["C16_1d"]),
                n("Shape", ["low4"], ["codes_shape"]),
                n("Slice", ["codes_shape", "start0", "end_minus1"], ["lead"]),
                n("Concat", ["lead", "C16_1d"], ["onehot_shape"], axis=0),  # C * 16, not -1: rows may be 0
                n("Reshape", ["onehot3", "onehot_shape"], ["onehot"]),  # (..., C * 16), column 16 * c + k
                n("Flatten", ["lut_float"], ["lut_rows"], axis=2),  # (C * 16, M), row 16 * c + k
                n("MatMul", ["onehot", "lut_rows"], ["S_float"]),
            ]
        ),
        n("Mul", ["S_float", "scale"], ["scaled"]),
        n("Add", ["scaled", "offset"], ["Y"]),
    ]
    doc = (
        "Sum over codebooks of int8 look-up-table entries, scaled per output column (docs/ops.md, HalutLookup).\n"
        "codes: uint8 [..., C]; lut: int8 [M, C, 16]; scale, offset: float32 [M] -> Y: float32 [..., M].\n"
        "S[n, m] = sum_c lut[m, c, codes[n, c] & 15] (exact); Y = fl32(fl32(scale * float(S)) + offset)."
    )
    return _function(LOOKUP, ["codes", "lut", "scale", "offset"], ["Y"], nodes, opset, doc)


def encode_tree_function(opset: int) -> onnx.FunctionProto:
    """HalutEncodeTree(X, split_dims, thresholds) -> codes."""
    n = helper.make_node
    nodes = [
        _scalar("one", 1),
        _scalar("zero", 0),
        _scalar("two", 2),
        _scalar("nodes_per_tree", TREE_NODES),
        _const("flat", [-1]),
        n("Shape", ["split_dims"], ["dims_shape"]),
        n("Gather", ["dims_shape", "zero"], ["C"], axis=0),
        n("Range", ["zero", "C", "one"], ["c"]),
        n("Mul", ["c", "nodes_per_tree"], ["tree_base"]),  # tree c's thresholds start at 15 * c
        n("Reshape", ["thresholds", "flat"], ["thresholds_flat"]),
    ]
    node = None  # the node index within each tree, (..., C); level 0 starts at the root (0)
    for level in range(TREE_DEPTH):
        p = f"l{level}_"
        nodes += [
            _scalar(p + "level", level),
            _scalar(p + "first", (1 << level) - 1),
            n("Gather", ["split_dims", p + "level"], [p + "dims"], axis=1),  # (C,)
            n("Gather", ["X", p + "dims"], [p + "x"], axis=-1),  # (..., C)
            n("Add", ["tree_base", p + "first"], [p + "level_base"]),
        ]
        if node is None:
            t_idx = p + "level_base"
        else:
            nodes.append(n("Add", [node, p + "level_base"], [p + "t_idx"]))
            t_idx = p + "t_idx"
        nodes += [
            n("Gather", ["thresholds_flat", t_idx], [p + "t"], axis=0),
            n("Greater", [p + "x", p + "t"], [p + "gt"]),  # NaN compares false: goes left
            n("Cast", [p + "gt"], [p + "bit"], to=TensorProto.INT64),
        ]
        if node is None:
            node = p + "bit"
        else:
            nodes += [n("Mul", [node, "two"], [p + "twice"]), n("Add", [p + "twice", p + "bit"], [p + "node"])]
            node = p + "node"
    nodes.append(n("Cast", [node], ["codes"], to=TensorProto.UINT8))
    doc = (
        "MADDNESS encoding by C balanced depth-4 decision trees (docs/ops.md, HalutEncodeTree).\n"
        "X: float32 [..., D]; split_dims: int64 [C, 4]; thresholds: float32 [C, 15] -> codes: uint8 [..., C].\n"
        "node = 0; per level l: node = 2 * node + (X[split_dims[c, l]] > thresholds[c, 2^l - 1 + node])."
    )
    return _function(ENCODE_TREE, ["X", "split_dims", "thresholds"], ["codes"], nodes, opset, doc)


def encode_pq_function(opset: int) -> onnx.FunctionProto:
    """HalutEncodePQ(X, vectors, biases) -> codes, by one MatMul with a block-diagonal (D, C * 16) matrix."""
    n = helper.make_node
    nodes = [
        _scalar("one", 1),
        _scalar("zero", 0),
        _const("as_column", [-1, 1]),
        _const("mask_3d", [0, 0, 1]),
        _const("vectors_3d", [0, 1, -1]),
        _const("merge_last", [0, -1]),
        _const("one_dim", [1]),
        _const("codes_dim", [NUM_CODES]),
        _const("flat", [-1]),
        _const("start0", [0]),
        _const("end_minus1", [-1]),
        n("Shape", ["vectors"], ["v_shape"]),
        n("Gather", ["v_shape", "one"], ["D"], axis=0),
        n("Shape", ["biases"], ["b_shape"]),
        n("Gather", ["b_shape", "zero"], ["C"], axis=0),
        # bounds[c] = c * (D // C) + min(c, D % C): the slice rule of docs/ops.md
        n("Div", ["D", "C"], ["q"]),
        n("Mod", ["D", "C"], ["r"]),
        n("Range", ["zero", "C", "one"], ["c"]),
        n("Add", ["c", "one"], ["c_next"]),
        n("Mul", ["c", "q"], ["c_q"]),
        n("Less", ["c", "r"], ["c_lt_r"]),
        n("Where", ["c_lt_r", "c", "r"], ["c_r"]),  # Min takes no integers before opset 12
        n("Add", ["c_q", "c_r"], ["start"]),
        n("Mul", ["c_next", "q"], ["cn_q"]),
        n("Less", ["c_next", "r"], ["cn_lt_r"]),
        n("Where", ["cn_lt_r", "c_next", "r"], ["cn_r"]),
        n("Add", ["cn_q", "cn_r"], ["end"]),
        n("Range", ["zero", "D", "one"], ["d"]),
        n("Reshape", ["d", "as_column"], ["d_col"]),  # (D, 1)
        n("Less", ["d_col", "start"], ["before"]),
        n("Not", ["before"], ["from_start"]),
        n("Less", ["d_col", "end"], ["to_end"]),
        n("And", ["from_start", "to_end"], ["in_slice"]),  # (D, C)
        n("Cast", ["in_slice"], ["mask"], to=TensorProto.FLOAT),
        n("Reshape", ["mask", "mask_3d"], ["mask3"]),  # (D, C, 1)
        n("Transpose", ["vectors"], ["v_t"], perm=[1, 0]),
        n("Reshape", ["v_t", "vectors_3d"], ["v3"]),  # (D, 1, 16)
        n("Mul", ["mask3", "v3"], ["block3"]),
        n("Reshape", ["block3", "merge_last"], ["block"]),  # (D, C * 16), column c * 16 + k
        n("MatMul", ["X", "block"], ["dots"]),
        n("Reshape", ["biases", "flat"], ["biases_flat"]),
        n("Add", ["dots", "biases_flat"], ["scores_flat"]),
        n("Shape", ["X"], ["x_shape"]),
        n("Slice", ["x_shape", "start0", "end_minus1"], ["lead"]),
        n("Slice", ["b_shape", "start0", "one_dim"], ["C_1d"]),  # C, not -1: an empty X would make -1 ambiguous
        n("Concat", ["lead", "C_1d", "codes_dim"], ["scores_shape"], axis=0),
        n("Reshape", ["scores_flat", "scores_shape"], ["scores"]),  # (..., C, 16)
        # Ties go to the lowest index, as in the contract's scan.
        n("ArgMin", ["scores"], ["best"], axis=-1, keepdims=0, **({"select_last_index": 0} if opset >= 12 else {})),
        n("Cast", ["best"], ["codes"], to=TensorProto.UINT8),
    ]
    doc = (
        "Nearest-prototype (product quantization) encoding with the output-space distance folded into one dot "
        "product per prototype (docs/ops.md, HalutEncodePQ).\n"
        "X: float32 [..., D]; vectors: float32 [16, D]; biases: float32 [C, 16] -> codes: uint8 [..., C].\n"
        "score[c, k] = biases[c, k] + sum over slice c of X[d] * vectors[k, d]; code = first argmin over k.\n"
        "This body sums with one MatMul, in another order than the kernels: near-ties may pick another prototype."
    )
    return _function(ENCODE_PQ, ["X", "vectors", "biases"], ["codes"], nodes, opset, doc)


CONV_ATTRIBUTES = ("kernel_shape", "strides", "pads", "dilations", "auto_pad")


def _renamed(nodes, renames: dict[str, str]) -> list[onnx.NodeProto]:
    """Copies of ``nodes`` with the tensor names in ``renames`` replaced (to chain a row-op body after a prefix)."""
    out = []
    for node in nodes:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = [renames.get(name, name) for name in node.input]
        copy.output[:] = [renames.get(name, name) for name in node.output]
        out.append(copy)
    return out


def _kernel_shape_nodes(opset: int) -> list[onnx.NodeProto]:
    """conv_kernel_shape = the node's kernel_shape attribute as an int64 tensor [kh, kw].

    Constant takes ``value_ints`` from opset 12; before, a MaxPool with that kernel over zeros of L x L (L = H + W +
    64, more than any kernel of a Conv with an output) gives ``L - kh + 1`` by ``L - kw + 1``.
    """
    n = helper.make_node
    if opset >= 12:
        kernel = n("Constant", [], ["conv_kernel_shape"])
        attr = helper.make_attribute_ref("value_ints", onnx.AttributeProto.INTS)
        attr.ref_attr_name = "kernel_shape"
        kernel.attribute.append(attr)
        return [kernel]
    pool = n("MaxPool", ["conv_probe"], ["conv_probe_out"])
    pool.attribute.append(helper.make_attribute_ref("kernel_shape", onnx.AttributeProto.INTS))
    return [
        _const("conv_hw_start", [2]),
        _const("conv_hw_end", [4]),
        _const("conv_margin", [64]),
        _const("conv_probe_lead", [1, 1]),
        n("Shape", ["X"], ["conv_probe_x_shape"]),
        n("Slice", ["conv_probe_x_shape", "conv_hw_start", "conv_hw_end"], ["conv_probe_hw"]),
        n("ReduceSum", ["conv_probe_hw"], ["conv_probe_sum"], keepdims=1),
        n("Add", ["conv_probe_sum", "conv_margin"], ["conv_L"]),
        n("Concat", ["conv_probe_lead", "conv_L", "conv_L"], ["conv_probe_shape"], axis=0),
        n("ConstantOfShape", ["conv_probe_shape"], ["conv_probe"],
          value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0])),
        pool,
        n("Shape", ["conv_probe_out"], ["conv_probe_out_shape"]),
        n("Slice", ["conv_probe_out_shape", "conv_hw_start", "conv_hw_end"], ["conv_probe_out_hw"]),
        n("Sub", ["conv_L", "conv_probe_out_hw"], ["conv_k_minus_1"]),
        _const("conv_one_k", [1]),
        n("Add", ["conv_k_minus_1", "conv_one_k"], ["conv_kernel_shape"]),
    ]


def _patch_rows_nodes(opset: int) -> list[onnx.NodeProto]:
    """X [B, Cin, H, W] -> conv_rows [B, Ho, Wo, Cin * kh * kw], the patch rows of docs/ops.md.

    A Conv whose D output channels have one-hot kernels (channel d picks patch element d) extracts the patches with
    the node's own geometry attributes; every other product is x * 0 = 0, so the values are exact for finite X.
    """
    n = helper.make_node
    ref = helper.make_attribute_ref
    conv = n("Conv", ["X", "conv_eye_kernel"], ["conv_patches"])
    conv.attribute.extend(ref(name, attr_type)
                          for name, attr_type in zip(CONV_ATTRIBUTES, (onnx.AttributeProto.INTS,) * 4
                                                     + (onnx.AttributeProto.STRING,)))
    return _kernel_shape_nodes(opset) + [
        _const("conv_one_dim", [1]),
        _const("conv_two_dim", [2]),
        n("Shape", ["X"], ["conv_x_shape"]),
        n("Slice", ["conv_x_shape", "conv_one_dim", "conv_two_dim"], ["conv_cin"]),  # [Cin]
        n("ReduceProd", ["conv_kernel_shape"], ["conv_taps"], keepdims=1),
        n("Mul", ["conv_cin", "conv_taps"], ["conv_D"]),  # [D]
        n("Concat", ["conv_D", "conv_D"], ["conv_square"], axis=0),
        n("ConstantOfShape", ["conv_square"], ["conv_zeros"],
          value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0])),
        n("EyeLike", ["conv_zeros"], ["conv_eye"]),
        n("Concat", ["conv_D", "conv_cin", "conv_kernel_shape"], ["conv_kernel_dims"], axis=0),
        n("Reshape", ["conv_eye", "conv_kernel_dims"], ["conv_eye_kernel"]),  # [D, Cin, kh, kw]
        conv,  # [B, D, Ho, Wo]
        n("Transpose", ["conv_patches"], ["conv_rows"], perm=[0, 2, 3, 1]),
    ]


def _conv_encode_function(name: str, row_body: onnx.FunctionProto, opset: int, doc: str) -> onnx.FunctionProto:
    nodes = _patch_rows_nodes(opset) + _renamed(row_body.node, {"X": "conv_rows"})
    function = helper.make_function(DOMAIN, name, list(row_body.input), list(row_body.output), nodes,
                                    [helper.make_opsetid("", opset)], attributes=list(CONV_ATTRIBUTES),
                                    doc_string=doc)
    return function


def encode_tree_conv_function(opset: int) -> onnx.FunctionProto:
    """HalutEncodeTreeConv(X, split_dims, thresholds) -> codes [B, Ho, Wo, C]: patch rows, then the tree body."""
    doc = ("HalutEncodeTree over the patch rows of a 2-D convolution (docs/ops.md, Conv ops): X float32 "
           "[B, Cin, H, W] -> codes uint8 [B, Ho, Wo, C]; patch element d = (ci * kh + ky) * kw + kx, 0 outside the "
           "image. Attributes: kernel_shape, strides, pads, dilations, auto_pad (ONNX Conv's).")
    return _conv_encode_function(ENCODE_TREE_CONV, encode_tree_function(opset), opset, doc)


def encode_pq_conv_function(opset: int) -> onnx.FunctionProto:
    """HalutEncodePQConv(X, vectors, biases) -> codes [B, Ho, Wo, C]: patch rows, then the pq body."""
    doc = ("HalutEncodePQ over the patch rows of a 2-D convolution (docs/ops.md, Conv ops): X float32 "
           "[B, Cin, H, W] -> codes uint8 [B, Ho, Wo, C]. Attributes as ONNX Conv's geometry. Like the HalutEncodePQ "
           "body, sums in another order than the kernels: near-ties may pick another prototype.")
    return _conv_encode_function(ENCODE_PQ_CONV, encode_pq_function(opset), opset, doc)


def lookup_conv_function(opset: int) -> onnx.FunctionProto:
    """HalutLookupConv(codes [B, Ho, Wo, C], lut, scale, offset) -> Y [B, M, Ho, Wo]: the lookup body, transposed."""
    row_body = lookup_function(opset)
    nodes = _renamed(row_body.node, {"Y": "conv_Y_rows"})
    nodes.append(helper.make_node("Transpose", ["conv_Y_rows"], ["Y"], perm=[0, 3, 1, 2]))
    doc = ("HalutLookup into an NCHW output (docs/ops.md, Conv ops): codes uint8 [B, Ho, Wo, C] -> Y float32 "
           "[B, M, Ho, Wo], Y[b, m, oy, ox] = HalutLookup(codes[b, oy, ox])[m].")
    return _function(LOOKUP_CONV, list(row_body.input), ["Y"], nodes, opset, doc)


FUNCTION_BUILDERS = {
    LOOKUP: lookup_function,
    ENCODE_TREE: encode_tree_function,
    ENCODE_PQ: encode_pq_function,
    LOOKUP_CONV: lookup_conv_function,
    ENCODE_TREE_CONV: encode_tree_conv_function,
    ENCODE_PQ_CONV: encode_pq_conv_function,
}


def functions_for(op_types, opset: int) -> list[onnx.FunctionProto]:
    """The FunctionProtos for the given Halut op types (sorted, so the output is deterministic)."""
    if opset < MIN_OPSET:
        raise ValueError(f"the model imports default-domain opset {opset}; halut-onnx needs opset >= {MIN_OPSET}")
    return [FUNCTION_BUILDERS[op](opset) for op in sorted(set(op_types))]
