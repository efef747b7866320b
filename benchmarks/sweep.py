"""``python -m benchmarks.sweep <run folder> --reference <label>``: quality against compute.

A sweep is an ordinary comparison run (``explain.py`` with ``methods:`` and
``evaluation.metrics: [deletion_insertion]``) whose methods are variants of one method: more or fewer
epochs, a smaller schedule, fewer HDM stages (``configs/sweep_synthetic.yaml``). It resumes like any run.
This command reads the finished run's tables and writes, next to them, insertion and deletion AUC
against forward/backward passes per image (``tables/quality_vs_compute.{csv,md}``, ``curves/quality_vs_compute.png``),
and names the cheapest variant whose insertion AUC is within ``--tolerance`` (1 %) of the reference's.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

from hdm_lightning.io import atomic_path, atomic_write_text

__all__ = ["main", "quality_vs_compute"]


def _read(path: Path) -> dict[str, dict[str, str]]:
    with open(path) as f:
        return {r["method"]: r for r in csv.DictReader(f)}


def quality_vs_compute(folder: Path, reference: str, tolerance: float = 0.01) -> tuple[list[dict], str | None]:
    """Variants sorted by passes per image, and the cheapest one within ``tolerance`` of the reference.

    Returns ``(rows, cheapest)``: rows ``{method, images, passes, backward, seconds, insertion, deletion}``, and
    the label of the cheapest variant whose insertion AUC is at least ``(1 - tolerance)`` times the reference's
    (``None`` if none is).

    Raises:
        ValueError: the folder has no deletion/insertion or cost table, or no method labelled ``reference``.
    """
    di_path, cost_path = folder / "tables" / "deletion_insertion.csv", folder / "tables" / "cost.csv"
    if not di_path.is_file() or not cost_path.is_file():
        raise ValueError(
            f"{folder} holds no tables/deletion_insertion.csv and tables/cost.csv: run explain.py with methods: [...] "
            "and evaluation.metrics: [deletion_insertion] first"
        )
    di, cost = _read(di_path), _read(cost_path)
    if reference not in di:
        raise ValueError(f"no method labelled {reference!r} in {di_path}: the labels are {sorted(di)}")
    rows = [
        {
            "method": m,
            "images": int(di[m]["images"]),
            "passes": float(cost[m]["forward_per_image"]) + float(cost[m]["backward_per_image"]),
            "backward": float(cost[m]["backward_per_image"]),
            "seconds": float(cost[m]["seconds_per_image"]),
            "insertion": float(di[m]["insertion"]),
            "deletion": float(di[m]["deletion"]),
        }
        for m in di
    ]
    rows.sort(key=lambda r: r["passes"])
    target = (1 - tolerance) * next(r["insertion"] for r in rows if r["method"] == reference)
    cheapest = next((r["method"] for r in rows if r["insertion"] >= target), None)
    return rows, cheapest


def main(argv: list[str] | None = None) -> int:
    """Write the quality-against-compute table and plot of a finished sweep run; returns an exit status."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.sweep", description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="the sweep's run folder (output.dir)")
    ap.add_argument("--reference", required=True, help="label of the reference variant (e.g. the paper preset)")
    ap.add_argument("--tolerance", type=float, default=0.01, help="relative insertion-AUC tolerance")
    args = ap.parse_args(argv)
    try:
        rows, cheapest = quality_vs_compute(args.folder, args.reference, args.tolerance)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(buf.getvalue(), args.folder / "tables" / "quality_vs_compute.csv")
    md = ["| variant | passes/image | s/image | insertion ↑ | deletion ↓ |", "| --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        mark = (
            " (reference)"
            if r["method"] == args.reference
            else (" (cheapest within tolerance)" if r["method"] == cheapest else "")
        )
        cells = f"{r['passes']:,.0f} | {r['seconds']:.2f} | {r['insertion']:.4f} | {r['deletion']:.4f}"
        md.append(f"| {r['method']}{mark} | {cells} |")
    atomic_write_text("\n".join(md) + "\n", args.folder / "tables" / "quality_vs_compute.md")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    ax.set_xscale("log")
    ax.plot([r["passes"] for r in rows], [r["insertion"] for r in rows], "o-", label="insertion AUC ↑")
    ax.plot([r["passes"] for r in rows], [r["deletion"] for r in rows], "s-", label="deletion AUC ↓")
    for r in rows:
        ax.annotate(r["method"], (r["passes"], r["insertion"]), fontsize=6, rotation=20)
    ax.set_xlabel("forward + backward passes per image")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(args.folder / "curves" / "quality_vs_compute.png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    print("\n".join(md))
    tol = f"{args.tolerance:.0%}"
    print(
        f"cheapest within {tol} of {args.reference}'s insertion AUC: {cheapest}" if cheapest else f"none within {tol}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
