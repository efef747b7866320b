"""``train_classifier.py``: fine-tune the classifier that ``explain.py`` explains.

Run folder (``output.dir``)::

    config.yaml               the resolved config
    inputs.json               content digests of the files the config names (a rerun checks them)
    checkpoints/best.ckpt     Lightning checkpoint with the best val/acc1 (ModelCheckpoint)
    checkpoints/last.ckpt     the latest epoch: a rerun resumes from it (output.resume)
    classifier.pt             the best weights in the ``hdm_lightning.classifier`` format (backbone,
                              classes, class names, preprocessing): ``explain.py classifier.checkpoint=<it>``
    wandb/                    the W&B run

Both checkpoint files load in ``explain.py`` with ``classifier.checkpoint=<path>`` and nothing else.
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from hdm_lightning.config import ConfigError
from hdm_lightning.data.training import ClassifierDataModule
from hdm_lightning.models import (
    default_preprocess,
    load_classifier_checkpoint,
    override_preprocess,
    save_classifier_checkpoint,
    torchvision_weights_preprocess,
)
from hdm_lightning.models.lightning_classifier import ClassifierModule, initial_backbone
from hdm_lightning.models.prototype import PROTOTYPE_HEAD
from hdm_lightning.run.folder import TRAINING_NON_RESULT_KEYS
from hdm_lightning.run.training import fit_training, start_training, training_data
from hdm_lightning.train_prototype import run_prototype_training
from hdm_lightning.training_run import TrainSummary, build_trainer

__all__ = ["TrainSummary", "build_trainer", "run_training"]


def run_training(cfg: DictConfig) -> TrainSummary:
    """Train the classifier that ``cfg`` describes (see the module docstring for the outputs).

    Raises:
        ConfigError, DatasetError, ValueError: a problem with the config, the data or the weights, with its
            fix in the message (raised before training starts).
    """
    folder = Path(cfg.output.dir)
    resume = start_training(cfg, folder, TRAINING_NON_RESULT_KEYS)
    data = _datamodule(cfg)
    if cfg.model.head == PROTOTYPE_HEAD:
        return run_prototype_training(cfg, folder, data, rank_zero_only.rank == 0)
    module, source = _module(cfg, data, resume)
    announce = f"training {cfg.backbone} ({source}) on {data.train_set.describe()}; validating on "
    fit = fit_training(cfg, folder, module, data, resume, announce + data.val_set.describe(), "val/acc1", "max")
    epochs, n = fit.trainer.current_epoch, len(data.class_names)
    if not fit.main:
        return TrainSummary(folder, fit.best_path, folder / "classifier.pt", float("nan"), epochs, n)
    trained = load_classifier_checkpoint(fit.best_path)  # weights_only, and proves explain.py can read it
    exported = save_classifier_checkpoint(
        folder / "classifier.pt",
        trained.model,
        cfg.backbone,
        trained.num_classes,
        trained.class_names,
        trained.preprocess,
        extra={"val_acc1": fit.score, "source": source},
    )
    return TrainSummary(folder, fit.best_path, exported, fit.score, epochs, n)


def _datamodule(cfg: DictConfig) -> ClassifierDataModule:
    """The data with the backbone's preprocessing (its torchvision weights' own, or the default), overridden."""
    if cfg.init.kind == "imagenet" and not cfg.backbone.startswith("timm/") and cfg.backbone != "small_cnn":
        preprocess = torchvision_weights_preprocess(cfg.backbone, cfg.init.weights)
    else:
        preprocess = default_preprocess(cfg.backbone)
    return training_data(cfg, override_preprocess(preprocess, cfg.preprocess, key="preprocess"))


def _module(cfg: DictConfig, data: ClassifierDataModule, resume: Path | None) -> tuple[ClassifierModule, str]:
    """The LightningModule: starting weights from ``cfg.init``, or none when resuming (the checkpoint has them).

    Raises:
        ConfigError: the checkpoint to resume was trained with another backbone or number of classes.
    """
    classes = data.class_names
    if resume is not None:
        saved = torch.load(resume, map_location="cpu", weights_only=True)["hyper_parameters"]
        if int(saved["num_classes"]) != len(classes) or saved["backbone"] != cfg.backbone:
            raise ConfigError(
                f"{resume} was trained with {saved['backbone']} on {saved['num_classes']} classes, but this run has "
                f"{cfg.backbone} on {len(classes)} classes ({data.train_set.describe()}): choose another output.dir, "
                "or pass output.resume=false to move the old run aside"
            )
        model, source = None, f"resumed from {resume}"
    else:
        model, _, source = initial_backbone(cfg.backbone, len(classes), cfg.init)
    module = ClassifierModule(
        backbone=cfg.backbone,
        num_classes=len(classes),
        class_names=classes,
        preprocess=data.preprocess.to_dict(),
        optim=OmegaConf.to_container(cfg.optim),
        max_epochs=int(cfg.trainer.max_epochs),
        model=model,
    )
    return module, source
