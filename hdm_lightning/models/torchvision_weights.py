"""torchvision classifiers with their published ImageNet weights, read from the torch hub cache (never downloaded)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from hdm_lightning.models.backbones import BUILTIN_BACKBONES, TIMM_PREFIX, check_backbone_name, interpolation_name
from hdm_lightning.models.classifier import BUNDLED_NAME, Classifier
from hdm_lightning.models.preprocess import Preprocess
from hdm_lightning.models.safe_load import load_state_strict, safe_torch_load

__all__ = ["load_torchvision_weights", "torchvision_weights_preprocess"]

# Densenet's published files use the old 'norm.1' key names; torchvision renames them on load (densenet.py).
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _torchvision_weight_kwargs(name: str, w: Any) -> dict[str, Any]:
    """The constructor arguments torchvision's builder sets when it is given ``w`` (see each model's builder)."""
    kwargs: dict[str, Any] = {"num_classes": len(w.meta["categories"])}
    if name in ("inception_v3", "googlenet"):
        # The published weights expect the input re-normalised inside the model, and carry the auxiliary heads.
        kwargs.update(transform_input=True, aux_logits=True, init_weights=False)
    elif name.startswith("vit_"):
        kwargs["image_size"] = w.meta["min_size"][0]  # position embeddings are sized for this resolution
    elif name == "maxvit_t":
        kwargs["input_size"] = w.meta["min_size"]
    return kwargs


def _resolve_weights(name: str, weights: str) -> Any:
    """The torchvision weight enum member for ``weights`` (``"X_Weights.Y"``, ``"Y"`` or ``"DEFAULT"``) of ``name``."""
    import torchvision

    enum = torchvision.models.get_model_weights(name)
    valid = list(enum)
    w = None
    if "." in weights:
        try:
            w = torchvision.models.get_weight(weights)  # "ResNet50_Weights.IMAGENET1K_V2" (or ".DEFAULT")
        except (ValueError, KeyError, AttributeError):
            w = None
    else:
        w = getattr(enum, weights, None) if weights.isidentifier() else None  # "IMAGENET1K_V2" or "DEFAULT"
    if w is None or w not in valid:
        names = [f"{enum.__name__}.{v.name}" for v in valid] + [f"{enum.__name__}.DEFAULT"]
        raise ValueError(f"{weights!r} is not a weight enum of torchvision model {name!r}: valid ones are {names}")
    return w


def _weights_preprocess(w: Any) -> Preprocess:
    t = w.transforms()
    return Preprocess(
        size=int(t.crop_size[0]),
        resize=int(t.resize_size[0]),
        mean=tuple(t.mean),
        std=tuple(t.std),
        interpolation=interpolation_name(t.interpolation),
    )


def torchvision_weights_preprocess(name: str, weights: str) -> Preprocess:
    """The evaluation preprocessing of a torchvision weight enum (no file needed), e.g. for training data."""
    check_backbone_name(name)
    return _weights_preprocess(_resolve_weights(name, weights))


def load_torchvision_weights(name: str, weights: str) -> Classifier:
    """A torchvision classifier with its published ImageNet weights, read from the torch hub cache; never downloads.

    The file is the one torchvision would have downloaded: ``<torch.hub.get_dir()>/checkpoints/<file of the
    enum's url>``. It is read with ``torch.load(..., weights_only=True)`` and loaded with ``strict=True``. The
    preprocessing and class names come from the enum (``w.transforms()``, ``w.meta["categories"]``).

    Args:
        name: a torchvision classification model (``resnet50``).
        weights: its weight enum, ``"ResNet50_Weights.IMAGENET1K_V2"`` (or just ``"IMAGENET1K_V2"``), or
            ``"DEFAULT"``.

    Raises:
        ValueError: an unknown model (with close matches), a weight enum of another model (the valid ones listed),
            a missing file (which file to put where), or a file that does not fit.
    """
    import torchvision

    if name.startswith(TIMM_PREFIX) or name == BUNDLED_NAME or name in BUILTIN_BACKBONES:
        raise ValueError(
            f"weights= names torchvision weight enums; {name!r} is not a torchvision model: give a checkpoint= "
            "trained with train_classifier.py instead"
        )
    check_backbone_name(name)
    w = _resolve_weights(name, weights)
    enum_name = f"{type(w).__name__}.{w.name}"
    hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
    filename = Path(urlparse(w.url).path).name
    file = hub_dir / filename
    if not file.is_file():
        raise ValueError(
            f"the weights {enum_name} are not in the torch hub cache and nothing here downloads: put {filename} "
            f"(from {w.url}) into {hub_dir}, or set TORCH_HOME to a folder whose hub/checkpoints/ holds it"
        )
    state = safe_torch_load(file, f"torchvision weights {enum_name}")
    if not isinstance(state, Mapping):
        raise ValueError(f"{str(file)!r} holds a {type(state).__name__}, not a state dict: replace it with {w.url}")
    if name.startswith("densenet"):
        state = {(m.group(1) + m.group(2) if (m := _DENSENET_OLD_KEY.match(k)) else k): v for k, v in state.items()}
    kwargs = _torchvision_weight_kwargs(name, w)
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    load_state_strict(model, state, f"{str(file)!r}", f"replace it with the file from {w.url}")
    if kwargs.get("aux_logits"):
        # As torchvision's builders do when the caller did not ask for them: the auxiliary heads only train.
        model.aux_logits = False
        for aux in ("AuxLogits", "aux1", "aux2"):
            if hasattr(model, aux):
                setattr(model, aux, None)
    preprocess = _weights_preprocess(w)
    categories = [str(c) for c in w.meta["categories"]]
    return Classifier(
        model=model.eval(),
        preprocess=preprocess,
        num_classes=len(categories),
        class_names=categories,
        name=name,
        source=f"torchvision {enum_name} from {file}",
    )
