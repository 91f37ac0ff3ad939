"""How much one training run's accuracy figures say: a digits example retrained with seeds 0..N-1 (the data split
fixed: fit / validation / test, example_tools.digits_split), each model converted at the example's settings, and per
setting the drop in test accuracy for every seed with its mean, standard deviation and range.

    python benchmarks/seed_spread.py mlp|conv1d|vit|vit-tiny [--seeds 5] [--full] [--out DIR]

Without ``--full`` the settings are the quick ones (the default, pq, and ``--encoder tree``); ``--full`` runs every
row of the example, its budgets included (measured on the validation rows). The seed is scikit-learn's
``random_state`` (mlp) or torch's seed (conv1d, vit, vit-tiny: ``digits_vit.py --size tiny``, 4 minutes a seed at
the quick settings); everything else is the example's own ``run``. One test
digit is 0.19 points.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import example_tools as tools  # noqa: E402

# name -> (example module, its run()'s keyword arguments)
EXAMPLES = {"mlp": ("digits_mlp", {}), "conv1d": ("digits_conv1d", {}), "vit": ("digits_vit", {}),
            "vit-tiny": ("digits_vit", {"size_name": "tiny"})}


def spread(model: str, seeds: int, full: bool, out: Path) -> list[list[str]]:
    import importlib

    module, kwargs = EXAMPLES[model]
    example = importlib.import_module(module)
    runs = []
    for seed in range(seeds):
        with contextlib.redirect_stdout(sys.stderr):  # the example's own lines, not the table
            runs.append(example.run(out / f"seed{seed}", quick=not full, seed=seed, **kwargs))
        print(f"{model} seed {seed}: " + ", ".join(f"{r['setting']} {100 * r['drop']:.2f}" for r in runs[-1]),
              file=sys.stderr)
    originals = [100 * results[0]["original"] for results in runs]
    rows = [[model, "original accuracy %", *(f"{v:.2f}" for v in originals), *_summary(originals)]]
    for k, first in enumerate(runs[0]):
        drops = [100 * results[k]["drop"] for results in runs]
        layers = sorted({results[k]["layers"] for results in runs})
        rows.append([model, f"{first['setting']} ({', '.join(layers)})", *(f"{d:.2f}" for d in drops),
                     *_summary(drops)])
    return rows


def _summary(values: list[float]) -> list[str]:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return [f"{statistics.fmean(values):.2f}", f"{sd:.2f}", f"{min(values):.2f} .. {max(values):.2f}"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=list(EXAMPLES))
    parser.add_argument("--seeds", type=int, default=5, help="training seeds 0..N-1")
    parser.add_argument("--full", action="store_true", help="every setting of the example, not the quick ones")
    parser.add_argument("--out", type=Path, default=None, help="keep models and data here (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    with tempfile.TemporaryDirectory() as tmp:
        rows = spread(args.model, args.seeds, args.full, args.out or Path(tmp))
    print(f"Halut custom-op library: {tools.library_status()}; drop = original - converted test accuracy, points")
    print(tools.format_table(["model", "row", *(f"seed {s}" for s in range(args.seeds)), "mean", "sd", "range"],
                             rows))


if __name__ == "__main__":
    main()
