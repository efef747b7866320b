"""Classifier backbones by name (built-in ``small_cnn``, torchvision, ``timm/<name>``) and their preprocessing.

:func:`build_backbone` builds a randomly initialised network (it never downloads); :func:`default_preprocess` gives
the evaluation preprocessing a backbone expects, from its own metadata. An unknown name is an error with close
matches. timm and torchvision are imported inside the functions that use them.
"""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from hdm_lightning.models.classifier import BUNDLED_NAME
from hdm_lightning.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS, Preprocess
from hdm_lightning.models.small_cnn import SMALL_CNN_NAME, SmallCNN, small_cnn_preprocess

__all__ = [
    "BUILTIN_BACKBONES",
    "TIMM_PREFIX",
    "build_backbone",
    "check_backbone_name",
    "default_preprocess",
    "interpolation_name",
]

TIMM_PREFIX = "timm/"
# Backbones defined in this package: name -> (constructor taking num_classes, its default preprocessing).
BUILTIN_BACKBONES = {SMALL_CNN_NAME: (SmallCNN, small_cnn_preprocess)}
_LIST_HINT = (
    f"built-in backbones: {sorted(BUILTIN_BACKBONES)}; full lists: torchvision.models.list_models() and "
    "timm.list_models() (use timm names as 'timm/<name>')"
)


def _torchvision_names() -> list[str]:
    import torchvision

    # module= restricts the list to classification models (no detection / segmentation / video / quantized).
    return torchvision.models.list_models(module=torchvision.models)


def _unknown_name_error(name: str, candidates: list[str], what: str, prefix: str = "") -> ValueError:
    close = [prefix + c for c in difflib.get_close_matches(name.lower(), candidates, n=5, cutoff=0.6)]
    hint = f"close matches: {close}" if close else "no close matches"
    return ValueError(f"unknown {what} {name!r} ({hint}); {_LIST_HINT}")


def _check_timm_name(arch: str) -> None:
    """Raise a ValueError with suggestions unless ``arch`` (without ``timm/``, optional ``.tag``) is a timm model."""
    import timm

    if not timm.is_model(arch):
        raise _unknown_name_error(arch, timm.list_models(), "timm model", prefix=TIMM_PREFIX)
    try:
        timm.get_pretrained_cfg(arch)  # is_model ignores the tag; this checks it
    except RuntimeError as e:
        raise ValueError(f"timm model {arch!r}: {e} Drop the '.tag' or pick one of timm.list_pretrained()") from None


def check_backbone_name(name: str) -> None:
    """Raise a ValueError with suggestions unless ``name`` is built in, a torchvision classifier or ``timm/<model>``."""
    if name in BUILTIN_BACKBONES:
        return
    if name.startswith(TIMM_PREFIX):
        _check_timm_name(name[len(TIMM_PREFIX) :])
        return
    tv = _torchvision_names()
    if name in tv:
        return
    import timm

    if timm.is_model(name):
        raise ValueError(f"{name!r} is not a torchvision model but a timm one: use 'timm/{name}'")
    candidates = sorted(BUILTIN_BACKBONES) + tv + [TIMM_PREFIX + n for n in timm.list_models()]
    raise _unknown_name_error(name, candidates, "backbone")


def build_backbone(name: str, num_classes: int) -> nn.Module:
    """A randomly initialised classifier backbone with a ``num_classes`` head; never downloads.

    Args:
        name: a built-in backbone (``small_cnn``: :class:`~hdm_lightning.models.small_cnn.SmallCNN`), a torchvision
            classification model (``resnet50``; see ``torchvision.models.list_models()``) or ``timm/<name>``
            (``timm/resnet10t``; see ``timm.list_models()``).
        num_classes: size of the classification head.

    Returns:
        The model in train mode (as its constructor leaves it), on the CPU.

    Raises:
        ValueError: an unknown name (with close matches) or a non-positive ``num_classes``.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if name == BUNDLED_NAME:
        raise ValueError(
            f"{BUNDLED_NAME!r} is a pretrained model, not a backbone to initialise: for its architecture with "
            "random weights use 'timm/tf_efficientnet_lite0'"
        )
    check_backbone_name(name)
    if name in BUILTIN_BACKBONES:
        return BUILTIN_BACKBONES[name][0](num_classes)
    if name.startswith(TIMM_PREFIX):
        import timm

        return timm.create_model(name[len(TIMM_PREFIX) :], pretrained=False, num_classes=num_classes)
    import torchvision

    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def interpolation_name(mode: Any) -> str:
    """Map a torchvision InterpolationMode or a timm string to a :class:`Preprocess` interpolation."""
    value = str(getattr(mode, "value", mode)).lower()
    return value if value in INTERPOLATIONS else "bilinear"  # e.g. timm's "bicubic"/"bilinear"/"random"/"nearest"


def default_preprocess(name: str) -> Preprocess:
    """The evaluation preprocessing a backbone expects, from its own metadata (no download).

    torchvision: ImageNet mean and std, resize 256, crop 224, bilinear (the classic ImageNet evaluation). timm: the
    model's ``pretrained_cfg`` (input size, ``crop_pct``: resize = round(size / crop_pct), mean, std,
    interpolation; anything but bicubic/bilinear becomes bilinear). :data:`BUNDLED_NAME`: :class:`Preprocess`'s
    defaults. ``small_cnn``: 64 px without a crop, bilinear, mean = std = 0.5.

    Raises:
        ValueError: an unknown name (with close matches).
    """
    if name == BUNDLED_NAME:
        return Preprocess()
    check_backbone_name(name)
    if name in BUILTIN_BACKBONES:
        return BUILTIN_BACKBONES[name][1]()
    if not name.startswith(TIMM_PREFIX):
        return Preprocess(size=224, resize=256, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear")
    import timm
    from timm.data import resolve_data_config

    cfg = timm.get_pretrained_cfg(name[len(TIMM_PREFIX) :])
    data = resolve_data_config(pretrained_cfg=cfg.to_dict() if cfg is not None else {})
    size = int(data["input_size"][-1])
    resize = max(size, round(size / float(data.get("crop_pct") or 1.0)))  # crop_pct > 1 would pad: we never pad
    mean, std = tuple(data["mean"]), tuple(data["std"])
    if len(mean) == 1:  # a grey-scale model's single value: our images are RGB
        mean, std = mean * 3, std * 3
    return Preprocess(
        size=size, resize=resize, mean=mean, std=std, interpolation=interpolation_name(data["interpolation"])
    )
