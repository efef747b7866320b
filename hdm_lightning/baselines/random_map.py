"""The random map: i.i.d. uniform noise per pixel, the floor any method must beat.

Adebayo et al., "Sanity Checks for Saliency Maps" (NeurIPS 2018, arXiv 1810.03292) use random maps as the
reference point.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor, nn

from hdm_lightning.contract import SaliencyMethod, register_method

__all__ = ["RandomMap"]


@register_method("random")
class RandomMap(SaliencyMethod):
    """Uniform noise maps; no forward or backward pass.

    Each image's map is drawn from a generator seeded with ``seed`` and a digest of the image, so the map is a
    pure function of the image: the same whatever the batch, the call order or a resumed run (drawn on the CPU, so
    every device gets the same maps).

    Args:
        model: the classifier (unused).
        seed: seed of the noise generator.
    """

    def __init__(self, model: nn.Module, seed: int = 0) -> None:
        super().__init__(model)
        self.seed = int(seed)

    def attribute(self, images: Tensor, target: Tensor) -> Tensor:  # noqa: D102
        _, _, h, w = images.shape
        maps = []
        for x in images.detach().cpu().contiguous():
            digest = hashlib.sha256(x.view(torch.uint8).numpy().tobytes()).digest()
            gen = torch.Generator().manual_seed(self.seed ^ int.from_bytes(digest[:7], "little"))
            maps.append(torch.rand(1, h, w, generator=gen))
        return torch.stack(maps).to(images.device)
