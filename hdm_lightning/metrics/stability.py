"""Map stability: does a method give the same map when nothing that should matter has changed?

A map must be a function of the image, the classifier and the settings. These scores compare the map of an
image with the map the same method gives under a change that should not matter: input noise far below one
grey level, another batch, another thread or process count. Identical maps score 1 on every column; maps
with no relation score about 0 (correlations) and about ``k / (2 - k)`` (the IoU of two random top-``k``
sets, e.g. 0.026 for ``iou5`` and 0.11 for ``iou20``).

- Agreement of two batches of maps: :func:`pearson`, :func:`spearman` (tie-averaged ranks), :func:`top_k_iou`,
  all of them at once with :func:`map_agreement` (columns ``pearson``, ``spearman``, ``iou5``, ``iou20``).
- :func:`rerun_conditions`: the same method's maps of the same images and targets under each condition
  (``noise<eps>``, ``batch``, ``threads``), computed without touching the run's checkpoints, logger or cost.
- :class:`MapStability`: a ``torchmetrics.Metric`` accumulating the agreement per condition; ``compute()``
  returns ``stability/<condition>/<column>`` (e.g. ``stability/noise1e-06/pearson``, ``stability/batch/iou20``).
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


def _flat(maps: Tensor) -> Tensor:
    """``[B, ...]`` -> ``[B, N]`` in float64 (a 2-D map ``[H, W]`` counts as one image)."""
    if maps.dim() == 2:
        maps = maps.unsqueeze(0)
    return maps.detach().reshape(maps.shape[0], -1).double()


def _same_shape(a: Tensor, b: Tensor) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(
            f"maps to compare must have the same shape ([B, 1, H, W], [B, H, W] or [H, W]), got {tuple(a.shape)} "
            f"and {tuple(b.shape)}"
        )


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation per image of two batches of maps, ``[B]``.

    Two constant maps that are equal correlate 1; a constant map against a varying one correlates 0.
    """
    _same_shape(a, b)
    return _pearson_rows(_flat(a), _flat(b))


def _pearson_rows(x: Tensor, y: Tensor) -> Tensor:
    """Pearson correlation of each row of two float64 ``[B, N]`` arrays."""
    xc = x - x.mean(1, keepdim=True)
    yc = y - y.mean(1, keepdim=True)
    sx, sy = xc.norm(dim=1), yc.norm(dim=1)
    r = (xc * yc).sum(1) / (sx * sy).clamp_min(torch.finfo(torch.float64).tiny)
    both_flat = (sx == 0) & (sy == 0)
    same = (x == y).all(1)
    r = torch.where(both_flat, same.double(), r)
    return r.clamp(-1.0, 1.0)


def rank(x: Tensor) -> Tensor:
    """Ranks ``0..N-1`` along the last dim, ties sharing their average rank (as Spearman's rho needs)."""
    flat = x.reshape(-1, x.shape[-1])
    out = torch.empty_like(flat, dtype=torch.float64)
    for i, row in enumerate(flat):
        values, inverse, counts = torch.unique(row, sorted=True, return_inverse=True, return_counts=True)
        first = torch.cumsum(counts, 0) - counts  # rank of each distinct value's first occurrence
        out[i] = (first.double() + (counts.double() - 1) / 2)[inverse]
    return out.reshape(x.shape)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation per image (Pearson of the tie-averaged ranks), ``[B]``."""
    _same_shape(a, b)
    return _pearson_rows(rank(_flat(a)), rank(_flat(b)))


def top_k_mask(maps: Tensor, fraction: float) -> Tensor:
    """The top ``fraction`` of each map's pixels, ``[B, N]`` booleans.

    Pixels tied with the cut-off value are kept (the set does not depend on the order of equal pixels), except
    when the cut-off is the map's minimum: a flat bottom (e.g. zeros outside a thresholded map) is never "top".
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"top-k fraction must be in (0, 1], got {fraction!r}")
    x = _flat(maps)
    n = x.shape[1]
    k = max(1, round(fraction * n))
    cut = x.topk(k, dim=1).values[:, -1:]
    lo = x.min(1, keepdim=True).values
    return torch.where(cut > lo, x >= cut, x > lo)


def top_k_iou(a: Tensor, b: Tensor, fraction: float) -> Tensor:
    """IoU of the two maps' top-``fraction`` pixel sets per image, ``[B]`` (two empty sets: 1)."""
    _same_shape(a, b)
    ma, mb = top_k_mask(a, fraction), top_k_mask(b, fraction)
    inter = (ma & mb).sum(1).double()
    union = (ma | mb).sum(1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def _percent(fraction: float) -> str:
    p = fraction * 100
    return f"{p:g}"


def agreement_keys(top_k: Sequence[float] = (0.05, 0.2)) -> list[str]:
    """Column names of :func:`map_agreement`: ``pearson``, ``spearman``, ``iou<k %>`` per fraction."""
    return ["pearson", "spearman", *[f"iou{_percent(k)}" for k in top_k]]


def map_agreement(a: Tensor, b: Tensor, top_k: Sequence[float] = (0.05, 0.2)) -> dict[str, Tensor]:
    """Every agreement score of two batches of maps of the same images, ``{column: [B]}``.

    Args:
        a: maps ``[B, 1, H, W]`` (or ``[B, H, W]``, or one ``[H, W]``).
        b: maps of the same images under another condition, same shape.
        top_k: fractions of pixels for the top-k IoU columns (0.05 and 0.2: ``iou5``, ``iou20``).
    """
    out = {"pearson": pearson(a, b), "spearman": spearman(a, b)}
    for k in top_k:
        out[f"iou{_percent(k)}"] = top_k_iou(a, b, k)
    return out


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


class MapStability(Metric):
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

    Args:
        conditions: the condition names ``update`` accepts (letters, digits, ``. + - _``; no ``/``).
        top_k: fractions of the pixels for the top-k IoU columns (``iou5``, ``iou20``).
        **kwargs: passed to ``torchmetrics.Metric``.
    """

    is_differentiable: ClassVar[bool] = False
    higher_is_better: ClassVar[bool] = True
    full_state_update: ClassVar[bool] = False
    requires_mask: ClassVar[bool] = False
    requires_model: ClassVar[bool] = False
    #: ``update`` compares maps of the method's reruns (:func:`rerun_conditions`), not an image and its map
    requires_method: ClassVar[bool] = True

    def __init__(
        self,
        conditions: Sequence[str] = ("noise1e-06", "noise0.001", "batch"),
        top_k: Sequence[float] = (0.05, 0.2),
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
        self.columns = agreement_keys(self.top_k)
        shape = (len(self.conditions), len(self.columns))
        self.add_state("agreement_sum", default=torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.last: dict[str, Tensor] = {}

    def update(self, reference_maps: Tensor, other_maps: Tensor, condition: str) -> None:
        """Add the agreement of the run's maps with the maps under ``condition`` (same images, same order)."""
        if condition not in self.conditions:
            raise ValueError(f"unknown condition {condition!r}: this metric was built for {list(self.conditions)}")
        if reference_maps.dim() != 4 or reference_maps.shape[1] != 1:
            raise ValueError(f"maps must be [B, 1, H, W], got {tuple(reference_maps.shape)}")
        scores = map_agreement(reference_maps, other_maps, self.top_k)
        values = torch.stack([scores[c] for c in self.columns], 1)  # [B, K]
        finite = torch.isfinite(values)
        j = self.conditions.index(condition)
        total, count = torch.zeros_like(self.agreement_sum), torch.zeros_like(self.count)
        total[j] = torch.where(finite, values, 0.0).sum(0).to(total.device)
        count[j] = finite.sum(0).double().to(count.device)
        self.agreement_sum = self.agreement_sum + total
        self.count = self.count + count
        for k, column in enumerate(self.columns):
            self.last[f"stability/{condition}/{column}"] = values[:, k]

    def compute(self) -> dict[str, float]:
        """``{"stability/<condition>/<column>": mean}`` for every condition updated at least once."""
        out = {}
        for j, condition in enumerate(self.conditions):
            if not bool((self.count[j] > 0).any()):
                continue
            for k, column in enumerate(self.columns):
                n = float(self.count[j, k])
                out[f"stability/{condition}/{column}"] = float(self.agreement_sum[j, k]) / n if n else float("nan")
        return out

    def reset(self) -> None:
        """Zero the states and forget the per-image values."""
        super().reset()
        self.last = {}
