"""``python -m benchmarks.sweep <run folder> --reference <label>``: quality against compute.

A sweep is an ordinary comparison run (``explain.py`` with ``methods:`` and
``evaluation.metrics: [deletion_insertion]``) whose methods are variants of one method: more or fewer
epochs, a smaller schedule, fewer HDM stages (``configs/sweep_synthetic.yaml``). It resumes like any run.
This command reads the finished run's tables and writes, next to them, insertion and deletion AUC
against forward/backward passes per image (``tables/quality_vs_compute.{csv,md}``, ``curves/quality_vs_compute.png``),
and names the cheapest variant whose insertion AUC is within ``--tolerance`` (1 %) of the reference's.

With ``--paired`` (``configs/sweep_presets.yaml``), each variant is compared image by image with the
reference of its own method (one ``--reference`` per method: ``--reference hdm_fast mdm_fast``), from the run's
per-image records and maps: for every metric the mean paired difference with its bootstrap interval and the
Wilcoxon p-value; whether quality holds (no metric's interval lies wholly on the worse side of 0); and how far
the variant's maps are from the reference's (Pearson, mean and interval) against the reference's own agreement
with itself under 1e-6 input noise (its ``stability/noise1e-06/pearson``): a variant whose maps differ from
the reference's no more than round-off moves the reference is "within the stability tolerance". Written to
``tables/sweep_paired.{csv,md}``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from hdm_lightning.io import atomic_path, atomic_write_text, load_tensors
from hdm_lightning.metrics.agreement import pearson
from hdm_lightning.metrics.family import higher_is_better
from hdm_lightning.stats import bootstrap_ci, paired_test

__all__ = ["main", "paired_sweep", "quality_vs_compute"]

STABILITY_KEY = "stability/noise1e-06/pearson"


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


def _records(folder: Path) -> dict[str, dict[str, dict]]:
    """``{label: {image id: record}}`` of every method folder of a comparison run."""
    out = {}
    for method_dir in sorted(p for p in (folder / "methods").iterdir() if p.is_dir()):
        recs = [json.loads(f.read_text()) for f in sorted((method_dir / "records").rglob("*.json"))]
        out[method_dir.name] = {r["id"]: r for r in recs if r.get("status", "ok") == "ok"}
    return out


def _method_names(folder: Path, labels: list[str]) -> dict[str, str]:
    """The registered method of each label, from the run's ``config.yaml`` (``methods: [{name, label}]``)."""
    names = {label: label for label in labels}
    saved = folder / "config.yaml"
    if saved.is_file():
        for entry in OmegaConf.to_container(OmegaConf.load(saved)).get("methods") or []:
            if isinstance(entry, dict) and "name" in entry:
                names[str(entry.get("label") or entry["name"])] = str(entry["name"])
    return names


def _map(folder: Path, label: str, record: dict) -> torch.Tensor:
    return load_tensors(folder / "methods" / label / record["map"])["saliency"].float().reshape(1, -1)


def _interval(values: list[float], seed: int) -> tuple[float, float, float]:
    finite = [v for v in values if v is not None and v == v]
    mean = sum(finite) / len(finite) if finite else float("nan")
    return (mean, *bootstrap_ci(finite, seed=seed))


def paired_sweep(folder: Path, references: list[str], metrics: list[str], seed: int = 0) -> list[dict]:
    """Each variant against the reference of its method, image by image (see the module docstring).

    Returns one row per variant: ``method, reference, images, passes``, per metric ``<m>``, ``<m>_diff``,
    ``<m>_diff_low``, ``<m>_diff_high``, ``<m>_p``; ``holds`` (no metric worse beyond its interval);
    ``agreement``, ``agreement_low``, ``agreement_high`` (Pearson of the variant's maps with the reference's),
    ``tolerance`` (the lower end of the reference's own 1e-6-noise Pearson interval; NaN without the
    ``stability`` family) and ``within_tolerance``.

    Raises:
        ValueError: no method folder labelled as a reference, or two references of one method.
    """
    recs = _records(folder)
    method_of = _method_names(folder, list(recs))
    ref_of: dict[str, str] = {}
    for ref in references:
        if ref not in recs or not recs[ref]:
            raise ValueError(
                f"no finished method labelled {ref!r} in {folder / 'methods'}: the labels are {sorted(recs)}"
            )
        method = method_of[ref]
        if method in ref_of:
            raise ValueError(f"two references of method {method!r}: {ref_of[method]!r} and {ref!r}")
        ref_of[method] = ref
    ref_maps = {ref: {i: _map(folder, ref, r) for i, r in recs[ref].items()} for ref in ref_of.values()}
    rows = []
    for label, by_id in recs.items():
        if not by_id or method_of[label] not in ref_of:
            continue
        ref = ref_of[method_of[label]]
        ids = [i for i in recs[ref] if i in by_id]
        row = {"method": label, "reference": ref, "images": len(ids)}
        row["passes"] = sum(float(by_id[i]["passes"]) for i in ids) / max(len(ids), 1)
        holds = True
        for m in metrics:
            a = [by_id[i]["metrics"].get(m) for i in ids]
            b = [recs[ref][i]["metrics"].get(m) for i in ids]
            diffs = [x - y for x, y in zip(a, b, strict=True) if x is not None and y is not None]
            row[m] = _interval(a, seed)[0]
            row[f"{m}_diff"], row[f"{m}_diff_low"], row[f"{m}_diff_high"] = _interval(diffs, seed)
            row[f"{m}_p"] = paired_test(a, b) if label != ref else float("nan")
            up = higher_is_better(m)
            if label != ref and up is not None:
                worse = row[f"{m}_diff_high"] < 0 if up else row[f"{m}_diff_low"] > 0
                holds = holds and not worse
        row["holds"] = holds
        agree = [float(pearson(_map(folder, label, by_id[i]), ref_maps[ref][i])[0]) for i in ids]
        row["agreement"], row["agreement_low"], row["agreement_high"] = _interval(agree, seed)
        own = [recs[ref][i]["metrics"].get(STABILITY_KEY) for i in ids]
        row["tolerance"] = _interval(own, seed)[1] if any(v is not None for v in own) else float("nan")
        row["within_tolerance"] = label == ref or row["agreement"] >= row["tolerance"]
        rows.append(row)
    rows.sort(key=lambda r: (r["reference"], r["passes"]))
    return rows


def _paired_markdown(rows: list[dict], metrics: list[str]) -> list[str]:
    head = "| variant | vs | passes/image | " + " | ".join(f"{m} (Δ [95 % interval])" for m in metrics)
    head += " | quality holds | map Pearson with the reference | within stability tolerance |"
    md = [head, "| --- | --- | ---: | " + " | ".join("---:" for _ in metrics) + " | --- | ---: | --- |"]
    for r in rows:
        cells = []
        for m in metrics:
            if r["method"] == r["reference"]:
                cells.append(f"{r[m]:.3f}")
            else:
                star = " *" if r[f"{m}_p"] < 0.05 else ""
                diff = f"{r[f'{m}_diff']:+.3f} [{r[f'{m}_diff_low']:+.3f}, {r[f'{m}_diff_high']:+.3f}]"
                cells.append(f"{r[m]:.3f} ({diff}){star}")
        agree = f"{r['agreement']:.3f} [{r['agreement_low']:.3f}, {r['agreement_high']:.3f}]"
        tol = "reference" if r["method"] == r["reference"] else ("yes" if r["within_tolerance"] else "no")
        tol += f" (≥ {r['tolerance']:.3f})" if r["method"] == r["reference"] else ""
        md.append(
            f"| {r['method']} | {r['reference']} | {r['passes']:,.0f} | "
            + " | ".join(cells)
            + f" | {'yes' if r['holds'] else 'no'} | {agree} | {tol} |"
        )
    return md


def _write_csv(rows: list[dict], path: Path) -> None:
    """``rows`` as a CSV (columns: the first row's keys), written atomically."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(buf.getvalue(), path)


def _paired_main(args: argparse.Namespace) -> int:
    try:
        rows = paired_sweep(args.folder, args.reference, args.metrics)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _write_csv(rows, args.folder / "tables" / "sweep_paired.csv")
    md = _paired_markdown(rows, args.metrics)
    atomic_write_text("\n".join(md) + "\n", args.folder / "tables" / "sweep_paired.md")
    print("\n".join(md))
    for ref in sorted({r["reference"] for r in rows}):
        ok = [r for r in rows if r["reference"] == ref and r["holds"] and r["within_tolerance"]]
        print(
            f"cheapest variant of {ref} whose quality holds and whose maps stay within the stability tolerance: "
            f"{ok[0]['method'] if ok else 'none'}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Write the quality-against-compute table and plot of a finished sweep run; returns an exit status."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.sweep", description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="the sweep's run folder (output.dir)")
    ap.add_argument("--reference", required=True, nargs="+", help="label of the reference variant (one per method)")
    ap.add_argument("--tolerance", type=float, default=0.01, help="relative insertion-AUC tolerance")
    ap.add_argument("--paired", action="store_true", help="image-by-image comparison with intervals (see above)")
    ap.add_argument(
        "--metrics", nargs="+", default=["insertion", "deletion", "proportion"], help="--paired: per-image metrics"
    )
    args = ap.parse_args(argv)
    if args.paired:
        return _paired_main(args)
    if len(args.reference) != 1:
        print("error: without --paired, give one --reference", file=sys.stderr)
        return 2
    args.reference = args.reference[0]
    try:
        rows, cheapest = quality_vs_compute(args.folder, args.reference, args.tolerance)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _write_csv(rows, args.folder / "tables" / "quality_vs_compute.csv")
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
