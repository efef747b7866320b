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

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from hdm_lightning.allocator import retain_freed_memory
from hdm_lightning.amortised.explainer import benchmark_vectors
from hdm_lightning.amortised.module import AmortisedMaskModule
from hdm_lightning.amortised.predictor import FeatureTap
from hdm_lightning.config.explainer import register_explainer_check
from hdm_lightning.data.training import ClassifierDataModule
from hdm_lightning.errors import ConfigError
from hdm_lightning.models import check_num_classes, load_classifier
from hdm_lightning.run.folder import TRAINING_NON_RESULT_KEYS
from hdm_lightning.run.training import fit_training, start_training, training_data

__all__ = ["check_explainer_settings", "run_explainer"]


def check_explainer_settings(cfg: DictConfig, settings: DictConfig) -> None:
    """What a predictor needs of its DM settings (registered with :func:`register_explainer_check`)."""
    benchmark_vectors(OmegaConf.to_container(settings.schedule))
    if cfg.predictor.levels and settings.aux_reference != "original":
        raise ValueError(
            f"predictor.levels needs aux_reference: original (Eq. 8), got {settings.aux_reference!r}: the "
            "predictor has no fitted guide activation to match"
        )
    if settings.threshold.kind != "quantile":
        raise ValueError(f"threshold.kind must be quantile for DM maps, got {settings.threshold.kind!r}")


register_explainer_check(check_explainer_settings)


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
    resume = start_training(cfg, folder, (*TRAINING_NON_RESULT_KEYS, "preset"))
    retain_freed_memory()  # every step frees and refaults its activations otherwise (hdm_lightning.allocator)
    classifier = load_classifier(cfg.classifier)
    data = training_data(cfg, classifier.preprocess, epoch_seeded=True)  # a resumed run sees the same batches
    _check_classes(cfg, classifier, data)
    module = _module(cfg, classifier)
    announce = f"training a mask predictor for {classifier.name} ({classifier.source}) on "
    announce += f"{data.train_set.describe()}; validating on {data.val_set.describe()}"
    fit = fit_training(cfg, folder, module, data, resume, announce, "val/loss", "min")
    exported, epochs = folder / "explainer.pt", fit.trainer.current_epoch
    if not fit.main:
        return ExplainerSummary(folder, exported, float("nan"), epochs)
    module.load_state_dict(torch.load(fit.best_path, map_location="cpu", weights_only=True)["state_dict"])
    explainer = module.explainer()
    explainer.info = {
        "classifier": f"{classifier.name} ({classifier.source})",
        "num_classes": int(classifier.num_classes),
        "target": str(cfg.target),
        "epochs": int(epochs),
        "val_loss": fit.score,
        "data": data.train_set.describe(),
    }
    explainer.save(exported)
    return ExplainerSummary(folder, exported, fit.score, epochs)


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
