"""Energy-based pointing game (Score-CAM; HDM paper §4.6, Table 3): family ``proportion``."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from hdm_lightning.masks.ops import normalize
from hdm_lightning.metrics.base import SaliencyMetric, mean_or_nan
from hdm_lightning.metrics.family import register_metric
from hdm_lightning.metrics.perturbation import check_inputs

__all__ = ["Proportion"]


@register_metric("proportion")
class Proportion(SaliencyMetric):
    """Energy-based pointing game (Score-CAM; HDM paper §4.6, Table 3): share of ``L = N(map)`` inside the GT.

    ``proportion_i = sum_{p in GT} L_p / sum_p L_p * 100``, averaged over images (the papers report percentages,
    e.g. HDM 57.97 %). Edge cases (project decisions):

    - ``sum L = 0`` (a constant or all-zero map, which ``N`` maps to zeros): the map expresses no preference, so it
      is scored as a uniform map, i.e. the GT's area fraction.
    - An image without any GT pixel is skipped (the ratio measures nothing) and counted in ``proportion/skipped``.

    ``compute()`` keys: ``proportion`` (%), ``proportion/images`` (images counted), ``proportion/skipped``.
    ``last["proportion"]`` is per image, ``NaN`` for skipped images.
    """

    columns: ClassVar[dict[str, bool]] = {"proportion": True}
    order: ClassVar[int] = 30
    requires_mask: ClassVar[bool] = True
    higher_is_better: ClassVar[bool] = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_sum("proportion_sum")
        self.add_sum("count")
        self.add_sum("skipped")

    def update(self, images: Tensor, saliency: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        """Add the images' proportions; ``mask`` is required, ``target`` only checked for shape."""
        saliency, _, mask = check_inputs(images, saliency, target, mask, need_mask=True, metric=type(self).__name__)
        L = normalize(saliency.double()).flatten(1)  # N per image (the papers' notation)
        gt = mask.flatten(1)
        total, inside = L.sum(1), (L * gt).sum(1)
        area = gt.double().mean(1)
        share = torch.where(total > 0, inside / torch.where(total > 0, total, 1.0), area) * 100
        valid = gt.any(1)
        share = torch.where(valid, share, float("nan"))
        self.accumulate("proportion_sum", share[valid].sum())
        self.accumulate("count", valid.sum().double())
        self.accumulate("skipped", (~valid).sum().double())
        self.last = {"proportion": share}

    def compute(self) -> dict[str, float]:
        """``{"proportion": %, "proportion/images": n, "proportion/skipped": n}``."""
        return {
            "proportion": float(mean_or_nan(self.proportion_sum, self.count)),
            "proportion/images": float(self.count),
            "proportion/skipped": float(self.skipped),
        }
