"""The pointing game (Excitation Backprop; TorchRay's protocol): family ``pointing_game``.

Zhang, Bargal, Lin, Brandt, Shen, Sclaroff, "Top-down Neural Attention by Excitation Backprop" (ECCV 2016,
arXiv 1608.00507) score a map by one point, its maximum: a hit when the point falls on the object, with a tolerance
of 15 pixels; Fong, Patrick, Vedaldi, "Understanding Deep Networks via Extremal Perturbations and Smooth Masks"
(ICCV 2019, arXiv 1910.08485) benchmark with TorchRay's implementation of that protocol. Here:

1. The point is the map's maximum, ties to the first pixel of the fixed shuffled order (the project's tie
   convention, :mod:`hdm_lightning.metrics.perturbation`: the first pixel of :func:`rank_order`).
2. A hit is a Euclidean distance from the point to the nearest foreground pixel (pixel centres) ``<= tolerance``,
   computed exactly as the smallest squared distance over the foreground (tolerance 0: the point itself is
   foreground). TorchRay accepts ``< tolerance`` (a distance of exactly 15 pixels, e.g. offsets (9, 12), misses
   there); ``<=`` makes ``tolerance = 0`` mean "on the object".
3. An image is difficult when its object covers less than ``difficult_area`` of the image. The Excitation Backprop
   difficult subset (the flags TorchRay ships) also requires another class in the image, which a one-object
   dataset cannot have; and its area is that of the class's bounding boxes, here the mask's.
4. Rates are fractions of images (TorchRay averages per-class rates instead: a dataset here has one explained
   object per image).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from hdm_lightning.metrics.base import SaliencyMetric, mean_or_nan
from hdm_lightning.metrics.family import register_metric
from hdm_lightning.metrics.perturbation import DEFAULT_TIES, check_inputs, check_ties, evaluation_ties, rank_order

__all__ = ["PointingGame", "max_points", "pointing_hits"]

SETTINGS = "evaluation.params.pointing_game"


def max_points(saliency: Tensor, ties: str = DEFAULT_TIES) -> Tensor:
    """The map's maximum per image, ties to the first pixel in the fixed shuffled order (or in raster order).

    Args:
        saliency: ``[B, 1, H, W]`` maps, any real range.
        ties: ``"raster"`` or ``"shuffled"`` (:func:`~hdm_lightning.metrics.perturbation.rank_order`).

    Returns:
        LongTensor ``[B, 2]``: ``(y, x)`` of the point.
    """
    width = saliency.shape[-1]
    first = rank_order(saliency, ties)[:, 0]
    return torch.stack([first // width, first % width], 1)


def pointing_hits(points: Tensor, mask: Tensor, tolerance: float) -> Tensor:
    """Whether each point lies within ``tolerance`` pixels (Euclidean, ``<=``) of its image's foreground.

    ``d^2 = min over foreground (y, x) of (y - y_p)^2 + (x - x_p)^2``, exact in float64 (integers); hit when
    ``d^2 <= tolerance^2``. An image without foreground never hits.

    Args:
        points: LongTensor ``[B, 2]`` of ``(y, x)`` (:func:`max_points`).
        mask: BoolTensor ``[B, H, W]``, True = foreground.
        tolerance: the largest distance in pixels that still hits (``>= 0``).

    Returns:
        BoolTensor ``[B]``.
    """
    H, W = mask.shape[-2:]
    ys = torch.arange(H, device=mask.device, dtype=torch.float64)
    xs = torch.arange(W, device=mask.device, dtype=torch.float64)
    p = points.to(mask.device, torch.float64)
    dy2 = (ys[None, :] - p[:, :1]) ** 2  # [B, H]
    dx2 = (xs[None, :] - p[:, 1:]) ** 2  # [B, W]
    d2 = dy2[:, :, None] + dx2[:, None, :]  # [B, H, W]
    nearest = torch.where(mask, d2, math.inf).flatten(1).amin(1)
    return nearest <= float(tolerance) ** 2


def _check_number(value: Any, name: str, upper: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= upper:
        raise ValueError(f"{SETTINGS}.{name} must be {what}, got {value!r}")
    return float(value)


@register_metric("pointing_game")
class PointingGame(SaliencyMetric):
    """Pointing game hit rate (Excitation Backprop, arXiv 1608.00507; TorchRay's protocol, arXiv 1910.08485).

    Per image ``hit = 1`` when the map's maximum (:func:`max_points`) is within ``tolerance`` pixels of the GT
    foreground (:func:`pointing_hits`), else ``0``; the rates are the means over images (higher is better), over all
    images (``pointing/all``) and over the difficult ones, whose object covers less than ``difficult_area`` of the
    image (``pointing/difficult``). An image without any GT pixel is skipped and counted in ``pointing/skipped``.
    The differences from TorchRay are in the module docstring.

    ``compute()`` keys: ``pointing/all``, ``pointing/difficult`` (``NaN`` when no image was difficult),
    ``pointing/images``, ``pointing/difficult_images`` and ``pointing/skipped`` (counts). ``last`` has
    ``pointing/all`` and ``pointing/difficult`` per image: ``1.0`` / ``0.0``, ``NaN`` for a skipped image and, in
    ``pointing/difficult``, for an image that is not difficult.

    Args:
        tolerance: the largest distance in pixels from the point to the object that is a hit (TorchRay: 15).
        difficult_area: an image is difficult when its foreground covers less than this share of the image.
        ties: which of several equal maxima is the point: the first in the fixed ``"shuffled"`` order (the
            default) or in ``"raster"`` order.
        **kwargs: passed to ``torchmetrics.Metric``.
    """

    columns: ClassVar[dict[str, bool]] = {"pointing": True}
    order: ClassVar[int] = 35  # with the other mask families: after proportion (30), before segmentation (40)
    requires_mask: ClassVar[bool] = True
    higher_is_better: ClassVar[bool] = True

    @classmethod
    def from_evaluation(cls, evaluation: Any) -> dict[str, Any]:
        """``evaluation.ties``."""
        return {"ties": evaluation_ties(evaluation)}

    def __init__(
        self, tolerance: float = 15, difficult_area: float = 0.25, ties: str = DEFAULT_TIES, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.ties = check_ties(ties, "pointing_game")
        self.tolerance = _check_number(tolerance, "tolerance", math.inf, "a number of pixels >= 0 (TorchRay: 15)")
        self.difficult_area = _check_number(
            difficult_area, "difficult_area", 1.0, "a share of the image in [0, 1] (default 0.25)"
        )
        for name in ("hits", "count", "difficult_hits", "difficult_count", "skipped"):
            self.add_sum(name)

    def update(self, images: Tensor, saliency: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        """Add the images' hits; ``mask`` is required, ``target`` only checked for shape."""
        saliency, _, mask = check_inputs(images, saliency, target, mask, need_mask=True, metric=type(self).__name__)
        hit = pointing_hits(max_points(saliency, self.ties), mask, self.tolerance).double()
        valid = mask.flatten(1).any(1)
        difficult = valid & (mask.flatten(1).double().mean(1) < self.difficult_area)
        self.accumulate("hits", hit[valid].sum())
        self.accumulate("count", valid.sum().double())
        self.accumulate("difficult_hits", hit[difficult].sum())
        self.accumulate("difficult_count", difficult.sum().double())
        self.accumulate("skipped", (~valid).sum().double())
        self.last = {
            "pointing/all": torch.where(valid, hit, float("nan")),
            "pointing/difficult": torch.where(difficult, hit, float("nan")),
        }

    def compute(self) -> dict[str, float]:
        """The hit rates (fractions of images) and the image counts."""
        return {
            "pointing/all": float(mean_or_nan(self.hits, self.count)),
            "pointing/difficult": float(mean_or_nan(self.difficult_hits, self.difficult_count)),
            "pointing/images": float(self.count),
            "pointing/difficult_images": float(self.difficult_count),
            "pointing/skipped": float(self.skipped),
        }
