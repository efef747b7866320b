"""Dice, IoU, PPV and Sensitivity of the binarised map (MDM paper §4.2, Table 1): family ``segmentation``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor

from hdm_lightning.metrics.base import SaliencyMetric, check_percents, mean_or_nan, percent_key
from hdm_lightning.metrics.family import register_metric
from hdm_lightning.metrics.perturbation import (
    DEFAULT_TIES,
    check_inputs,
    check_ties,
    evaluation_ties,
    keep_count,
    rank_order,
)

__all__ = ["SegmentationScores"]


@register_metric("segmentation")
class SegmentationScores(SaliencyMetric):
    """Dice, IoU, PPV and Sensitivity of the binarised map against the GT foreground (MDM paper §4.2, Table 1).

    For each percentile ``q`` the prediction ``P`` is the top ``(100 - q) %`` pixels by rank (project decision:
    binarise by rank, not by ``>= value``), ``G`` the GT foreground:
    Dice ``2|P∩G| / (|P| + |G|)``, IoU ``|P∩G| / |P∪G|``, PPV ``|P∩G| / |P|``, Sensitivity ``|P∩G| / |G|``, as
    fractions in ``[0, 1]`` like MDM paper, averaged over images (macro) for each ``q``.
    Edge cases (project decisions): an image with an empty GT is skipped and counted in ``segmentation/skipped``
    (Sensitivity is 0/0 and the other scores are 0 whatever the map); an empty prediction (``(100 - q) %`` of
    the pixels rounds to 0) has PPV 0, like its Dice and IoU.

    ``compute()`` keys: ``dice/q``, ``iou/q``, ``ppv/q``, ``sensitivity/q`` for every ``q``, ``dice/mean`` etc.
    (mean over ``q`` of the per-``q`` scores), ``segmentation/images`` and ``segmentation/skipped``. ``last`` has
    the per-``q`` and ``/mean`` keys per image, ``NaN`` for skipped images.

    Args:
        percents: percentiles ``q`` (MDM: 70 .. 99).
        ties: the order of equal saliency values (:func:`~hdm_lightning.metrics.perturbation.rank_order`).
        **kwargs: passed to ``torchmetrics.Metric``.
    """

    SCORES: ClassVar[tuple[str, ...]] = ("dice", "iou", "ppv", "sensitivity")
    columns: ClassVar[dict[str, bool]] = dict.fromkeys(SCORES, True)
    order: ClassVar[int] = 40
    # Markdown stays readable: a few percentiles and their mean (the CSV keeps all of them); the manifest has
    # only the means (manifest_percents False).
    markdown_tails: ClassVar[tuple[str, ...]] = ("70", "80", "90", "95", "mean")
    requires_mask: ClassVar[bool] = True
    higher_is_better: ClassVar[bool] = True

    @classmethod
    def from_evaluation(cls, evaluation: Any) -> dict[str, Any]:
        """``evaluation.segmentation_percents`` and ``evaluation.ties``."""
        return {"percents": tuple(evaluation.segmentation_percents), "ties": evaluation_ties(evaluation)}

    def __init__(self, percents: Iterable[float] = range(70, 100), ties: str = DEFAULT_TIES, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ties = check_ties(ties, "segmentation")
        self.percents = check_percents(percents, "percents")
        for name in self.SCORES:
            self.add_sum(f"{name}_sum", (len(self.percents),))
        self.add_sum("count")
        self.add_sum("skipped")

    def update(self, images: Tensor, saliency: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        """Add the images' scores; ``mask`` is required, ``target`` only checked for shape."""
        saliency, _, mask = check_inputs(images, saliency, target, mask, need_mask=True, metric=type(self).__name__)
        n_pixels = saliency.shape[-2] * saliency.shape[-1]
        gt = mask.flatten(1)
        # |P ∩ G| for the top-n pixels is a prefix sum of the GT read in rank order: one sort serves every q.
        hits = gt.gather(1, rank_order(saliency, self.ties)).double().cumsum(1)
        hits = torch.cat([torch.zeros_like(hits[:, :1]), hits], 1)  # hits[:, n] = |top-n ∩ G|
        kept = torch.tensor([keep_count(100 - q, n_pixels) for q in self.percents], device=gt.device)
        inter = hits[:, kept]  # [B, Q]
        P = kept.double()[None]  # [1, Q]
        G = gt.double().sum(1, keepdim=True)  # [B, 1]
        valid = G[:, 0] > 0
        G1 = torch.where(G > 0, G, 1.0)
        scores = {
            "dice": 2 * inter / torch.where(P + G > 0, P + G, 1.0),
            "iou": inter / torch.where(P + G - inter > 0, P + G - inter, 1.0),
            "ppv": torch.where(P > 0, inter / torch.where(P > 0, P, 1.0), 0.0),
            "sensitivity": inter / G1,
        }
        self.last = {}
        for name, value in scores.items():
            value = torch.where(valid[:, None], value, float("nan"))
            self.accumulate(f"{name}_sum", value[valid].sum(0))
            for j, q in enumerate(self.percents):
                self.last[f"{name}/{percent_key(q)}"] = value[:, j]
            self.last[f"{name}/mean"] = value.mean(1)
        self.accumulate("count", valid.sum().double())
        self.accumulate("skipped", (~valid).sum().double())

    def compute(self) -> dict[str, float]:
        """Per-``q`` and mean-over-``q`` macro scores plus the image counts."""
        out = {}
        for name in self.SCORES:
            mean = mean_or_nan(getattr(self, f"{name}_sum"), self.count)
            for j, q in enumerate(self.percents):
                out[f"{name}/{percent_key(q)}"] = float(mean[j])
            out[f"{name}/mean"] = float(mean.mean())
        out["segmentation/images"] = float(self.count)
        out["segmentation/skipped"] = float(self.skipped)
        return out
