"""Average Drop / Average Increase (Grad-CAM++; HDM paper §4.5, Table 1; MDM paper §4.2): family ``drop_increase``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from hdm_lightning.metrics.base import ModelMetric, check_percents, mean_or_nan, percent_key
from hdm_lightning.metrics.family import register_metric
from hdm_lightning.metrics.perturbation import (
    DEFAULT_TIES,
    as_channel_tensor,
    check_inputs,
    check_ties,
    evaluation_ties,
    keep_count,
    make_canvas,
    rank_positions,
)

__all__ = ["AverageDropIncrease", "DROP_BASELINES"]

DROP_BASELINES = ("zero", "mean", "blur", "black")


@register_metric("drop_increase")
class AverageDropIncrease(ModelMetric):
    """Average Drop and Average Increase (Grad-CAM++; HDM paper §4.5, MDM paper §4.2).

    For each muted share ``q`` (the papers' 70/80/90 % are the *muted* pixels) keep the top ``(100 - q) %`` pixels by
    rank, set the rest to the baseline and score ``O_c``; with ``Y_c`` the score of the unmodified image:

    - ``drop/q = mean_i max(0, Y_i - O_i) / Y_i * 100`` (lower is better; an image with ``Y_i = 0``, an
      underflowed softmax, contributes 0: it has nothing to drop),
    - ``increase/q = mean_i [O_i > Y_i] * 100`` (higher is better).

    Forward passes per update: ``B * (1 + len(percents))``.

    Args:
        model: classifier returning logits ``[N, K]``.
        percents: muted shares ``q`` in percent.
        baseline: value of the muted pixels: ``"zero"`` (0 in the normalised tensor = the dataset mean colour; a project
            decision, default), ``"mean"`` (the image's own per-channel mean), ``"blur"`` (the image blurred by a
            Gaussian, kernel about a tenth of the side) or ``"black"`` (raw 0; needs ``mean`` and ``std``).
        mean: the classifier's preprocessing mean (only for ``"black"``).
        std: the classifier's preprocessing std (only for ``"black"``).
        batch_size: most masked images per forward.
        blur_kernel: odd kernel side for ``"blur"``; ``None`` = about a tenth of the shorter side.
        blur_sigma: Gaussian sigma in pixels for ``"blur"``; ``None`` = ``0.15 * kernel + 0.35``.
        ties: the order of equal saliency values (:func:`~hdm_lightning.metrics.perturbation.rank_order`).
        **kwargs: passed to ``torchmetrics.Metric``.

    ``last`` holds ``drop/q`` and ``increase/q`` per image plus ``probability`` (``Y_c``) and ``probability/q``
    (``O_c``).
    """

    columns: ClassVar[dict[str, bool]] = {"drop": False, "increase": True}
    order: ClassVar[int] = 10
    manifest_percents: ClassVar[bool] = True  # drop/70 .. increase/90: few columns, each one a paper's number

    @classmethod
    def from_evaluation(cls, evaluation: Any) -> dict[str, Any]:
        """``evaluation.drop_percents``, ``evaluation.drop_baseline`` and ``evaluation.ties``."""
        return {
            "percents": tuple(evaluation.drop_percents),
            "baseline": evaluation.drop_baseline,
            "ties": evaluation_ties(evaluation),
        }

    def __init__(
        self,
        model: nn.Module,
        percents: Sequence[float] = (70, 80, 90),
        baseline: str = "zero",
        mean: Sequence[float] | Tensor | None = None,
        std: Sequence[float] | Tensor | None = None,
        batch_size: int = 64,
        blur_kernel: int | None = None,
        blur_sigma: float | None = None,
        ties: str = DEFAULT_TIES,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, batch_size, **kwargs)
        self.ties = check_ties(ties, "drop_increase")
        self.percents = check_percents(percents, "percents")
        if baseline not in DROP_BASELINES:
            raise ValueError(f"Unknown baseline {baseline!r}. Available: {list(DROP_BASELINES)}")
        self.baseline = baseline
        self.mean, self.std = as_channel_tensor(mean, "mean"), as_channel_tensor(std, "std")
        if baseline == "black" and (self.mean is None or self.std is None):
            raise ValueError("baseline='black' needs mean and std: pass the classifier's Preprocess.mean/.std")
        self.blur_kernel, self.blur_sigma = blur_kernel, blur_sigma
        n = len(self.percents)
        self.add_sum("drop_sum", (n,))
        self.add_sum("increase_sum", (n,))
        self.add_sum("count")

    def update(self, images: Tensor, saliency: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        """Score the images and their partly muted copies; ``mask`` is ignored."""
        saliency, target, _ = check_inputs(images, saliency, target, mask, metric=type(self).__name__)
        B, _, H, W = images.shape
        positions = rank_positions(saliency, self.ties)  # [B, HW]
        canvas = make_canvas(self.baseline, images, self.mean, self.std, self.blur_kernel, self.blur_sigma)
        # Sample s = level * B + b; level 0 is the unmodified image (all pixels kept), level j the j-th share.
        kept = torch.tensor(
            [H * W] + [keep_count(100 - q, H * W) for q in self.percents], device=images.device, dtype=torch.long
        )

        def make_inputs(start: int, stop: int) -> tuple[Tensor, Tensor]:
            s = torch.arange(start, stop, device=images.device)
            b, level = s % B, s // B
            keep = (positions[b] < kept[level, None]).view(-1, 1, H, W)
            return torch.where(keep, images[b], canvas[b]), target[b]

        probs = self._probabilities(B * (1 + len(self.percents)), make_inputs).view(1 + len(self.percents), B)
        Y, O = probs[0], probs[1:]  # [B], [Q, B]
        drop = torch.where(Y > 0, torch.clamp(Y - O, min=0) / torch.where(Y > 0, Y, 1.0), 0.0) * 100
        increase = (O > Y).double() * 100
        self.accumulate("drop_sum", drop.sum(1))
        self.accumulate("increase_sum", increase.sum(1))
        self.accumulate("count", torch.tensor(float(B)))
        self.last = {"probability": Y}
        for j, q in enumerate(self.percents):
            k = percent_key(q)
            self.last[f"drop/{k}"], self.last[f"increase/{k}"] = drop[j], increase[j]
            self.last[f"probability/{k}"] = O[j]

    def compute(self) -> dict[str, float]:
        """``{"drop/q": %, "increase/q": %}`` for every ``q`` in ``percents``."""
        drop = mean_or_nan(self.drop_sum, self.count)
        increase = mean_or_nan(self.increase_sum, self.count)
        out = {}
        for j, q in enumerate(self.percents):
            out[f"drop/{percent_key(q)}"] = float(drop[j])
            out[f"increase/{percent_key(q)}"] = float(increase[j])
        return out
