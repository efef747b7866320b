"""What the map metrics share: their ``torchmetrics`` base classes, the percent keys and the shared contract.

Shared contract (every family built on :class:`SaliencyMetric`):

- ``update(images, saliency, target, mask=None)``: ``images [B, C, H, W]`` normalised as the classifier expects,
  ``saliency [B, 1, H, W]`` (any real range: scores rank pixels or apply ``N``), ``target`` LongTensor ``[B]``
  (the explained class), ``mask`` BoolTensor ``[B, H, W]`` (ground-truth foreground; required by the families
  with ``requires_mask``, ignored by the others).
- Pixel ranking, "top p %", binarising "at percentile q" and the canvases are the project decisions documented in
  :mod:`hdm_lightning.metrics.perturbation`: descending saliency, ties in one fixed shuffled order, half-up
  rounding of the pixel count, binarising at q = keeping the top ``(100 - q) %`` pixels by rank.
- Scores use the softmax probability ``Y_c`` of the explained class. The classifier is a plain attribute (not a
  submodule: moving or syncing a metric never touches it), run in eval mode without gradients on the inputs'
  device, at most ``batch_size`` perturbed images per forward; ``forward_passes`` counts the samples it was fed
  (a running total on this process, not reset by ``reset()`` and not synced).
- State: float64 sums and counts with ``dist_reduce_fx="sum"``, so ``compute()`` after a DDP sync (or after
  ``merge_state``) equals the single-process value. ``compute()`` returns a dict with slash keys: Python floats,
  and float64 tensors for curves. ``NaN`` where no image was counted.
- Per-image values of the last ``update`` are in ``metric.last``: a dict of float64 tensors ``[B]`` (curves
  ``[B, steps + 1]``) under the same keys as ``compute()`` (``NaN`` for a skipped image), plus the raw
  probabilities where noted.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from hdm_lightning.metrics.family import MetricFamily
from hdm_lightning.metrics.perturbation import class_probabilities

__all__ = ["ModelMetric", "SaliencyMetric", "check_batch_size", "check_percents", "mean_or_nan", "percent_key"]


def percent_key(q: float) -> str:
    """``70 -> "70"``, ``12.5 -> "12.5"`` for the slash keys."""
    return f"{q:g}"


def check_percents(percents: Iterable[float], name: str) -> tuple[float, ...]:
    """At least one percentage, each a number in ``[0, 100]``, with distinct keys."""
    values = tuple(percents)
    if not values:
        raise ValueError(f"{name} must name at least one percentage, got {values!r}")
    for q in values:
        if isinstance(q, bool) or not isinstance(q, int | float) or not 0 <= q <= 100:
            raise ValueError(f"{name} must be numbers in [0, 100], got {q!r} in {values!r}")
    keys = [percent_key(q) for q in values]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{name} has duplicates: {values!r}")
    return values


def check_batch_size(batch_size: int) -> int:
    """A positive integer number of masked images per forward."""
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer (masked images per forward), got {batch_size!r}")
    return int(batch_size)


def mean_or_nan(total: Tensor, count: Tensor) -> Tensor:
    """``total / count``, ``NaN`` where nothing was counted."""
    return total / count if bool(count > 0) else torch.full_like(total, float("nan"))


class SaliencyMetric(MetricFamily, Metric):
    """Common flags: no gradients, states merge by summing (``merge_state`` works), mixed better-directions.

    A family built on it sets its description (:class:`~hdm_lightning.metrics.family.MetricFamily`), declares its
    states with :meth:`add_sum`, adds to them with :meth:`accumulate` and leaves its per-image values in
    ``self.last``.
    """

    is_differentiable: ClassVar[bool] = False
    higher_is_better: ClassVar[bool | None] = None
    full_state_update: ClassVar[bool] = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.last: dict[str, Tensor] = {}

    def add_sum(self, name: str, shape: tuple[int, ...] = ()) -> None:
        """A float64 state ``name`` of ``shape``, zero at the start, summed over processes (``accumulate`` adds)."""
        self.add_state(name, default=torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")

    def accumulate(self, name: str, value: Tensor) -> None:
        """Add ``value`` to the state ``name`` (on its device and dtype)."""
        state = getattr(self, name)
        setattr(self, name, state + value.to(state.device, state.dtype))


class ModelMetric(SaliencyMetric):
    """Holds the classifier as a plain attribute and counts the samples it was fed."""

    requires_model: ClassVar[bool] = True

    def __init__(self, model: nn.Module, batch_size: int = 64, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(model, nn.Module):
            raise ValueError(f"{type(self).__name__} needs the classifier (an nn.Module), got {type(model).__name__}")
        # Not a registered submodule: metric.to(device), state_dict() and DDP syncing must not touch the model.
        object.__setattr__(self, "model", model)
        self.batch_size = check_batch_size(batch_size)
        self.forward_passes = 0

    def __deepcopy__(self, memo: dict[int, Any]) -> ModelMetric:
        """Copy the metric but share the classifier: ``clone()`` must not duplicate the caller's weights."""
        memo[id(self.model)] = self.model
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        new.__setstate__(copy.deepcopy(self.__getstate__(), memo))
        return new

    def _probabilities(self, n_samples: int, make_inputs: Callable[[int, int], tuple[Tensor, Tensor]]) -> Tensor:
        probs = class_probabilities(self.model, n_samples, make_inputs, self.batch_size)
        self.forward_passes += n_samples
        return probs
