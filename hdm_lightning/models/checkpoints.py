"""Classifier checkpoints of ``train_classifier.py``: writing them, and rebuilding a :class:`Classifier` from one.

A checkpoint carries its backbone name, class names and preprocessing, so the explanation sees the images exactly
as the model was trained on them. Lightning ``ModelCheckpoint`` ``.ckpt`` files whose hyper-parameters name the same
fields are read too. Files are read with ``torch.load(..., weights_only=True)`` only.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hdm_lightning.models.backbones import build_backbone
from hdm_lightning.models.classifier import Classifier
from hdm_lightning.models.preprocess import Preprocess
from hdm_lightning.models.prototype import PROTOTYPE_HEAD, build_prototype_net
from hdm_lightning.models.safe_load import load_state_strict, safe_torch_load

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "load_classifier_checkpoint", "save_classifier_checkpoint"]

CHECKPOINT_FORMAT = "hdm_lightning.classifier"
"""Value of the ``"format"`` key of a checkpoint written by :func:`save_classifier_checkpoint`."""
CHECKPOINT_VERSION = 1
"""Checkpoint layout version written by :func:`save_classifier_checkpoint`; newer versions are refused."""


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
    head: dict | None = None,
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
        head: a head other than the backbone's own, as plain data: ``{"kind": "prototype", "prototypes_per_class",
            "prototype_shape"}`` for a :class:`~hdm_lightning.models.prototype.PrototypeNet`.

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
    _check_plain(head, "head")
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
    if head is not None:
        payload["head"] = dict(head)
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


def _build(backbone: str, num_classes: int, head: Any) -> nn.Module:
    """The network of a checkpoint: the backbone, or a prototype network on its trunk (``head.kind: prototype``)."""
    if head is None:
        return build_backbone(backbone, num_classes)
    if not isinstance(head, Mapping) or head.get("kind") != PROTOTYPE_HEAD:
        raise ValueError(f"unknown head {head!r} (this install knows {{'kind': {PROTOTYPE_HEAD!r}}})")
    return build_prototype_net(backbone, num_classes, head)


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
    fields, kind = _read_fields(safe_torch_load(path, "classifier checkpoint"), path)
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
        model = _build(backbone, num_classes, fields.get("head"))
    except ValueError as e:
        raise ValueError(
            f"classifier checkpoint {str(path)!r} names a backbone this install cannot build: {e}"
        ) from None
    state = fields["state_dict"]
    prefix = ""
    if kind == "lightning":
        state, prefix = _strip_prefix(state, model)
    fix = f"it was not trained as {backbone!r} with {num_classes} classes, or the file is damaged"
    load_state_strict(
        model, state, f"the state dict in {str(path)!r}" + (f" (prefix {prefix!r})" if prefix else ""), fix
    )
    return Classifier(
        model=model.eval(),
        preprocess=preprocess,
        num_classes=num_classes,
        class_names=class_names,
        name=backbone,
        source=f"checkpoint {path.resolve()}",
    )
