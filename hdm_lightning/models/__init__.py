"""Classifiers: backbones (torchvision, timm, small_cnn), checkpoints, torchvision weights, Lite0, preprocessing."""

from hdm_lightning.models.backbones import build_backbone, default_preprocess
from hdm_lightning.models.checkpoints import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    load_classifier_checkpoint,
    save_classifier_checkpoint,
)
from hdm_lightning.models.classifier import BUNDLED_NAME, Classifier, check_num_classes
from hdm_lightning.models.from_config import load_classifier, override_preprocess
from hdm_lightning.models.lite0 import IMAGENET_CLASSES, load_efficientnet_lite0, remap_lite0_keys
from hdm_lightning.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from hdm_lightning.models.small_cnn import SMALL_CNN_NAME, SmallCNN
from hdm_lightning.models.torchvision_weights import load_torchvision_weights, torchvision_weights_preprocess

__all__ = [
    "BUNDLED_NAME",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "IMAGENET_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SMALL_CNN_NAME",
    "Classifier",
    "Preprocess",
    "SmallCNN",
    "build_backbone",
    "check_num_classes",
    "default_preprocess",
    "load_classifier",
    "load_classifier_checkpoint",
    "load_efficientnet_lite0",
    "load_torchvision_weights",
    "override_preprocess",
    "remap_lite0_keys",
    "save_classifier_checkpoint",
    "torchvision_weights_preprocess",
]
