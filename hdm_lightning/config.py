"""Structured method configs (OmegaConf dataclasses) and their loading.

The dataclass defaults are the papers' CUB-200-2011 settings (SPEC.md); ``configs/methods/*.yaml``
hold the named presets. Unknown keys and wrongly typed values are rejected with the key's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


@dataclass
class ThresholdConfig:
    """Threshold ``gamma``: ``kind: quantile`` (per-image quantile in [0, 1]) or ``kind: value``."""

    kind: str = "quantile"
    value: float = 0.5


@dataclass
class ScheduleConfig:
    """A registered mask schedule by ``name``; ``params`` are its ``__init__`` arguments."""

    name: str = "dm"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class EarlyStopConfig:
    """Stop a (vector, image) row once its loss has not improved for ``patience`` steps.

    The MDM authors' code used patience 200 after at least 2000 steps. Rows stop independently,
    so batched training still equals training each vector alone.
    """

    enabled: bool = False
    min_steps: int = 2000
    patience: int = 200
    min_delta: float = 0.0


@dataclass
class EngineConfig:
    """How the fits run (not what they compute).

    ``max_rows`` caps the masked images per forward/backward (memory); ``None`` = all at once.
    ``precision`` is passed to the Lightning Trainer (``32-true``, ``bf16-mixed``, ``16-mixed``).
    ``channels_last`` converts the classifier (restored afterwards) and the masked batch.
    """

    precision: str = "32-true"
    channels_last: bool = False
    max_rows: int | None = None
    seed: int = 0
    progress_bar: bool = False
    log_every_n_steps: int = 50
    checkpoint_every_n_steps: int | None = None  # with a work folder: save the fit in flight every N steps
    checkpoint_every_n_seconds: float | None = 60.0  # ... and/or every this many seconds


@dataclass
class DMConfig:
    """Dynamic masks (papers/001 §3.2; SPEC 'DM')."""

    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig("dm"))
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)
    aux_reference: str = "original"  # 'original' (Eq. 8) or 'previous' (Alg. 1 line 19)
    upsample: str = "bilinear"  # g: 'bilinear' (align_corners=False) or 'nearest'
    tau: float = 0.5  # initial mask value
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)


@dataclass
class MixingConfig:
    """HDM's learned mixing (papers/001 Eq. 3-5): Adam on ``v`` (initialised to ones)."""

    epochs: int = 400
    lr: float = 0.1
    lam: float = 1e-4  # lambda, weight of L_R(M_h)


@dataclass
class HDMConfig(DMConfig):
    """Hierarchical dynamic masks: ``stages`` DM runs on progressively masked images, then mixing."""

    stages: int = 3  # S (paper: 3 on CUB, 1 on iChallenge-PM)
    mixing: MixingConfig = field(default_factory=MixingConfig)


@dataclass
class MDMConfig:
    """Multiple dynamic mask (papers/002)."""

    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig("mdm"))
    threshold: ThresholdConfig = field(default_factory=lambda: ThresholdConfig("value", 5.0))
    upsample: str = "bilinear"
    tau: float = 0.5
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)


METHOD_CONFIGS: dict[str, type] = {"dm": DMConfig, "hdm": HDMConfig, "mdm": MDMConfig}


def method_config(method: str, overrides: Any = None) -> DictConfig:
    """The structured config of ``method`` merged with ``overrides``.

    Args:
        method: ``"hdm"``, ``"dm"`` or ``"mdm"``.
        overrides: ``None``, a dict, a DictConfig, a dataclass instance, or a path to a YAML file
            (a preset in ``configs/methods/``). A YAML file may name its method with ``method:``.

    Raises:
        ValueError: an unknown key, a value of the wrong type, or a preset for another method.
    """
    if method not in METHOD_CONFIGS:
        raise KeyError(f"Unknown method {method!r}. Available: {sorted(METHOD_CONFIGS)}")
    base = OmegaConf.structured(METHOD_CONFIGS[method])
    if overrides is None:
        return base
    if isinstance(overrides, str | Path):
        path = Path(overrides)
        if not path.is_file():
            raise ValueError(f"method config file {str(path)!r} does not exist: give a path to a YAML preset")
        overrides = OmegaConf.load(path)
    elif not isinstance(overrides, DictConfig):
        overrides = OmegaConf.structured(overrides) if hasattr(overrides, "__dataclass_fields__") else overrides
        overrides = OmegaConf.create(overrides)
    # A plain (unstructured) copy, so a merged preset can be merged again and 'method' dropped.
    overrides = OmegaConf.create(OmegaConf.to_container(overrides))
    named = overrides.pop("method", None)
    if named is not None and named != method:
        raise ValueError(f"this config is for method {named!r}, not {method!r}: pass method={named!r}")
    try:
        return OmegaConf.merge(base, overrides)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise ValueError(f"bad {method} config key {key!r}: {e.msg if hasattr(e, 'msg') else e}") from None


def load_preset(path: str | Path) -> tuple[str, DictConfig]:
    """Load a method preset YAML (with a top-level ``method:``) into ``(method, config)``."""
    raw = OmegaConf.load(path)
    method = raw.get("method")
    if method is None:
        raise ValueError(f"preset {str(path)!r} has no 'method:' key (one of {sorted(METHOD_CONFIGS)})")
    return method, method_config(method, raw)


# ------------------------------------------------------------------------------------- explain runs


@dataclass
class DataConfig:
    """Which images to explain (``hdm_lightning.data``).

    ``kind``: ``photos`` (real photos shipped with scikit-image / scikit-learn), ``folder`` (an image
    folder: class sub-folders, or flat), ``cub`` (CUB-200-2011 official layout), ``pairs`` (image +
    mask pairs, iChallenge-PM style).
    """

    kind: str = "photos"
    root: str | None = None  # dataset folder (folder, cub, pairs)
    split: str = "test"  # cub: test | train | all (train_test_split.txt)
    photos: list[str] = field(default_factory=lambda: ["chelsea", "coffee", "rocket"])  # kind: photos
    images_dir: str = "images"  # pairs: sub-folder holding the images
    masks_dir: str = "masks"  # pairs: sub-folder holding the masks (same file stem)
    ids: list[str] | None = None  # explain only these item ids (in dataset order)
    limit: int | None = None  # explain only the first N items (after `ids`)


@dataclass
class PreprocessConfig:
    """Overrides of the classifier's own preprocessing (``None`` keeps the classifier's value)."""

    size: int | None = None
    resize: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    interpolation: str | None = None  # bicubic | bilinear


@dataclass
class ClassifierConfig:
    """The classifier to explain (``hdm_lightning.models``).

    ``name``: ``bundled_efficientnet_lite0`` (ImageNet-pretrained, ships with the package's
    dependencies), a torchvision model name (``resnet50``), or ``timm/<name>``. ``checkpoint``: a file
    written by ``train_classifier.py`` (it names its backbone, classes and preprocessing). ``weights``:
    a torchvision weight enum (``ResNet50_Weights.IMAGENET1K_V2``), used when its file is already in the
    torch hub cache. ``num_classes``: the head size for a randomly initialised model (neither
    checkpoint nor weights; smoke tests only).
    """

    name: str = "bundled_efficientnet_lite0"
    checkpoint: str | None = None
    weights: str | None = None
    num_classes: int | None = None
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
