"""Map stability: does a method give the same map when nothing that should matter has changed?

A map must be a function of the image, the classifier and the settings. These scores compare the map of an
image with the map the same method gives under a change that should not matter: input noise far below one
grey level, another batch, another thread or process count. Identical maps score 1 on every column; maps
with no relation score about 0 (correlations) and about ``k / (2 - k)`` (the IoU of two random top-``k``
sets, e.g. 0.026 for ``iou5`` and 0.11 for ``iou20``).

- Agreement of two batches of maps (:mod:`hdm_lightning.metrics.agreement`, re-exported here): :func:`pearson`,
  :func:`spearman` (tie-averaged ranks), :func:`top_k_iou`, all of them at once with :func:`map_agreement`
  (columns ``pearson``, ``spearman``, ``iou5``, ``iou20``).
- :func:`rerun_conditions`: the same method's maps of the same images and targets under each condition
  (``noise<eps>``, ``batch``, ``threads``), computed without touching the run's checkpoints, logger or cost.
- :class:`MapStability`: a ``torchmetrics.Metric`` accumulating the agreement per condition; ``compute()``
  returns ``stability/<condition>/<column>`` (e.g. ``stability/noise1e-06/pearson``, ``stability/batch/iou20``).
  It is the metric family ``stability``, the one that reruns the method (``requires_method``).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import Tensor
from torchmetrics import Metric

from hdm_lightning.metrics.agreement import (
    agreement_keys,
    map_agreement,
    pearson,
    rank,
    row_totals,
    spearman,
    top_k_iou,
)
from hdm_lightning.metrics.family import MetricFamily, register_metric

__all__ = [
    "MapStability",
    "agreement_keys",
    "check_noise",
    "check_top_k",
    "condition_names",
    "id_noise",
    "map_agreement",
    "pearson",
    "rank",
    "rerun_conditions",
    "sort_key",
    "spearman",
    "top_k_iou",
]


# ------------------------------------------------------------------------------------------------ settings

_CONDITION = re.compile(r"[A-Za-z][\w.+\-]*")


def check_noise(noise: Sequence[float], name: str = "noise") -> tuple[float, ...]:
    """Noise levels ``eps`` (normalised input units): finite, > 0, with distinct condition names."""
    values = tuple(noise)
    for eps in values:
        if isinstance(eps, bool) or not isinstance(eps, int | float) or not math.isfinite(eps) or eps <= 0:
            raise ValueError(
                f"{name} must be noise levels eps > 0 (in normalised input units, e.g. [1e-6, 1e-3]), got {eps!r} "
                f"in {list(values)!r}"
            )
    keys = [f"noise{eps:g}" for eps in values]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{name} has duplicates: {list(values)!r}")
    return tuple(float(eps) for eps in values)


def check_top_k(top_k: Sequence[float], name: str = "top_k") -> tuple[float, ...]:
    """Top-k fractions of the IoU columns: at least one, each in ``(0, 1]``, with distinct column names."""
    values = tuple(top_k)
    if not values:
        raise ValueError(f"{name} must name at least one fraction of the pixels, e.g. [0.05, 0.2]")
    for k in values:
        if isinstance(k, bool) or not isinstance(k, int | float) or not 0.0 < k <= 1.0:
            raise ValueError(
                f"{name} must be fractions of the pixels in (0, 1] (0.05 = the top 5 %), got {k!r} in {list(values)!r}"
            )
    keys = agreement_keys(values)
    if len(set(keys)) != len(keys):
        raise ValueError(f"{name} has duplicates: {list(values)!r}")
    return tuple(float(k) for k in values)


def condition_names(noise: Sequence[float] = (1e-6, 1e-3), batch: bool = True, threads: bool = False) -> list[str]:
    """The conditions :func:`rerun_conditions` may return, in table order: ``noise<eps>``, ``batch``, ``threads``."""
    names = [f"noise{eps:g}" for eps in check_noise(noise)]
    return [*names, *(["batch"] if batch else []), *(["threads"] if threads else [])]


def sort_key(key: str) -> tuple:
    """Sort key of the ``<condition>/<column>`` part of a stability key.

    Conditions: noise by level, ``batch``, ``threads``, others; columns: ``pearson``, ``spearman``, ``iou`` by
    fraction, others.
    """
    cond, _, col = key.partition("/")
    if cond.startswith("noise"):
        try:
            c = (0, float(cond[5:]))
        except ValueError:
            c = (3, 0.0)
    else:
        c = ({"batch": 1, "threads": 2}.get(cond, 3), 0.0)
    if col in ("pearson", "spearman"):
        k = (0 if col == "pearson" else 1, 0.0)
    else:
        try:
            k = (2, float(col[3:])) if col.startswith("iou") else (3, 0.0)
        except ValueError:
            k = (3, 0.0)
    return (*c, cond, *k, col)


# ------------------------------------------------------------------------------------------------ reruns


def id_noise(item_id: object, shape: Sequence[int], dtype: torch.dtype = torch.float64) -> Tensor:
    """Standard normal noise ``shape`` (on the CPU) from a generator seeded by a digest of ``str(item_id)``.

    The same for an image whatever its batch, process, device or a resumed run.
    """
    digest = hashlib.sha256(str(item_id).encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return torch.randn(tuple(shape), generator=gen, dtype=torch.float64).to(dtype)


@contextmanager
def _reruns_of(device: torch.device) -> Iterator[None]:
    """Calls that leave no trace: the global RNG is forked, so the run's next call sees the state it would have seen.

    A method keeps no state between calls, and a rerun gets no run context: no checkpoints, logger or callbacks.
    """
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


def rerun_conditions(
    method: Any,
    images: Tensor,
    target: Tensor,
    ids: Sequence[object],
    noise: Sequence[float] = (1e-6, 1e-3),
    batch: bool = True,
    threads: bool = False,
) -> dict[str, Tensor]:
    """The method's maps of the same images and targets under each condition, ``{condition: [B, 1, H, W]}``.

    - ``noise<eps>`` for each ``eps``: the whole batch ``images + eps * n``, ``n`` standard normal noise seeded by
      each image's id (:func:`id_noise`).
    - ``batch``: each image in another batch: alone when ``B > 1``; when ``B == 1``, in a batch of three with two
      companions made from the image (horizontal flip and 180° rotation, explained for the same class), row 0.
    - ``threads``: the batch with ``torch.set_num_threads(1)`` (restored afterwards); only on the CPU while more
      than one thread is in use, else the condition is left out.

    The calls cost ``len(noise) + (B if B > 1 else 1) + 1`` extra calls of the method per batch (at most); they
    use no checkpoints, logger or callbacks (no :class:`~hdm_lightning.contract.RunContext`) and leave the global RNG
    as it was (:func:`_reruns_of`).

    Args:
        method: a :class:`~hdm_lightning.contract.SaliencyMethod` (``method(images, target) -> maps``).
        images: ``[B, C, H, W]`` the run's batch, normalised.
        target: LongTensor ``[B]``, the classes the run explained.
        ids: the images' ids (seed their noise), ``B`` of them.
        noise: noise levels ``eps`` in normalised input units.
        batch: whether to add the ``batch`` condition.
        threads: whether to add the ``threads`` condition.
    """
    noise = check_noise(noise)
    b = images.shape[0]
    if len(ids) != b:
        raise ValueError(f"rerun_conditions needs one id per image: got {len(ids)} ids for {b} images")
    out: dict[str, Tensor] = {}
    with _reruns_of(images.device):
        if noise:
            n = torch.stack([id_noise(i, images.shape[1:], images.dtype) for i in ids]).to(images.device)
            for eps in noise:
                out[f"noise{eps:g}"] = method(images + eps * n, target)
        if batch:
            if b > 1:
                out["batch"] = torch.cat([method(images[i : i + 1], target[i : i + 1]) for i in range(b)])
            else:
                trio = torch.cat([images, images.flip(-1), images.rot90(2, dims=(-2, -1))])
                out["batch"] = method(trio, target.repeat(3))[:1]
        if threads and images.device.type == "cpu" and torch.get_num_threads() > 1:
            before = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                out["threads"] = method(images, target)
            finally:
                torch.set_num_threads(before)
    return out


# ------------------------------------------------------------------------------------------------ the metric


@register_metric("stability")
class MapStability(MetricFamily, Metric):
    """Agreement of the run's maps with the same method's maps under named conditions (higher is better).

    ``update(reference_maps, other_maps, condition)`` adds the per-image :func:`map_agreement` of two batches of
    maps of the same images (``[B, 1, H, W]``), ``condition`` one of the names given at construction (e.g. from
    :func:`condition_names`). States are float64 sums and counts per (condition, column) with
    ``dist_reduce_fx="sum"``, so ``compute()`` after a DDP sync or ``merge_state`` equals the single-process
    value.

    ``compute()`` keys: ``stability/<condition>/<column>`` (columns ``pearson``, ``spearman``, ``iou<k %>``), the
    mean over the images counted; a condition that was never updated (e.g. ``threads`` skipped on one thread) has
    no keys. ``last`` holds the per-image values ``[B]`` under the same keys for every condition updated since the
    last ``reset()`` (one batch: reset, then one update per condition).

    :meth:`update_from_method` reruns the method under the conditions (:func:`rerun_conditions` with ``reruns``)
    and updates with each; :class:`~hdm_lightning.evaluation.MetricSuite` calls it on every batch.

    Args:
        conditions: the condition names ``update`` accepts (letters, digits, ``. + - _``; no ``/``).
        top_k: fractions of the pixels for the top-k IoU columns (``iou5``, ``iou20``).
        reruns: ``noise``, ``batch`` and ``threads`` of :func:`rerun_conditions` for :meth:`update_from_method`
            (their conditions must be among ``conditions``); ``None``: only :meth:`update`.
        **kwargs: passed to ``torchmetrics.Metric``.
    """

    is_differentiable: ClassVar[bool] = False
    higher_is_better: ClassVar[bool] = True
    full_state_update: ClassVar[bool] = False
    columns: ClassVar[dict[str, bool]] = {"stability": True}  # stability/<condition>/<column>: agreement
    order: ClassVar[int] = 50
    #: the maps to compare come from the method's reruns (:meth:`update_from_method`), not from an image and its map
    requires_method: ClassVar[bool] = True

    @classmethod
    def from_evaluation(cls, evaluation: Any) -> dict[str, Any]:
        """``evaluation.stability_*``: the conditions (at least one) and the top-k fractions."""
        reruns = {
            "noise": check_noise(list(evaluation.stability_noise), "evaluation.stability_noise"),
            "batch": bool(evaluation.stability_batch),
            "threads": bool(evaluation.stability_threads),
        }
        top_k = check_top_k(list(evaluation.stability_top_k), "evaluation.stability_top_k")
        conditions = condition_names(**reruns)
        if not conditions:
            raise ValueError(
                "metric family 'stability' has no condition: give evaluation.stability_noise levels, or set "
                "evaluation.stability_batch or evaluation.stability_threads to true"
            )
        return {"conditions": conditions, "top_k": top_k, "reruns": reruns}

    @classmethod
    def tail_key(cls, tail: str) -> tuple:
        """Conditions (noise by level, ``batch``, ``threads``), then columns: :func:`sort_key`."""
        return sort_key(tail)

    def __init__(
        self,
        conditions: Sequence[str] = ("noise1e-06", "noise0.001", "batch"),
        top_k: Sequence[float] = (0.05, 0.2),
        reruns: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.conditions = tuple(conditions)
        bad = [c for c in self.conditions if not isinstance(c, str) or not _CONDITION.fullmatch(c)]
        if not self.conditions or bad or len(set(self.conditions)) != len(self.conditions):
            raise ValueError(
                "conditions must be distinct plain names (letters, digits, . + - _, e.g. 'noise1e-06', 'batch'), at "
                f"least one, got {list(self.conditions)!r}"
            )
        self.top_k = check_top_k(top_k)
        self.agreement_columns = agreement_keys(self.top_k)
        shape = (len(self.conditions), len(self.agreement_columns))
        self.add_state("agreement_sum", default=torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.last: dict[str, Tensor] = {}
        self.reruns = None if reruns is None else dict(reruns)
        if self.reruns is not None:
            missing = [c for c in condition_names(**self.reruns) if c not in self.conditions]
            if missing:
                raise ValueError(f"reruns {self.reruns} make conditions {missing} that are not in {self.conditions}")

    def update_from_method(self, method: Any, images: Tensor, saliency: Tensor, target: Tensor, ids: Sequence) -> None:
        """Rerun ``method`` on ``images`` for ``target`` under each condition and add the agreement with ``saliency``.

        ``ids`` (one per image) seed the noise (:func:`rerun_conditions`, settings ``reruns``).
        """
        if self.reruns is None:
            raise ValueError("MapStability was built without reruns settings: pass reruns=, or call update()")
        others = rerun_conditions(method, images, target, list(ids), **self.reruns)
        for condition, other in others.items():
            self.update(saliency, other.to(saliency.device), condition)

    def update(self, reference_maps: Tensor, other_maps: Tensor, condition: str) -> None:
        """Add the agreement of the run's maps with the maps under ``condition`` (same images, same order)."""
        if condition not in self.conditions:
            raise ValueError(f"unknown condition {condition!r}: this metric was built for {list(self.conditions)}")
        if reference_maps.dim() != 4 or reference_maps.shape[1] != 1:
            raise ValueError(f"maps must be [B, 1, H, W], got {tuple(reference_maps.shape)}")
        scores = map_agreement(reference_maps, other_maps, self.top_k)
        values = torch.stack([scores[c] for c in self.agreement_columns], 1)  # [B, K]
        total, count = row_totals(values, self.conditions.index(condition), self.agreement_sum)
        self.agreement_sum = self.agreement_sum + total
        self.count = self.count + count
        for k, column in enumerate(self.agreement_columns):
            self.last[f"stability/{condition}/{column}"] = values[:, k]

    def compute(self) -> dict[str, float]:
        """``{"stability/<condition>/<column>": mean}`` for every condition updated at least once."""
        out = {}
        for j, condition in enumerate(self.conditions):
            if not bool((self.count[j] > 0).any()):
                continue
            for k, column in enumerate(self.agreement_columns):
                n = float(self.count[j, k])
                out[f"stability/{condition}/{column}"] = float(self.agreement_sum[j, k]) / n if n else float("nan")
        return out

    def reset(self) -> None:
        """Zero the states and forget the per-image values."""
        super().reset()
        self.last = {}
