"""How alike two maps of the same image are: correlations and the overlap of their top pixels.

Identical maps score 1 on every column; maps with no relation score about 0 (correlations) and about
``k / (2 - k)`` (the IoU of two random top-``k`` sets, e.g. 0.026 for ``iou5`` and 0.11 for ``iou20``).

- :func:`pearson`, :func:`spearman` (tie-averaged ranks), :func:`top_k_iou` per image of two batches of maps;
- :func:`map_agreement`: all of them at once (columns ``pearson``, ``spearman``, ``iou5``, ``iou20``:
  :func:`agreement_keys`).

:mod:`hdm_lightning.metrics.stability` scores a method's maps against its own reruns with them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "agreement_keys",
    "map_agreement",
    "pearson",
    "rank",
    "row_totals",
    "spearman",
    "top_k_iou",
    "top_k_mask",
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


def row_totals(values: Tensor, row: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """What one batch adds to ``[rows, K]`` sum/count states at ``row``: sums of the finite ``values [B, K]``, counts.

    Both are zeros shaped and placed like ``like`` except row ``row``; a NaN (an undefined score) adds to neither.
    """
    finite = torch.isfinite(values)
    total, count = torch.zeros_like(like), torch.zeros_like(like)
    total[row] = torch.where(finite, values, 0.0).sum(0).to(total.device)
    count[row] = finite.sum(0).double().to(count.device)
    return total, count
