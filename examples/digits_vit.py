"""Handwritten digits with a small vision transformer: train in torch, export with torch.onnx, replace its Linear
layers by Halut table lookups, compare test accuracy. The one trained transformer here (no real pretrained
transformer weights can be had offline): does a transformer keep its accuracy when its weight MatMuls are lookups?

    python examples/digits_vit.py [--out DIR] [--quick]

Each 8x8 digit is a sequence of 8 tokens (the image rows, 8 pixels each, scaled to 0..1), split 70/30 stratified
(random_state=0) as in digits_mlp.py. The network: a Linear embedding 8 -> 64 plus learned positions, 3 pre-LayerNorm
encoder blocks (width 64, 4 heads, one 64 -> 192 QKV projection, 64 -> 64 output projection, GELU feed-forward
64 -> 128 -> 64), a final LayerNorm, the mean over tokens and a Linear 64 -> 10; trained with AdamW for 150 epochs
(torch seed 0, one thread). Per block four weight MatMuls (D = 64, 64, 64, 128) are eligible, plus the head; the
embedding (D = 8) is under ``--min-dim`` and the attention products multiply two activations. The training rows are
the calibration data (8 rows per image per layer), the test rows the evaluation data. ``--quick`` converts with the
default settings (pq encoder) and with the tree encoder only.

It needs torch and onnxscript, which torch.onnx's default exporter uses (the ``test`` extra has both).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import digits_conv1d  # noqa: E402
import example_tools as tools  # noqa: E402

INPUT, OUTPUT = "x", "logits"
SETTINGS_QUICK = [("default", []), ("--encoder tree", ["--encoder", "tree"])]
SETTINGS_FULL = SETTINGS_QUICK + [
    (f"-C {c} --encoder {enc}", ["-C", str(c), "--encoder", enc]) for enc in ("pq", "tree") for c in (16, 64)
] + [("--budget agreement=0.99", ["--budget", "agreement=0.99"]),
     ("--budget agreement=0.99 --objective macs", ["--budget", "agreement=0.99", "--objective", "macs"])]
WIDTH, HEADS, HIDDEN, BLOCKS = 64, 4, 128, 3
EPOCHS = 150


def load():
    """(x_train, x_test, y_train, y_test): digits as [N, 8 tokens (rows), 8 pixels] float32 in 0..1."""
    return digits_conv1d.load()  # [N, 8, 8] with the image rows on axis 1: the tokens


def make_net():
    import torch
    import torch.nn.functional as F

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = torch.nn.LayerNorm(WIDTH), torch.nn.LayerNorm(WIDTH)
            self.qkv, self.out = torch.nn.Linear(WIDTH, 3 * WIDTH), torch.nn.Linear(WIDTH, WIDTH)
            self.ff1, self.ff2 = torch.nn.Linear(WIDTH, HIDDEN), torch.nn.Linear(HIDDEN, WIDTH)

        def forward(self, x):
            B, T, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, HEADS, WIDTH // HEADS).permute(2, 0, 3, 1, 4)
            attention = torch.softmax(q @ k.transpose(-1, -2) / (WIDTH // HEADS) ** 0.5, -1) @ v
            x = x + self.out(attention.transpose(1, 2).reshape(B, T, WIDTH))
            return x + self.ff2(F.gelu(self.ff1(self.ln2(x))))

    class ViT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Linear(8, WIDTH)
            self.position = torch.nn.Parameter(torch.zeros(1, 8, WIDTH))
            self.blocks = torch.nn.Sequential(*[Block() for _ in range(BLOCKS)])
            self.ln, self.head = torch.nn.LayerNorm(WIDTH), torch.nn.Linear(WIDTH, 10)

        def forward(self, x):
            return self.head(self.ln(self.blocks(self.embed(x) + self.position)).mean(1))

    return ViT()


def train(x_train: np.ndarray, y_train: np.ndarray):
    import torch

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same sums in the same order on every machine
    try:
        net = make_net()
        optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=0.05)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=EPOCHS * -(-len(x_train) // 64))
        x, y = torch.from_numpy(x_train), torch.from_numpy(y_train)
        for _ in range(EPOCHS):
            order = torch.randperm(len(x))
            for start in range(0, len(x), 64):
                batch = order[start : start + 64]
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(net(x[batch]), y[batch]).backward()
                optimizer.step()
                schedule.step()
    finally:
        torch.set_num_threads(threads)
    return net.eval()


def run(out: Path, quick: bool) -> list[dict]:
    import torch

    out.mkdir(parents=True, exist_ok=True)
    x_train, x_test, y_train, y_test = load()
    net = train(x_train, y_train)
    with torch.no_grad():
        torch_acc = float((net(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
    original = digits_conv1d.export(net, x_test, out / "digits_vit.onnx")
    digits_conv1d.write_rows(out / "calib", x_train)
    onnx_acc = digits_conv1d.accuracy(original, x_test, y_test, halut=False)
    if abs(onnx_acc - torch_acc) > 1e-12:
        raise RuntimeError(f"the ONNX export disagrees with torch: accuracy {onnx_acc} vs {torch_acc}")
    print(f"torch test accuracy {100 * torch_acc:.2f} %; ONNX export equal")

    results = []
    for label, options in SETTINGS_QUICK if quick else SETTINGS_FULL:
        slug = (label.replace("--encoder ", "").replace("-C ", "C").replace("--budget ", "")
                .replace("--objective ", "").replace(" ", "_"))
        converted = tools.convert(original, out / "calib", out / f"digits_vit.{slug}.onnx", options)
        acc = digits_conv1d.accuracy(converted, x_test, y_test, halut=True)
        results.append({"setting": label, "layers": tools.converted_layers(converted), "original": onnx_acc,
                        "converted": acc, "drop": onnx_acc - acc})
    return results


def main(argv=None) -> None:
    eligible = 4 * BLOCKS + 1
    tools.accuracy_example_main(__doc__.split("\n\n")[0], run, argv, layers_cell=lambda n: f"{n} of {eligible}")


if __name__ == "__main__":
    main()
