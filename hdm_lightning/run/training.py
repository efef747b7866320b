"""The skeleton every training script shares (``train_classifier.py``, ``train_explainer.py``).

A run folder that resumes, one Lightning fit with best/last checkpoints and W&B, the best checkpoint's path and score.

Under DDP Lightning re-runs the script once per extra device (or torchrun/SLURM start every process): only the first
process (rank 0) may archive an old run or write the shared files.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from hdm_lightning.data.training import ClassifierDataModule
from hdm_lightning.io import atomic_write_text
from hdm_lightning.models.preprocess import Preprocess
from hdm_lightning.run.folder import check_run_folder
from hdm_lightning.run.inputs import write_inputs
from hdm_lightning.training_run import build_trainer

__all__ = ["TrainedFit", "fit_training", "start_training", "training_data"]


@dataclass
class TrainedFit:
    """What a training fit left: the Trainer, the best checkpoint (``last.ckpt`` without one) and its score.

    Attributes:
        trainer: the Lightning Trainer after ``fit``.
        best_path: the checkpoint with the best monitored value (``checkpoints/last.ckpt`` when none was saved).
        score: the best monitored value (NaN when none).
        main: whether this process is rank 0 (the one that exports).
    """

    trainer: L.Trainer
    best_path: Path
    score: float
    main: bool


def training_data(cfg: DictConfig, preprocess: Preprocess, epoch_seeded: bool = False) -> ClassifierDataModule:
    """The training and validation data a training config describes (``data``, splits, batch size, augmentation).

    ``epoch_seeded``: every epoch's shuffle and augmentation seeded by the epoch, so a resumed run sees the batches an
    uninterrupted one does.
    """
    return ClassifierDataModule(
        cfg.data,
        preprocess,
        batch_size=int(cfg.batch_size),
        augment=cfg.augment,
        train_split=cfg.train_split,
        val_split=cfg.val_split,
        val_fraction=float(cfg.val_fraction),
        seed=int(cfg.seed),
        num_workers=int(cfg.num_workers),
        val_limit=cfg.val_limit,
        epoch_seeded=epoch_seeded,
    )


def start_training(cfg: DictConfig, folder: Path, ignore: tuple[str, ...]) -> Path | None:
    """Check the run folder (rank 0; keys under ``ignore`` may change on a rerun), seed, and find what to resume.

    Returns:
        ``checkpoints/last.ckpt`` when ``output.resume`` and an earlier run left one, else ``None``.

    Raises:
        ConfigError: the folder holds a run of another config or other input files.
    """
    if rank_zero_only.rank == 0:
        check_run_folder(folder, cfg, ignore)
    L.seed_everything(int(cfg.seed), verbose=False)
    last = folder / "checkpoints" / "last.ckpt"
    return last if cfg.output.resume and last.is_file() else None


def fit_training(
    cfg: DictConfig,
    folder: Path,
    module: L.LightningModule,
    data: L.LightningDataModule,
    resume: Path | None,
    announce: str,
    monitor: str,
    mode: str,
) -> TrainedFit:
    """Record the run (rank 0: inputs, ``config.yaml``, the ``announce`` line), fit, close the W&B run.

    ``monitor`` / ``mode``: the validation value that picks the best checkpoint (``val/acc1``, ``max``).
    """
    if rank_zero_only.rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        write_inputs(folder, cfg)  # before config.yaml: a folder with a config has its inputs recorded
        atomic_write_text(OmegaConf.to_yaml(cfg), folder / "config.yaml")
        print(announce + (f"; resuming from {resume}" if resume else ""), file=sys.stderr)
    trainer, best, logger = build_trainer(cfg, folder, monitor=monitor, mode=mode)
    trainer.fit(module, datamodule=data, ckpt_path=resume, weights_only=True)
    if logger:
        logger.experiment.finish()
    best_path = Path(best.best_model_path) if best.best_model_path else folder / "checkpoints" / "last.ckpt"
    score = float(best.best_model_score) if best.best_model_score is not None else math.nan
    return TrainedFit(trainer, best_path, score, trainer.global_rank == 0)
