"""The config of ``train_explainer.py`` (an amortised explainer: a mask predictor trained on DM's loss) and its loading.

The DM settings the predictor learns to predict are a method's settings (:func:`~hdm_lightning.config.layers.
method_settings`: preset <- ``explainer:`` overrides, checked as a run's); what the predictor needs of them beyond
that is checked by the functions registered with :func:`register_explainer_check` (the amortised package's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hdm_lightning.config.layers import choice, find_preset, load_layers, method_settings, run_imports
from hdm_lightning.config.run import WANDB_MODES, ClassifierConfig, DataConfig, OutputConfig, WandbConfig
from hdm_lightning.config.training import AUGMENTS, TrainerRunConfig
from hdm_lightning.errors import ConfigError

__all__ = [
    "EXPLAINER_CHECKS",
    "OUTPUTS",
    "TARGETS",
    "ExplainerOptimConfig",
    "PredictorConfig",
    "TrainExplainerConfig",
    "load_explainer_config",
    "register_explainer_check",
]

TARGETS = ("predicted", "label", "random", "mixed")
"""The classes a predictor is trained to explain (``target``)."""
OUTPUTS = ("clamp", "sigmoid", "stretched")
"""How the predictor's outputs become mask values in [0, 1] (``predictor.output``)."""
EXPLAINER_CHECKS: list[Callable[[DictConfig, DictConfig], None]] = []
"""Checks of ``(config, DM settings)`` run when a ``train_explainer.py`` config is loaded; raise ``ValueError``."""


def register_explainer_check(check: Callable[[DictConfig, DictConfig], None]) -> None:
    """Run ``check(config, settings)`` whenever a ``train_explainer.py`` config is loaded."""
    if check not in EXPLAINER_CHECKS:
        EXPLAINER_CHECKS.append(check)


@dataclass
class PredictorConfig:
    """The mask predictor (:class:`hdm_lightning.amortised.MaskPredictor`)."""

    layer: str | None = None  # the classifier layer it reads (dotted path); null: the layer Grad-CAM uses
    skips: list[str] = field(default_factory=list)  # earlier (finer) layers it also reads, e.g. [features.1]
    # also predict DM's auxiliary levels c_j^k(i) (Eq. 7-8; sizes for the classifier's input size), so the map
    # combines every vector DM's does; false: the benchmark vectors d_i only
    levels: bool = False
    hidden: int = 64  # channels of its layers
    tau: float = 0.5  # its output before training (DM's initial mask value)
    # sigmoid | clamp (DM's projection onto [0, 1], gradient passed straight through) | stretched (a sigmoid
    # stretched to (-0.1, 1.1), then projected: exact zeros as in DM)
    output: str = "sigmoid"


@dataclass
class ExplainerOptimConfig:
    """AdamW with a cosine decay over the epochs after a linear warm-up."""

    lr: float = 3e-3  # peak learning rate
    weight_decay: float = 1e-4  # decoupled weight decay
    warmup_epochs: int = 0  # linear warm-up epochs before the cosine decay
    # eta (L_R's weight) ramps from 0 to its value over these epochs: the masks learn to keep the class before they
    # shrink (from eta's full value at once the predictor ends with near-empty masks on most images)
    reg_warmup_epochs: float = 5.0


@dataclass
class TrainExplainerConfig:
    """``python train_explainer.py --config <yaml> [key=value ...]``: train a mask predictor on the DM loss."""

    imports: list[str] = field(default_factory=list)  # modules imported first (user backbones); runs their code
    # the DM settings whose benchmark vectors are predicted: a dm/hdm method preset (configs/methods/), relative to
    # this config file; null: the dm defaults
    preset: str | None = None
    explainer: dict[str, Any] = field(default_factory=dict)  # overrides of the preset (schedule, threshold, upsample)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)  # the classifier to explain (frozen)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    # the class each training image is explained for: predicted | label | random | mixed (half predicted, half
    # random: with predicted alone the class embedding is never asked for another class's map)
    target: str = "predicted"
    augment: str = "flip"  # standard (random resized crop + flip) | flip | none
    train_split: str = "train"  # data.split used for training
    val_split: str = "test"  # ... and for validation (CUB has train/test; synthetic train/val/test)
    val_fraction: float = 0.1  # image folders without train/ and val/ sub-folders: share held out
    val_limit: int | None = None  # validate on the first N images of the validation split only
    batch_size: int = 32  # images per step (per process under DDP); each gives one masked image per vector
    num_workers: int = 0  # DataLoader worker processes
    seed: int = 0  # seed of the predictor's init, the split and the shuffling
    optim: ExplainerOptimConfig = field(default_factory=ExplainerOptimConfig)
    trainer: TrainerRunConfig = field(default_factory=lambda: TrainerRunConfig(max_epochs=20))
    data: DataConfig = field(default_factory=lambda: DataConfig(kind="cub"))
    output: OutputConfig = field(default_factory=lambda: OutputConfig(dir="outputs/explainer"))
    wandb: WandbConfig = field(default_factory=WandbConfig)


def load_explainer_config(path: str | Path | None, overrides: list[str] | None = None) -> DictConfig:
    """Load a ``train_explainer.py`` config (schema <- YAML <- overrides), run its imports, check its values.

    ``explainer`` is resolved to the full DM settings (preset + overrides) and ``preset`` made absolute.

    Raises:
        ConfigError: missing or unparsable file, unknown key, wrong type, malformed override, bad value.
    """
    cfg = load_layers(TrainExplainerConfig, path, overrides)
    folder = Path(path).resolve().parent if path is not None else Path.cwd()
    run_imports(list(cfg.imports))
    choice(cfg.target, TARGETS, "target")
    choice(cfg.augment, AUGMENTS, "augment")
    choice(cfg.wandb.mode, WANDB_MODES, "wandb.mode")
    choice(cfg.predictor.output, OUTPUTS, "predictor.output")
    if cfg.batch_size < 1 or cfg.trainer.max_epochs < 1:
        raise ConfigError(
            f"batch_size and trainer.max_epochs must be >= 1, got {cfg.batch_size}, {cfg.trainer.max_epochs}"
        )
    if cfg.optim.lr <= 0 or cfg.predictor.hidden < 1 or not 0.0 < cfg.predictor.tau < 1.0:
        raise ConfigError(
            f"optim.lr must be > 0, predictor.hidden >= 1 and predictor.tau in (0, 1); got {cfg.optim.lr}, "
            f"{cfg.predictor.hidden}, {cfg.predictor.tau}"
        )
    method = "dm"
    if cfg.preset is not None:
        method = OmegaConf.load(find_preset(cfg.preset, folder)).get("method", "dm")
        if method not in ("dm", "hdm"):
            raise ConfigError(f"preset {cfg.preset!r} is for {method!r}: the amortised explainer needs a dm or hdm one")

    def first(settings: DictConfig) -> None:
        for check in EXPLAINER_CHECKS:
            check(cfg, settings)

    settings, cfg.preset = method_settings(method, cfg.preset, cfg.explainer, folder, first)
    cfg.explainer = OmegaConf.to_container(settings)
    return cfg
