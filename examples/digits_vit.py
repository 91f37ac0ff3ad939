"""Handwritten digits with a vision transformer: train in torch, export with torch.onnx, replace its Linear layers by
Halut table lookups, compare test accuracy. The trained transformers here (no pretrained transformer weights can be
had offline): does a transformer keep its accuracy when its weight MatMuls are lookups?

    python examples/digits_vit.py [--out DIR] [--quick] [--seed N] [--size small|tiny]

The digits split as in digits_mlp.py (fit / validation / test), pixels scaled to 0..1. Two sizes:

- ``small`` (default): 8 tokens (the image rows, 8 pixels each), width 64, 4 heads, feed-forward 128, 3 blocks,
  150 epochs (about 40 s of training).
- ``tiny``: 16 tokens (2x2 patches, 4 pixels each) at ViT-Tiny's width 192, 3 heads and feed-forward 768, 4 blocks,
  60 epochs (about 3 minutes of training): layers wide enough for the lookups to gain speed.

Both: a Linear embedding plus learned positions, pre-LayerNorm encoder blocks (one QKV projection, an output
projection, a GELU feed-forward), a final LayerNorm, the mean over tokens and a Linear head to the 10 classes;
trained with AdamW (one-cycle learning rate, weight decay 0.05, batch 64, torch seed 0, one thread). Per block four
weight MatMuls are eligible, plus the head; the embedding (D = 8 or 4) is under ``--min-dim`` and the attention
products multiply two activations. The fit rows are the calibration data (a row per token per image per layer),
the validation rows the budgets' held-out data (``--heldout-data``), the test rows the evaluation data.
``--quick`` converts with the default settings (pq encoder) and with the tree encoder only.

It needs torch and onnxscript, which torch.onnx's default exporter uses (the ``test`` extra has both).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import digits_conv1d  # noqa: E402
import example_tools as tools  # noqa: E402

INPUT, OUTPUT = "x", "logits"
SETTINGS_QUICK = [("default", []), ("--encoder tree", ["--encoder", "tree"])]


@dataclass(frozen=True)
class Size:
    patch: tuple[int, int]  # pixels per token (rows x columns of the 8x8 image)
    width: int
    heads: int
    hidden: int
    blocks: int
    epochs: int
    codebooks: tuple[int, ...]  # the -C rows of the full run
    lr: float = 2e-3

    @property
    def tokens(self) -> int:
        return 64 // (self.patch[0] * self.patch[1])

    @property
    def eligible(self) -> int:
        return 4 * self.blocks + 1


SIZES = {"small": Size(patch=(1, 8), width=64, heads=4, hidden=128, blocks=3, epochs=150, codebooks=(16, 64)),
         "tiny": Size(patch=(2, 2), width=192, heads=3, hidden=768, blocks=4, epochs=60, codebooks=(16, 32))}


def settings(size: Size, quick: bool) -> list[tuple[str, list[str]]]:
    if quick:
        return SETTINGS_QUICK
    return SETTINGS_QUICK + [
        (f"-C {c} --encoder {enc}", ["-C", str(c), "--encoder", enc]) for enc in ("pq", "tree") for c in size.codebooks
    ] + [("--budget agreement=0.99", ["--budget", "agreement=0.99"]),
         ("--budget agreement=0.99 --objective macs", ["--budget", "agreement=0.99", "--objective", "macs"])]


def load(size: Size) -> tools.DigitsSplit:
    """The digits as [N, tokens, pixels per token] float32 in 0..1."""
    ph, pw = size.patch

    def as_tokens(x):  # x: [N, 8, 8], the image rows on axis 1
        return np.ascontiguousarray(x.reshape(-1, 8 // ph, ph, 8 // pw, pw).transpose(0, 1, 3, 2, 4)
                                    .reshape(-1, size.tokens, ph * pw))

    return digits_conv1d.load().features(as_tokens)


def make_net(size: Size):
    import torch
    import torch.nn.functional as F

    width, heads = size.width, size.heads

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = torch.nn.LayerNorm(width), torch.nn.LayerNorm(width)
            self.qkv, self.out = torch.nn.Linear(width, 3 * width), torch.nn.Linear(width, width)
            self.ff1, self.ff2 = torch.nn.Linear(width, size.hidden), torch.nn.Linear(size.hidden, width)

        def forward(self, x):
            B, T, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
            attention = torch.softmax(q @ k.transpose(-1, -2) / (width // heads) ** 0.5, -1) @ v
            x = x + self.out(attention.transpose(1, 2).reshape(B, T, width))
            return x + self.ff2(F.gelu(self.ff1(self.ln2(x))))

    class ViT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Linear(size.patch[0] * size.patch[1], width)
            self.position = torch.nn.Parameter(torch.zeros(1, size.tokens, width))
            self.blocks = torch.nn.Sequential(*[Block() for _ in range(size.blocks)])
            self.ln, self.head = torch.nn.LayerNorm(width), torch.nn.Linear(width, 10)

        def forward(self, x):
            return self.head(self.ln(self.blocks(self.embed(x) + self.position)).mean(1))

    return ViT()


def train(x_train: np.ndarray, y_train: np.ndarray, size: Size, seed: int = 0):
    import torch

    return tools.train_classifier(
        lambda: make_net(size), x_train, y_train, size.epochs,
        lambda p: torch.optim.AdamW(p, lr=size.lr, weight_decay=0.05),
        lambda opt, steps: torch.optim.lr_scheduler.OneCycleLR(opt, size.lr, total_steps=steps), seed=seed)


def run(out: Path, quick: bool, seed: int = 0, size_name: str = "small") -> list[dict]:
    import torch

    size = SIZES[size_name]
    out.mkdir(parents=True, exist_ok=True)
    split = load(size)
    x_test, y_test = split.x_test, split.y_test
    net = train(split.x_fit, split.y_fit, size, seed)
    with torch.no_grad():
        torch_acc = float((net(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
    original = digits_conv1d.export(net, x_test, out / f"digits_vit_{size_name}.onnx")
    digits_conv1d.write_rows(out / "calib", split.x_fit)
    digits_conv1d.write_rows(out / "val", split.x_val)
    onnx_acc = digits_conv1d.accuracy(original, x_test, y_test, halut=False)
    if abs(onnx_acc - torch_acc) > 1e-12:
        raise RuntimeError(f"the ONNX export disagrees with torch: accuracy {onnx_acc} vs {torch_acc}")
    print(f"{size_name}: torch test accuracy {100 * torch_acc:.2f} %; ONNX export equal")

    return tools.convert_settings(original, out, settings(size, quick),
                                  lambda path: digits_conv1d.accuracy(path, x_test, y_test, halut=True), onnx_acc,
                                  size.eligible)


def main(argv=None) -> None:
    tools.accuracy_example_main(__doc__.split("\n\n")[0], run, argv,
                                extra={"--size": dict(dest="size_name", choices=list(SIZES), default="small",
                                                      help="model size (see the module's docstring)")})


if __name__ == "__main__":
    main()
