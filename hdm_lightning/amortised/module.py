"""Training the mask predictor on the DM loss: an ordinary data-parallel LightningModule.

For a batch of training images ``X`` with classes ``c`` (the predicted class, the label, or a random class), the
predictor outputs the benchmark vectors ``d_i``; each masked image ``g(d_i) * X`` goes through the frozen classifier
and the loss is DM's own (:func:`hdm_lightning.masks.ops.dm_row_loss`, built by
:func:`hdm_lightning.masks.ops.vector_mask`, the functions the per-image fits use):
``sum_i (f_c(g(d_i) X) - f_c(X))^2 + eta_i * L_R(g(d_i))``, averaged over the images. Unlike the per-image mask fits,
this is one model trained on many images, so DDP's gradient averaging is right: ``trainer.devices=N`` just works.

The classifier is a plain attribute, not a submodule: Lightning's checkpoints and DDP see the predictor only.
"""

from __future__ import annotations

import copy

import lightning as L
import torch
from torch import Tensor, nn

from hdm_lightning.amortised.explainer import AmortisedExplainer, predicted_vectors
from hdm_lightning.amortised.predictor import FeatureTap, MaskPredictor
from hdm_lightning.config.explainer import TARGETS
from hdm_lightning.masks.ops import Threshold, dm_row_loss, upsample, vector_mask
from hdm_lightning.models.lightning_classifier import cosine_with_warmup

__all__ = ["TARGETS", "AmortisedMaskModule", "predictor_loss"]


def predictor_loss(
    classifier: nn.Module,
    images: Tensor,
    targets: Tensor,
    reference: Tensor,
    vectors: list[Tensor],
    specs,
    upsample_mode: str = "bilinear",
    reg_scale: float = 1.0,
) -> Tensor:
    """Per-(vector, image) DM losses ``[n_vectors, B]`` of ``vectors`` on ``images`` (one batched forward/backward).

    Args:
        classifier: the frozen classifier (eval mode).
        images: ``X``, ``[B, C, H, W]``.
        targets: the class of each image, ``[B]``.
        reference: ``f_c(X)``, ``[B]``.
        vectors: one ``[B, 1, a, b]`` per vector: DM's benchmark vectors ``d_i``, and the auxiliary levels
            ``c_j^k(i)`` when predicted.
        specs: the :class:`~hdm_lightning.schedules.base.MaskVector` of each (loss weights, ``reg_on``, guide).
            A guided vector's mask is ``g(c^k * g(c^{k-1}, a, b), H, W)`` with the guide detached: as in DM,
            where ``c^{k-1}`` is frozen while level ``k`` is fitted (Eq. 8), each vector learns from its own loss.
        upsample_mode: ``g``'s interpolation.
        reg_scale: a factor on every ``eta`` (the training's warm-up of ``L_R``; 1: DM's loss).
    """
    h, w = images.shape[-2:]
    by_name = {s.name: d for d, s in zip(vectors, specs, strict=True)}
    pairs = [
        vector_mask(
            d,
            None if s.guide is None else guide(by_name[s.guide], s.size, upsample_mode),
            h,
            w,
            s.reg_on,
            upsample_mode,
        )
        for d, s in zip(vectors, specs, strict=True)
    ]
    ms, regs = zip(*pairs, strict=True)
    n = len(vectors)
    x = (torch.stack(ms) * images.unsqueeze(0)).flatten(0, 1)
    act = classifier(x).gather(1, targets.repeat(n)[:, None])[:, 0].view(n, -1)
    wc = torch.tensor([s.consistency_weight for s in specs], dtype=act.dtype, device=act.device)[:, None]
    wr = torch.tensor([reg_scale * s.reg_weight for s in specs], dtype=act.dtype, device=act.device)[:, None]
    return dm_row_loss(act, reference[None, :].to(act.dtype), torch.stack(regs), wc, wr)


def guide(parent: Tensor, size: tuple[int, int], upsample_mode: str) -> Tensor:
    """``g(c^{k-1}, a, b)``, detached: the frozen guide of a level-``k`` vector (HDM paper Eq. 8)."""
    return upsample(parent.detach(), size[0], size[1], upsample_mode)


class AmortisedMaskModule(L.LightningModule):
    """The predictor and its training on the DM loss (module docstring).

    Args:
        in_channels: channels of the classifier's feature layer.
        num_classes: the classifier's classes.
        layer: the feature layer's dotted path (``None``: the architecture's Grad-CAM layer).
        schedule: ``{"name": "dm", "params": {...}}``: the vectors to predict (sizes) and the loss weights (``eta``).
        upsample: ``g``'s interpolation.
        threshold: ``{"kind": ..., "value": ...}``, DM's ``gamma``, recorded for the maps.
        hidden: the predictor's channels.
        output: the predictor's output: ``sigmoid`` or ``clamp`` (DM's projection).
        tau: the predictor's initial output (DM's initial value).
        target: which class each training image is explained for: ``predicted``, ``label``, ``random``, or
            ``mixed`` (the predicted class for half the images, a random one for the others: the class
            embedding then learns what each class keeps, so the maps pass the random-logit test). Validation
            uses the predicted class (or the label for ``label``).
        optim: ``lr``, ``weight_decay``, ``warmup_epochs``, and ``reg_warmup_epochs``: ``eta`` ramps linearly from 0
            to its value over these training epochs (per step); validation always uses the full ``eta``.
        max_epochs: length of the cosine learning-rate decay.
        seed: every epoch reseeds with ``seed + epoch`` (shuffling, augmentation, random targets), so an epoch
            redone after an interruption is the epoch an uninterrupted run trains.
        skips: earlier classifier layers the predictor also reads (dotted paths), and ``skip_channels`` theirs.
        image_size: ``[H, W]`` of the training images when the predictor also outputs DM's auxiliary levels
            (their sizes depend on it); ``None``: the benchmark vectors only.
        classifier: the frozen classifier (not a hyper-parameter; not saved in checkpoints).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        layer: str | None,
        schedule: dict,
        upsample: str,
        threshold: dict,
        hidden: int,
        tau: float,
        target: str,
        optim: dict,
        max_epochs: int,
        seed: int = 0,
        output: str = "sigmoid",
        skips: list | None = None,
        skip_channels: list | None = None,
        image_size: list | None = None,
        classifier: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if target not in TARGETS:
            raise ValueError(f"target must be one of {list(TARGETS)}, got {target!r}")
        self.save_hyperparameters(ignore=["classifier"])
        size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
        self.specs = [v for stage in predicted_vectors(schedule, size) for v in stage.vectors]
        sizes = [v.size for v in self.specs]
        self.predictor = MaskPredictor(in_channels, num_classes, sizes, hidden, tau, output, skip_channels or [])
        object.__setattr__(self, "classifier", classifier)  # deliberately not a submodule
        self._tap: FeatureTap | None = None

    def attach(self, classifier: nn.Module) -> None:
        """Set the frozen classifier (eval mode, no gradients for its weights)."""
        classifier.eval()
        for p in classifier.parameters():
            p.requires_grad_(False)
        object.__setattr__(self, "classifier", classifier)
        self._tap = FeatureTap(classifier, self.hparams.layer, self.hparams.skips or [])

    def on_fit_start(self) -> None:  # noqa: D102
        self.attach(self.classifier.to(self.device))

    on_validation_start = on_fit_start

    def on_train_epoch_start(self) -> None:  # noqa: D102
        # before the epoch's DataLoader iterator (and its sampler's seed) is made
        L.seed_everything(int(self.hparams.seed) + int(self.current_epoch), verbose=False)

    def explainer(self) -> AmortisedExplainer:
        """The predictor with the settings it predicts for (what ``explainer.pt`` holds)."""
        t = self.hparams.threshold
        return AmortisedExplainer(
            predictor=copy.deepcopy(self.predictor).cpu().eval(),  # a copy: training goes on with the original
            layer=self._tap.layer if self._tap is not None else self.hparams.layer,
            schedule=dict(self.hparams.schedule),
            upsample=self.hparams.upsample,
            threshold=Threshold(t["kind"], float(t["value"])),
            skips=list(self.hparams.skips or []),
            image_size=None if self.hparams.image_size is None else tuple(self.hparams.image_size),
        )

    def _targets(self, logits: Tensor, labels: Tensor) -> Tensor:
        kind = self.hparams.target
        if kind == "label":
            return labels
        predicted = logits.argmax(1)
        if kind == "predicted" or not self.training:  # validation: the class explain.py explains by default
            return predicted
        drawn = torch.randint(0, logits.shape[1], labels.shape, device=labels.device)
        if kind == "random":
            return drawn
        keep = torch.rand(labels.shape, device=labels.device) < 0.5  # mixed: half predicted, half a random class
        return torch.where(keep, predicted, drawn)

    def reg_scale(self) -> float:
        """The warm-up factor on ``eta`` at this training step (1 after ``reg_warmup_epochs``, and in validation)."""
        warm = float(self.hparams.optim.get("reg_warmup_epochs", 0))
        if not self.training or warm <= 0 or self._trainer is None:
            return 1.0
        per_epoch = max(int(self.trainer.num_training_batches), 1)
        return min(1.0, (self.global_step + 1) / (warm * per_epoch))

    def losses(self, images: Tensor, labels: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Per-(vector, image) DM losses ``[n, B]`` and the predicted vectors for a batch."""
        with torch.no_grad():
            feats, logits = self._tap.features(images)
            targets = self._targets(logits, labels)
            reference = logits.gather(1, targets[:, None])[:, 0]
        vectors = self.predictor([f.float() for f in feats], targets)
        rows = predictor_loss(
            self.classifier, images, targets, reference, vectors, self.specs, self.hparams.upsample, self.reg_scale()
        )
        return rows, vectors

    def _shared(self, batch, stage: str) -> Tensor | None:
        x, y = batch
        if y.numel() == 0:
            return None  # every image of the batch was unreadable (each was warned about)
        rows, vectors = self.losses(x, y)
        loss = rows.sum(0).mean()  # DM sums its vectors' losses; images are averaged
        b = x.shape[0]
        sync = stage == "val"
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=b, sync_dist=sync)
        area = torch.stack([d.mean() for d in vectors]).mean()
        self.log(f"{stage}/mask_mean", area, prog_bar=True, batch_size=b, sync_dist=sync)
        return loss

    def training_step(self, batch, batch_idx: int) -> Tensor | None:  # noqa: D102
        return self._shared(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:  # noqa: D102
        self._shared(batch, "val")

    def configure_optimizers(self):  # noqa: D102
        o = self.hparams.optim
        opt = torch.optim.AdamW(self.predictor.parameters(), lr=float(o["lr"]), weight_decay=float(o["weight_decay"]))
        return cosine_with_warmup(opt, int(self.hparams.max_epochs), int(o.get("warmup_epochs", 0)))
