"""Deletion / insertion AUC (RISE protocol as followed by Score-CAM; HDM paper Table 2): ``deletion_insertion``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from hdm_lightning.metrics.base import ModelMetric, mean_or_nan
from hdm_lightning.metrics.family import register_metric
from hdm_lightning.metrics.perturbation import (
    DEFAULT_TIES,
    as_channel_tensor,
    check_inputs,
    check_ties,
    evaluation_ties,
    make_canvas,
    rank_positions,
    step_counts,
)

__all__ = ["DELETION_VALUES", "INSERTION_CANVASES", "DeletionInsertion"]

INSERTION_CANVASES = ("blur", "zero")
DELETION_VALUES = ("black", "blur")


@register_metric("deletion_insertion")
class DeletionInsertion(ModelMetric):
    """Deletion and insertion AUC (RISE, as followed by Score-CAM and HDM paper §4.5, Table 2).

    Pixels are changed in rank order, ``round(k / steps * H * W)`` of them after step ``k = 0 .. steps`` (1 % per
    step for ``steps = 100``). Deletion replaces them by the deletion value in the image; insertion copies them from
    the image onto the canvas. ``Y_c`` is recorded at each of the ``steps + 1`` points and the curve is integrated
    by the trapezoid rule over the fraction ``[0, 1]``. Lower deletion and higher insertion are better.
    RISE's own code changes ``ceil(H * W / steps)`` pixels per step; rounding ``k / steps * H * W`` instead makes
    the last point exactly the fully deleted / fully inserted image for any size.

    Forward passes per update: ``2 * B * (steps + 1)`` (the 0 % deletion and 100 % insertion points are the original
    image, scored again so each curve is self-contained).

    Args:
        model: classifier returning logits ``[N, K]``.
        steps: number of steps (the curve has ``steps + 1`` points).
        insertion_canvas: ``"blur"`` (the image blurred, RISE; default) or ``"zero"`` (black raw pixels).
        deletion_value: ``"black"`` (raw pixel 0, as in RISE; default) or ``"blur"`` (the blurred image).
        mean: the classifier's preprocessing mean; black in the normalised tensor is ``(0 - mean) / std``.
        std: the classifier's preprocessing std.
        batch_size: most perturbed images per forward; all ``steps + 1`` copies of all images share the chunks.
        blur_kernel: odd kernel side of the blur; ``None`` = about a tenth of the shorter side.
        blur_sigma: Gaussian sigma in pixels; ``None`` = ``0.15 * kernel + 0.35``.
        ties: the order of pixels with equal saliency: ``"shuffled"`` (default) or ``"raster"``
            (:func:`~hdm_lightning.metrics.perturbation.rank_order`); set with ``evaluation.ties`` (every
            rank-based family) or ``evaluation.params.deletion_insertion: {ties: raster}``.
        **kwargs: passed to ``torchmetrics.Metric``.

    ``compute()`` keys: ``deletion``, ``insertion`` (mean AUC over images) and ``deletion_curve``,
    ``insertion_curve`` (mean curves, float64 tensors ``[steps + 1]``). ``last`` has the same keys per image.
    """

    columns: ClassVar[dict[str, bool]] = {"deletion": False, "insertion": True}
    order: ClassVar[int] = 20
    curves: ClassVar[dict[str, str]] = {
        "deletion_curve": "fraction of pixels removed",
        "insertion_curve": "fraction of pixels inserted",
    }

    @classmethod
    def from_evaluation(cls, evaluation: Any) -> dict[str, Any]:
        """``evaluation.steps``, ``.insertion_canvas``, ``.deletion_value`` and ``.ties``."""
        return {
            "steps": int(evaluation.steps),
            "insertion_canvas": evaluation.insertion_canvas,
            "deletion_value": evaluation.deletion_value,
            "ties": evaluation_ties(evaluation),
        }

    def __init__(
        self,
        model: nn.Module,
        steps: int = 100,
        insertion_canvas: str = "blur",
        deletion_value: str = "black",
        mean: Sequence[float] | Tensor | None = None,
        std: Sequence[float] | Tensor | None = None,
        batch_size: int = 64,
        blur_kernel: int | None = None,
        blur_sigma: float | None = None,
        ties: str = DEFAULT_TIES,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, batch_size, **kwargs)
        self.ties = check_ties(ties, "deletion_insertion")
        step_counts(steps, 1)  # validates steps
        self.steps = int(steps)
        if insertion_canvas not in INSERTION_CANVASES:
            raise ValueError(f"Unknown insertion_canvas {insertion_canvas!r}. Available: {list(INSERTION_CANVASES)}")
        if deletion_value not in DELETION_VALUES:
            raise ValueError(f"Unknown deletion_value {deletion_value!r}. Available: {list(DELETION_VALUES)}")
        self.insertion_canvas, self.deletion_value = insertion_canvas, deletion_value
        self.mean, self.std = as_channel_tensor(mean, "mean"), as_channel_tensor(std, "std")
        needs_black = deletion_value == "black" or insertion_canvas == "zero"
        if needs_black and (self.mean is None or self.std is None):
            raise ValueError(
                "DeletionInsertion needs mean and std (the classifier's Preprocess.mean/.std): black raw pixels are "
                "(0 - mean) / std in the normalised tensor"
            )
        self.blur_kernel, self.blur_sigma = blur_kernel, blur_sigma
        self.add_sum("deletion_sum")
        self.add_sum("insertion_sum")
        self.add_sum("deletion_curve_sum", (self.steps + 1,))
        self.add_sum("insertion_curve_sum", (self.steps + 1,))
        self.add_sum("count")

    def _canvas(self, kind: str, images: Tensor) -> Tensor:
        kind = {"zero": "black"}.get(kind, kind)  # insertion's "zero" canvas is black raw pixels
        return make_canvas(kind, images, self.mean, self.std, self.blur_kernel, self.blur_sigma)

    def update(self, images: Tensor, saliency: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        """Score every deletion and insertion step of every image; ``mask`` is ignored."""
        saliency, target, _ = check_inputs(images, saliency, target, mask, metric=type(self).__name__)
        B, _, H, W = images.shape
        P = self.steps + 1
        positions = rank_positions(saliency, self.ties)  # [B, HW]
        counts = torch.tensor(step_counts(self.steps, H * W), device=images.device, dtype=torch.long)
        # Curve 0 (deletion): changed pixels come from the deletion canvas, the rest from the image.
        # Curve 1 (insertion): changed pixels come from the image, the rest from the insertion canvas.
        changed_source = torch.cat([self._canvas(self.deletion_value, images), images])
        other_source = torch.cat([images, self._canvas(self.insertion_canvas, images)])

        def make_inputs(start: int, stop: int) -> tuple[Tensor, Tensor]:
            s = torch.arange(start, stop, device=images.device)  # s = (curve * B + b) * P + k
            src, k = s // P, s % P
            b = src % B
            changed = (positions[b] < counts[k, None]).view(-1, 1, H, W)
            return torch.where(changed, changed_source[src], other_source[src]), target[b]

        curves = self._probabilities(2 * B * P, make_inputs).view(2, B, P)
        auc = torch.trapezoid(curves, dx=1.0 / self.steps, dim=-1)  # [2, B], area over the fraction [0, 1]
        self.accumulate("deletion_sum", auc[0].sum())
        self.accumulate("insertion_sum", auc[1].sum())
        self.accumulate("deletion_curve_sum", curves[0].sum(0))
        self.accumulate("insertion_curve_sum", curves[1].sum(0))
        self.accumulate("count", torch.tensor(float(B)))
        self.last = {"deletion": auc[0], "insertion": auc[1], "deletion_curve": curves[0], "insertion_curve": curves[1]}

    def compute(self) -> dict[str, float | Tensor]:
        """``{"deletion", "insertion"}`` mean AUCs and ``{"deletion_curve", "insertion_curve"}`` mean curves."""
        return {
            "deletion": float(mean_or_nan(self.deletion_sum, self.count)),
            "insertion": float(mean_or_nan(self.insertion_sum, self.count)),
            "deletion_curve": mean_or_nan(self.deletion_curve_sum, self.count),
            "insertion_curve": mean_or_nan(self.insertion_curve_sum, self.count),
        }
