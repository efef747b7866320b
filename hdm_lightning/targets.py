"""What ``explain.py`` explains per image (``target:``): a class, or a prototype's activation.

- ``predicted``: the classifier's predicted class (the default);
- ``label``: the dataset's label;
- ``{prototype: k}``: prototype ``k``'s activation of a prototype network (``train_classifier.py`` with
  ``model.head: prototype``), the unit the MDM paper explains on ProtoPNet (MDM paper, arXiv 2207.08046, Tables 4-6);
- ``{prototype: first_of_class}``: the first prototype of the predicted class (the paper's "first of the 10").

A prototype target turns the classifier into its prototype activations
(:func:`hdm_lightning.run.prototypes.prototype_units`): the same network with its ``P`` prototype activations
as outputs, so every method (DM, HDM, MDM, Grad-CAM, gradients, RISE ...) explains output ``k``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from hdm_lightning.models.prototype import PrototypeNet

__all__ = ["CLASS_TARGETS", "FIRST_OF_CLASS", "PrototypeTarget", "parse_target"]

CLASS_TARGETS = ("predicted", "label")
FIRST_OF_CLASS = "first_of_class"
_FORMS = "predicted, label, {prototype: <index>} or {prototype: first_of_class}"


@dataclass(frozen=True)
class PrototypeTarget:
    """``{prototype: k}`` (``index = k``) or ``{prototype: first_of_class}`` (``index = None``)."""

    index: int | None

    def targets(self, net: PrototypeNet, images: Tensor) -> Tensor:
        """The prototype explained for each image: ``k``, or the first prototype of the predicted class."""
        if self.index is not None:
            return torch.full((images.shape[0],), self.index, dtype=torch.long, device=images.device)
        return net(images).argmax(1) * net.prototypes_per_class


def parse_target(value: Any, error: type[ValueError] = ValueError) -> str | PrototypeTarget:
    """``target:`` as ``"predicted"``, ``"label"`` or a :class:`PrototypeTarget`.

    Raises:
        ValueError: (``error``, a subclass) any other value, naming the forms allowed.
    """
    if isinstance(value, str):
        if value in CLASS_TARGETS:
            return value
        raise error(f"target must be one of {_FORMS}, got {value!r}")
    if isinstance(value, Mapping) and list(value) == ["prototype"]:
        k = value["prototype"]
        if k == FIRST_OF_CLASS:
            return PrototypeTarget(None)
        if isinstance(k, int) and not isinstance(k, bool) and k >= 0:
            return PrototypeTarget(int(k))
        raise error(f"target.prototype must be a prototype index >= 0 or {FIRST_OF_CLASS!r}, got {k!r}")
    shown = dict(value) if isinstance(value, Mapping) else value
    raise error(f"target must be one of {_FORMS}, got {shown!r}")
