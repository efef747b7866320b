"""``train_classifier.py`` with ``model.head: prototype``: ProtoPNet's phases, one Lightning fit each.

Run folder, besides ``config.yaml``, ``inputs.json``, ``classifier.pt`` and ``wandb/`` as for every head::

    checkpoints/phases/<phase>.pt      the network's weights at the end of each finished phase (a rerun goes on
                                       after the last one)
    checkpoints/<phase>/last.ckpt      a phase in progress (a rerun resumes it)
    push.json                          each prototype's training patch (image id, feature-map position)

The phases are described in :mod:`hdm_lightning.models.prototype_training`.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from hdm_lightning.data.datamodule import load_items
from hdm_lightning.data.items import ItemDataset
from hdm_lightning.data.training import ClassifierDataModule
from hdm_lightning.io import atomic_torch_save, atomic_write_json, atomic_write_text, load_tensors
from hdm_lightning.models import save_classifier_checkpoint
from hdm_lightning.models.lightning_classifier import initial_backbone
from hdm_lightning.models.prototype import PROTOTYPE_HEAD, PrototypeNet, build_prototype_net, push_prototypes
from hdm_lightning.models.prototype_training import PHASES, PrototypeModule
from hdm_lightning.run.inputs import write_inputs
from hdm_lightning.training_run import TrainSummary, build_trainer

__all__ = ["prototype_head", "push_phase", "run_prototype_training"]


def prototype_head(cfg: DictConfig) -> dict[str, Any]:
    """The ``head`` hyper-parameter: the network's shape (``kind``, ``prototypes_per_class``, ...) and phases."""
    return {
        "kind": PROTOTYPE_HEAD,
        "prototypes_per_class": int(cfg.model.prototypes_per_class),
        "prototype_shape": [int(s) for s in cfg.model.prototype_shape],
        **OmegaConf.to_container(cfg.model.prototype),
    }


def _fit_phase(cfg: DictConfig, folder: Path, data: ClassifierDataModule, net: PrototypeNet, phase: str, logger):
    """One phase's ``Trainer.fit`` (resuming the phase's ``last.ckpt``); returns the W&B logger for the next."""
    p = cfg.model.prototype
    epochs = {"warm": p.warm_epochs, "joint": cfg.trainer.max_epochs, "last_layer": p.last_layer_epochs}[phase]
    if epochs == 0:
        return logger
    module = PrototypeModule(
        backbone=cfg.backbone,
        num_classes=len(data.class_names),
        class_names=data.class_names,
        preprocess=data.preprocess.to_dict(),
        optim=OmegaConf.to_container(cfg.optim),
        max_epochs=int(epochs),
        head=prototype_head(cfg),
        phase=phase,
        model=net,
    )
    checkpoints = folder / "checkpoints" / phase
    trainer, _, logger = build_trainer(cfg, folder, max_epochs=int(epochs), checkpoints=checkpoints, logger=logger)
    last = checkpoints / "last.ckpt"
    resume = last if cfg.output.resume and last.is_file() else None
    trainer.fit(module, datamodule=data, ckpt_path=resume, weights_only=True)
    return logger


def _accuracy(net: PrototypeNet, data: ClassifierDataModule) -> float:
    """Top-1 accuracy of ``net`` on the validation set (the exported network, after the last phase)."""
    right = total = 0
    net.eval()
    with torch.no_grad():
        for x, y in data.val_dataloader():
            if y.numel():
                right += int((net(x).argmax(1) == y).sum())
                total += int(y.numel())
    return right / total if total else float("nan")


def run_prototype_training(cfg: DictConfig, folder: Path, data: ClassifierDataModule, main: bool):
    """Train a prototype network through its phases; export ``classifier.pt``. Returns the ``TrainSummary``."""
    classes = data.class_names
    states = {phase: folder / "checkpoints" / "phases" / f"{phase}.pt" for phase in PHASES}
    model, _, source = initial_backbone(cfg.backbone, len(classes), cfg.init)
    net = build_prototype_net(cfg.backbone, len(classes), prototype_head(cfg), model)
    if main:
        folder.mkdir(parents=True, exist_ok=True)
        write_inputs(folder, cfg)
        atomic_write_text(OmegaConf.to_yaml(cfg), folder / "config.yaml")
        print(
            f"training {cfg.backbone} with {net.num_prototypes} prototypes ({source}) on {data.train_set.describe()}; "
            f"validating on {data.val_set.describe()}",
            file=sys.stderr,
        )
    finished = [p for p in PHASES if cfg.output.resume and states[p].is_file()]
    if finished:  # the phases run in order: go on after the last finished one
        net.load_state_dict(load_tensors(states[finished[-1]]))
    logger = None
    for phase in PHASES[len(finished) :]:
        if phase == "push":
            push_phase(net, data.train_set, int(cfg.batch_size), folder if main else None)
        else:
            logger = _fit_phase(cfg, folder, data, net, phase, logger)
        if main:
            atomic_torch_save({k: v.detach().cpu() for k, v in net.state_dict().items()}, states[phase])
    if logger:
        logger.experiment.finish()
    acc = _accuracy(net, data)
    head = {k: prototype_head(cfg)[k] for k in ("kind", "prototypes_per_class", "prototype_shape")}
    exported = folder / "classifier.pt"
    if main:
        save_classifier_checkpoint(
            exported, net, cfg.backbone, len(classes), classes, data.preprocess, {"val_acc1": acc}, head=head
        )
    epochs = int(cfg.model.prototype.warm_epochs + cfg.trainer.max_epochs + cfg.model.prototype.last_layer_epochs)
    return TrainSummary(folder, states["last_layer"], exported, acc, epochs, len(classes))


def _train_batches(dataset: ItemDataset, batch_size: int, ids: list[str]) -> Iterator[tuple[Tensor, Tensor]]:
    """The training images without augmentation, in order; unreadable ones skipped (their ids not appended)."""
    for start in range(0, len(dataset), batch_size):
        items, failed = load_items(dataset, range(start, min(start + batch_size, len(dataset))))
        for _, _, message in failed:
            warnings.warn(f"push: skipping an unreadable training image: {message}", stacklevel=1)
        if items:
            ids.extend(item.id for item in items)
            yield torch.stack([item.image for item in items]), torch.tensor([int(item.label) for item in items])


def push_phase(net: PrototypeNet, dataset: ItemDataset, batch_size: int, folder: Path | None) -> dict:
    """Project the prototypes onto their nearest training patches; write (to ``folder``) and return ``push.json``.

    ``push.json``: per prototype its class, the training image id holding its patch, the patch's ``(row,
    column)`` in the ``feature_size`` map, and the squared distance it moved.
    """
    ids: list[str] = []
    result = push_prototypes(net, _train_batches(dataset, batch_size, ids))
    record = {
        "feature_size": list(result.feature_size),
        "prototypes": [
            {
                "prototype": j,
                "class": int(net.prototype_class[j]),
                "image": ids[int(result.index[j])],
                "position": [int(v) for v in result.position[j]],
                "distance": float(result.distance[j]),
            }
            for j in range(net.num_prototypes)
        ],
    }
    if folder is not None:
        atomic_write_json(record, folder / "push.json")
    return record
