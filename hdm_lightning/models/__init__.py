"""Classifiers: the bundled pretrained EfficientNet-Lite0 and the preprocessing that travels with a model."""

from hdm_lightning.models.lite0 import IMAGENET_CLASSES, load_efficientnet_lite0, remap_lite0_keys
from hdm_lightning.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess

__all__ = [
    "IMAGENET_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Preprocess",
    "load_efficientnet_lite0",
    "remap_lite0_keys",
]
