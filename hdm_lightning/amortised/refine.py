"""Semi-amortised refinement: a few Adam steps on DM's loss, started at the prediction, in the predictor's own terms.

The idea of Kim et al., "Semi-Amortized Variational Autoencoders" (ICML 2018, arXiv 1802.02550): an amortised
network's output is a starting point that per-example gradient steps on the same objective improve. Here the
objective is DM's loss summed over every predicted vector (:func:`~hdm_lightning.amortised.module.predictor_loss`,
the function the predictor is trained on, which calls the per-image fits' own ``vector_mask`` and ``dm_row_loss``),
and the variables are the predictor's head outputs before their activation (``MaskPredictor.logits``), so that the
vectors stay what the predictor makes them: a sigmoid's values, never exactly 0.

Why not DM's own projected steps from the prediction (``dm``/``hdm`` with ``init: amortised``): measured on the
synthetic shapes (docs/results.md, "Amortised masks"), the first projected step sets every predicted value below
the step size to exactly 0. The prediction's map orders its pixels down to values of 1e-5 (72 % of ``M_c`` lies
below 1e-3 of its maximum), and that order is what its deletion/insertion scores read; zeroing the vectors' values
below 1e-4 without any step already costs as much insertion as two DM steps do (0.836 -> 0.808; below 0.05:
0.796, DM's two steps 0.795). Steps on the head outputs move small values by small amounts instead.

Every image's variables enter only its own loss terms and Adam is elementwise, so a batch refines each image
exactly as it would be refined alone. Guided levels see their guide detached, as in the predictor's training.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hdm_lightning.allocator import retain_freed_memory
from hdm_lightning.amortised.explainer import AmortisedExplainer
from hdm_lightning.amortised.module import predictor_loss

__all__ = ["check_refine", "refine"]


def check_refine(steps, lr) -> tuple[int, float]:
    """``(steps, lr)`` as numbers, or a ValueError naming the setting (``refine_steps`` >= 0, ``refine_lr`` > 0)."""
    if isinstance(steps, bool) or not isinstance(steps, int | float) or int(steps) != steps or steps < 0:
        raise ValueError(f"amortised refine_steps must be an integer >= 0, got {steps!r}")
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0:
        raise ValueError(f"amortised refine_lr must be a number > 0, got {lr!r}")
    return int(steps), float(lr)


def refine(
    explainer: AmortisedExplainer,
    model: nn.Module,
    images: Tensor,
    targets: Tensor | None,
    steps: int,
    lr: float,
    final_loss: bool = True,
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """The predicted vectors after ``steps`` Adam steps of DM's loss: ``({name: [B, 1, a, b]}, targets, losses)``.

    Args:
        explainer: the trained predictor and the DM settings it predicts for.
        model: the frozen classifier (eval mode; its weights get no gradient).
        images: ``[B, C, H, W]``, normalised as ``model`` expects.
        targets: the class of each image (``None``: the predicted class).
        steps: Adam steps (0: the prediction itself). Each costs one forward and backward pass per vector and image.
        lr: Adam's learning rate on the head outputs (pre-activation units).
        final_loss: also score the refined vectors (one more forward pass per vector and image; the ``amortised``
            method, which needs only the vectors, skips it).

    Returns:
        The vectors, the classes explained, and each image's DM loss before each step and, with ``final_loss``,
        after the last: ``[steps + 1, B]`` (``[steps, B]`` without).
    """
    steps, lr = check_refine(steps, lr)
    if steps:
        retain_freed_memory()  # every step frees and refaults its activations otherwise (hdm_lightning.allocator)
    raw, targets, reference = explainer.predict_raw(model, images, targets)
    names, specs = list(raw), list(explainer.vectors)
    z = [raw[n].detach().clone().requires_grad_(True) for n in names]
    opt = torch.optim.Adam(z, lr=lr)
    act = explainer.predictor.activate

    def losses() -> Tensor:
        rows = predictor_loss(model, images, targets, reference, [act(q) for q in z], specs, explainer.upsample)
        return rows.sum(0)  # [B]: DM sums its vectors' losses

    history = []
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            per_image = losses()
            per_image.sum().backward()  # a sum over images: each image's gradient is its own loss's
            history.append(per_image.detach())
            opt.step()
    with torch.no_grad():
        if final_loss:
            history.append(losses())
        vectors = {n: act(q).detach().to(images.dtype) for n, q in zip(names, z, strict=True)}
    b = images.shape[0]
    return vectors, targets, torch.stack(history) if history else images.new_zeros(0, b)
