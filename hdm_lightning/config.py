"""Structured method configs (OmegaConf dataclasses) and their loading.

The dataclass defaults are the papers' CUB-200-2011 settings (docs/methods.md, "Decisions on what the papers
leave open"); ``configs/methods/*.yaml`` hold the named presets. Unknown keys and wrongly typed values are
rejected with the key's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


@dataclass
class ThresholdConfig:
    """Threshold ``gamma``: ``kind: quantile`` (per-image quantile in [0, 1]) or ``kind: value``."""

    kind: str = "quantile"  # quantile (per-image quantile of the combined map) | value (an absolute level)
    value: float = 0.5  # the quantile in [0, 1] (0.5: the median) or the absolute level


@dataclass
class ScheduleConfig:
    """A registered mask schedule by ``name``; ``params`` are its ``__init__`` arguments."""

    name: str = "dm"  # a registered mask schedule: dm | mdm | one registered by an `imports:` module
    # the schedule's __init__ arguments (dm: sizes, factors, epochs, lr, eta, ...)
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class EarlyStopConfig:
    """Stop a (vector, image) row once its loss has not improved for ``patience`` steps.

    The MDM authors' code used patience 200 after at least 2000 steps. Rows stop independently,
    so batched training still equals training each vector alone.
    """

    enabled: bool = False  # stop each (vector, image) row on its own loss plateau
    min_steps: int = 2000  # never before this many steps
    patience: int = 200  # steps without an improvement larger than min_delta
    min_delta: float = 0.0  # smallest loss decrease that counts as an improvement


@dataclass
class EngineConfig:
    """How the fits run (not what they compute).

    ``max_rows`` caps the masked images per forward/backward (memory); ``None`` = all at once.
    ``precision`` is passed to the Lightning Trainer (``32-true``, ``bf16-mixed``, ``16-mixed``).
    ``channels_last`` converts the classifier (restored afterwards) and the masked batch.
    """

    precision: str = "32-true"  # Lightning precision of the fits: 32-true | bf16-mixed | 16-mixed | 64-true
    channels_last: bool = False  # channels_last memory format for the classifier (restored) and masked batch
    max_rows: int | None = None  # masked images per forward/backward (gradients accumulated); null: all at once
    seed: int = 0  # seed set before each explanation (reproducible maps)
    progress_bar: bool = False  # Lightning's progress bar inside each fit
    log_every_n_steps: int = 50  # loss logging interval of the fits
    checkpoint_every_n_steps: int | None = None  # with a work folder: save the fit in flight every N steps
    checkpoint_every_n_seconds: float | None = 60.0  # ... and/or every this many seconds


@dataclass
class MaskOptimConfig:
    """The mask optimiser (``hdm_lightning.explainers.optim``): the papers' Adam, or the stable dynamics.

    ``dynamics: paper`` is ``torch.optim.Adam`` at the schedule's constant ``lr``, last iterate (the papers'
    exact dynamics and the default; the other keys are ignored). ``dynamics: stable`` uses the keys below:
    maps that 1e-6 input noise, batch and process count leave as they are, but at 224x224 the masks hardly
    move and the maps score near a random map (docs/methods.md, "Stable maps"), so they are not the default.
    """

    dynamics: str = "paper"  # paper (Adam, constant lr, last iterate: the papers) | stable (the keys below)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam's beta1, beta2
    eps: float = 1e-8  # Adam's absolute eps
    eps_relative: float | None = 300.0  # eps += this x rms of sqrt(v_hat) over each vector; null: absolute eps only
    schedule: str = "cosine"  # learning-rate schedule within each fit: cosine (decay to 0) | constant
    warmup: float = 0.1  # fraction of each fit's steps with a linear learning-rate warm-up
    average_tail: float = 0.5  # result = mean of the iterates of this last fraction of steps (0: last iterate)


@dataclass
class DMConfig:
    """Dynamic masks (HDM paper, arXiv 2301.04970, §3.2)."""

    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig("dm"))
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)
    aux_reference: str = "original"  # 'original' (Eq. 8) or 'previous' (Alg. 1 line 19)
    upsample: str = "bilinear"  # g: 'bilinear' (align_corners=False) or 'nearest'
    tau: float = 0.5  # initial mask value
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    optim: MaskOptimConfig = field(default_factory=MaskOptimConfig)  # mask optimiser: the papers' | stable
    engine: EngineConfig = field(default_factory=EngineConfig)


@dataclass
class MixingConfig:
    """HDM's learned mixing (HDM paper, arXiv 2301.04970, Eq. 3-5): Adam on ``v`` (initialised to ones)."""

    epochs: int = 400  # optimiser steps of the mixing fit
    lr: float = 0.1  # Adam learning rate of v
    lam: float = 1e-4  # lambda, weight of L_R(M_h)


@dataclass
class HDMConfig(DMConfig):
    """Hierarchical dynamic masks: ``stages`` DM runs on progressively masked images, then mixing."""

    stages: int = 3  # S (paper: 3 on CUB, 1 on iChallenge-PM)
    mixing: MixingConfig = field(default_factory=MixingConfig)


@dataclass
class MDMConfig:
    """Multiple dynamic mask (MDM paper, arXiv 2207.08046)."""

    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig("mdm"))
    threshold: ThresholdConfig = field(default_factory=lambda: ThresholdConfig("value", 5.0))
    upsample: str = "bilinear"  # g: 'bilinear' (align_corners=False) or 'nearest'
    tau: float = 0.5  # initial mask value
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    # With dynamics: stable, MDM keeps eps_relative 30 (300 moves its masks even less in short fits).
    optim: MaskOptimConfig = field(default_factory=lambda: MaskOptimConfig(eps_relative=30.0))
    engine: EngineConfig = field(default_factory=EngineConfig)


METHOD_CONFIGS: dict[str, type] = {}
"""Name -> structured config of the methods configured by one (DM, HDM, MDM): filled when such a method is
registered (:func:`hdm_lightning.contract.register_method`), so the method class is the one place that names it."""
_CONFIG_CHECKS: dict[str, Callable[[DictConfig], object]] = {}


def register_method_config(name: str, schema: type, check: Callable[[DictConfig], object]) -> None:
    """Make ``schema`` the ``explainer:`` settings of method ``name``; ``check(settings)`` validates merged ones.

    Called by :func:`hdm_lightning.contract.register_method` for a method class with a ``config_class``.
    """
    METHOD_CONFIGS[name] = schema
    _CONFIG_CHECKS[name] = check


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
class SyntheticConfig:
    """The synthetic shapes dataset (``data.kind: synthetic``): ground-truth masks by construction."""

    num_images: int = 512  # images in the split
    size: int = 64  # image side in pixels
    seed: int = 0  # the dataset is a pure function of (seed, split, index)
    cache_dir: str | None = None  # optional folder caching the generated images as PNG


@dataclass
class DataConfig:
    """Which images to explain (``hdm_lightning.data``).

    ``kind``: ``photos`` (real photos shipped with scikit-image / scikit-learn), ``folder`` (an image
    folder: class sub-folders, or flat), ``cub`` (CUB-200-2011 official layout), ``pairs`` (image +
    mask pairs, iChallenge-PM style), ``synthetic`` (generated shapes with ground-truth masks).
    """

    kind: str = "photos"  # photos | folder | cub | pairs | synthetic
    root: str | None = None  # dataset folder (folder, cub, pairs)
    split: str = "test"  # cub: test | train | all (train_test_split.txt); synthetic: train | val | test
    # kind photos: shipped photos (chelsea, coffee, rocket, motorcycle, camera, astronaut, china, flower)
    photos: list[str] = field(default_factory=lambda: ["chelsea", "coffee", "rocket"])
    images_dir: str = "images"  # pairs: sub-folder holding the images
    masks_dir: str = "masks"  # pairs: sub-folder holding the masks (same file stem)
    masks_invert: bool = False  # pairs: true when the masks draw the foreground black on white
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)  # kind: synthetic
    ids: list[str] | None = None  # explain only these item ids (in dataset order)
    limit: int | None = None  # explain only the first N items (after `ids`)


@dataclass
class PreprocessConfig:
    """Overrides of the classifier's own preprocessing (``None`` keeps the classifier's value)."""

    size: int | None = None  # centre-crop side in pixels
    resize: int | None = None  # short side before the crop
    mean: list[float] | None = None  # per-channel mean of the normalisation
    std: list[float] | None = None  # per-channel std of the normalisation
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

    # bundled_efficientnet_lite0 | a torchvision name (resnet50) | timm/<name> | small_cnn
    name: str = "bundled_efficientnet_lite0"
    # a classifier file written by train_classifier.py (names backbone, classes, preprocessing)
    checkpoint: str | None = None
    # torchvision weight enum (ResNet50_Weights.IMAGENET1K_V2), read from the torch hub cache
    weights: str | None = None
    num_classes: int | None = None  # head size of a randomly initialised model (no checkpoint, no weights: smoke tests)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)


@dataclass
class OutputConfig:
    """Where results go and what is written per image."""

    dir: str = "outputs/explain"  # the run folder: maps/, overlays/, binary/, stages/, records/, manifest.csv
    resume: bool = True  # rerun = continue; false = move an existing run to <dir>/previous-<time>/ first
    pictures: bool = True  # PNG overlay, binary mask and HDM stage strip per image
    stage_maps: bool = True  # keep each DM/MDM stage's map and masked image in the .pt file


@dataclass
class WandbConfig:
    """Weights & Biases run (Lightning's WandbLogger): one run per invocation."""

    mode: str = "offline"  # offline (sync later with `wandb sync`) | online | disabled
    project: str = "hdm_lightning"  # W&B project
    name: str | None = None  # run name; default: W&B's
    dir: str | None = None  # where W&B writes its files; default: the run folder
    tags: list[str] = field(default_factory=list)  # W&B run tags
    max_images: int = 64  # overlays and stage strips sent to W&B over the run (they are all on disk)


@dataclass
class MethodEntry:
    """One saliency method of a comparison: a registered name (``hdm_lightning.baselines.METHODS``) + params.

    ``hdm``, ``dm`` and ``mdm`` entries without ``params.config`` use the run's ``explainer`` settings when
    they name the run's ``method``, else that method's defaults.
    """

    name: str = "gradcam"  # a registered method: hdm, dm, mdm, gradcam, rise, ... (see docs/methods.md)
    label: str | None = None  # its name in tables and folders (default: name); one method may appear twice
    params: dict[str, Any] = field(default_factory=dict)  # the method's __init__ arguments


@dataclass
class EvaluationConfig:
    """The papers' metrics (``hdm_lightning.metrics``) over every compared method's maps."""

    # registered families: drop_increase | deletion_insertion | proportion | segmentation | stability (maps vs the
    # method's own reruns) | a plugin's (imports:)
    metrics: list[str] = field(default_factory=list)
    batch_size: int = 64  # perturbed images per forward pass
    steps: int = 100  # deletion/insertion: 1 % of the pixels per step
    insertion_canvas: str = "blur"  # blur | zero (black)
    deletion_value: str = "black"  # black (0 in raw pixels) | blur
    drop_baseline: str = "zero"  # Average Drop/Increase: zero (mean colour) | mean | blur | black
    drop_percents: list[int] = field(default_factory=lambda: [70, 80, 90])  # muted share of the pixels
    segmentation_percents: list[int] = field(default_factory=lambda: list(range(70, 100)))  # binarising percentiles
    gallery: int = 16  # images shown side by side with every method's map (HDM paper Fig. 4)
    stability_noise: list[float] = field(default_factory=lambda: [1e-6, 1e-3])  # stability: reruns on x + eps*N(0,1)
    stability_batch: bool = True  # stability: rerun each image in another batch (alone, or with 2 flipped copies)
    stability_threads: bool = False  # stability: rerun with torch.set_num_threads(1) (CPU runs on several threads)
    stability_top_k: list[float] = field(default_factory=lambda: [0.05, 0.2])  # stability: IoU of the top-k fractions
    # per family, keyword arguments of its metric class over those the keys above give (a plugin family's settings)
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProcessesConfig:
    """How many processes share an explanation run (``trainer.*`` of ``explain.py``).

    Images are sharded: each process explains whole batches of its own, on one device, with its own
    single-device Lightning fits (mask gradients are never averaged across processes).
    """

    devices: int = 1  # processes per node: one per GPU (device=cuda/auto), or CPU processes (device=cpu)
    num_nodes: int = 1  # nodes (torchrun --nnodes, SLURM --nodes)
    timeout_hours: float = 24.0  # longest wait at the end of a run for the slowest process


@dataclass
class ExplainRunConfig:
    """``python explain.py --config <yaml> [key=value ...]``: one explanation run over a dataset."""

    imports: list[str] = field(default_factory=list)  # modules imported first (user schedules); runs their code
    method: str = "hdm"  # a registered explainer: hdm | dm | mdm
    preset: str | None = None  # method settings YAML (configs/methods/), relative to this config file
    explainer: dict[str, Any] = field(default_factory=dict)  # overrides of the method settings
    target: str = "predicted"  # explain the predicted class, or the dataset's 'label'
    batch_size: int = 4  # images explained together (each becomes n_vectors rows of one batch)
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:1 (cuda:<i> only with one process)
    trainer: ProcessesConfig = field(default_factory=ProcessesConfig)  # several processes (DDP, torchrun, SLURM)
    progress: bool = True  # progress bar over images (and the stage in flight)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    data: DataConfig = field(default_factory=DataConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    methods: list[MethodEntry] = field(default_factory=list)  # compare these on the same images (empty: `method`)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)


class ConfigError(ValueError):
    """A config file, key, value or override that cannot be used; the message names it and the fix."""


TARGETS = ("predicted", "label")
WANDB_MODES = ("offline", "online", "disabled")


def _config_error(e: OmegaConfBaseException, where: str) -> ConfigError:
    key = getattr(e, "full_key", None) or getattr(e, "key", None)
    msg = str(e).splitlines()[0]
    if key:
        return ConfigError(f"{where}: bad config key {key!r}: {msg}")
    return ConfigError(f"{where}: {msg}")


def parse_overrides(overrides: list[str]) -> DictConfig:
    """``["a.b=1", "c=[x,y]"]`` -> a DictConfig; a malformed item is a :class:`ConfigError` that shows the form."""
    for item in overrides:
        key = item.split("=", 1)[0]
        if "=" not in item or not key or key != key.strip() or " " in key:
            raise ConfigError(
                f"malformed override {item!r}: write key=value with a dotted key, e.g. batch_size=2 or "
                "data.root=/path/to/CUB_200_2011"
            )
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as e:
        raise ConfigError(f"malformed override in {list(overrides)}: {str(e).splitlines()[0]}") from None
    except Exception as e:  # the YAML value parser
        raise ConfigError(f"malformed override value in {list(overrides)}: {e}") from None


def run_imports(modules: list[str]) -> None:
    """Import the config's ``imports:`` (user plugins registering schedules). This runs their code."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(
                f"cannot import {name!r} listed in imports: {e}. Put the module on PYTHONPATH (or install it) and "
                "check the spelling"
            ) from None


def load_run_config(path: str | Path | None, overrides: list[str] | None = None) -> tuple[DictConfig, DictConfig]:
    """Load an explain-run config: schema <- YAML <- ``key=value`` overrides; imports; method settings.

    Args:
        path: the YAML file (``None``: the schema defaults, i.e. the demo).
        overrides: command-line ``key=value`` items (OmegaConf dotlist syntax).

    Returns:
        ``(run, method_settings)``: the run config (``explainer`` resolved to the full method settings,
        ``preset`` made absolute) and the method settings as a structured config.

    Raises:
        ConfigError: missing or unparsable file, unknown key, wrong type, malformed override, unknown
            method, bad value, or an import that fails.
    """
    cfg = _load_layers(ExplainRunConfig, path, overrides)
    folder = Path(path).resolve().parent if path is not None else Path.cwd()
    run_imports(list(cfg.imports))  # before the method/schedule names are looked up
    if cfg.method not in METHOD_CONFIGS:
        raise ConfigError(f"unknown method {cfg.method!r}: use one of {sorted(METHOD_CONFIGS)}")
    _choice(cfg.target, TARGETS, "target")
    _choice(cfg.wandb.mode, WANDB_MODES, "wandb.mode")
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {cfg.batch_size!r}")
    if cfg.trainer.devices < 1 or cfg.trainer.num_nodes < 1 or cfg.trainer.timeout_hours <= 0:
        raise ConfigError(
            "trainer.devices and trainer.num_nodes must be >= 1 and trainer.timeout_hours > 0, got "
            f"{cfg.trainer.devices}, {cfg.trainer.num_nodes}, {cfg.trainer.timeout_hours}"
        )
    if cfg.trainer.devices * cfg.trainer.num_nodes > 1 and ":" in cfg.device:
        raise ConfigError(
            f"device={cfg.device} names one device, but trainer.devices={cfg.trainer.devices} x "
            f"trainer.num_nodes={cfg.trainer.num_nodes} processes need one each: use device=cuda (process i "
            "takes cuda:<local rank i>) or device=cpu, or limit the GPUs with CUDA_VISIBLE_DEVICES"
        )
    settings = method_config(cfg.method)
    if cfg.preset is not None:
        preset = Path(cfg.preset)
        candidates = [preset] if preset.is_absolute() else [folder / preset, Path.cwd() / preset]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise ConfigError(f"preset {cfg.preset!r} not found (looked in {[str(p) for p in candidates]})")
        cfg.preset = str(found.resolve())
        try:
            settings = method_config(cfg.method, found)
        except ValueError as e:
            raise ConfigError(f"preset {str(found)!r}: {e}") from None
    try:
        schema = OmegaConf.structured(METHOD_CONFIGS[cfg.method])
        settings = OmegaConf.merge(schema, OmegaConf.to_container(settings), OmegaConf.to_container(cfg.explainer))
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise ConfigError(f"bad config key 'explainer.{key}': {str(e).splitlines()[0]}") from None
    cfg.explainer = OmegaConf.to_container(settings)
    try:  # schedule name and parameters, thresholds, ...: checked now, before any data or model is loaded
        _CONFIG_CHECKS[cfg.method](settings)
    except (ValueError, KeyError) as e:
        raise ConfigError(f"explainer settings: {e.args[0] if isinstance(e, KeyError) else e}") from None
    return cfg, settings


# ------------------------------------------------------------------------------------- classifier training


@dataclass
class InitConfig:
    """Where the backbone's starting weights come from (``train_classifier.py``)."""

    kind: str = "imagenet"  # imagenet (torchvision weights from the hub cache) | file | random
    weights: str = "DEFAULT"  # kind imagenet: the torchvision weight enum, e.g. ResNet50_Weights.IMAGENET1K_V2
    file: str | None = None  # kind file: a state dict (torch.save) of the same backbone; the head may differ


@dataclass
class OptimConfig:
    """Optimiser and schedule: cosine decay over the epochs after a linear warm-up."""

    name: str = "sgd"  # sgd (momentum 0.9, nesterov) | adamw
    lr: float = 0.01  # peak learning rate
    weight_decay: float = 1e-4  # decoupled (adamw) or L2 (sgd) weight decay
    warmup_epochs: int = 0  # linear warm-up epochs before the cosine decay
    label_smoothing: float = 0.0  # cross-entropy label smoothing


@dataclass
class TrainerRunConfig:
    """The Lightning Trainer of a training run."""

    accelerator: str = "auto"  # auto | cpu | gpu
    devices: int = 1  # devices (processes) per node; > 1 trains with DDP
    num_nodes: int = 1  # nodes (torchrun --nnodes, SLURM --nodes)
    precision: str = "auto"  # auto: 16-mixed on GPUs, 32-true on CPUs; or any Lightning precision
    max_epochs: int = 30  # training epochs
    early_stopping_patience: int | None = None  # epochs without a better val/acc1; null: no early stop
    limit_train_batches: float | None = None  # share or number of training batches per epoch (smoke tests)
    limit_val_batches: float | None = None  # share or number of validation batches per epoch
    log_every_n_steps: int = 20  # logging interval in steps


@dataclass
class TrainClassifierConfig:
    """``python train_classifier.py --config <yaml> [key=value ...]``: fine-tune the classifier to explain."""

    imports: list[str] = field(default_factory=list)  # modules imported first (user backbones); runs their code
    backbone: str = "resnet50"  # torchvision name, timm/<name>, or small_cnn
    init: InitConfig = field(default_factory=InitConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)  # overrides of the backbone's own
    augment: str = "standard"  # standard (random resized crop + flip) | flip | none
    train_split: str = "train"  # data.split used for training
    val_split: str = "test"  # ... and for validation (CUB has train/test; synthetic train/val/test)
    val_fraction: float = 0.1  # image folders without train/ and val/ sub-folders: share held out
    val_limit: int | None = None  # validate on the first N images of the validation split only
    batch_size: int = 32  # images per step (per process under DDP)
    num_workers: int = 0  # DataLoader worker processes
    seed: int = 0  # seed of weights init, split and shuffling
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerRunConfig = field(default_factory=TrainerRunConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(kind="cub"))
    output: OutputConfig = field(default_factory=lambda: OutputConfig(dir="outputs/classifier"))
    wandb: WandbConfig = field(default_factory=WandbConfig)


INIT_KINDS = ("imagenet", "file", "random")
AUGMENTS = ("standard", "flip", "none")
OPTIMIZERS = ("sgd", "adamw")


def _load_layers(schema: type, path: str | Path | None, overrides: list[str] | None) -> DictConfig:
    """Schema <- YAML file <- ``key=value`` overrides, with errors that name the file or the override."""
    cfg = OmegaConf.structured(schema)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} not found: pass --config configs/<name>.yaml")
        try:
            layer = OmegaConf.load(path)
        except Exception as e:
            raise ConfigError(f"cannot parse config file {str(path)!r}: {e}") from None
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except OmegaConfBaseException as e:
            raise _config_error(e, str(path)) from None
    try:
        cfg = OmegaConf.merge(cfg, parse_overrides(list(overrides or [])))
    except OmegaConfBaseException as e:
        raise _config_error(e, "command-line override") from None
    return cfg


def _choice(value: str, valid: tuple[str, ...], key: str) -> None:
    if value not in valid:
        raise ConfigError(f"{key} must be one of {list(valid)}, got {value!r}")


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> DictConfig:
    """Load a ``train_classifier.py`` config (schema <- YAML <- overrides), run its imports, check its values.

    Raises:
        ConfigError: missing or unparsable file, unknown key, wrong type, malformed override, bad value.
    """
    cfg = _load_layers(TrainClassifierConfig, path, overrides)
    run_imports(list(cfg.imports))
    _choice(cfg.init.kind, INIT_KINDS, "init.kind")
    _choice(cfg.augment, AUGMENTS, "augment")
    _choice(cfg.optim.name, OPTIMIZERS, "optim.name")
    _choice(cfg.wandb.mode, WANDB_MODES, "wandb.mode")
    if cfg.init.kind == "file" and not cfg.init.file:
        raise ConfigError("init.kind=file needs init.file=<state dict saved with torch.save(model.state_dict())>")
    if cfg.batch_size < 1 or cfg.trainer.max_epochs < 1:
        raise ConfigError(
            f"batch_size and trainer.max_epochs must be >= 1, got {cfg.batch_size}, {cfg.trainer.max_epochs}"
        )
    if not 0.0 < cfg.val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in (0, 1), got {cfg.val_fraction!r}")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr must be > 0, got {cfg.optim.lr!r}")
    return cfg
