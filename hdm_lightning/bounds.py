"""Upper bounds of the image sides a config may ask for, checked when the config is loaded.

A side of 100000 pixels is a typo, not a request: it would end in a MemoryError (or a numpy request for TiB) in the
middle of a run. The classifiers this package explains see 224 to 600 pixels, and a mask method holds one masked copy
of each image per mask vector at that side, so the bounds leave room for large inputs and stop at what fits memory.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

__all__ = ["MAX_IMAGE_SIDE", "MAX_SYNTHETIC_SIZE", "check_sizes"]

MAX_IMAGE_SIDE = 4096  # classifier preprocessing: size (crop side) and resize (short side), in pixels
MAX_SYNTHETIC_SIZE = 1024  # data.synthetic.size: each image is drawn in float64 at this side

WHY_IMAGE = (
    "the classifier sees images at this side and a mask method holds one masked copy per mask vector at it; "
    "ImageNet classifiers use 224 to 600"
)
WHY_SYNTHETIC = "each image is drawn in memory at this side; the shipped configs use 64"

_BOUNDS = {
    "classifier.preprocess.size": (MAX_IMAGE_SIDE, WHY_IMAGE),
    "classifier.preprocess.resize": (MAX_IMAGE_SIDE, WHY_IMAGE),
    "preprocess.size": (MAX_IMAGE_SIDE, WHY_IMAGE),
    "preprocess.resize": (MAX_IMAGE_SIDE, WHY_IMAGE),
    "data.synthetic.size": (MAX_SYNTHETIC_SIZE, WHY_SYNTHETIC),
}


def check_sizes(cfg: DictConfig) -> None:
    """Refuse an image side above its bound (the message says the bound and why).

    Raises:
        ValueError: naming the key, the bound and the reason.
    """
    for key, (bound, why) in _BOUNDS.items():
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, int) and value > bound:
            raise ValueError(f"{key}={value} is above the bound of {bound} pixels: {why}. Set it to {bound} or less")
