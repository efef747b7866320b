"""Fine-tuning the classifier that gets explained: a LightningModule and the backbone's starting weights.

The module's hyper-parameters are plain data (backbone name, class count, class names, preprocessing),
so Lightning's checkpoint carries everything ``explain.py`` needs: ``classifier.checkpoint=<file>`` and
nothing else (:func:`hdm_lightning.models.load_classifier_checkpoint` reads it with
``weights_only=True``). ``train_classifier.py`` also exports the best weights in the smaller
``hdm_lightning.classifier`` format.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from hdm_lightning.models.backbones import build_backbone, default_preprocess
from hdm_lightning.models.preprocess import Preprocess
from hdm_lightning.models.torchvision_weights import load_torchvision_weights

__all__ = ["ClassifierModule", "cosine_with_warmup", "initial_backbone", "transfer_weights"]


def transfer_weights(model: nn.Module, state: Mapping[str, Tensor], what: str) -> list[str]:
    """Load every tensor of ``state`` whose name and shape fit ``model``; the rest must be the head.

    The classification head of a pretrained model has its own class count, so its tensors do not fit
    a model built for ``num_classes``: they are left at their (random) initialisation. Anything else
    that does not fit means the file belongs to another architecture, which is an error.

    Returns:
        The names of the model's tensors left at initialisation (the head).

    Raises:
        ValueError: a tensor outside the head is missing or has another shape.
    """
    own = model.state_dict()
    fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    left = [k for k in own if k not in fits and not k.endswith("num_batches_tracked")]
    # The head: the last module holding parameters (``fc``, ``classifier.1``, ``heads.head``, ``head.fc`` ...).
    last = [name for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))][-1]
    outside = [k for k in left if not k.startswith(last + ".")]
    if outside:
        shown = ", ".join(outside[:5]) + (f" (and {len(outside) - 5} more)" if len(outside) > 5 else "")
        raise ValueError(
            f"{what} does not fit this backbone beyond its head ({shown}): use weights of the same architecture"
        )
    model.load_state_dict(fits, strict=False)
    return left


def initial_backbone(backbone: str, num_classes: int, init: Any) -> tuple[nn.Module, Preprocess, str]:
    """The backbone with ``num_classes`` outputs and its starting weights, its preprocessing, and a source line.

    Args:
        backbone: a torchvision name, ``timm/<name>`` or ``small_cnn``.
        num_classes: size of the new head.
        init: an ``InitConfig``: ``imagenet`` (torchvision weights from the torch hub cache; never
            downloaded), ``file`` (a state dict of the same architecture), ``random``.

    Raises:
        ValueError: an unknown backbone, weights missing from the cache (the message names the file and
            the folder), or weights of another architecture.
    """
    model = build_backbone(backbone, num_classes)
    if init.kind == "random":
        return model, default_preprocess(backbone), "random init"
    if init.kind == "imagenet":
        if backbone.startswith("timm/") or backbone == "small_cnn":
            raise ValueError(
                f"init.kind=imagenet reads torchvision weights; {backbone!r} has none here: use init.kind=file with "
                "init.file=<state dict>, or init.kind=random"
            )
        pretrained = load_torchvision_weights(backbone, init.weights)
        head = transfer_weights(model, pretrained.model.state_dict(), pretrained.source)
        return model, pretrained.preprocess, f"{pretrained.source} (new head: {', '.join(head)})"
    from pathlib import Path

    path = Path(init.file)
    if not path.is_file():
        raise ValueError(f"init.file {str(path)!r} does not exist: give a state dict saved with torch.save")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read init.file {str(path)!r} as a tensors-only state dict: {e}") from None
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"init.file {str(path)!r} holds a {type(state).__name__}, not a state dict")
    head = transfer_weights(model, state, f"init.file {str(path)!r}")
    return model, default_preprocess(backbone), f"file {path} (new head: {', '.join(head) or 'none'})"


def cosine_with_warmup(opt: torch.optim.Optimizer, epochs: int, warm: int) -> dict:
    """Lightning's optimiser dict: a linear warm-up over ``warm`` epochs (from 0.1x), then a cosine decay to 0."""
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs - warm, 1))
    if warm > 0:
        ramp = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=warm)
        sched = torch.optim.lr_scheduler.SequentialLR(opt, [ramp, cosine], milestones=[warm])
    else:
        sched = cosine
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


class ClassifierModule(L.LightningModule):
    """A backbone with a ``num_classes`` head, trained with cross-entropy; top-1/top-5 accuracy on validation.

    Args:
        backbone: the backbone's name (stored in the checkpoint; ``build_backbone`` rebuilds it).
        num_classes: number of classes.
        class_names: their names, stored for ``explain.py``'s manifest.
        preprocess: ``Preprocess.to_dict()`` of the evaluation preprocessing, stored for ``explain.py``.
        optim: optimiser settings (``name``, ``lr``, ``weight_decay``, ``warmup_epochs``, ``label_smoothing``).
        max_epochs: length of the cosine schedule.
        model: the initialised network (not a hyper-parameter: it is the state dict).
    """

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        class_names: list[str] | None,
        preprocess: dict,
        optim: dict,
        max_epochs: int,
        model: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model if model is not None else build_backbone(backbone, num_classes)
        top5 = min(5, num_classes)
        self.val_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc5 = MulticlassAccuracy(num_classes, top_k=top5, average="micro")
        self.train_acc = MulticlassAccuracy(num_classes, top_k=1, average="micro")

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.model(x)

    def _loss(self, logits: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(logits, y, label_smoothing=float(self.hparams.optim.get("label_smoothing", 0.0)))

    def training_step(self, batch, batch_idx: int) -> Tensor | None:  # noqa: D102
        x, y = batch
        if y.numel() == 0:
            return None  # every image of the batch was unreadable (each was warned about)
        logits = self(x)
        loss = self._loss(logits, y)
        self.train_acc(logits, y)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc1", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:  # noqa: D102
        x, y = batch
        if y.numel() == 0:
            return
        logits = self(x)
        self.val_acc1(logits, y)
        self.val_acc5(logits, y)
        self.log("val/loss", self._loss(logits, y), sync_dist=True)
        self.log("val/acc1", self.val_acc1, prog_bar=True)
        self.log(f"val/acc{self.val_acc5.top_k}", self.val_acc5)

    def configure_optimizers(self):  # noqa: D102
        o = self.hparams.optim
        # No weight decay on biases and normalisation weights (the usual fine-tuning recipe).
        decay = [p for p in self.model.parameters() if p.requires_grad and p.dim() > 1]
        rest = [p for p in self.model.parameters() if p.requires_grad and p.dim() <= 1]
        groups = [{"params": decay, "weight_decay": o["weight_decay"]}, {"params": rest, "weight_decay": 0.0}]
        if o["name"] == "sgd":
            opt = torch.optim.SGD(groups, lr=o["lr"], momentum=0.9, nesterov=True)
        else:
            opt = torch.optim.AdamW(groups, lr=o["lr"])
        return cosine_with_warmup(opt, int(self.hparams.max_epochs), int(o.get("warmup_epochs", 0)))
