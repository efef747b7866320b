"""Pretrained classifiers that ship with installed packages (no download)."""

from hdm_lightning.models.lite0 import IMAGENET_CLASSES, Preprocess, load_efficientnet_lite0, remap_lite0_keys

__all__ = ["IMAGENET_CLASSES", "Preprocess", "load_efficientnet_lite0", "remap_lite0_keys"]
