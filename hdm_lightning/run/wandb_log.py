"""The run's W&B record: its config, per-batch costs, overlays and stage strips, the manifest and the tables.

One W&B run per explain run, owned by rank 0; offline by default (``wandb sync`` uploads it later).
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch
import wandb
from omegaconf import DictConfig, OmegaConf

from hdm_lightning.callbacks.logging import RunWandbLogger
from hdm_lightning.contract import Attribution
from hdm_lightning.run.plan import MethodRun
from hdm_lightning.run.writer import MANIFEST_COLUMNS

__all__ = ["log_batch", "log_summary", "wandb_logger"]


def wandb_logger(cfg: DictConfig, folder: Path):
    """The run's W&B logger with the config as hyperparameters; ``None`` when ``wandb.mode`` is ``disabled``."""
    if cfg.wandb.mode == "disabled":
        return None
    save_dir = Path(cfg.wandb.dir) if cfg.wandb.dir else folder
    save_dir.mkdir(parents=True, exist_ok=True)
    logger = RunWandbLogger(
        project=cfg.wandb.project,
        name=cfg.wandb.name,
        save_dir=str(save_dir),
        offline=cfg.wandb.mode == "offline",
        tags=list(cfg.wandb.tags) or None,
        settings=_wandb_settings(),
    )
    logger.log_hyperparams(OmegaConf.to_container(cfg))
    return logger


def _wandb_settings():
    # No console capture and no system metrics: a run is many short fits, and tests run offline.
    return wandb.Settings(console="off", x_disable_stats=True, silent=True)


def log_batch(logger, cfg, costs: dict[str, Attribution], pictures, classifier, logged: int) -> int:
    """Per-batch cost of each method that ran on the batch; overlays and stage strips while under ``max_images``."""
    metrics = {}
    for label, result in costs.items():
        metrics[f"cost/{label}/seconds"] = result.seconds
        metrics[f"cost/{label}/forward"] = result.forward_passes
        metrics[f"cost/{label}/backward"] = result.backward_passes
        exp = result.explanation
        if exp is not None and exp.agreement is not None:  # restarts: the single runs' mean pairwise Pearson
            metrics[f"restarts/{label}/agreement"] = float(exp.agreement.double().nanmean())
    logger.log_run(metrics)
    room = max(int(cfg.wandb.max_images) - logged, 0)
    pictures = pictures[:room]
    if pictures:

        def hwc(x):  # uint8 HWC, what wandb.Image takes without guessing a value range
            return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()

        captions = [f"{label} {it.id}: {classifier.class_name(t)}" for label, it, t, _, _ in pictures]
        logger.log_image("overlays", [hwc(p[3]) for p in pictures], caption=captions)  # at logger.position
        strips = [(c, p[4]) for c, p in zip(captions, pictures, strict=True) if p[4] is not None]
        if strips:
            logger.log_image("stages", [hwc(s) for _, s in strips], caption=[c for c, _ in strips])
        logger.position += 1
    return logged + len(pictures)


def log_summary(logger, runs: list[MethodRun], summary, tables: dict[str, str], folder: Path) -> None:
    """The manifest and the comparison tables as W&B tables, curves and gallery as images; then close the run."""
    records = [rec for run in runs for rec in run.records.values()]
    columns = [c for c in MANIFEST_COLUMNS if c not in ("map", "overlay", "binary", "stages")]
    if records:
        logger.log_table("summary", columns=columns, data=[[r.get(c, "") for c in columns] for r in records])
    for family in tables:
        with open(folder / "tables" / f"{family}.csv") as f:
            rows = list(csv.reader(f))
        logger.log_table(f"tables/{family}", columns=rows[0], data=rows[1:])
    pictures = sorted((folder / "curves").glob("*.png")) + sorted((folder / "gallery").rglob("*.png"))[:16]
    for path in pictures:
        logger.log_image(f"{path.parent.name}/{path.stem}", [str(path)])
    exp = logger.experiment
    exp.summary.update(
        {
            "images_done": summary.done,
            "images_skipped": summary.skipped,
            "images_failed": summary.failed,
            "seconds_per_image": summary.seconds / summary.done if summary.done else None,
        }
    )
    exp.finish()
