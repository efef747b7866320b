"""Everything a run writes: per-image files and records, the manifest, the gallery, tables and curves.

Layout of a run folder (``output.dir``; a comparison has one such set per method under ``methods/<label>/``)::

    config.yaml                 the resolved config (method settings included)
    inputs.json                 content digests of the files the config names (hdm_lightning.run.inputs)
    manifest.csv                one row per image: id, status, classes, score, seconds, passes, paths
    maps/<id>.pt                the maps as tensors (torch.load(..., weights_only=True)); with restarts also the
                                runs' per-pixel spread and their mean pairwise Pearson (restart_agreement)
    overlays/<id>.png           JET heatmap over the image (papers' figures)
    binary/<id>.png             the binary mask
    stages/<id>.png             input, each stage's map, the final map (HDM paper Fig. 5)
    records/<id>.json           per-image record; written last, so its presence means "done"

Every file is written to a temporary name and renamed, so a killed run leaves finished files or none.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import torch
from torch import Tensor

from hdm_lightning.evaluation import Evaluation, column_key, gallery, write_curves, write_tables
from hdm_lightning.explainers.result import Explanation
from hdm_lightning.io import atomic_torch_save, atomic_write_json, atomic_write_text, load_tensors
from hdm_lightning.metrics.family import in_manifest
from hdm_lightning.run.batch import MethodBatch
from hdm_lightning.run.folder import read_records
from hdm_lightning.run.plan import MethodRun
from hdm_lightning.viz import overlay, save_png, stage_strip

__all__ = [
    "MANIFEST_COLUMNS",
    "load_maps",
    "write_failed",
    "write_gallery",
    "write_manifest",
    "write_manifest_all",
    "write_method_batch",
    "write_reports",
]

MANIFEST_COLUMNS = (
    "id",
    "method",
    "status",
    "label",
    "label_name",
    "target",
    "target_name",
    "probability",
    "activation",
    "seconds",
    "passes",
    "restart_agreement",
    "map",
    "overlay",
    "binary",
    "stages",
    "forward_per_image",
    "backward_per_image",
    "error",
)


def write_manifest(folder: Path, records: dict[str, dict] | None = None, order: list[str] | None = None) -> Path:
    """Rewrite ``manifest.csv`` from the records (read from ``records/`` when not given; dataset order first)."""
    records = read_records(folder) if records is None else records
    rank = {i: n for n, i in enumerate(order or [])}
    rows = sorted(records.values(), key=lambda r: (rank.get(r["id"], math.inf), r["id"]))
    # Per-image metric values: the columns each family lists there (not the curves, nor Dice & co. at every
    # single percentile: MetricFamily.in_manifest).
    values = {k for r in rows for k, v in r.get("metrics", {}).items() if not isinstance(v, list)}
    metric_keys = sorted(filter(in_manifest, values), key=column_key)  # one order, fresh or resumed
    columns = [*MANIFEST_COLUMNS, *metric_keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        flat = {**r, **r.get("metrics", {})}
        writer.writerow({k: ("" if flat.get(k) is None else flat.get(k)) for k in columns})
    return atomic_write_text(buf.getvalue(), folder / "manifest.csv")


def image_tensors(item, out: Explanation | None, i: int, sal: Tensor, target: int, keep_stages: bool) -> dict:
    """What ``maps/<id>.pt`` holds for image ``i`` of a batch.

    Its map, target, label, mask and, for DM/HDM/MDM, the binary mask, score, passes, loss curves, mixing weights
    and (``keep_stages``) every stage's maps.
    """
    data = {"id": item.id, "saliency": sal.float(), "target": target, "label": int(item.label)}
    if item.mask is not None:
        data["ground_truth"] = item.mask
    if out is None:
        return data
    data.update(
        method=out.method,
        binary=out.binary[i],
        probability=float(out.probability[i]),
        activation=float(out.activation[i]),
        passes=int(out.passes_per_image),
        # loss per fit step, averaged over the fit's vectors (the full per-vector history stays in W&B/API)
        loss={k: v[..., i].float().mean(-1) for k, v in out.history.items()},
    )
    if out.weights is not None:
        data["weights"] = out.weights[i].float()
    if out.agreement is not None:  # restarts: how much the single runs disagreed
        data.update(restarts=int(out.restarts), spread=out.spread[i].float(), restart_agreement=float(out.agreement[i]))
    if keep_stages:
        data["stages"] = [
            {
                "saliency": s.saliency[i].float(),
                "binary": s.binary[i],
                "gamma": float(s.gamma[i]),
                **({"masked": s.masked[i].float()} if s.masked is not None else {}),
            }
            for s in out.stages
        ]
    return data


def _round(v: float) -> float | None:
    return None if math.isnan(v) else round(v, 6)


def _agreement(exp: Explanation | None, i: int) -> float | None:
    """The mean pairwise Pearson correlation of image ``i``'s restarts (``None`` without restarts)."""
    if exp is None or exp.agreement is None:
        return None
    return _round(float(exp.agreement[i]))


def load_maps(run: MethodRun, items, names) -> Tensor:
    """Saved maps of a method for a batch (for the gallery of a batch that method finished before)."""
    return torch.stack([load_tensors(run.root / "maps" / f"{names[it.id]}.pt")["saliency"].float() for it in items])


def write_image(cfg, classifier, run, item, out, i, sal, target, names) -> dict:
    """The method's files for one image: maps (.pt), overlay, binary mask and stage strip (DM/HDM/MDM)."""
    name = names[item.id]
    paths = {"map": f"maps/{name}.pt", "overlay": "", "binary": "", "stages": ""}
    atomic_torch_save(image_tensors(item, out, i, sal, target, cfg.output.stage_maps), run.root / paths["map"])
    if not cfg.output.pictures:
        return {"paths": paths, "pictures": None}
    rgb = classifier.preprocess.denormalize(item.image)
    over = overlay(rgb, sal)
    paths["overlay"] = f"overlays/{name}.png"
    save_png(over, run.root / paths["overlay"])
    strip = None
    if out is not None:
        stage_maps = [s.saliency[i] for s in out.stages] + ([out.saliency[i]] if out.method == "hdm" else [])
        strip = stage_strip(rgb, stage_maps)
        paths.update(binary=f"binary/{name}.png", stages=f"stages/{name}.png")
        save_png(out.binary[i, 0].float(), run.root / paths["binary"])
        save_png(strip, run.root / paths["stages"])
    return {"paths": paths, "pictures": (over, strip)}


def write_gallery(folder: Path, classifier, item, maps: dict[str, Tensor], names) -> None:
    """``gallery/<id>.png``: the image and every method's overlay side by side."""
    rgb = classifier.preprocess.denormalize(item.image)
    tiles = [(label, overlay(rgb, m)) for label, m in maps.items()]
    save_png(gallery(rgb, tiles), folder / "gallery" / f"{names[item.id]}.png")


def write_manifest_all(folder: Path, runs: list[MethodRun], order: list[str]) -> None:
    """The run's ``manifest.csv``: every method's records (a comparison: one row per method and image)."""
    if len(runs) == 1:
        write_manifest(folder, runs[0].records, order)
        return
    merged = {f"{r.label}\0{i}": rec for r in runs for i, rec in r.records.items()}
    write_manifest(folder, merged, order)


def write_reports(folder: Path, runs: list[MethodRun], evaluation: Evaluation) -> dict[str, str]:
    """``tables/`` (the metric families' means per method) and ``curves/``; returns the Markdown tables."""
    records = {r.label: list(r.records.values()) for r in runs}
    tables = write_tables(folder, records, list(evaluation.families), evaluation.stats)
    write_curves(folder, records, evaluation)
    return tables


def write_failed(runs: list[MethodRun], item_id: str, message: str, names: dict[str, str]) -> None:
    """Record an unreadable image as failed for every method (a rerun tries it again)."""
    rec = {"id": item_id, "status": "failed", "error": message}
    for run in runs:
        atomic_write_json(rec, run.root / "records" / f"{names[item_id]}.json")
        run.records[item_id] = rec


def write_method_batch(cfg, classifier, dataset, run: MethodRun, items, targets, out: MethodBatch, names) -> list:
    """One method's files and records for the images of a batch it had not finished; returns the pictures to log.

    An image's record is written after its other files: its presence means "done".
    """
    n = len(items)
    res, exp = out.result, out.explanation
    cost = {
        "seconds_per_image": round(res.seconds / n, 4),
        "forward_per_image": res.forward_passes / n,
        "backward_per_image": res.backward_passes / n,
    }
    pictures = []
    for i in out.todo:
        item, target = items[i], int(targets[i])
        pics = write_image(cfg, classifier, run, item, exp, i, out.maps[i], target, names)
        has_class = dataset.class_names is not None and item.label >= 0
        rec = {
            "id": item.id,
            "method": run.label,
            "status": "ok",
            "label": int(item.label),
            "label_name": dataset.class_names[item.label] if has_class else "",
            "target": target,
            "target_name": classifier.class_name(target),
            "probability": None if exp is None else _round(float(exp.probability[i])),
            "activation": None if exp is None else _round(float(exp.activation[i])),
            "seconds": cost["seconds_per_image"],
            "passes": int(exp.passes_per_image) if exp is not None else cost["backward_per_image"],
            "restart_agreement": _agreement(exp, i),
            **cost,
            **pics["paths"],
            "metrics": out.metrics[i],
            "error": "",
        }
        atomic_write_json(rec, run.root / "records" / f"{names[item.id]}.json")  # last: marks it done
        run.records[item.id] = rec
        if pics["pictures"] is not None:
            pictures.append((run.label, item, target, *pics["pictures"]))
    return pictures
