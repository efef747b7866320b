"""The registered method ``amortised``: DM-style maps from a trained mask predictor in one forward pass."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from hdm_lightning.amortised.explainer import AmortisedExplainer, load_explainer
from hdm_lightning.amortised.refine import check_refine, refine
from hdm_lightning.contract import SaliencyMethod, register_method
from hdm_lightning.masks.ops import Threshold

__all__ = ["Amortised"]


@register_method("amortised")
class Amortised(SaliencyMethod):
    """Amortised dynamic masks: the predictor's vectors ``d_i`` combined and thresholded as DM does (Eq. 9-10).

    One forward pass of the classifier gives the features the predictor reads (and the predicted class when no
    target is given; ``explain`` spends one more pass choosing it); no backward pass. With ``refine_steps: k``,
    k Adam steps of DM's loss follow on the predictor's head outputs (:mod:`~hdm_lightning.amortised.refine`,
    semi-amortised): k forward and backward passes per predicted vector.

    Args:
        model: the classifier the explainer was trained for (its feature layer and class count are checked).
        checkpoint: the ``explainer.pt`` written by ``train_explainer.py``.
        threshold: ``gamma`` as a quantile of ``M_c`` (``None``: the one the explainer was trained with, DM's).
        refine_steps: Adam steps of DM's loss after the prediction (0: the prediction alone).
        refine_lr: their learning rate, in the units of the predictor's head outputs (a sigmoid's input).
    """

    def __init__(
        self,
        model: nn.Module,
        checkpoint: str = "",
        threshold: float | None = None,
        refine_steps: int = 0,
        refine_lr: float = 1.0,
    ) -> None:
        super().__init__(model)
        if not checkpoint:
            raise ValueError(
                "amortised needs params {checkpoint: <explainer.pt>}: train one with "
                "`python train_explainer.py --config configs/explainer/synthetic.yaml`"
            )
        self.checkpoint = str(checkpoint)
        self.explainer: AmortisedExplainer = load_explainer(Path(self.checkpoint))
        if threshold is not None:
            self.explainer.threshold = Threshold("quantile", float(threshold))
        self.threshold = self.explainer.threshold.value
        self.refine_steps, self.refine_lr = check_refine(refine_steps, refine_lr)

    def attribute(self, images: Tensor, target: Tensor) -> Tensor:  # noqa: D102
        if self.refine_steps:
            vectors, _, _ = refine(
                self.explainer, self.model, images, target, self.refine_steps, self.refine_lr, final_loss=False
            )
        else:
            vectors, _ = self.explainer.predict(self.model, images, target)
        mb, _ = self.explainer.saliency(vectors, *images.shape[-2:])
        return mb
