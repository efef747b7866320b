"""Comparing saliency methods: per-image metric values, the papers' tables, mean curves, a gallery.

The runner (:mod:`hdm_lightning.run.explain_run`) computes every method's maps on the same images and target
classes, scores them with :mod:`hdm_lightning.metrics` batch by batch, and stores each image's values in
its record. The tables are means over those records, so they are the same whether a run went through
in one piece, was resumed, or was spread over several processes (the per-image values of torchmetrics'
sum/count states, averaged).

The families are the registered ones (:data:`hdm_lightning.metrics.METRICS`); what a family's table holds
(columns, their order and direction, the Markdown's columns) and its curves come from its class's description
(:class:`~hdm_lightning.metrics.family.MetricFamily`). A family with ``requires_method`` (``stability``) reruns
each method on the same images under conditions that should not change the map and scores the agreement.
"""

from __future__ import annotations

import csv
import io
import math
import sys
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image, ImageDraw
from torch import Tensor
from torchmetrics import Metric

from hdm_lightning.io import atomic_path, atomic_write_text
from hdm_lightning.metrics import METRICS, build_family, saliency_metrics
from hdm_lightning.metrics.family import column_key, curve_family, curve_labels
from hdm_lightning.tables import COST_COLUMNS, TableStats, write_tables

__all__ = [
    "COST_COLUMNS",
    "Evaluation",
    "MetricSuite",
    "TableStats",
    "column_key",
    "family_params",
    "gallery",
    "write_curves",
    "write_tables",
]


@dataclass(frozen=True)
class Evaluation:
    """A run's ``evaluation`` section, built once: what the metric suite, the tables and the curves receive.

    Attributes:
        families: the metric families to compute (``evaluation.metrics``), registered names.
        params: each family's keyword arguments (its ``from_evaluation``, then ``evaluation.params.<family>``), for
            ``families`` and for every family that draws curves (a re-scored folder may hold others' curves).
        batch_size: perturbed images per forward pass of the model-based families.
        stats: the tables' intervals and tests.
        gallery: images shown side by side with every method's map.
    """

    families: tuple[str, ...] = ()
    params: Mapping[str, dict] = field(default_factory=dict)
    batch_size: int = 64
    stats: TableStats = field(default_factory=TableStats)
    gallery: int = 16

    @classmethod
    def from_config(cls, evaluation, families: Sequence[str] | None = None) -> Evaluation:
        """Build from the ``evaluation`` section (``families``: others than its ``metrics``).

        Raises:
            ValueError: an unknown family, bad ``evaluation.params``, or a bad value of a family's settings.
        """
        families = list(evaluation.metrics if families is None else families)
        unknown = [f for f in families if f not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric families {unknown}: use any of {METRICS.names()}")
        params = family_params(families, evaluation)
        for name in {curve_family(c).family for c in curve_labels()} - set(families):
            with suppress(ValueError, AttributeError):  # a family this run does not compute: for its curves' axes
                params[name] = family_params([name], evaluation)[name]
        batch, gallery = int(getattr(evaluation, "batch_size", 64)), int(getattr(evaluation, "gallery", 16))
        return cls(tuple(families), params, batch, TableStats.from_evaluation(evaluation), gallery)


class MetricSuite:
    """The requested metric families: those scoring every image, those needing a mask, those rerunning the method.

    Args:
        model: the classifier (model-based metrics score perturbed images with it).
        evaluation: the families, their keyword arguments and the batch size (:class:`Evaluation`).
        mean: the classifier's normalisation mean (for "black" = 0 in raw pixels).
        std: its std.
    """

    def __init__(self, model, evaluation: Evaluation, mean, std) -> None:
        families, params = list(evaluation.families), evaluation.params
        classes = {f: METRICS.get(f) for f in families}
        plain = [f for f in families if not classes[f].requires_method and not classes[f].requires_mask]
        masked = [f for f in families if not classes[f].requires_method and classes[f].requires_mask]
        batch_size = evaluation.batch_size

        def build(names):
            if not names:
                return None
            kw = {n: params[n] for n in names}
            return saliency_metrics(model, names, mean=mean, std=std, batch_size=batch_size, params=kw)

        self.families = list(families)
        self.mask_families = masked  #: the families scored only on images with a ground-truth mask
        self.plain, self.masked = build(plain), build(masked)
        #: the families that rerun the method (``update_from_method``), by name
        self.reruns: dict[str, Metric] = {
            f: build_family(f, model, mean, std, batch_size, **params[f])
            for f in families
            if classes[f].requires_method
        }

    def check_masks(self, dataset, warn: bool = True) -> None:
        """The families that need a ground-truth mask have images with one: none is an error, some a warning.

        ``warn``: print the warning (one process of several: only the first does).

        Raises:
            ValueError: no image of ``dataset`` has a mask (a dataset that cannot tell before reading passes).
        """
        if not self.mask_families:
            return
        known = [dataset.has_mask(i) for i in range(len(dataset))]
        if None in known:
            return  # a dataset kind that learns its masks only when it reads an image
        missing, families = known.count(False), ", ".join(self.mask_families)
        if missing == len(known):
            raise ValueError(
                f"metrics {families} need a ground-truth mask per image, but no image of {dataset.describe()} has "
                "one: drop them from evaluation.metrics, or use data with masks (data.kind cub, pairs or synthetic)"
            )
        if missing and warn:
            print(
                f"warning: {missing} of {len(known)} images have no ground-truth mask: {families} are scored on the "
                f"other {len(known) - missing} only",
                file=sys.stderr,
            )

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
        images' ids, which seed the noise) are needed by the families that rerun the method (``stability`` calls it
        again on the same images and targets, :func:`~hdm_lightning.metrics.stability.rerun_conditions`: without
        the run's checkpoints or logger).
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
        for name, metric in self.reruns.items():
            if method is None or ids is None:
                raise ValueError(f"metric family {name!r} reruns the method: pass per_image(..., method=, ids=)")
            metric.reset()
            metric.update_from_method(method, images, maps, target, list(ids))
            collect({name: metric}, list(range(b)))
        return out


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def family_params(families: Sequence[str], evaluation) -> dict[str, dict]:
    """Each family's keyword arguments: ``from_evaluation(evaluation)``, then ``evaluation.params.<family>``."""
    extra = _plain(getattr(evaluation, "params", None)) or {}
    stray = sorted(k for k in extra if k not in METRICS)
    if stray:
        raise ValueError(f"evaluation.params names unknown metric families {stray}: use any of {METRICS.names()}")
    bad = sorted(k for k, v in extra.items() if not isinstance(v, dict))
    if bad:
        raise ValueError(f"evaluation.params.<family> must be keyword arguments (a mapping), got {bad}")
    return {f: {**METRICS.get(f).from_evaluation(evaluation), **extra.get(f, {})} for f in families}


def _num(v: float) -> float | None:
    return None if math.isnan(v) else round(v, 6)


def mean_curves(records: dict[str, list[dict]]) -> dict[str, dict[str, list[float]]]:
    """``{curve: {method: mean curve}}`` over the records that hold the curve."""
    curves: dict[str, dict[str, list[float]]] = {}
    for name in curve_labels():
        for m, recs in records.items():
            rows = [r["metrics"][name] for r in recs if r.get("status") == "ok" and name in r.get("metrics", {})]
            if rows:
                curves.setdefault(name, {})[m] = [sum(col) / len(col) for col in zip(*rows, strict=True)]
    return curves


def write_curves(folder: Path, records: dict[str, list[dict]], evaluation: Evaluation | None = None) -> list[Path]:
    """Mean curves per method (deletion and insertion: HDM paper Fig. 6): ``curves/<kind>.png`` and ``.csv``.

    The curves are the families' ``curves`` (``<kind>_curve``), each drawn on its family's axes
    (:meth:`~hdm_lightning.metrics.family.MetricFamily.curve_axis`: x a fraction — of the pixels, of the layers —
    and the quantity on y; ``evaluation`` gives the families' settings, e.g. ROAD's percents); the legend gives
    each method's mean of the curve over the x range (the AUC).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name, per_method in mean_curves(records).items():
        kind = name.removesuffix("_curve")
        cls = curve_family(name)
        params = evaluation.params.get(cls.family, {}) if evaluation is not None else {}
        xs, xlabel, ylabel = cls.curve_axis(name, len(next(iter(per_method.values()))), params)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["fraction", *per_method])
        for i, x in enumerate(xs):
            w.writerow([f"{x:.4f}", *[f"{c[i]:.6f}" for c in per_method.values()]])
        atomic_write_text(buf.getvalue(), folder / "curves" / f"{kind}.csv")
        fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
        span = (xs[-1] - xs[0]) or 1.0
        for m, c in per_method.items():
            auc = sum((c[i] + c[i + 1]) / 2 * (xs[i + 1] - xs[i]) for i in range(len(xs) - 1)) / span
            ax.plot(xs, c, label=f"{m} ({auc:.3f})")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{kind} (mean over the x range)")
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
