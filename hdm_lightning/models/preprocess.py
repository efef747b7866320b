"""Evaluation preprocessing that travels with a classifier: size, resize, interpolation, mean and std.

The same geometry (resize the short side, centre crop) is applied to ground-truth masks with nearest
interpolation, so a mask stays aligned with the pixels the classifier sees.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from hdm_lightning.bounds import MAX_IMAGE_SIDE, WHY_IMAGE

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "INTERPOLATIONS", "Preprocess"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}


@dataclass(frozen=True)
class Preprocess:
    """PIL image -> normalised ``[3, size, size]`` tensor: resize short side, centre crop, scale, normalise.

    Defaults are the bundled EfficientNet-Lite0's (resize 256 bicubic, crop 224, mean = std = 0.5: the
    Lite models were trained on inputs in [-1, 1]). The papers' ResNet-50 uses bilinear resizing and
    the ImageNet mean and std (:data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`).

    Attributes:
        size: side of the square centre crop fed to the network.
        resize: short side after resizing, before the crop.
        mean: per-channel mean subtracted from the [0, 1] pixels.
        std: per-channel divisor.
        interpolation: ``"bicubic"`` or ``"bilinear"`` (antialiased) for images; masks use nearest.
    """

    size: int = 224
    resize: int = 256
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {self.interpolation!r}")
        if not 1 <= int(self.size) <= int(self.resize):
            raise ValueError(f"need 1 <= size <= resize, got size={self.size!r}, resize={self.resize!r}")
        if int(self.resize) > MAX_IMAGE_SIDE:
            raise ValueError(f"size and resize may be at most {MAX_IMAGE_SIDE} pixels, got {self.resize}: {WHY_IMAGE}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need three values (std > 0), got {self.mean!r} / {self.std!r}")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    def __call__(self, image: Image.Image) -> Tensor:
        """Preprocess one image (any PIL mode is converted to RGB): float32 ``[3, size, size]``."""
        image = image.convert("RGB")
        image = TF.resize(image, [self.resize], interpolation=INTERPOLATIONS[self.interpolation], antialias=True)
        image = TF.center_crop(image, [self.size, self.size])
        x = TF.to_dtype(TF.to_image(image), torch.float32, scale=True)
        return TF.normalize(x, list(self.mean), list(self.std))

    def mask(self, mask: Image.Image | Tensor) -> Tensor:
        """The same resize and crop for a ground-truth mask (nearest): bool ``[size, size]``, True = foreground.

        Args:
            mask: a PIL image (any mode; nonzero pixels are foreground) or a ``[H, W]`` tensor, at the
                original image's resolution.
        """
        t = TF.to_image(mask)[0] if isinstance(mask, Image.Image) else torch.as_tensor(mask)
        t = (t != 0).to(torch.uint8)[None]
        t = TF.resize(t, [self.resize], interpolation=InterpolationMode.NEAREST_EXACT, antialias=False)
        return TF.center_crop(t, [self.size, self.size])[0].bool()

    def denormalize(self, t: Tensor) -> Tensor:
        """Undo the normalisation for display: ``t * std + mean`` in [0, 1], ``[3, H, W]`` or ``[B, 3, H, W]``."""
        mean = torch.as_tensor(self.mean, dtype=t.dtype, device=t.device).view(3, 1, 1)
        std = torch.as_tensor(self.std, dtype=t.dtype, device=t.device).view(3, 1, 1)
        return (t * std + mean).clamp(0.0, 1.0)

    def to_dict(self) -> dict:
        """Plain data (lists, numbers, strings) for checkpoints and configs."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        """Inverse of :meth:`to_dict`; unknown keys are an error that names them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown preprocessing keys {unknown}; known: {sorted(known)}")
        return cls(**{k: (tuple(v) if k in ("mean", "std") else v) for k, v in d.items()})
