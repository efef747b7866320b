"""The run config of ``explain.py`` (OmegaConf dataclasses) and its loading.

Unknown keys and wrongly typed values are rejected with the key's name; every value is checked here, when the config
is loaded; every error is a :class:`ConfigError` whose message names the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from hdm_lightning.config.layers import choice, load_layers, method_settings, run_imports
from hdm_lightning.config.methods import METHOD_CONFIGS
from hdm_lightning.errors import ConfigError
from hdm_lightning.targets import parse_target

__all__ = [
    "DEFAULT_TIES",
    "EARLIER_TIES",
    "TIES",
    "WANDB_MODES",
    "ClassifierConfig",
    "DataConfig",
    "EvaluationConfig",
    "ExplainRunConfig",
    "MethodEntry",
    "OutputConfig",
    "PreprocessConfig",
    "ProcessesConfig",
    "SyntheticConfig",
    "WandbConfig",
    "load_run_config",
    "run_defaults",
]

TIES = ("raster", "shuffled")
"""Orders of equal saliency values in every rank-based metric family (``evaluation.ties``)."""
DEFAULT_TIES = "shuffled"  # every rank-based family's default (``evaluation.ties``)
EARLIER_TIES = "raster"  # the order of run folders whose config.yaml predates ``evaluation.ties``
WANDB_MODES = ("offline", "online", "disabled")


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

    # registered families: drop_increase | deletion_insertion | road | proportion | pointing_game | segmentation |
    # stability (maps vs the method's own reruns) | sanity (maps vs a randomised model / class) | a plugin's (imports:)
    metrics: list[str] = field(default_factory=list)
    batch_size: int = 64  # perturbed images per forward pass
    steps: int = 100  # deletion/insertion: 1 % of the pixels per step
    insertion_canvas: str = "blur"  # blur | zero (black)
    deletion_value: str = "black"  # black (0 in raw pixels) | blur
    drop_baseline: str = "zero"  # Average Drop/Increase: zero (mean colour) | mean | blur | black
    drop_percents: list[int] = field(default_factory=lambda: [70, 80, 90])  # muted share of the pixels
    # order of equal saliency values in every rank-based family (deletion/insertion, ROAD, Drop/Increase, pointing,
    # segmentation): shuffled (one fixed pseudo-random order, the same for every image) | raster (row by row: ranks
    # a sparse map's zeros from the top rows down)
    ties: str = DEFAULT_TIES
    segmentation_percents: list[int] = field(default_factory=lambda: list(range(70, 100)))  # binarising percentiles
    gallery: int = 16  # images shown side by side with every method's map (HDM paper Fig. 4)
    stability_noise: list[float] = field(default_factory=lambda: [1e-6, 1e-3])  # stability: reruns on x + eps*N(0,1)
    stability_batch: bool = True  # stability: rerun each image in another batch (alone, or with 2 flipped copies)
    stability_threads: bool = False  # stability: rerun with torch.set_num_threads(1) (CPU runs on several threads)
    stability_top_k: list[float] = field(default_factory=lambda: [0.05, 0.2])  # stability: IoU of the top-k fractions
    # per family, keyword arguments of its metric class over those the keys above give (road, sanity, pointing_game,
    # a plugin family's settings), e.g. {road: {percents: [10, 50, 90]}, pointing_game: {tolerance: 4}}
    params: dict[str, Any] = field(default_factory=dict)
    # tables: every method is tested against this one (Wilcoxon signed-rank, paired by image); None: the first method
    reference: str | None = None
    ci_level: float = 0.95  # tables: level of the bootstrap confidence interval of each mean
    ci_resamples: int = 10000  # tables: bootstrap resamples per cell
    ci_seed: int = 0  # tables: the bootstrap's seed


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
    target: Any = "predicted"  # predicted | label | {prototype: <index>} | {prototype: first_of_class} (ProtoPNet)
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


def load_run_config(path: str | Path | None, overrides: list[str] | None = None, values=None) -> tuple:
    """Load an explain-run config: schema <- YAML <- ``values`` <- ``key=value`` overrides; imports; method settings.

    Args:
        path: the YAML file (``None``: the schema defaults, i.e. the demo).
        overrides: command-line ``key=value`` items (OmegaConf dotlist syntax).
        values: a mapping of settings given in Python (:func:`hdm_lightning.compare`), merged over the file.

    Returns:
        ``(run, method_settings)``: the run config (``explainer`` resolved to the full method settings,
        ``preset`` made absolute) and the method settings as a structured config.

    Raises:
        ConfigError: missing or unparsable file, unknown key, wrong type, malformed override, unknown
            method, bad value, or an import that fails.
    """
    cfg = load_layers(ExplainRunConfig, path, overrides, values)
    folder = Path(path).resolve().parent if path is not None else Path.cwd()
    run_imports(list(cfg.imports))  # before the method/schedule names are looked up
    if cfg.method not in METHOD_CONFIGS:
        raise ConfigError(f"unknown method {cfg.method!r}: use one of {sorted(METHOD_CONFIGS)}")
    parse_target(cfg.target, ConfigError)
    choice(cfg.wandb.mode, WANDB_MODES, "wandb.mode")
    choice(cfg.evaluation.ties, TIES, "evaluation.ties")
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
    settings, cfg.preset = method_settings(cfg.method, cfg.preset, cfg.explainer, folder)
    cfg.explainer = OmegaConf.to_container(settings)
    return cfg, settings


def run_defaults(method: str) -> dict:
    """The schema defaults of an explain run of ``method``, with ``explainer`` as the method's default settings."""
    defaults = OmegaConf.to_container(OmegaConf.structured(ExplainRunConfig))
    defaults["explainer"] = OmegaConf.to_container(OmegaConf.structured(METHOD_CONFIGS[method]))
    return defaults
