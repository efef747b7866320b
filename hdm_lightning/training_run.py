"""The Lightning Trainer of the training scripts and what a training run produced (shared by every head)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

__all__ = ["TrainSummary", "build_trainer"]


@dataclass
class TrainSummary:
    """What a training run produced."""

    folder: Path
    best_checkpoint: Path
    exported: Path
    best_val_acc1: float
    epochs: int
    num_classes: int

    def line(self) -> str:
        """The final summary line."""
        return (
            f"best val/acc1 {self.best_val_acc1:.4f} after {self.epochs} epochs ({self.num_classes} classes); "
            f"explain it with classifier.checkpoint={self.exported}"
        )


def _precision(cfg: DictConfig, accelerator: str) -> str:
    if cfg.trainer.precision != "auto":
        return cfg.trainer.precision
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return "16-mixed" if gpu else "32-true"


def build_trainer(
    cfg: DictConfig,
    folder: Path,
    monitor: str = "val/acc1",
    mode: str = "max",
    max_epochs: int | None = None,
    checkpoints: Path | None = None,
    logger: WandbLogger | bool | None = None,
) -> tuple[L.Trainer, ModelCheckpoint, WandbLogger | bool]:
    """The Trainer with the best (by ``monitor``)/last checkpoints, optional early stopping and the W&B logger.

    Shared by ``train_classifier.py`` (best ``val/acc1``) and ``train_explainer.py`` (lowest ``val/loss``). A
    prototype network's phases pass their own ``max_epochs``, checkpoint folder and the one W&B ``logger`` of the run
    (``None``: a new one).
    """
    best = ModelCheckpoint(
        dirpath=checkpoints or folder / "checkpoints",
        filename="best",
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        save_last=True,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    callbacks: list[L.Callback] = [best]
    if cfg.trainer.early_stopping_patience is not None:
        callbacks.append(EarlyStopping(monitor, mode=mode, patience=int(cfg.trainer.early_stopping_patience)))
    if logger is None and cfg.wandb.mode != "disabled":
        logger = WandbLogger(
            project=cfg.wandb.project,
            name=cfg.wandb.name,
            save_dir=str(cfg.wandb.dir or folder),
            offline=cfg.wandb.mode == "offline",
            tags=list(cfg.wandb.tags) or None,
        )
        logger.log_hyperparams(OmegaConf.to_container(cfg))
    logger = logger or False
    if logger:
        callbacks.append(LearningRateMonitor("epoch"))
    accelerator = cfg.trainer.accelerator
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=int(cfg.trainer.devices),
        num_nodes=int(cfg.trainer.num_nodes),
        precision=_precision(cfg, accelerator),
        max_epochs=int(cfg.trainer.max_epochs if max_epochs is None else max_epochs),
        limit_train_batches=cfg.trainer.limit_train_batches,
        limit_val_batches=cfg.trainer.limit_val_batches,
        log_every_n_steps=int(cfg.trainer.log_every_n_steps),
        logger=logger,
        callbacks=callbacks,
        default_root_dir=str(folder),
        enable_progress_bar=True,
        num_sanity_val_steps=0,
    )
    return trainer, best, logger
