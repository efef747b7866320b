"""``train_explainer.py``: train an amortised explainer (a mask predictor) for a classifier, on the DM loss.

Same conventions as ``train_classifier.py``. Run folder (``output.dir``)::

    config.yaml               the resolved config
    inputs.json               content digests of the files the config names (a rerun checks them)
    checkpoints/best.ckpt     Lightning checkpoint with the lowest val/loss (the predictor only)
    checkpoints/last.ckpt     the latest epoch: a rerun resumes from it (output.resume)
    explainer.pt              the best predictor with the DM settings it predicts for:
                              method amortised params {checkpoint: <it>}, or dm/hdm init: amortised
    wandb/                    the W&B run
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hdm_lightning.allocator import retain_freed_memory
from hdm_lightning.amortised.explainer import benchmark_vectors
from hdm_lightning.amortised.module import TARGETS, AmortisedMaskModule
from hdm_lightning.amortised.predictor import OUTPUTS, FeatureTap
from hdm_lightning.config import (
    WANDB_MODES,
    ClassifierConfig,
    ConfigError,
    DataConfig,
    OutputConfig,
    WandbConfig,
    choice,
    find_preset,
    load_layers,
    run_imports,
)
from hdm_lightning.data.training import ClassifierDataModule
from hdm_lightning.io import atomic_write_text
from hdm_lightning.method_config import METHOD_CONFIGS, method_config
from hdm_lightning.models import check_num_classes, load_classifier
from hdm_lightning.run.folder import TRAINING_NON_RESULT_KEYS, check_run_folder
from hdm_lightning.run.inputs import write_inputs
from hdm_lightning.train import build_trainer
from hdm_lightning.train_config import AUGMENTS, TrainerRunConfig

__all__ = ["ExplainerOptimConfig", "PredictorConfig", "TrainExplainerConfig", "load_explainer_config", "run_explainer"]


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
    method, settings = "dm", method_config("dm")
    if cfg.preset is not None:
        found = find_preset(cfg.preset, folder)
        cfg.preset = str(found.resolve())
        method = OmegaConf.load(found).get("method", "dm")
        if method not in ("dm", "hdm"):
            raise ConfigError(f"preset {cfg.preset!r} is for {method!r}: the amortised explainer needs a dm or hdm one")
        try:
            settings = method_config(method, found)
        except ValueError as e:
            raise ConfigError(f"preset {str(found)!r}: {e}") from None
    try:
        settings = OmegaConf.merge(
            OmegaConf.structured(METHOD_CONFIGS[method]), OmegaConf.to_container(settings), cfg.explainer
        )
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise ConfigError(f"bad config key 'explainer.{key}': {str(e).splitlines()[0]}") from None
    try:
        benchmark_vectors(OmegaConf.to_container(settings.schedule))
        if cfg.predictor.levels and settings.aux_reference != "original":
            raise ValueError(
                f"predictor.levels needs aux_reference: original (Eq. 8), got {settings.aux_reference!r}: the "
                "predictor has no fitted guide activation to match"
            )
        if settings.threshold.kind != "quantile":
            raise ValueError(f"threshold.kind must be quantile for DM maps, got {settings.threshold.kind!r}")
    except ValueError as e:
        raise ConfigError(f"explainer settings: {e}") from None
    cfg.explainer = OmegaConf.to_container(settings)
    return cfg


@dataclass
class ExplainerSummary:
    """What a training run produced."""

    folder: Path
    exported: Path
    best_val_loss: float
    epochs: int

    def line(self) -> str:
        """The final summary line."""
        return (
            f"best val/loss {self.best_val_loss:.4f} after {self.epochs} epochs; explain with method amortised "
            f"params {{checkpoint: {self.exported}}}, or dm/hdm init=amortised init_checkpoint={self.exported}"
        )


def run_explainer(cfg: DictConfig) -> ExplainerSummary:
    """Train the mask predictor that ``cfg`` describes (see the module docstring for the outputs).

    Raises:
        ConfigError, DatasetError, ValueError: a problem with the config, the data or the classifier, with its fix
            in the message (raised before training starts).
    """
    folder = Path(cfg.output.dir)
    last = folder / "checkpoints" / "last.ckpt"
    main = rank_zero_only.rank == 0
    if main:
        check_run_folder(folder, cfg, (*TRAINING_NON_RESULT_KEYS, "preset"))
    L.seed_everything(int(cfg.seed), verbose=False)
    retain_freed_memory()  # every step frees and refaults its activations otherwise (hdm_lightning.allocator)
    classifier = load_classifier(cfg.classifier)
    data = ClassifierDataModule(
        cfg.data,
        classifier.preprocess,
        batch_size=int(cfg.batch_size),
        augment=cfg.augment,
        train_split=cfg.train_split,
        val_split=cfg.val_split,
        val_fraction=float(cfg.val_fraction),
        seed=int(cfg.seed),
        num_workers=int(cfg.num_workers),
        val_limit=cfg.val_limit,
        epoch_seeded=True,  # a resumed run sees the batches an uninterrupted one does
    )
    _check_classes(cfg, classifier, data)
    module = _module(cfg, classifier)
    resume = last if cfg.output.resume and last.is_file() else None
    if main:
        folder.mkdir(parents=True, exist_ok=True)
        write_inputs(folder, cfg)  # before config.yaml: a folder with a config has its inputs recorded
        atomic_write_text(OmegaConf.to_yaml(cfg), folder / "config.yaml")
        print(
            f"training a mask predictor for {classifier.name} ({classifier.source}) on "
            f"{data.train_set.describe()}; validating on {data.val_set.describe()}"
            + (f"; resuming from {resume}" if resume else ""),
            file=sys.stderr,
        )
    trainer, best, logger = build_trainer(cfg, folder, monitor="val/loss", mode="min")
    trainer.fit(module, datamodule=data, ckpt_path=resume, weights_only=True)
    if logger:
        logger.experiment.finish()
    exported = folder / "explainer.pt"
    if trainer.global_rank != 0:
        return ExplainerSummary(folder, exported, float("nan"), trainer.current_epoch)
    best_path = Path(best.best_model_path) if best.best_model_path else last
    state = torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    explainer = module.explainer()
    score = float(best.best_model_score) if best.best_model_score is not None else float("nan")
    explainer.info = {
        "classifier": f"{classifier.name} ({classifier.source})",
        "num_classes": int(classifier.num_classes),
        "target": str(cfg.target),
        "epochs": int(trainer.current_epoch),
        "val_loss": score,
        "data": data.train_set.describe(),
    }
    explainer.save(exported)
    return ExplainerSummary(folder, exported, score, trainer.current_epoch)


def _check_classes(cfg: DictConfig, classifier, data: ClassifierDataModule) -> None:
    """The classifier's head fits the dataset's classes, as explain.py requires of the same pair.

    Checked for ``target=label`` and for a classifier from a checkpoint (trained on some dataset's classes); a
    random-init or ImageNet classifier may be explained on images of any classes with ``target=predicted``.
    """
    if cfg.target == "label" or classifier.source.startswith("checkpoint"):
        classes = None if data.class_names is None else len(data.class_names)
        try:
            check_num_classes(classifier, classes, data.train_set.describe())
        except ValueError as e:
            raise ConfigError(str(e)) from None


def _module(cfg: DictConfig, classifier) -> AmortisedMaskModule:
    """The module, its predictor sized by one forward pass of the classifier on a blank image."""
    tap = FeatureTap(classifier.model, cfg.predictor.layer, list(cfg.predictor.skips))
    size = int(classifier.preprocess.size)
    with torch.no_grad():
        feats, logits = tap.features(torch.zeros(1, 3, size, size))
    s = OmegaConf.to_container(cfg.explainer)  # plain containers: the checkpoint's hyper-parameters load weights-only
    module = AmortisedMaskModule(
        in_channels=int(feats[0].shape[1]),
        num_classes=int(logits.shape[1]),
        layer=tap.layer,
        schedule={"name": s["schedule"]["name"], "params": dict(s["schedule"]["params"])},
        upsample=str(s["upsample"]),
        threshold={"kind": s["threshold"]["kind"], "value": float(s["threshold"]["value"])},
        hidden=int(cfg.predictor.hidden),
        tau=float(cfg.predictor.tau),
        target=str(cfg.target),
        optim=OmegaConf.to_container(cfg.optim),
        max_epochs=int(cfg.trainer.max_epochs),
        seed=int(cfg.seed),
        output=str(cfg.predictor.output),
        skips=list(tap.skips),
        skip_channels=[int(f.shape[1]) for f in feats[1:]],
        image_size=[size, size] if cfg.predictor.levels else None,
    )
    module.attach(classifier.model)
    return module
