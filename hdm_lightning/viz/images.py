"""JET colormap overlays and stage strips in plain torch; PNGs written atomically with Pillow.

The JET colormap is the standard piecewise-linear one (blue -> cyan -> yellow -> red), written out
here in three lines rather than pulling in matplotlib for one colormap.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from hdm_lightning.io import atomic_path


def jet(m: Tensor) -> Tensor:
    """Map values in [0, 1] (``[..., H, W]``) to JET RGB colours ``[..., 3, H, W]`` in [0, 1]."""
    x = m.clamp(0, 1).unsqueeze(-3)
    return torch.cat([(1.5 - (4 * x - c).abs()).clamp(0, 1) for c in (3.0, 2.0, 1.0)], dim=-3)


def overlay(image: Tensor, saliency: Tensor, alpha: float = 0.5) -> Tensor:
    """``alpha * image + (1 - alpha) * jet(saliency)`` for an RGB image ``[3, H, W]`` in [0, 1]."""
    heat = jet(saliency.reshape(saliency.shape[-2:]))
    return (alpha * image.clamp(0, 1) + (1 - alpha) * heat).clamp(0, 1)


def stage_strip(image: Tensor, maps: list[Tensor], gap: int = 4) -> Tensor:
    """HDM paper Fig. 5: the input, then one overlay per map (each stage, then the mix), side by side."""
    tiles = [image.clamp(0, 1)] + [overlay(image, m) for m in maps]
    h = image.shape[-2]
    spacer = torch.ones(3, h, gap, dtype=image.dtype, device=image.device)
    parts = []
    for i, t in enumerate(tiles):
        parts += [t] if i == 0 else [spacer, t]
    return torch.cat(parts, dim=-1)


def save_png(rgb: Tensor, path: str | Path) -> Path:
    """Write ``[3, H, W]`` in [0, 1] (or ``[H, W]`` grey) as a PNG: temporary name, then rename."""
    path = Path(path)
    arr = (rgb.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    arr = arr.permute(1, 2, 0) if arr.dim() == 3 else arr
    with atomic_path(path) as tmp:
        Image.fromarray(arr.numpy()).save(tmp, format="PNG")
    return path
