"""One summary table from a comparison run's ``tables/*.csv``: what docs/results.md shows, regenerated from a run.

    python -m benchmarks.results_table outputs/compare_synthetic deletion insertion road_gap/auc proportion \
        pointing/all dice/90 sanity/full/spearman stability/noise1e-06/pearson seconds_per_image

Each cell is ``mean [low, high]`` from the run's tables (the bootstrap interval of the mean over images), followed by
``*`` where the paired Wilcoxon test against the run's reference method gives p < 0.05 (``--alpha``); the reference
row has no mark. The cost columns (seconds, passes per image) are shown as means. Columns are named as in the CSVs
(``<column>`` of ``tables/<family>.csv``, the cost columns of ``tables/cost.csv``); ``--labels`` renames them.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

__all__ = ["read_cells", "summary_table"]


SUFFIXES = {"mean": "", "low": "_ci_low", "high": "_ci_high", "p": "_p"}
# cost columns: a batch's time shared by its images, so an interval over images says little; shown as the mean
COST = ("seconds_per_image", "forward_per_image", "backward_per_image")
DERIVED = ("quality_vs_compute.csv", "sweep_paired.csv")  # benchmarks.sweep's tables, made from the others


def _num(row: dict[str, str], key: str) -> float:
    v = row.get(key, "")
    return float(v) if v not in ("", None) else math.nan


def read_cells(run_dir: Path) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, str]]:
    """``({method: {column: {"mean", "low", "high", "p"}}}, {method: images})`` from every ``tables/*.csv``."""
    cells: dict[str, dict[str, dict[str, float]]] = {}
    images: dict[str, str] = {}
    for path in sorted((run_dir / "tables").glob("*.csv")):
        if path.name in DERIVED:
            continue
        with open(path) as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            m = row["method"]
            images.setdefault(m, row["images"])
            for key in row:
                if key in ("method", "images") or key.endswith(("_ci_low", "_ci_high", "_p")):
                    continue
                stats = {s: _num(row, key + suffix) for s, suffix in SUFFIXES.items()}
                cells.setdefault(m, {})[key] = stats
    return cells, images


def _fmt(v: float, digits: int) -> str:
    if math.isnan(v):
        return "n/a"
    return f"{v:,.{digits}f}" if abs(v) < 1000 else f"{v:,.0f}"


def summary_table(
    run_dir: Path, columns: list[str], labels: list[str] | None = None, alpha: float = 0.05, digits: int = 3
) -> str:
    """The Markdown table: methods as rows, ``columns`` as columns, ``mean [low, high]`` and ``*`` per cell."""
    cells, images = read_cells(run_dir)
    missing = [c for c in columns if not any(c in v for v in cells.values())]
    if missing:
        known = sorted({c for v in cells.values() for c in v})
        raise SystemExit(f"columns {missing} are in no table of {run_dir}: use any of {known}")
    head = labels or columns
    lines = ["| method | images | " + " | ".join(head) + " |"]
    lines.append("| --- | ---: | " + " | ".join("---:" for _ in head) + " |")
    for m, row in cells.items():
        shown = []
        for c in columns:
            cell = row.get(c)
            if cell is None:
                shown.append("")
                continue
            text = _fmt(cell["mean"], digits)
            if c in COST:
                v = cell["mean"]
                shown.append(f"{v:,.0f}" if math.isfinite(v) and v == int(v) else text)
                continue
            if not math.isnan(cell["low"]):
                text += f" [{_fmt(cell['low'], digits)}, {_fmt(cell['high'], digits)}]"
            if not math.isnan(cell["p"]) and cell["p"] < alpha:
                text += " *"
            shown.append(text)
        lines.append(f"| {m} | {images[m]} | " + " | ".join(shown) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:  # noqa: D103
    ap = argparse.ArgumentParser(prog="python -m benchmarks.results_table", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("columns", nargs="+")
    ap.add_argument("--labels", nargs="+", default=None, help="header names, one per column")
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--digits", type=int, default=3)
    args = ap.parse_args(argv)
    if args.labels is not None and len(args.labels) != len(args.columns):
        raise SystemExit("--labels needs one name per column")
    sys.stdout.write(summary_table(args.run_dir, args.columns, args.labels, args.alpha, args.digits))
    return 0


if __name__ == "__main__":
    sys.exit(main())
