"""Training a prototype network (``model.head: prototype``): ProtoPNet's phases as sequential Lightning fits.

ProtoPNet (arXiv 1806.10574, §2.2) trains in stages, each with its own optimiser:

1. **warm-up** (``prototype.warm_epochs``): the add-on layers and the prototypes, the backbone frozen;
2. **joint** (``trainer.max_epochs``): everything before the last layer;
3. **push**: each prototype becomes its nearest training patch of its class (no optimiser; the training images
   without augmentation);
4. **last layer** (``prototype.last_layer_epochs``): the last layer alone, with the L1 term on the weights from a
   prototype to the other classes.

Each phase is one ``Trainer.fit`` of :class:`PrototypeModule` with the phase set
(:mod:`hdm_lightning.train_prototype` runs the phases); its end state goes to ``checkpoints/phases/<phase>.pt``
(weights only), so a rerun continues after the last finished phase, and a phase stopped midway resumes from its
own ``last.ckpt``. ``push.json`` records which training patch each prototype is.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hdm_lightning.models.lightning_classifier import ClassifierModule
from hdm_lightning.models.prototype import PrototypeNet, build_prototype_net, prototype_loss

__all__ = ["PHASES", "PrototypeModule"]

PHASES = ("warm", "joint", "push", "last_layer")
"""The training phases in order (``push`` is not a fit)."""


class PrototypeModule(ClassifierModule):
    """:class:`~hdm_lightning.models.lightning_classifier.ClassifierModule` for a :class:`PrototypeNet`, by phase.

    Args:
        head: ``prototypes_per_class``, ``prototype_shape`` and the phase settings (``cluster``, ``separation``,
            ``l1``, ``lr_features``, ``lr_add_on``, ``lr_prototypes``, ``lr_last_layer``).
        phase: ``warm``, ``joint`` or ``last_layer``: which parameters train, with which loss terms.
        (the rest as :class:`ClassifierModule`)
    """

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        class_names: list[str] | None,
        preprocess: dict,
        optim: dict,
        max_epochs: int,
        head: dict,
        phase: str = "joint",
        model: nn.Module | None = None,
    ) -> None:
        if phase not in PHASES or phase == "push":
            raise ValueError(f"phase must be one of warm, joint, last_layer, got {phase!r}")
        net = model if isinstance(model, PrototypeNet) else build_prototype_net(backbone, num_classes, head, model)
        super().__init__(backbone, num_classes, class_names, preprocess, optim, max_epochs, model=net)
        self.save_hyperparameters(ignore=["model"])

    def _trained(self) -> list[tuple[str, list[nn.Parameter], float]]:
        """``(name, parameters, lr)`` of what trains in this phase."""
        net, h = self.model, self.hparams.head
        if self.hparams.phase == "last_layer":
            return [("last_layer", [net.last_layer.weight], float(h["lr_last_layer"]))]
        groups = [
            ("add_on", list(net.add_on.parameters()), float(h["lr_add_on"])),
            ("prototypes", [net.prototypes], float(h["lr_prototypes"])),
        ]
        if self.hparams.phase == "joint":
            groups.insert(0, ("features", list(net.features.parameters()), float(h["lr_features"])))
        return groups

    def on_fit_start(self) -> None:
        """Freeze what this phase does not train.

        A frozen backbone also keeps its batch-norm statistics (eval mode, which Lightning keeps through the
        validation loops), so the pushed patches stay patches of the network.
        """
        trained = {id(p) for _, params, _ in self._trained() for p in params}
        for p in self.model.parameters():
            p.requires_grad_(id(p) in trained)
        self.model.train()
        if self.hparams.phase != "joint":
            self.model.features.eval()

    def training_step(self, batch, batch_idx: int) -> Tensor | None:  # noqa: D102
        x, y = batch
        if y.numel() == 0:
            return None
        h = self.hparams.head
        l1 = float(h["l1"]) if self.hparams.phase == "last_layer" else 0.0
        loss, terms = prototype_loss(self.model, x, y, float(h["cluster"]), float(h["separation"]), l1)
        self.train_acc(terms["logits"], y)
        self.log("train/loss", loss, prog_bar=True)
        for name in ("cross_entropy", "cluster", "separation"):
            self.log(f"train/{name}", terms[name])
        self.log("train/acc1", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self):  # noqa: D102
        decay = float(self.hparams.optim["weight_decay"])
        groups = [
            {"params": params, "lr": lr, "weight_decay": decay if name in ("features", "add_on") else 0.0}
            for name, params, lr in self._trained()
        ]
        return torch.optim.AdamW(groups)
