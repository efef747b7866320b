"""Where a fit's mask vectors start besides ``tau``: initialisers registered by name (``init: <name>``).

An initialiser is built once per method from its settings and schedule (``factory(cfg, schedule, method)``) and
predicts every image's starting vectors: ``initializer.predict(model, images, targets)`` returns ``({vector name:
values}, extra)``; ``initializer.predictor`` is the network behind it (its weights belong to a fit's checkpoint
key). Packages above the explainers register theirs (:mod:`hdm_lightning.amortised` registers ``amortised``), so
the explainers never import them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from torch import Tensor, nn

__all__ = ["INITIALIZERS", "Initializer", "build_initializer", "register_initializer"]


class Initializer(Protocol):
    """What a fit needs from an initialiser."""

    predictor: nn.Module

    def predict(self, model: nn.Module, images: Tensor, targets: Tensor) -> tuple[dict[str, Tensor], Any]:
        """Every image's starting vectors for ``targets``."""
        ...


INITIALIZERS: dict[str, Callable[[Any, Any, str], Initializer]] = {}
"""``init`` name -> ``factory(cfg, schedule, method)``."""


def register_initializer(name: str, factory: Callable[[Any, Any, str], Initializer]) -> None:
    """Make ``init: <name>`` start the fits from ``factory(cfg, schedule, method)``'s predictions."""
    INITIALIZERS[name] = factory


def build_initializer(name: str, cfg: Any, schedule: Any, method: str) -> Initializer:
    """The initialiser ``init: <name>`` of ``method``'s settings ``cfg``.

    Raises:
        ValueError: no initialiser has that name.
    """
    if name not in INITIALIZERS:
        raise ValueError(f"init: {name!r} is not a registered initialiser: use tau or one of {sorted(INITIALIZERS)}")
    return INITIALIZERS[name](cfg, schedule, method)
