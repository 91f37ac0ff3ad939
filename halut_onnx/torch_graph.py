"""Run an ONNX graph with torch operations, so that gradients flow through it (LUT fine-tuning, finetune.py).

Why our own: onnx2torch, the library for this, refuses the ``auto_pad="SAME_UPPER"`` Convs and pools of the PP-OCR
models and cannot be imported without a torchvision built for the installed torch. Executing the graph node by
node needs only the forward form of each op; torch's autograd does the rest. An op without a form here is refused
with its node named, before anything runs (``TorchGraph.__init__``).

``TorchGraph(model, outputs, replaced)`` evaluates the nodes ``outputs`` depend on, in graph order. ``replaced``
maps a tensor name to ``(input name, module)``: that tensor is ``module(input)`` instead of what its node computes,
and the nodes only it needed are not run (the MatMul under a folded bias Add, for instance).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from .reference import conv_pads

_DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 6: torch.int32, 7: torch.int64, 9: torch.bool,
           10: torch.float16, 11: torch.float64}


def _attrs(node: onnx.NodeProto) -> dict:
    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def _ints(t) -> list[int]:
    return [int(v) for v in t.reshape(-1).tolist()]


def _axes(a: dict, inputs: list, index: int) -> list[int] | None:
    """Axes given as an attribute (older opsets) or as input ``index`` (newer ones)."""
    if len(inputs) > index and inputs[index] is not None:
        return _ints(inputs[index])
    return list(a["axes"]) if "axes" in a else None


def _spatial_pads(x: torch.Tensor, a: dict) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) for a 2-D Conv or pool, auto_pad resolved on this input's size."""
    H, W = x.shape[2], x.shape[3]
    (top, left, bottom, right), _, _ = conv_pads(H, W, a["kernel_shape"], a.get("strides", (1, 1)),
                                                a.get("pads", (0, 0, 0, 0)), a.get("dilations", (1, 1)),
                                                a.get("auto_pad", "NOTSET"))
    return top, left, bottom, right


def _conv(x, w, b=None, **a):
    if x.dim() == 3 and w.dim() == 3:  # 1-D: the 2-D Conv over a height-1 image, as the Halut conv ops see it
        one = {"kernel_shape": [1, *a.get("kernel_shape", w.shape[2:])], "strides": [1, *a.get("strides", [1])],
               "dilations": [1, *a.get("dilations", [1])], "auto_pad": a.get("auto_pad", "NOTSET"),
               "group": a.get("group", 1)}
        if "pads" in a:
            one["pads"] = [0, a["pads"][0], 0, a["pads"][1]]
        return _conv(x.unsqueeze(2), w.unsqueeze(2), b, **one).squeeze(2)
    if x.dim() != 4:
        raise ValueError(f"only 1-D and 2-D Conv have a torch form here; found input of rank {x.dim()}")
    a.setdefault("kernel_shape", list(w.shape[2:]))
    top, left, bottom, right = _spatial_pads(x, a)
    x = F.pad(x, (left, right, top, bottom))
    return F.conv2d(x, w, b, stride=tuple(a.get("strides", (1, 1))), dilation=tuple(a.get("dilations", (1, 1))),
                    groups=a.get("group", 1))


def _conv_transpose(x, w, b=None, **a):
    if x.dim() != 4 or a.get("auto_pad", "NOTSET") != "NOTSET" or "output_shape" in a:
        raise ValueError("only 2-D ConvTranspose with explicit pads has a torch form here")
    top, left, bottom, right = a.get("pads", (0, 0, 0, 0))
    if (top, left) != (bottom, right):
        raise ValueError(f"ConvTranspose with asymmetric pads {a.get('pads')} has no torch form here")
    return F.conv_transpose2d(x, w, b, stride=tuple(a.get("strides", (1, 1))), padding=(top, left),
                              output_padding=tuple(a.get("output_padding", (0, 0))), groups=a.get("group", 1),
                              dilation=tuple(a.get("dilations", (1, 1))))


def _max_pool(x, **a):
    top, left, bottom, right = _spatial_pads(x, a)
    x = F.pad(x, (left, right, top, bottom), value=-math.inf)
    return F.max_pool2d(x, a["kernel_shape"], stride=a.get("strides", (1, 1)),
                        dilation=a.get("dilations", (1, 1)), ceil_mode=bool(a.get("ceil_mode", 0)))


def _avg_pool(x, **a):
    top, left, bottom, right = _spatial_pads(x, a)
    if a.get("ceil_mode", 0):
        raise ValueError("AveragePool with ceil_mode=1 has no torch form here")
    if (top, left, bottom, right) == (0, 0, 0, 0) or a.get("count_include_pad", 0):
        x = F.pad(x, (left, right, top, bottom))
        return F.avg_pool2d(x, a["kernel_shape"], stride=a.get("strides", (1, 1)))
    # the pads do not count: divide the window sums by the number of real elements in each window
    ones = F.pad(torch.ones_like(x[:1, :1]), (left, right, top, bottom))
    x = F.pad(x, (left, right, top, bottom))
    k, s = a["kernel_shape"], a.get("strides", (1, 1))
    return F.avg_pool2d(x, k, stride=s) / F.avg_pool2d(ones, k, stride=s)


def _softmax(x, opset, axis=None, log=False):
    fn = F.log_softmax if log else F.softmax
    if opset >= 13:
        return fn(x, dim=-1 if axis is None else axis)
    axis = 1 if axis is None else axis % x.dim()  # opset < 13: over all dims from axis on, flattened
    return fn(x.reshape(*x.shape[:axis], -1), dim=-1).reshape(x.shape)


def _slice(x, starts, ends, axes=None, steps=None):
    starts, ends = _ints(starts), _ints(ends)
    axes = _ints(axes) if axes is not None else list(range(len(starts)))
    steps = _ints(steps) if steps is not None else [1] * len(starts)
    index = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step < 1:
            raise ValueError(f"Slice with step {step} has no torch form here")
        size = x.shape[axis]
        start = max(0, min(size, start + size if start < 0 else start))
        end = max(0, min(size, end + size if end < 0 else end))
        index[axis] = slice(start, end, step)
    return x[tuple(index)]


def _reshape(x, shape, allowzero=0):
    shape = _ints(shape)
    if not allowzero:
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _resize(x, roi=None, scales=None, sizes=None, mode="nearest", coordinate_transformation_mode="half_pixel",
            nearest_mode="round_prefer_floor", **_):
    if sizes is not None and sizes.numel():
        size = _ints(sizes)[2:]
    else:
        size = [int(math.floor(d * s)) for d, s in zip(x.shape[2:], scales.reshape(-1).tolist()[2:])]
    if mode == "nearest" and coordinate_transformation_mode == "asymmetric" and nearest_mode == "floor":
        return F.interpolate(x, size=size, mode="nearest")
    raise ValueError(f"Resize mode={mode}, coordinate_transformation_mode={coordinate_transformation_mode}, "
                     f"nearest_mode={nearest_mode} has no torch form here")


def _reduce(fn):
    def run(x, *rest, keepdims=1, noop_with_empty_axes=0, **a):
        axes = _axes(a, [x, *rest], 1)
        if not axes:
            return x if noop_with_empty_axes else fn(x, dim=tuple(range(x.dim())), keepdim=bool(keepdims))
        return fn(x, dim=tuple(axes), keepdim=bool(keepdims))
    return run


def _gemm(A, B, C=None, alpha=1.0, beta=1.0, transA=0, transB=0):
    y = alpha * ((A.T if transA else A) @ (B.T if transB else B))
    return y if C is None else y + beta * C


def _clip(x, lo=None, hi=None, **a):
    lo = a.get("min", lo)
    hi = a.get("max", hi)
    return torch.clamp(x, min=None if lo is None else float(lo), max=None if hi is None else float(hi))


def _constant(**a):
    if "value" in a:
        return torch.from_numpy(numpy_helper.to_array(a["value"]).copy())
    for key, dtype in (("value_float", torch.float32), ("value_floats", torch.float32), ("value_int", torch.int64),
                       ("value_ints", torch.int64)):
        if key in a:
            return torch.tensor(a[key], dtype=dtype)
    raise ValueError(f"Constant with {sorted(a)} has no torch form here")


def _gather(x, idx, axis=0):
    axis %= x.dim()
    flat = idx.reshape(-1).long() % x.shape[axis]  # negative indices count from the end
    return torch.index_select(x, axis, flat).reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1:]))


# op type -> f(*inputs, **attributes); ``opset`` is passed to those that take it
_OPS: dict[str, Callable] = {
    "Identity": lambda x: x, "Dropout": lambda x, *_, **__: x,
    "Relu": F.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Erf": torch.erf, "Sqrt": torch.sqrt,
    "Exp": torch.exp, "Log": torch.log, "Neg": torch.neg, "Abs": torch.abs, "Reciprocal": torch.reciprocal,
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": lambda a, b: a / b, "Pow": torch.pow,
    "HardSigmoid": lambda x, alpha=0.2, beta=0.5: torch.clamp(alpha * x + beta, 0.0, 1.0),
    "HardSwish": F.hardswish, "LeakyRelu": lambda x, alpha=0.01: F.leaky_relu(x, alpha), "Clip": _clip,
    "Conv": _conv, "ConvTranspose": _conv_transpose, "MaxPool": _max_pool, "AveragePool": _avg_pool,
    "GlobalAveragePool": lambda x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True),
    "GlobalMaxPool": lambda x: x.amax(dim=tuple(range(2, x.dim())), keepdim=True),
    "BatchNormalization": lambda x, s, b, m, v, epsilon=1e-5, **_: F.batch_norm(x, m, v, s, b, False, 0.0, epsilon),
    "LayerNormalization": lambda x, s, b=None, axis=-1, epsilon=1e-5, **_: F.layer_norm(
        x, x.shape[axis % x.dim():], s, b, epsilon),
    "ReduceMean": _reduce(torch.mean), "ReduceSum": _reduce(torch.sum),
    "MatMul": torch.matmul, "Gemm": _gemm,
    "Softmax": lambda x, opset, axis=None: _softmax(x, opset, axis),
    "LogSoftmax": lambda x, opset, axis=None: _softmax(x, opset, axis, log=True),
    "Concat": lambda *xs, axis: torch.cat(xs, dim=axis),
    "Reshape": _reshape, "Transpose": lambda x, perm=None: x.permute(*(perm or range(x.dim() - 1, -1, -1))),
    "Flatten": lambda x, axis=1: x.reshape(int(np.prod(x.shape[:axis])), -1),
    "Squeeze": lambda x, *r, **a: _squeeze(x, _axes(a, [x, *r], 1)),
    "Unsqueeze": lambda x, *r, **a: _unsqueeze(x, _axes(a, [x, *r], 1)),
    "Slice": lambda x, *r, **a: _slice(x, *r) if r else _slice(  # before opset 10: attributes
        x, *(torch.tensor(a[k]) if k in a else None for k in ("starts", "ends", "axes"))),
    "Shape": lambda x, start=0, end=None: torch.tensor(x.shape[start:end], dtype=torch.int64),
    "Gather": _gather, "Cast": lambda x, to: x.to(_DTYPES[to]), "Constant": _constant, "Resize": _resize,
    "Expand": lambda x, shape: x * torch.ones(_ints(shape), dtype=x.dtype),
}
_TAKE_OPSET = {"Softmax", "LogSoftmax"}  # their axis semantics changed at opset 13


def _squeeze(x, axes):
    return x.squeeze(tuple(a % x.dim() for a in axes)) if axes else x.squeeze()


def _unsqueeze(x, axes):
    out_rank = x.dim() + len(axes)
    for axis in sorted(a % out_rank for a in axes):
        x = x.unsqueeze(axis)
    return x


def _scaler(x, offset=(0.0,), scale=(1.0,)):  # ai.onnx.ml Scaler: (x - offset) * scale
    return (x - torch.tensor(offset, dtype=x.dtype)) * torch.tensor(scale, dtype=x.dtype)


_ML_OPS = {"Scaler": _scaler}


class TorchGraph(torch.nn.Module):
    """The part of ``model`` that computes ``outputs``, as torch operations (see the module's doc)."""

    def __init__(self, model: onnx.ModelProto, outputs: Sequence[str],
                 replaced: dict[str, tuple[str, torch.nn.Module]] | None = None):
        super().__init__()
        replaced = replaced or {}
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        self.constants = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in model.graph.initializer}
        producer = {o: n for n in model.graph.node for o in n.output}
        needed, stack = set(), list(outputs)
        while stack:  # the nodes the outputs depend on, a replaced tensor depending on its input only
            name = stack.pop()
            if name in replaced:
                stack.append(replaced[name][0])
            elif name in producer and id(producer[name]) not in needed:
                needed.add(id(producer[name]))
                stack.extend(i for i in producer[name].input if i)
        self.nodes = [n for n in model.graph.node if id(n) in needed]
        for node in self.nodes:
            if self._op(node) is None:
                raise ValueError(f"node {node.name!r} ({node.domain + '.' if node.domain else ''}{node.op_type}) "
                                 "has no torch form in halut_onnx.torch_graph: fine-tuning cannot run this model")
        self.replaced = replaced
        self.layers = torch.nn.ModuleDict({f"l{i}": m for i, (_, m) in enumerate(replaced.values())})
        self.outputs = list(outputs)
        self.inputs = [i.name for i in model.graph.input if i.name not in self.constants]

    @staticmethod
    def _op(node: onnx.NodeProto):
        if node.domain in ("", "ai.onnx"):
            return _OPS.get(node.op_type)
        if node.domain == "ai.onnx.ml":
            return _ML_OPS.get(node.op_type)
        return None

    def forward(self, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        env = dict(self.constants)
        env.update(feeds)
        pending = dict(self.replaced)
        for node in self.nodes:
            for name in [n for n, (src, _) in pending.items() if src in env]:
                src, module = pending.pop(name)
                env[name] = module(env[src])
            if all(o in env for o in node.output if o):
                continue  # produced by a replacement
            args = [env[i] if i else None for i in node.input]
            while args and args[-1] is None:
                args.pop()
            kwargs = _attrs(node)
            if node.op_type in _TAKE_OPSET and node.domain in ("", "ai.onnx"):
                kwargs["opset"] = self.opset
            try:
                out = self._op(node)(*args, **kwargs)
            except (TypeError, ValueError, RuntimeError) as e:
                raise ValueError(f"node {node.name!r} ({node.op_type}): {e}") from None
            for name, value in zip(node.output, out if isinstance(out, tuple) else (out,)):
                env[name] = value
        for name, (src, module) in pending.items():
            env[name] = module(env[src])
        return [env[o] for o in self.outputs]
