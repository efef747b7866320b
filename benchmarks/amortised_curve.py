"""Quality against refinement steps: the amortised map, then refined from it for k steps, against a reference.

    python -m benchmarks.amortised_curve outputs/compare_amortised --out docs/amortised_refinement.png

Reads a comparison run's ``tables/*.csv`` (``configs/compare_amortised.yaml``). Each ``--prefix`` is one series:
``<prefix><k>`` is a method refined for k steps (default ``hdm_refine_<k>``: HDM started from the prediction, k steps
per vector and level; ``amortised_refine_<k>``: k semi-amortised steps); the method ``amortised`` is k = 0 of a series
that has no k = 0 of its own. The reference (``hdm``: ``hdm_fast`` from ``tau``) is drawn as a band (its 95 %
interval). Prints a Markdown table (k, passes per image, each metric's mean [interval]) and writes the plot, one
panel per metric.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from benchmarks.results_table import read_cells

__all__ = ["curve_rows", "main"]

LABELS = {
    "insertion": "insertion AUC ↑",
    "deletion": "deletion AUC ↓",
    "proportion": "Proportion % ↑",
    "pointing/all": "pointing game ↑",
    "road_gap/auc": "ROAD gap ↑",
}


def curve_rows(cells: dict, prefix: str, base: str) -> list[tuple[int, str]]:
    """``[(k, method)]`` in order of k: ``<prefix><k>`` the refined runs, ``base`` as k = 0 unless ``<prefix>0`` is."""
    rows = []
    for m in cells:
        hit = re.fullmatch(re.escape(prefix) + r"(\d+)", m)
        if hit:
            rows.append((int(hit.group(1)), m))
    if base in cells and all(k != 0 for k, _ in rows):
        rows.append((0, base))
    return sorted(rows)


def _passes(row: dict) -> float:
    back = row.get("backward_per_image", {}).get("mean", float("nan"))
    return back if back == back else float("nan")


def main(argv: list[str] | None = None) -> int:  # noqa: D103
    ap = argparse.ArgumentParser(prog="python -m benchmarks.amortised_curve", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--metrics", nargs="+", default=["insertion", "proportion", "pointing/all", "road_gap/auc"])
    ap.add_argument("--prefix", nargs="+", default=["hdm_refine_"], help="one series per prefix")
    ap.add_argument("--base", default="amortised")
    ap.add_argument("--reference", default="hdm")
    ap.add_argument("--out", type=Path, default=None, help="PNG of the curves (default: <run_dir>/curves/)")
    args = ap.parse_args(argv)
    cells, _ = read_cells(args.run_dir)
    series = {prefix: curve_rows(cells, prefix, args.base) for prefix in args.prefix}
    series = {prefix: rows for prefix, rows in series.items() if rows}
    if not series or args.reference not in cells:
        raise SystemExit(f"{args.run_dir}: needs {args.base!r}, {args.prefix}<k> and {args.reference!r} in its tables")
    listed = list(dict.fromkeys(row for rows in series.values() for row in rows))
    metrics = [m for m in args.metrics if any(m in cells[name] for _, name in listed)]
    head = ["k", "method", "backward passes/image", *metrics]
    print("| " + " | ".join(head) + " |\n|" + " ---: |" * len(head))
    for k, name in [*listed, (-1, args.reference)]:
        row = cells[name]
        shown = [f"{row[m]['mean']:.3f} [{row[m]['low']:.3f}, {row[m]['high']:.3f}]" for m in metrics]
        print(f"| {'ref' if k < 0 else k} | {name} | {_passes(row):,.0f} | " + " | ".join(shown) + " |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 3.0), squeeze=False)
    colours = ["tab:blue", "tab:green", "tab:purple", "tab:red"]
    for ax, m in zip(axes[0], metrics, strict=True):
        ref = cells[args.reference][m]
        ax.axhspan(ref["low"], ref["high"], color="tab:orange", alpha=0.25, lw=0)
        ax.axhline(
            ref["mean"],
            color="tab:orange",
            lw=1,
            label=f"{args.reference} ({_passes(cells[args.reference]):,.0f} passes)",
        )
        for i, (prefix, rows) in enumerate(series.items()):
            ks, colour = [k for k, _ in rows], colours[i % len(colours)]
            mean = [cells[name][m]["mean"] for _, name in rows]
            low = [cells[name][m]["low"] for _, name in rows]
            high = [cells[name][m]["high"] for _, name in rows]
            ax.fill_between(ks, low, high, color=colour, alpha=0.15, lw=0)
            ax.plot(ks, mean, "o-", color=colour, label=f"{prefix}k")
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel("refinement steps k per vector")
        ax.set_title(LABELS.get(m, m), fontsize=10)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    out = args.out or args.run_dir / "curves" / "amortised_refinement.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"\nwrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
