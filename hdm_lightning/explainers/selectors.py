"""Activation selectors: which activation ``f_p`` the masks must preserve (MDM paper §3.1).

Default: the logit of the class the network predicts for the original image. A class index per
image (or one for all), or any callable ``selector(model, x) -> Tensor[N]`` (for example a
ProtoPNet prototype similarity) can be given instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

Target = None | int | Sequence[int] | Tensor | Callable[[nn.Module, Tensor], Tensor]


class ActivationSelector:
    """``f_p`` resolved for a batch of original images ``X_0``.

    Args:
        model: the frozen classifier (already in eval mode).
        images: ``X_0``, ``[B, C, H, W]``.
        target: ``None`` (predicted class), an int, ``B`` ints, or a callable.

    Raises:
        ValueError: the model does not return ``[B, classes]`` (and no callable is given), a class
            index is out of range, or the callable does not return one finite value per image.
    """

    def __init__(self, model: nn.Module, images: Tensor, target: Target = None) -> None:
        self.model = model
        b = images.shape[0]
        self.fn: Callable[[nn.Module, Tensor], Tensor] | None = None
        with torch.no_grad():
            if callable(target) and not isinstance(target, Tensor):
                self.fn = target
                act = self._call_fn(images)
                self.targets = torch.full((b,), -1, dtype=torch.long, device=images.device)
                self.probability = torch.full((b,), float("nan"), device=images.device)
                self.reference = act
                return
            logits = model(images)
            self._check_logits(logits, b)
            n_classes = logits.shape[1]
            if target is None:
                targets = logits.argmax(1)
            else:
                targets = torch.as_tensor(target, device=images.device)
                if targets.dtype.is_floating_point or targets.dtype == torch.bool:
                    raise ValueError(f"target class indices must be integers, got dtype {targets.dtype}")
                targets = targets.long().reshape(-1)
                if targets.numel() == 1:
                    targets = targets.expand(b).clone()
                if targets.numel() != b:
                    raise ValueError(f"target gives {targets.numel()} class indices for {b} images: give one per image")
                bad = (targets < 0) | (targets >= n_classes)
                if bad.any():
                    raise ValueError(
                        f"target class index {targets[bad][0].item()} is out of range for a model with "
                        f"{n_classes} classes: use an index in [0, {n_classes - 1}]"
                    )
            self.targets = targets
            self.reference = logits.gather(1, targets[:, None])[:, 0]
            self.probability = logits.float().softmax(1).gather(1, targets[:, None])[:, 0]

    @staticmethod
    def _check_logits(out: object, b: int) -> None:
        if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != b:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"the model must return logits of shape [B, classes] = [{b}, C]; it returned {shape}. "
                "Wrap the model so it returns logits, or pass target=callable(model, x) -> Tensor[B]"
            )

    def _call_fn(self, x: Tensor) -> Tensor:
        out = self.fn(self.model, x)
        if not isinstance(out, Tensor) or out.shape != (x.shape[0],):
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"the activation selector must return a Tensor of shape [{x.shape[0]}]; it returned {shape}"
            )
        if not torch.isfinite(out).all():
            raise ValueError("the activation selector returned NaN or inf for the original images")
        return out

    def __call__(self, x: Tensor, targets: Tensor | None) -> Tensor:
        """``f_p(x)`` for a batch of (masked) images; ``targets`` holds each row's class."""
        if self.fn is not None:
            return self.fn(self.model, x)
        return self.model(x).gather(1, targets[:, None])[:, 0]

    def evaluate(self, x: Tensor) -> Tensor:
        """``f_p(x)`` without gradient for images aligned with ``X_0`` (one row per original image)."""
        with torch.no_grad():
            return self(x, self.targets).detach()
