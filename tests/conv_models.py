"""Single-node models of the Conv forms of the Halut ops (docs/ops.md, "Conv ops"), and the geometries tested."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from halut_onnx.ops import DOMAIN, DOMAIN_VERSION, ENCODE_PQ_CONV, ENCODE_TREE_CONV, LOOKUP_CONV

WEIGHT_NAMES = {
    ENCODE_TREE_CONV: ("split_dims", "thresholds"),
    ENCODE_PQ_CONV: ("vectors", "biases"),
    LOOKUP_CONV: ("lut", "scale", "offset"),
}

# (id, X shape [B, Cin, H, W], geometry attributes): odd sizes, stride 2, dilation 2, asymmetric pads, batch > 1,
# 1x1 / 3x3 / 5x5 kernels, every auto_pad mode, height-1 images.
GEOMETRIES = [
    ("1x1", (2, 8, 7, 9), dict(kernel_shape=[1, 1])),
    ("1x1_s2", (1, 6, 9, 8), dict(kernel_shape=[1, 1], strides=[2, 2])),
    ("3x3_same_pads", (3, 4, 11, 10), dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])),
    ("3x3_s2_asym", (2, 5, 13, 9), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 1, 2, 0])),
    ("3x3_d2", (2, 3, 12, 11), dict(kernel_shape=[3, 3], dilations=[2, 2], pads=[2, 2, 2, 2])),
    ("5x5", (1, 3, 15, 17), dict(kernel_shape=[5, 5], pads=[2, 1, 2, 3])),
    ("3x5_s21_d12", (2, 2, 10, 14), dict(kernel_shape=[3, 5], strides=[2, 1], dilations=[1, 2], pads=[1, 0, 0, 2])),
    ("same_upper_s2", (2, 4, 9, 10), dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")),
    ("same_lower_4x4", (1, 4, 9, 7), dict(kernel_shape=[4, 4], strides=[2, 1], auto_pad="SAME_LOWER")),
    ("valid_d2", (2, 3, 11, 12), dict(kernel_shape=[3, 3], dilations=[2, 2], auto_pad="VALID")),
    ("no_output", (1, 2, 2, 2), dict(kernel_shape=[3, 3])),
    # a kernel wider than the image at stride 2: the reference once sliced the columns [0:-1:2] and broke
    ("no_output_s2", (1, 2, 2, 9), dict(kernel_shape=[3, 10], strides=[2, 2])),
    # 1-D Convs as the converter gives them to the ops: a height-1 image, a 1 x k kernel (70 positions: more than one
    # 64-position block of the AVX-512 encoders in the one output row)
    ("conv1d_k3_s2", (2, 6, 1, 37), dict(kernel_shape=[1, 3], strides=[1, 2], pads=[0, 1, 0, 1])),
    ("conv1d_k5_same", (1, 8, 1, 70), dict(kernel_shape=[1, 5], auto_pad="SAME_UPPER")),
]


def random_geometry(rng: np.random.Generator) -> dict:
    """Random valid Conv geometry attributes (fuzzing): kernels 1..5, strides and dilations 1..3, pads 0..3 or an
    auto_pad mode, each attribute sometimes left to its default."""
    attrs = {"kernel_shape": [int(v) for v in rng.integers(1, 6, 2)]}
    if rng.random() < 0.7:
        attrs["strides"] = [int(v) for v in rng.integers(1, 4, 2)]
    if rng.random() < 0.5:
        attrs["dilations"] = [int(v) for v in rng.integers(1, 4, 2)]
    if rng.random() < 0.3:
        attrs["auto_pad"] = str(rng.choice(["SAME_UPPER", "SAME_LOWER", "VALID"]))
    elif rng.random() < 0.7:
        attrs["pads"] = [int(v) for v in rng.integers(0, 4, 4)]
    return attrs


def geometry_kwargs(attrs: dict) -> dict:
    """The geometry attributes as keyword arguments of halut_onnx.reference.im2col."""
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in attrs.items()}


def conv_op_model(op: str, first: np.ndarray, weights: dict, attrs: dict | None = None, *, constant: bool = True,
                  node_name: str = "halut_conv") -> onnx.ModelProto:
    """One ``op`` node; the weights are initializers when ``constant`` else graph inputs."""
    first_name = "codes" if op == LOOKUP_CONV else "X"
    elem = helper.np_dtype_to_tensor_dtype(first.dtype)
    inputs = [helper.make_tensor_value_info(first_name, elem, [f"d{i}" for i in range(first.ndim)])]
    initializers = []
    for name in WEIGHT_NAMES[op]:
        value = np.asarray(weights[name])
        if constant:
            initializers.append(numpy_helper.from_array(value, name))
        else:
            inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype),
                                                        list(value.shape)))
    out_name, out_type = ("Y", TensorProto.FLOAT) if op == LOOKUP_CONV else ("codes", TensorProto.UINT8)
    node = helper.make_node(op, [first_name, *WEIGHT_NAMES[op]], [out_name], name=node_name, domain=DOMAIN,
                            **(attrs or {}))
    graph = helper.make_graph([node], f"single_{op}", inputs, [helper.make_tensor_value_info(out_name, out_type,
                                                                                             None)], initializers)
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17),
                                                                   helper.make_opsetid(DOMAIN, DOMAIN_VERSION)])


def run_conv_op(op: str, first: np.ndarray, weights: dict, attrs: dict | None = None, *, constant: bool = True,
                threads: int = 1, node_name: str = "halut_conv") -> np.ndarray:
    from ops_models import make_session

    model = conv_op_model(op, first, weights, attrs, constant=constant, node_name=node_name)
    feeds = {"codes" if op == LOOKUP_CONV else "X": first}
    if not constant:
        feeds.update({name: np.asarray(weights[name]) for name in WEIGHT_NAMES[op]})
    return make_session(model, threads=threads).run(None, feeds)[0]
