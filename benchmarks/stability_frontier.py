r"""``python -m benchmarks.stability_frontier``: stability of a map against what it costs, one point per setting.

Every point of ``--points`` (a YAML file, default ``benchmarks/stability_frontier.yaml``) is a saliency method with
its settings. For each, every photo ``x`` of the file's ``photos`` (shipped photos, preprocessed as ``explain.py``'s
``data.kind: photos`` does) and its copy ``x + eps * n`` (``n`` standard normal, seeded by the photo's name) are
explained in one call, and the point records:

- **stability**: Pearson correlation and top-20 % IoU of the map of ``x`` against the map of ``x + eps * n``, per
  photo, with the worst photo as the point's value (the stability target: Pearson >= 0.99, IoU >= 0.90);
- **cost**: backward passes per image (forward + input gradient of the classifier, what a mask fit spends) and
  wall seconds per image on this machine;
- **quality** of the maps of the clean photos: deletion and insertion AUC (ties in the fixed shuffled order) and
  the ROAD gap (LeRF - MoRF; ties in raster order, as the recorded points), means over the photos.

A DM/MDM point with ``restarts: N`` may list ``subsets: [n, ...]``: the mean of the first ``n`` of its ``N`` runs is
what ``restarts: n`` gives (the restarts' noise is drawn in one stream per image, so the first ``n`` draws are the
same), so one run of ``N`` restarts places every ``n`` on the frontier (``n = 1``: the papers' single run).
HDM averages per stage, so each HDM restart count is a point of its own.

Writes ``--json`` (every per-photo number, settings, command line) and prints a Markdown table; ``--plot`` draws
the frontier (x: passes per image, log scale; y: worst-photo Pearson and IoU; colour: insertion).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import Tensor

from benchmarks.benchmark_stability import (
    MASK_METHODS,
    REPO,
    UsageError,
    agreement,
    build_methods,
    environment,
    load_setup,
    photo_noise,
    resolve_methods,
)

DEFAULT_POINTS = REPO / "benchmarks" / "stability_frontier.yaml"
TARGET = {"pearson": 0.99, "iou20": 0.90}


def load_points(path: Path, only: list[str] | None) -> tuple[dict, list[dict]]:
    """The points file as ``(settings, points)``.

    Each point has ``label``, ``method``, optional ``preset``, ``set`` (dotted key -> value) and ``subsets``.

    Raises:
        UsageError: a missing file, an unknown key, a repeated label, or ``--only`` naming no point.
    """
    if not path.is_file():
        raise UsageError(f"--points: file {str(path)!r} not found")
    raw = OmegaConf.to_container(OmegaConf.load(path))
    if not isinstance(raw, dict) or not isinstance(raw.get("points"), list):
        raise UsageError(f"--points {path}: expected a mapping with a 'points:' list")
    extra = sorted(set(raw) - {"photos", "eps", "classifier", "size", "points"})
    if extra:
        raise UsageError(f"--points {path}: unknown top-level keys {extra} (photos, eps, classifier, size, points)")
    points = []
    for p in raw["points"]:
        bad = sorted(set(p) - {"label", "method", "preset", "set", "subsets"})
        if bad or "label" not in p or "method" not in p:
            raise UsageError(f"--points {path}: point {p!r} needs label and method (keys: preset, set, subsets)")
        points.append(p)
    labels = [p["label"] for p in points]
    if len(set(labels)) != len(labels):
        raise UsageError(f"--points {path}: labels repeat: {labels}")
    if only:
        missing = sorted(set(only) - set(labels))
        if missing:
            raise UsageError(f"--only {missing}: no such point in {path} ({labels})")
        points = [p for p in points if p["label"] in only]
    return raw, points


def _spec(point: dict):
    """The resolved method settings of one point (the stability benchmark's ``--preset``/``--set`` rules)."""
    name = point["method"]
    presets = [f"{name}={point['preset']}"] if point.get("preset") else []
    sets = [f"{name}:{k}={json.dumps(v) if isinstance(v, list | dict) else v}" for k, v in point.get("set", {}).items()]
    (spec,) = resolve_methods([name], presets, sets)
    subsets = [int(n) for n in point.get("subsets", [])]
    if subsets:
        cfg = spec.params.get("config", {})
        if name not in ("dm", "mdm") or any(not 1 <= n <= int(cfg.get("restarts", 1)) for n in subsets):
            raise UsageError(
                f"point {point['label']!r}: subsets need a dm/mdm point with restarts >= every subset, got {subsets}"
            )
    return spec, subsets


def quality(model, classifier, images: Tensor, maps: Tensor, targets: Tensor) -> dict[str, float]:
    """Deletion, insertion (shuffled ties) and ROAD gap (raster ties) of ``maps``, means over the images."""
    from hdm_lightning.metrics import ROAD, DeletionInsertion

    prep = classifier.preprocess
    di = DeletionInsertion(model, mean=prep.mean, std=prep.std, ties="shuffled").to(images.device)
    # ROAD in raster order: the recorded points (docs/stability_frontier.json) were scored so, and one table keeps
    # one order (ROAD's gap moves by about 0.01 between the orders on the synthetic shapes)
    road = ROAD(model, mean=prep.mean, std=prep.std, ties="raster").to(images.device)
    with torch.no_grad():
        di.update(images, maps, targets)
        road.update(images, maps, targets)
    out = {k: float(v) for k, v in di.compute().items() if not isinstance(v, Tensor) or v.dim() == 0}
    gap = {k: float(v) for k, v in road.compute().items() if k == "road_gap/auc"}
    return {"deletion": out["deletion"], "insertion": out["insertion"], "road_gap": gap["road_gap/auc"]}


def measure(point: dict, setup, eps: float, seed: int) -> list[dict]:
    """The rows of one point (one, or one per subset): stability per photo, cost, quality."""
    spec, subsets = _spec(point)
    method = build_methods([spec], setup.model)[spec.name]
    x = setup.images
    noise = torch.stack([photo_noise(p, tuple(x.shape[1:]), seed) for p in setup.ids]).to(x)
    both = torch.cat([x, x + eps * noise])
    targets = torch.cat([setup.targets, setup.targets])
    start = time.perf_counter()
    result = method.explain(both, targets)
    seconds = time.perf_counter() - start
    b = x.shape[0]
    cfg = spec.params.get("config", {})
    restarts = int(cfg.get("restarts", 1)) if spec.name in MASK_METHODS else 1
    passes = result.backward_passes / both.shape[0]
    variants = [(point["label"], restarts, result.maps)]
    for n in subsets:
        runs = result.explanation.stages[0].runs
        variants.append((f"{point['label']}@{n}", n, runs[:, :n].mean(1)))
    rows = []
    for label, n, maps in variants:
        per_photo = {pid: agreement(maps[i], maps[b + i]) for i, pid in enumerate(setup.ids)}
        share = n / restarts
        exp = result.explanation
        row = {
            "label": label,
            "method": spec.name,
            "restarts": n,
            "settings": point.get("set", {}),
            "preset": point.get("preset"),
            "passes_per_image": passes * share,
            "seconds_per_image": seconds / both.shape[0] * share,
            "per_photo": per_photo,
            "worst": {k: min(p[k] for p in per_photo.values()) for k in ("pearson", "iou20")},
            "mean": {k: statistics.fmean(p[k] for p in per_photo.values()) for k in ("pearson", "iou20")},
            "quality": quality(setup.model, setup.classifier, x, maps[:b], setup.targets),
        }
        if exp is not None and exp.agreement is not None and n == restarts:
            row["runs_agreement"] = float(exp.agreement[:b].mean())
        if exp is not None and n == restarts:
            row["per_vector"] = per_vector(exp, b)
        rows.append(row)
        _log(
            f"{label}: worst pearson {row['worst']['pearson']:.3f} iou20 {row['worst']['iou20']:.3f}, "
            f"{row['passes_per_image']:.0f} passes/image"
        )
    return rows


def per_vector(exp, b: int) -> dict[str, dict[str, float]]:
    """Per stage and level, the worst photo's Pearson of each vector ``g(v, H, W)`` of ``x`` against ``x + eps n``.

    Rows ``i`` and ``b + i`` of the explanation are a photo and its noisy copy; vectors are grouped by their DM
    level (``benchmark``, ``level1``, ...; MDM: ``masks``) and the group's mean over vectors is reported.
    """
    from hdm_lightning.masks.ops import upsample
    from hdm_lightning.metrics.agreement import pearson

    h, w = exp.saliency.shape[-2:]
    out: dict[str, dict[str, float]] = {}
    for s, stage in enumerate(exp.stages, start=1):
        for level, names in stage.vector_names.items():
            values = []
            for name in names:
                big = upsample(stage.vectors[name].detach().cpu().double(), h, w)
                values.append(pearson(big[:b], big[b:]).min().item())
            out.setdefault(f"stage{s}", {})[level] = statistics.fmean(values)
    return out


def _log(text: str) -> None:
    print(f"[frontier] {text}", file=sys.stderr, flush=True)


def format_table(rows: list[dict]) -> str:
    """One Markdown row per point, sorted by passes per image."""
    head = (
        "| point | passes / image | s / image | Pearson (worst) | top-20 % IoU (worst) | deletion ↓ | insertion ↑ "
        "| ROAD gap ↑ | meets target |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    lines = [head]
    for r in sorted(rows, key=lambda r: (r["passes_per_image"], r["label"])):
        q, w = r["quality"], r["worst"]
        ok = all(w[k] >= v for k, v in TARGET.items())
        lines.append(
            f"| {r['label']} | {r['passes_per_image']:,.0f} | {r['seconds_per_image']:.1f} | {w['pearson']:.3f} | "
            f"{w['iou20']:.3f} | {q['deletion']:.3f} | {q['insertion']:.3f} | {q['road_gap']:.3f} | "
            f"{'yes' if ok else 'no'} |"
        )
    return "\n".join(lines)


def _short(row: dict) -> str:
    """A plot label: the point's label, a restart count as ``×n`` (``dm_restarts_32@4`` -> ``dm ×4``)."""
    label = row["label"]
    if row.get("restarts", 1) > 1 or "@" in label:
        base = label.split("_restarts_")[0]
        return f"{base} ×{row['restarts']}"
    return label


def plot(rows: list[dict], path: Path) -> None:
    """The frontier: passes per image (log) against worst-photo Pearson and top-20 % IoU; colour: insertion."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharex=True, layout="constrained")
    ins = [r["quality"]["insertion"] for r in rows]
    lo, hi = min(ins), max(ins)
    for ax, key, name in zip(axes, ("pearson", "iou20"), ("Pearson", "top-20 % IoU"), strict=True):
        xs = [r["passes_per_image"] for r in rows]
        ys = [r["worst"][key] for r in rows]
        sc = ax.scatter(xs, ys, c=ins, cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1e-3, zorder=3)
        for r, xv, yv in zip(rows, xs, ys, strict=True):
            ax.annotate(_short(r), (xv, yv), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.axhline(TARGET[key], color="grey", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("backward passes per image (log)")
        ax.set_ylabel(f"{name} under 1e-6 noise (worst photo)")
        ax.grid(alpha=0.3)
    fig.colorbar(sc, ax=axes, label="insertion AUC (mean over photos)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:  # noqa: D103
    ap = argparse.ArgumentParser(prog="python -m benchmarks.stability_frontier", description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=Path, default=DEFAULT_POINTS, help="YAML file of the points")
    ap.add_argument("--only", nargs="+", default=None, help="measure only these point labels")
    ap.add_argument("--json", type=Path, default=None, help="write (or, with --merge, add to) every number here")
    ap.add_argument("--merge", action="store_true", help="keep the rows of --json's other points")
    ap.add_argument("--plot", type=Path, default=None, help="draw the frontier of --json's rows here (PNG)")
    ap.add_argument("--plot-only", action="store_true", help="measure nothing: draw and print --json's rows")
    ap.add_argument("--device", default=None, help="torch device; default cuda when available")
    ap.add_argument("--seed", type=int, default=0, help="seed of the photos' noise")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:  # noqa: D103
    args = parse_args(argv)
    try:
        rows = _run(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(rows))
    if args.plot is not None:
        plot(rows, args.plot)
    return 0


def _run(args: argparse.Namespace) -> list[dict]:
    old = json.loads(args.json.read_text()) if args.json is not None and args.json.is_file() else None
    if args.plot_only:
        if old is None:
            raise UsageError("--plot-only needs an existing --json file")
        return old["rows"]
    raw, points = load_points(args.points, args.only)
    for p in points:  # every point's settings checked before any work
        _spec(p)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ns = argparse.Namespace(
        classifier=raw.get("classifier", "bundled_efficientnet_lite0"),
        num_classes=None,
        size=raw.get("size"),
        photos=list(raw.get("photos", ["chelsea", "coffee", "rocket"])),
    )
    setup = load_setup(ns, device)
    eps = float(raw.get("eps", 1e-6))
    rows: list[dict] = []
    for p in points:
        rows += measure(p, setup, eps, args.seed)
    if args.json is not None:
        done = {r["label"] for r in rows}
        kept = [r for r in (old or {}).get("rows", []) if args.merge and r["label"] not in done]
        rows = kept + rows
        report = {
            "command": "python -m benchmarks.stability_frontier " + shlex.join(sys.argv[1:]),
            "environment": environment(device),
            "photos": ns.photos,
            "eps": eps,
            "rows": rows,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, default=lambda v: None if math.isnan(v) else v))
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
