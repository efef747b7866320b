"""Map quality of a comparison's methods with 95 % bootstrap intervals over images, and paired differences.

``python -m benchmarks.benchmark_quality outputs/compare_dynamics --baseline hdm_paper [--pairs a=b ...]``
reads the per-image metric values that ``explain.py`` stored in each method's records and prints, per metric
column: every method's mean with its 95 % percentile-bootstrap interval (10,000 resamples of the images, seed
0), and for each pair ``a=b`` the mean of the per-image difference ``a - b`` with its paired bootstrap interval
(the same resampled images for both methods). A method is "within the interval" of the baseline when its mean
lies inside the baseline's interval; the paired interval says whether the difference is distinguishable from 0.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

COLUMNS = ("deletion", "insertion", "proportion", "drop/70", "increase/70", "drop/90", "increase/90", "iou/mean")


def read_records(folder: Path) -> dict[str, dict[str, dict]]:
    """``{method label: {image id: metrics}}`` of the finished images of a comparison run folder."""
    roots = sorted((folder / "methods").iterdir()) if (folder / "methods").is_dir() else [folder]
    out: dict[str, dict[str, dict]] = {}
    for root in roots:
        recs = {}
        for path in sorted((root / "records").rglob("*.json")):
            rec = json.loads(path.read_text())
            if rec.get("status") == "ok":
                recs[rec["id"]] = rec.get("metrics", {})
        if recs:
            out[root.name if root != folder else "method"] = recs
    if not out:
        raise SystemExit(f"error: no finished records under {folder}: run explain.py with evaluation metrics first")
    return out


def bootstrap(values: np.ndarray, resamples: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and 95 % percentile-bootstrap interval of ``values`` (one per image)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(resamples, len(values)))
    means = values[idx].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(values.mean()), float(lo), float(hi)


def _values(recs: dict[str, dict], ids: list[str], column: str) -> np.ndarray | None:
    vals = [recs[i].get(column) for i in ids]
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in vals):
        return None
    return np.asarray(vals, dtype=np.float64)


def quality_table(records: dict[str, dict[str, dict]], baseline: str, pairs: list[tuple[str, str]]) -> dict:
    """Means, intervals and paired differences on the images every method finished."""
    if baseline not in records:
        raise SystemExit(f"error: --baseline {baseline!r} is not a method of this run: {sorted(records)}")
    ids = sorted(set.intersection(*(set(r) for r in records.values())))
    out: dict = {"images": len(ids), "methods": {}, "pairs": {}}
    for column in COLUMNS:
        base = _values(records[baseline], ids, column)
        if base is None:
            continue
        _, blo, bhi = bootstrap(base)
        for label, recs in records.items():
            v = _values(recs, ids, column)
            if v is None:
                continue
            mean, lo, hi = bootstrap(v)
            out["methods"].setdefault(label, {})[column] = {
                "mean": mean,
                "ci": [lo, hi],
                "within_baseline_ci": bool(blo <= mean <= bhi),
            }
        for a, b in pairs:
            va, vb = _values(records[a], ids, column), _values(records[b], ids, column)
            if va is None or vb is None:
                continue
            mean, lo, hi = bootstrap(va - vb)
            out["pairs"].setdefault(f"{a} - {b}", {})[column] = {"mean": mean, "ci": [lo, hi]}
    return out


def markdown(table: dict, baseline: str) -> str:
    """The table as Markdown: mean [low, high] per method and column; paired differences below."""
    cols = [c for c in COLUMNS if any(c in m for m in table["methods"].values())]
    lines = [f"{table['images']} images; 95 % bootstrap intervals; * = mean inside {baseline}'s interval", ""]
    lines.append("| method | " + " | ".join(cols) + " |")
    lines.append("| --- | " + " | ".join("---:" for _ in cols) + " |")
    for label, row in table["methods"].items():
        cells = []
        for c in cols:
            v = row.get(c)
            star = "*" if v and v["within_baseline_ci"] and label != baseline else ""
            cells.append("" if v is None else f"{v['mean']:.3f} [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]{star}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if table["pairs"]:
        lines += ["", "| paired difference | " + " | ".join(cols) + " |"]
        lines.append("| --- | " + " | ".join("---:" for _ in cols) + " |")
        for name, row in table["pairs"].items():
            cells = [
                "" if row.get(c) is None else f"{row[c]['mean']:+.3f} [{row[c]['ci'][0]:+.3f}, {row[c]['ci'][1]:+.3f}]"
                for c in cols
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.benchmark_quality", description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="an explain.py comparison run folder")
    ap.add_argument("--baseline", required=True, help="the method label whose intervals the others are held to")
    ap.add_argument("--pairs", nargs="*", default=[], help="paired differences a=b (a minus b, per image)")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args(argv)
    pairs = []
    for p in args.pairs:
        a, sep, b = p.partition("=")
        if not sep or not a or not b:
            ap.error(f"--pairs items must look like a=b, got {p!r}")
        pairs.append((a, b))
    records = read_records(args.run)
    for a, b in pairs:
        for m in (a, b):
            if m not in records:
                ap.error(f"--pairs names {m!r}, not a method of this run: {sorted(records)}")
    table = quality_table(records, args.baseline, pairs)
    text = markdown(table, args.baseline)
    sys.stdout.write(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
