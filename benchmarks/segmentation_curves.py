"""Dice, IoU, PPV and Sensitivity against the binarising percentile, one line per method (the MDM paper's Fig. 5).

    python -m benchmarks.segmentation_curves outputs/prototypes_synthetic --plot docs/prototype_curves.png

Reads the run's ``tables/segmentation.csv`` (every percentile of ``evaluation.segmentation_percents``, the mean over
images with its bootstrap interval) and draws four panels; the shaded band is the 95 % interval of the mean.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path

__all__ = ["read_curves", "plot_curves"]

SCORES = ("dice", "iou", "ppv", "sensitivity")


def read_curves(run_dir: Path) -> dict[str, dict[str, list[tuple[int, float, float, float]]]]:
    """``{method: {score: [(percentile, mean, low, high), ...]}}`` from ``tables/segmentation.csv``."""
    path = Path(run_dir) / "tables" / "segmentation.csv"
    if not path.is_file():
        raise ValueError(f"{path} does not exist: run a comparison with evaluation.metrics including segmentation")
    curves: dict[str, dict[str, list[tuple[int, float, float, float]]]] = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            per = curves.setdefault(row["method"], {s: [] for s in SCORES})
            for key, value in row.items():
                found = re.fullmatch(r"(dice|iou|ppv|sensitivity)/(\d+)", key)
                if found and value != "":
                    score, q = found.group(1), int(found.group(2))
                    low, high = float(row[f"{key}_ci_low"]), float(row[f"{key}_ci_high"])
                    per[score].append((q, float(value), low, high))
    return curves


def plot_curves(curves: dict, out: Path, title: str = "") -> Path:
    """Four panels (Dice, IoU, PPV, Sensitivity) of every method's curve over the percentiles; written to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2), sharex=True)
    for ax, score in zip(axes, SCORES, strict=True):
        for method, per in curves.items():
            points = sorted(per[score])
            if not points:
                continue
            q, mean, low, high = zip(*points, strict=True)
            (line,) = ax.plot(q, mean, label=method)
            ax.fill_between(q, low, high, color=line.get_color(), alpha=0.15)
        ax.set_title({"iou": "IoU", "ppv": "PPV"}.get(score, score.capitalize()))
        ax.set_xlabel("binarising percentile q")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:  # noqa: D103
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a comparison's output.dir")
    parser.add_argument("--plot", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    try:
        print(plot_curves(read_curves(args.run_dir), args.plot, args.title))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
