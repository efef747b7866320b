"""RISE: Randomized Input Sampling for Explanation, batched, in plain torch.

Petsiuk, Das & Saenko, "RISE: Randomized Input Sampling for Explanation of Black-box Models", BMVC 2018,
arXiv 1806.07421 (§3.2 mask generation; the authors' reference code RISE).

Mask generation (paper §3.2): ``N`` binary grids of ``s x s`` cells, each cell 1 with probability ``p``; each grid is
upsampled bilinearly to ``(s + 1) * cell`` (``cell = ceil(H / s)``, likewise for W) and cropped to ``H x W`` at a
random shift in ``[0, cell)``, so the masks are smooth and not aligned to a fixed grid. Grids and shifts come from a
seeded CPU ``torch.Generator`` (param ``seed``): the same masks for every image of a call (and of every call),
whatever the device. The reference code resizes with skimage (order 1, ``mode="reflect"``); we use
``F.interpolate(mode="bilinear", align_corners=False)``, which differs only in the outermost half cell.

Saliency (paper Eq. 6): ``S_c = sum_i P_c(M_i * X) M_i / (N * p)`` with ``P_c`` the softmax probability of the
target class and ``M_i * X`` in the normalised space (0 = the mean colour), as the reference code multiplies the
preprocessed tensor. Cost: ``N * B`` forwards in chunks of ``batch_size`` masked images, no backward.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hdm_lightning.contract import SaliencyMethod, register_method

__all__ = ["RISE", "rise_masks"]


def _grids_and_shifts(n: int, s: int, p: float, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(int(seed))
    grids = (torch.rand(n, 1, s, s, generator=g) < p).float()
    unit = torch.rand(n, 2, generator=g)  # shifts as fractions of a cell, scaled per image size below
    return grids, unit


def _render(grids: Tensor, unit: Tensor, s: int, height: int, width: int) -> Tensor:
    """Upsample ``grids [k, 1, s, s]`` to ``(s+1) * cell`` and crop ``height x width`` at the shifts: ``[k, H, W]``."""
    ch, cw = math.ceil(height / s), math.ceil(width / s)
    up = F.interpolate(grids, size=((s + 1) * ch, (s + 1) * cw), mode="bilinear", align_corners=False)
    dy = (unit[:, 0] * ch).long().clamp_max(ch - 1).tolist()
    dx = (unit[:, 1] * cw).long().clamp_max(cw - 1).tolist()
    return torch.stack([up[i, 0, y : y + height, x : x + width] for i, (y, x) in enumerate(zip(dy, dx, strict=True))])


def rise_masks(n_masks: int, height: int, width: int, s: int = 7, p: float = 0.5, seed: int = 0) -> Tensor:
    """The ``[n_masks, H, W]`` RISE masks that :class:`RISE` with the same arguments uses (float32, CPU)."""
    grids, unit = _grids_and_shifts(n_masks, s, p, seed)
    return _render(grids, unit, s, height, width)


@register_method("rise")
class RISE(SaliencyMethod):
    """RISE saliency from ``n_masks`` random smooth masks; ``n_masks * B`` forwards, no backward.

    Args:
        model: the classifier.
        n_masks: number of masks ``N`` (paper: 4000 for ResNet-50, 8000 for VGG16).
        s: grid cells per side (paper: 7).
        p: probability that a cell is kept (paper: 0.5).
        batch_size: masked images per forward.
        seed: seed of the mask generator.
    """

    def __init__(
        self, model: nn.Module, n_masks: int = 4000, s: int = 7, p: float = 0.5, batch_size: int = 64, seed: int = 0
    ) -> None:
        super().__init__(model)
        for key, value in (("n_masks", n_masks), ("s", s), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        if not 0.0 < float(p) < 1.0:
            raise ValueError(f"p (the probability of keeping a cell) must be in (0, 1), got {p!r}")
        self.n_masks, self.s, self.p, self.batch_size, self.seed = n_masks, s, float(p), batch_size, int(seed)

    def attribute(self, images: Tensor, target: Tensor) -> Tensor:  # noqa: D102
        b, _, h, w = images.shape
        if self.s > min(h, w):
            raise ValueError(f"RISE grid s={self.s} is larger than the image ({h}x{w}): use s <= {min(h, w)}")
        grids, unit = _grids_and_shifts(self.n_masks, self.s, self.p, self.seed)
        sal = torch.zeros(b, h, w, device=images.device, dtype=images.dtype)
        with torch.no_grad():
            for i0 in range(0, self.n_masks, self.batch_size):
                i1 = min(i0 + self.batch_size, self.n_masks)
                masks = _render(grids[i0:i1].to(images.device), unit[i0:i1], self.s, h, w).to(images.dtype)
                for j in range(b):
                    logits = self.model(masks[:, None] * images[j : j + 1])  # [k, classes]
                    probs = logits.float().softmax(1)[:, target[j]].to(images.dtype)  # P_c(M_i * X)
                    sal[j] += torch.einsum("k,khw->hw", probs, masks)
        return (sal / (self.n_masks * self.p))[:, None]
