"""Comparing saliency methods: per-image metric values, the papers' tables, mean curves, a gallery.

The runner (:mod:`hdm_lightning.runner`) computes every method's maps on the same images and target
classes, scores them with :mod:`hdm_lightning.metrics` batch by batch, and stores each image's values in
its record. The tables are means over those records, so they are the same whether a run went through
in one piece, was resumed, or was spread over several processes (the per-image values of torchmetrics'
sum/count states, averaged).

The ``stability`` family reruns each method on the same images under conditions that should not change the
map (input noise far below a grey level, another batch, one thread: :mod:`hdm_lightning.metrics.stability`)
and scores the agreement of the maps (``tables/stability.*``, higher is better).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from hdm_lightning.io import atomic_path, atomic_write_text
from hdm_lightning.metrics import EVALUATION_FAMILIES, METRIC_FAMILIES, saliency_metrics
from hdm_lightning.metrics.stability import (
    MapStability,
    check_noise,
    check_top_k,
    condition_names,
    rerun_conditions,
    sort_key,
)

__all__ = ["MetricSuite", "gallery", "write_curves", "write_tables"]

CURVES = ("deletion_curve", "insertion_curve")
MD_PERCENTS = ("70", "80", "90", "95", "mean")  # segmentation columns shown in Markdown
# Direction of each column: True = higher is better (for bold-facing the best method in Markdown).
HIGHER_IS_BETTER = {
    "drop": False,
    "increase": True,
    "deletion": False,
    "insertion": True,
    "proportion": True,
    "dice": True,
    "iou": True,
    "ppv": True,
    "sensitivity": True,
    "seconds_per_image": False,
    "forward_per_image": False,
    "backward_per_image": False,
    "stability": True,  # stability/<condition>/<column>: agreement with the method's own reruns
}


class MetricSuite:
    """The requested metric families, split into those that run on every image and those needing a mask.

    Args:
        model: the classifier (model-based metrics score perturbed images with it).
        families: names from :data:`hdm_lightning.metrics.EVALUATION_FAMILIES`.
        evaluation: the run's ``evaluation`` config (batch size, steps, canvases, percents, ``stability_*``).
        mean: the classifier's normalisation mean (for "black" = 0 in raw pixels).
        std: its std.
    """

    def __init__(self, model, families: Sequence[str], evaluation, mean, std) -> None:
        unknown = [f for f in families if f not in EVALUATION_FAMILIES]
        if unknown:
            raise ValueError(f"unknown metric families {unknown}: use any of {sorted(EVALUATION_FAMILIES)}")
        params = {
            "drop_increase": {"percents": tuple(evaluation.drop_percents), "baseline": evaluation.drop_baseline},
            "deletion_insertion": {
                "steps": int(evaluation.steps),
                "insertion_canvas": evaluation.insertion_canvas,
                "deletion_value": evaluation.deletion_value,
            },
            "segmentation": {"percents": tuple(evaluation.segmentation_percents)},
        }
        plain = [f for f in families if f in METRIC_FAMILIES and not METRIC_FAMILIES[f].requires_mask]
        masked = [f for f in families if f in METRIC_FAMILIES and METRIC_FAMILIES[f].requires_mask]

        def build(names):
            if not names:
                return None
            kw = {n: params[n] for n in names if n in params}
            return saliency_metrics(model, names, mean=mean, std=std, batch_size=int(evaluation.batch_size), params=kw)

        self.families = list(families)
        self.plain, self.masked = build(plain), build(masked)
        self.stability: MapStability | None = None
        if "stability" in families:
            self.stability_settings = {
                "noise": check_noise(list(evaluation.stability_noise), "evaluation.stability_noise"),
                "batch": bool(evaluation.stability_batch),
                "threads": bool(evaluation.stability_threads),
            }
            top_k = check_top_k(list(evaluation.stability_top_k), "evaluation.stability_top_k")
            conditions = condition_names(**self.stability_settings)
            if not conditions:
                raise ValueError(
                    "metric family 'stability' has no condition: give evaluation.stability_noise levels, or set "
                    "evaluation.stability_batch or evaluation.stability_threads to true"
                )
            self.stability = MapStability(conditions, top_k)

    @property
    def forward_passes(self) -> int:
        """Forward passes (samples) the metrics spent so far."""
        return sum(
            getattr(m, "forward_passes", 0) for c in (self.plain, self.masked) if c is not None for m in c.values()
        )

    def per_image(
        self,
        images: Tensor,
        maps: Tensor,
        target: Tensor,
        masks: list[Tensor | None],
        method=None,
        ids: Sequence[str] | None = None,
    ) -> list[dict]:
        """Every metric value of every image (``NaN`` where an image has no mask), curves as lists.

        ``method`` (the :class:`~hdm_lightning.contract.SaliencyMethod` that made ``maps``) and ``ids`` (the
        images' ids, which seed the noise) are needed by ``stability``, which calls the method again on the same
        images and targets (:func:`~hdm_lightning.metrics.stability.rerun_conditions`: without the run's
        checkpoints or logger).
        """
        b = images.shape[0]
        out: list[dict] = [{} for _ in range(b)]

        def collect(collection, rows: list[int]) -> None:
            for metric in collection.values():
                for key, values in metric.last.items():
                    for j, i in enumerate(rows):
                        v = values[j]
                        out[i][key] = [round(float(x), 6) for x in v] if v.dim() else _num(float(v))

        if self.plain is not None:
            self.plain.reset()
            self.plain.update(images, maps, target)
            collect(self.plain, list(range(b)))
        if self.masked is not None:
            rows = [i for i, m in enumerate(masks) if m is not None and bool(m.any())]
            if rows:
                self.masked.reset()
                mask = torch.stack([masks[i] for i in rows]).to(images.device)
                self.masked.update(images[rows], maps[rows], target[rows], mask=mask)
                collect(self.masked, rows)
        if self.stability is not None:
            if method is None or ids is None:
                raise ValueError("metric family 'stability' reruns the method: pass per_image(..., method=, ids=)")
            others = rerun_conditions(method, images, target, list(ids), **self.stability_settings)
            self.stability.reset()
            for condition, other in others.items():
                self.stability.update(maps, other.to(maps.device), condition)
            collect({"stability": self.stability}, list(range(b)))
        return out


def _num(v: float) -> float | None:
    return None if math.isnan(v) else round(v, 6)


def _mean(values: list) -> float:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else float("nan")


ORDER = ("drop", "increase", "deletion", "insertion", "proportion", "dice", "iou", "ppv", "sensitivity", "stability")


def column_key(key: str) -> tuple:
    """Sort key of a metric column: kind in the papers' order, then percent (``mean`` last).

    ``stability/<condition>/<column>``: noise by level, ``batch``, ``threads``; ``pearson``, ``spearman``,
    ``iou`` by fraction.
    """
    head, _, tail = key.partition("/")
    if head == "stability":
        return (ORDER.index(head), *sort_key(tail))
    return (ORDER.index(head) if head in ORDER else len(ORDER), int(tail) if tail.isdigit() else 1000, tail)


def _columns(records: dict[str, list[dict]], family: str) -> list[str]:
    """The family's columns in a fixed order (kind, then percent), whatever order the records hold them in."""
    keys = {k for recs in records.values() for r in recs for k in r.get("metrics", {})}
    return sorted((k for k in keys if k not in CURVES and _family_of(k) == family), key=column_key)


def _family_of(key: str) -> str:
    head = key.split("/")[0]
    if head in ("drop", "increase"):
        return "drop_increase"
    if head in ("deletion", "insertion"):
        return "deletion_insertion"
    if head in ("dice", "iou", "ppv", "sensitivity"):
        return "segmentation"
    if head == "stability":
        return "stability"
    return "proportion" if head == "proportion" else "other"


def _fmt(v: float) -> str:
    return "n/a" if isinstance(v, float) and math.isnan(v) else (f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}")


def _table(rows: dict[str, dict[str, float]], columns: list[str], counts: dict[str, int]) -> tuple[str, str]:
    """CSV and Markdown (best value per column in bold) of ``rows[method][column]``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "images", *columns])
    for m, vals in rows.items():
        w.writerow([m, counts[m], *[("" if math.isnan(vals[c]) else f"{vals[c]:.6g}") for c in columns]])
    best = {}
    for c in columns:
        vals = [v[c] for v in rows.values() if not math.isnan(v[c])]
        higher = HIGHER_IS_BETTER.get(c.split("/")[0])
        if vals and higher is not None and len(rows) > 1:
            best[c] = max(vals) if higher else min(vals)
    arrow = {c: ("↑" if HIGHER_IS_BETTER.get(c.split("/")[0]) else "↓") for c in columns}
    md = ["| method | images | " + " | ".join(f"{c} {arrow[c]}" for c in columns) + " |"]
    md.append("| --- | ---: | " + " | ".join("---:" for _ in columns) + " |")
    for m, vals in rows.items():
        cells = [f"**{_fmt(vals[c])}**" if c in best and vals[c] == best[c] else _fmt(vals[c]) for c in columns]
        md.append(f"| {m} | {counts[m]} | " + " | ".join(cells) + " |")
    return buf.getvalue(), "\n".join(md) + "\n"


def write_tables(folder: Path, records: dict[str, list[dict]], families: Sequence[str]) -> dict[str, str]:
    """``tables/<family>.csv`` and ``.md`` (methods as rows, like the papers' tables) and ``tables/cost.*``.

    Args:
        folder: the run folder.
        records: per method label, the records of its explained images.
        families: the metric families the run computed.

    Returns:
        ``{family: markdown}`` for the README / W&B.
    """
    ok = {m: [r for r in recs if r.get("status") == "ok"] for m, recs in records.items()}
    counts = {m: len(recs) for m, recs in ok.items()}
    out = {}
    for family in [*families, "cost"]:
        if family == "cost":
            columns = ["seconds_per_image", "forward_per_image", "backward_per_image"]
            rows = {m: {c: _mean([r.get(c) for r in recs]) for c in columns} for m, recs in ok.items()}
        else:
            columns = _columns(ok, family)
            rows = {
                m: {c: _mean([r.get("metrics", {}).get(c) for r in recs]) for c in columns} for m, recs in ok.items()
            }
        if not columns:
            continue
        text, _ = _table(rows, columns, counts)
        # Markdown stays readable: Dice & co. at a few percentiles and their mean (the CSV keeps all of them).
        shown = [c for c in columns if family != "segmentation" or c.split("/")[-1] in MD_PERCENTS]
        _, md = _table(rows, shown, counts)
        atomic_write_text(text, folder / "tables" / f"{family}.csv")
        atomic_write_text(md, folder / "tables" / f"{family}.md")
        out[family] = md
    return out


def mean_curves(records: dict[str, list[dict]]) -> dict[str, dict[str, list[float]]]:
    """``{curve: {method: mean curve}}`` over the records that hold the curve."""
    curves: dict[str, dict[str, list[float]]] = {}
    for name in CURVES:
        for m, recs in records.items():
            rows = [r["metrics"][name] for r in recs if r.get("status") == "ok" and name in r.get("metrics", {})]
            if rows:
                curves.setdefault(name, {})[m] = [sum(col) / len(col) for col in zip(*rows, strict=True)]
    return curves


def write_curves(folder: Path, records: dict[str, list[dict]]) -> list[Path]:
    """Mean deletion and insertion curves per method (HDM paper Fig. 6): ``curves/*.png`` and ``curves/*.csv``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name, per_method in mean_curves(records).items():
        steps = len(next(iter(per_method.values()))) - 1
        xs = [i / steps for i in range(steps + 1)]
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["fraction", *per_method])
        for i, x in enumerate(xs):
            w.writerow([f"{x:.4f}", *[f"{c[i]:.6f}" for c in per_method.values()]])
        atomic_write_text(buf.getvalue(), folder / "curves" / f"{name.split('_')[0]}.csv")
        fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
        for m, c in per_method.items():
            auc = sum((c[i] + c[i + 1]) / 2 for i in range(steps)) / steps
            ax.plot(xs, c, label=f"{m} ({auc:.3f})")
        kind = name.split("_")[0]
        ax.set_xlabel(f"fraction of pixels {'removed' if kind == 'deletion' else 'inserted'}")
        ax.set_ylabel("probability of the explained class")
        ax.set_title(f"{kind} (AUC)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = folder / "curves" / f"{kind}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
        written.append(path)
    return written


def gallery(rgb: Tensor, overlays: list[tuple[str, Tensor]], gap: int = 4, label_height: int = 14) -> Tensor:
    """The image, then each method's overlay, side by side with the method's name above (HDM paper Fig. 4)."""
    tiles = [("input", rgb.clamp(0, 1))] + overlays
    h, w = rgb.shape[-2:]
    width = len(tiles) * w + (len(tiles) - 1) * gap
    canvas = Image.new("RGB", (width, h + label_height), "white")
    draw = ImageDraw.Draw(canvas)
    for j, (name, t) in enumerate(tiles):
        x0 = j * (w + gap)
        arr = (t.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        canvas.paste(Image.fromarray(arr), (x0, label_height))
        draw.text((x0 + 2, 1), name[: max(w // 6, 4)], fill="black")
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).float() / 255
