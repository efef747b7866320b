"""Classifiers: backbones, checkpoints, cached torchvision weights, the bundled EfficientNet-Lite0, preprocessing."""

from hdm_lightning.models.classifiers import (
    BUNDLED_NAME,
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    Classifier,
    build_backbone,
    check_num_classes,
    default_preprocess,
    load_classifier,
    load_classifier_checkpoint,
    load_torchvision_weights,
    save_classifier_checkpoint,
)
from hdm_lightning.models.lite0 import IMAGENET_CLASSES, load_efficientnet_lite0, remap_lite0_keys
from hdm_lightning.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess

__all__ = [
    "BUNDLED_NAME",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "IMAGENET_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Classifier",
    "Preprocess",
    "build_backbone",
    "check_num_classes",
    "default_preprocess",
    "load_classifier",
    "load_classifier_checkpoint",
    "load_efficientnet_lite0",
    "load_torchvision_weights",
    "remap_lite0_keys",
    "save_classifier_checkpoint",
]
