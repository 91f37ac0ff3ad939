"""Fine-tune the LUTs of the converted layers together: distil the original model's output into the converted one.

Each layer is learned alone, against its own output; inside the model the errors of the converted layers then
compound. Fine-tuning keeps every encoder as learned and trains every LUT entry, of all converted layers at once,
by gradient descent on the distance between the converted model's output and the original's on the learn files:
a layer's table can then absorb what the layers before it got wrong, in the directions the output cares about.

- The codes are a step function of the input, with no gradient. The gradient reaches the layers before a converted
  one straight through the original layer (``y + (A W + b) - stop_gradient(A W + b)``): their LUTs learn as if the
  layer after them were exact, which it nearly is.
- Distance: when the metric output comes out of a Softmax, the KL divergence of the two softmaxes of its input
  (the logits), per row; otherwise the squared error divided by the original output's mean square.
- The tables are trained through the int8 rounding (each column on one step, straight-through): trained in float,
  the rounding cost PP-OCR rec 0.1-0.2 points of its text, as much as the margin the budget keeps.
- Each epoch is scored on the held-out files by the budget metric; the best epoch (epoch 0 is the layers as
  learned) is kept, so fine-tuning never returns a model that scored worse there. The kept LUTs are then quantized
  to int8 as learning does (``learn.lut.quantize_lut``), weighted by the codes they see in the fine-tuned model.

Needs torch (``pip install halut-onnx[finetune]``); the graph runs through ``torch_graph.TorchGraph``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import onnx

from .errors import ConversionError
from .learn.layer import HalutLayer
from .learn.lut import code_weights, quantize_table
from .metrics import OutputComparison
from .ops import NUM_CODES, TREE_DEPTH
from .reference import conv_pads, slice_bounds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneOptions:
    epochs: int = 4
    lr: float = 5e-4  # the Adam step at its peak, relative to each layer's LUT spread (standard deviation)
    seed: int = 0
    max_rows: int = 65536  # code rows per layer that weight the int8 quantization
    progress: bool = True


@dataclass
class FinetuneReport:
    metric: str
    history: list[tuple[int, float, float]] = field(default_factory=list)  # (epoch, mean train loss, held-out)
    best_epoch: int = 0
    after_int8: float | None = None  # the kept epoch's held-out value with its int8 tables (None: epoch 0 kept)
    seconds: float = 0.0

    @property
    def before(self) -> float:
        return self.history[0][2]

    @property
    def after(self) -> float:
        return self.history[self.best_epoch][2]


def require_torch() -> None:
    """A ConversionError (one line for the CLI) when torch is not installed."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise ConversionError("--finetune needs torch: pip install 'halut-onnx[finetune]' (or any torch >= 2.1)") \
            from None


def _layer_module(candidate, layer: HalutLayer, fake_quant: bool = False):
    """One converted layer as a torch module: input tensor -> its output, with a trainable float LUT."""
    import torch
    import torch.nn.functional as F

    class HalutTorchLayer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            C, M = layer.C, layer.M
            self.C, self.geometry = C, candidate.conv
            self.lut = torch.nn.Parameter(torch.from_numpy(
                np.ascontiguousarray(layer.lut.transpose(1, 2, 0).reshape(C * NUM_CODES, M), dtype=np.float32)))
            self.bias = torch.nn.Parameter(torch.from_numpy(layer.lut_bias.astype(np.float32)))
            self.register_buffer("weight", torch.from_numpy(np.ascontiguousarray(candidate.weight, np.float32)))
            b = candidate.bias if candidate.bias is not None else np.zeros(M, np.float32)
            self.register_buffer("linear_bias", torch.from_numpy(b.astype(np.float32)))
            self.register_buffer("offsets", torch.arange(C) * NUM_CODES)
            if layer.encoder == "pq":
                bounds = slice_bounds(layer.D, C)
                block = np.zeros((layer.D, C * NUM_CODES), np.float32)  # score = rows @ block + biases
                for c in range(C):
                    block[bounds[c]:bounds[c + 1], c * NUM_CODES:(c + 1) * NUM_CODES] = \
                        layer.pq_vectors[:, bounds[c]:bounds[c + 1]].T
                self.register_buffer("block", torch.from_numpy(block))
                self.register_buffer("pq_biases", torch.from_numpy(layer.pq_biases.reshape(-1).astype(np.float32)))
            else:
                self.register_buffer("split_dims", torch.from_numpy(layer.split_dims.astype(np.int64)))
                self.register_buffer("thresholds", torch.from_numpy(layer.thresholds.astype(np.float32)))
            self.pq = layer.encoder == "pq"
            self.fake_quant = fake_quant
            self.last_codes = None

        def codes(self, rows):
            with torch.no_grad():
                if self.pq:
                    return (rows @ self.block + self.pq_biases).view(len(rows), self.C, NUM_CODES).argmin(-1)
                node = torch.zeros(len(rows), self.C, dtype=torch.int64)
                cols = torch.arange(self.C)
                for level in range(TREE_DEPTH):
                    x = rows[:, self.split_dims[:, level]]
                    t = self.thresholds[cols[None, :], (1 << level) - 1 + node]
                    node = 2 * node + (x > t).long()
                return node

        def table(self):
            """The LUT as the lookup uses it: with ``fake_quant``, rounded as int8 with one step per output column
            (each table centred on its midrange first, as ``quantize_lut`` does) and the gradient passed
            straight through the rounding."""
            if not self.fake_quant:
                return self.lut
            T = self.lut.view(self.C, NUM_CODES, -1)
            mid = 0.5 * (T.amax(1, keepdim=True) + T.amin(1, keepdim=True))
            step = ((T - mid).abs().amax(dim=(0, 1)) / 127).clamp_min(1e-12)
            rounded = (torch.round((T - mid) / step) * step + mid).view_as(self.lut)
            return self.lut + (rounded - self.lut).detach()

        def lookup(self, rows):
            codes = self.codes(rows)
            self.last_codes = codes
            return F.embedding_bag(codes + self.offsets, self.table(), mode="sum") + self.bias

        def forward(self, x):
            dtype, x = x.dtype, x.float()  # a float16 or float64 layer computes in float32, as the rewrite casts it
            if self.geometry is None:
                rows = x.reshape(-1, x.shape[-1])
                y = self.lookup(rows).view(*x.shape[:-1], -1)
                linear = x @ self.weight + self.linear_bias
            else:
                g = self.geometry
                x = g.as_nchw(x)
                B, _, H, W = x.shape
                (top, left, bottom, right), Ho, Wo = conv_pads(H, W, **g.kwargs())
                xp = F.pad(x, (left, right, top, bottom))
                rows = F.unfold(xp, g.kernel_shape, dilation=g.dilations, stride=g.strides)
                rows = rows.transpose(1, 2).reshape(B * Ho * Wo, -1)
                y = self.lookup(rows).view(B, Ho, Wo, -1).permute(0, 3, 1, 2)
                kernel = self.weight.T.reshape(-1, x.shape[1], *g.kernel_shape)
                linear = F.conv2d(xp, kernel, self.linear_bias, stride=g.strides, dilation=g.dilations)
                if g.conv1d:
                    y, linear = y.squeeze(2), linear.squeeze(2)
            return (y + (linear - linear.detach())).to(dtype)

    return HalutTorchLayer()


def _distillation(model: onnx.ModelProto, output: str) -> tuple[str, str]:
    """(tensor to match, "kl" or "mse"): a Softmax's logits when the metric output is a Softmax's output."""
    producer = next((n for n in model.graph.node if output in n.output), None)
    if producer is not None and producer.op_type == "Softmax":
        axis = next((a.i for a in producer.attribute if a.name == "axis"), -1)
        if axis == -1:
            return producer.input[0], "kl"
    return output, "mse"


def _loss(student, teacher, kind: str):
    import torch.nn.functional as F

    if kind == "kl":
        t = F.log_softmax(teacher, -1)
        s = F.log_softmax(student, -1)
        return F.kl_div(s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1]), log_target=True,
                        reduction="batchmean")
    return ((student - teacher) ** 2).mean() / (teacher ** 2).mean().clamp_min(1e-30)


def finetune(work: onnx.ModelProto, plan, layers: dict[str, HalutLayer], learn_feeds, heldout_feeds,
             heldout_reference, metric_output: str, metric: str,
             options: FinetuneOptions = FinetuneOptions()) -> tuple[dict[str, HalutLayer], FinetuneReport]:
    """Fine-tune the LUTs of ``layers`` (name -> HalutLayer, converted as ``plan``'s candidates say) on
    ``learn_feeds``; score each epoch by ``metric`` on ``heldout_feeds`` against ``heldout_reference`` (the
    original's ``metric_output``). Returns new layers (the encoders unchanged) and the report."""
    require_torch()
    import torch
    from tqdm.auto import tqdm

    from .torch_graph import TorchGraph

    start = time.perf_counter()
    torch.manual_seed(options.seed)
    target, kind = _distillation(work, metric_output)
    modules = {c.name: _layer_module(c, layers[c.name], fake_quant=True) for c in plan}
    replaced = {c.output_name: (c.input_name, modules[c.name]) for c in plan}
    teacher = TorchGraph(work, [target])
    student = TorchGraph(work, [target, metric_output], replaced)
    groups = [{"params": [m.lut, m.bias], "lr": options.lr * float(m.lut.detach().std()) or options.lr}
              for m in modules.values()]
    as_torch = [{k: torch.from_numpy(np.asarray(v)) for k, v in feed.items()} for feed in learn_feeds]
    heldout = [{k: torch.from_numpy(np.asarray(v)) for k, v in feed.items()} for feed in heldout_feeds]
    report = FinetuneReport(metric)

    def score() -> float:
        comparison = OutputComparison()
        with torch.no_grad():
            for feed, ref in zip(heldout, heldout_reference):
                comparison.add(ref, student(feed)[1].numpy())
        return comparison.value(metric)

    def state():
        return {n: (m.lut.detach().clone(), m.bias.detach().clone()) for n, m in modules.items()}

    best_value, best_state = score(), state()
    report.history.append((0, math.nan, best_value))
    optimizer = torch.optim.Adam(groups)
    steps = max(1, options.epochs * len(as_torch))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in groups], total_steps=steps,
                                                   pct_start=0.15)
    rng = np.random.default_rng(options.seed)
    better = (lambda a, b: a < b) if metric == "nmse" else (lambda a, b: a > b)
    with tqdm(total=steps, desc="fine-tuning", unit="batch", disable=not options.progress) as bar:
        for epoch in range(1, options.epochs + 1):
            total = 0.0
            for i in rng.permutation(len(as_torch)):
                with torch.no_grad():
                    reference = teacher(as_torch[i])[0]
                loss = _loss(student(as_torch[i])[0], reference, kind)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                total += float(loss.detach())
                bar.update(1)
            value = score()
            bar.set_postfix(epoch=epoch, loss=f"{total / len(as_torch):.4g}", heldout=f"{value:.4f}")
            report.history.append((epoch, total / len(as_torch), value))
            log.info("fine-tuning epoch %d: loss %.4g, held-out %s %.4f", epoch, total / len(as_torch), metric, value)
            if better(value, best_value):
                best_value, best_state, report.best_epoch = value, state(), epoch
    tuned = dict(layers)
    if report.best_epoch:
        with torch.no_grad():  # the kept epoch's tables, which the codes of the layers after them depend on
            for name, module in modules.items():
                module.lut.copy_(best_state[name][0])
                module.bias.copy_(best_state[name][1])
        codes = _codes_seen(student, modules, as_torch, options.max_rows, rng)
        for name, module in modules.items():
            lut, bias = best_state[name]
            tuned[name] = _requantize(layers[name], lut.numpy(), bias.numpy(), codes[name])
            module.fake_quant = False
            with torch.no_grad():  # the int8 tables, dequantized, to score what the written model computes
                q = tuned[name]
                module.lut.copy_(torch.from_numpy(
                    (q.lut_q.astype(np.float32) * q.scale[:, None, None]).transpose(1, 2, 0).reshape(-1, q.M)))
                module.bias.copy_(torch.from_numpy(q.offset))
        report.after_int8 = score()
    report.seconds = time.perf_counter() - start
    return tuned, report


def _codes_seen(student, modules, feeds, max_rows: int, rng) -> dict[str, np.ndarray]:
    """Each layer's codes over the learn files in the fine-tuned model, at most ``max_rows`` rows sampled."""
    import torch

    seen = {name: [] for name in modules}
    with torch.no_grad():
        for feed in feeds:
            student(feed)
            for name, module in modules.items():
                seen[name].append(module.last_codes.numpy().astype(np.uint8))
    out = {}
    for name, chunks in seen.items():
        codes = np.concatenate(chunks)
        if len(codes) > max_rows:
            codes = codes[np.sort(rng.choice(len(codes), max_rows, replace=False))]
        out[name] = np.ascontiguousarray(codes)
    return out


def _requantize(layer: HalutLayer, lut_rows: np.ndarray, bias: np.ndarray, codes: np.ndarray) -> HalutLayer:
    """``layer`` with the float LUT ``lut_rows`` (16C x M) and ``bias``, quantized to int8 as learning does."""
    C, M = layer.C, layer.M
    q = quantize_table(lut_rows.astype(np.float64), bias.astype(np.float64), *code_weights(codes), C)
    lut = np.ascontiguousarray(lut_rows.reshape(C, NUM_CODES, M).transpose(2, 0, 1), dtype=np.float32)
    return dataclasses.replace(layer, lut=lut, lut_bias=bias.astype(np.float32), lut_q=q.lut_q, scale=q.scale,
                               offset=q.offset)
