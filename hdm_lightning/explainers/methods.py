"""DM, HDM and MDM explainers (registered by name; the registry is the one list of methods).

- DM: HDM paper §3.2, HDM appx. Algorithm 1.
- HDM: HDM paper §3.1 Eq. 1-5, HDM appx. Algorithm 2.
- MDM: MDM paper §3, Algorithm 1.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from hdm_lightning.callbacks.checkpoint import WorkStore
from hdm_lightning.config import method_config
from hdm_lightning.explainers.engine import FitSettings, combine, fit_resumable, frozen, train_schedule
from hdm_lightning.explainers.fit import EarlyStop, MixingModule
from hdm_lightning.explainers.optim import MaskOptim
from hdm_lightning.explainers.result import Explanation, StageResult
from hdm_lightning.explainers.selectors import ActivationSelector, Target
from hdm_lightning.masks.ops import (
    UPSAMPLE_MODES,
    Threshold,
    dm_combine_threshold,
    hdm_weights,
    hierarchical_masked_image,
    mdm_combine_threshold,
)
from hdm_lightning.registry import Registry
from hdm_lightning.schedules.base import build_schedule

EXPLAINERS: Registry[type] = Registry("explainer")


def check_images(images: object) -> None:
    """Reject what the explainers cannot explain, with a message that names the fix."""
    if not isinstance(images, Tensor):
        raise ValueError(f"images must be a torch.Tensor [B, C, H, W], got {type(images).__name__}")
    if images.dim() != 4:
        hint = " (a single image: images.unsqueeze(0))" if images.dim() == 3 else ""
        raise ValueError(f"images must have rank 4 [B, C, H, W]; got shape {tuple(images.shape)}{hint}")
    if not images.dtype.is_floating_point:
        raise ValueError(
            f"images must be a floating-point tensor, got dtype {images.dtype}: convert (e.g. x.float() / 255) "
            "and normalise as the classifier expects"
        )
    if images.shape[0] == 0 or images.shape[-1] < 1 or images.shape[-2] < 1:
        raise ValueError(f"images must hold at least one image with positive size; got shape {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or inf values: clean or re-load the input")


def mask_optim(cfg) -> MaskOptim:
    """The :class:`MaskOptim` of a method config's ``optim`` section (``dynamics: paper`` ignores the rest)."""
    if cfg.dynamics == "paper":
        return MaskOptim()
    if cfg.dynamics != "stable":
        raise ValueError(f"optim.dynamics must be 'stable' or 'paper', got {cfg.dynamics!r}")
    return MaskOptim(
        betas=(float(cfg.betas[0]), float(cfg.betas[1])),
        eps=float(cfg.eps),
        eps_relative=None if cfg.eps_relative is None else float(cfg.eps_relative),
        schedule=cfg.schedule,
        warmup=float(cfg.warmup),
        average_tail=float(cfg.average_tail),
    )


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and floating dtype of the first parameter (or buffer); CPU/float32 without any."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.dtype.is_floating_point:
            return t.device, t.dtype
    return torch.device("cpu"), torch.float32


class _Explainer:
    """Common glue: config, input checks, frozen classifier, selector, settings."""

    name = ""

    def __init__(self, config: DictConfig | dict | None = None) -> None:
        self.cfg = config if isinstance(config, DictConfig) else method_config(self.name, config)
        if self.cfg.upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {list(UPSAMPLE_MODES)}, got {self.cfg.upsample!r}")
        self.threshold = Threshold(self.cfg.threshold.kind, float(self.cfg.threshold.value))
        self.schedule = build_schedule(self.cfg.schedule.name, OmegaConf.to_container(self.cfg.schedule.params))
        es = self.cfg.early_stop
        self.early = EarlyStop(es.min_steps, es.patience, es.min_delta) if es.enabled else None
        self.optim = mask_optim(self.cfg.optim)

    def explain(
        self,
        model: nn.Module,
        images: Tensor,
        target: Target = None,
        logger=None,
        callbacks=None,
        work_dir: str | Path | None = None,
    ) -> Explanation:
        """Explain ``model``'s decision on ``images`` (``[B, C, H, W]``, normalised as it expects).

        With ``work_dir``, finished stage fits and the fit in flight are checkpointed there (see
        :mod:`hdm_lightning.callbacks.checkpoint`); calling again with the same images, config and
        ``work_dir`` after an interruption continues where it stopped and gives the same maps.
        """
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_images(images)
        device, dtype = model_device_dtype(model)
        images = images.to(device=device, dtype=dtype)
        eng = self.cfg.engine
        settings = FitSettings(
            device=device,
            precision=eng.precision,
            channels_last=eng.channels_last,
            max_rows=eng.max_rows,
            progress_bar=eng.progress_bar,
            log_every=eng.log_every_n_steps,
            logger=logger,
            callbacks=list(callbacks or []),
            store=None if work_dir is None else WorkStore(work_dir, self.fingerprint(model, images, target)),
            checkpoint_every_n_steps=eng.checkpoint_every_n_steps,
            checkpoint_every_n_seconds=eng.checkpoint_every_n_seconds,
            optim=self.optim,
        )
        start = time.perf_counter()
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), frozen(model, eng.channels_last):
            L.seed_everything(int(eng.seed), verbose=False)
            selector = ActivationSelector(model, images, target)
            out = self._explain(model, images, selector, settings)
        out.seconds = time.perf_counter() - start
        empty = int((out.saliency.flatten(1).amax(1) <= 0).sum())
        if empty:
            t = self.cfg.threshold
            warnings.warn(
                f"{self.name}: {empty} of {images.shape[0]} maps are all zero: the threshold gamma "
                f"({t.kind} {t.value:g}) is at or above every value of the combined mask. Train longer, or lower "
                "threshold.value (e.g. threshold: {kind: quantile, value: 0.5})",
                stacklevel=2,
            )
        return out

    def fingerprint(self, model: nn.Module, images: Tensor, target: Target) -> str:
        """A digest of what determines the maps: config, images, target and the model's weights."""
        h = hashlib.sha256()
        h.update(OmegaConf.to_yaml(self.cfg).encode())
        h.update(repr((tuple(images.shape), images.dtype, target if not callable(target) else "callable")).encode())
        if isinstance(target, Tensor):
            h.update(target.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        h.update(images.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        with torch.no_grad():  # weights summarised cheaply: shapes and float64 sums per tensor
            for name, t in model.state_dict().items():
                h.update(f"{name}{tuple(t.shape)}{t.double().sum().item() if t.numel() else 0.0!r}".encode())
        return h.hexdigest()

    def _dm_run(self, model, selector, x: Tensor, settings: FitSettings, prefix: str) -> tuple[StageResult, int]:
        """One DM/MDM run ``Q(x)``: train the schedule on ``x`` against ``f_p(x)``."""
        reference = selector.evaluate(x)
        outcome = train_schedule(
            model,
            selector,
            x,
            reference,
            self.schedule,
            tau=float(self.cfg.tau),
            upsample_mode=self.cfg.upsample,
            aux_reference=getattr(self.cfg, "aux_reference", "original"),
            early_stop=self.early,
            settings=settings,
            prefix=prefix,
        )
        h, w = x.shape[-2:]
        mc = combine(outcome, h, w, self.cfg.upsample)
        finish = mdm_combine_threshold if self.name == "mdm" else dm_combine_threshold
        sal, binary, gamma = finish(mc, self.threshold)
        res = StageResult(
            saliency=sal,
            binary=binary,
            combined=mc,
            gamma=gamma,
            vectors=outcome.vectors,
            input=x,
            reference=reference,
            history=outcome.history,
            vector_names=outcome.names,
        )
        return res, outcome.passes

    def _explain(self, model, images, selector, settings) -> Explanation:
        raise NotImplementedError


def _single_run(self, model, images, selector, settings) -> Explanation:
    res, passes = self._dm_run(model, selector, images, settings, prefix=self.name)
    return Explanation(
        method=self.name,
        saliency=res.saliency,
        binary=res.binary,
        target=selector.targets,
        activation=selector.reference,
        probability=selector.probability,
        stages=[res],
        history={f"{self.name}/{k}": v for k, v in res.history.items()},
        passes_per_image=passes // images.shape[0],
    )


@EXPLAINERS.register("dm")
class DMExplainer(_Explainer):
    """Dynamic masks: ``M_b = N((M_c - gamma) {M_c >= gamma})`` (HDM paper Eq. 9-10)."""

    name = "dm"
    _explain = _single_run


@EXPLAINERS.register("mdm")
class MDMExplainer(_Explainer):
    """Multiple dynamic mask: ``M^h = N({sum g(d_i) >= gamma} sum g(d_i))`` (MDM paper Eq. 2)."""

    name = "mdm"
    _explain = _single_run


@EXPLAINERS.register("hdm")
class HDMExplainer(_Explainer):
    """Hierarchical dynamic masks: ``S`` DM runs on progressively masked images, then a learned mix."""

    name = "hdm"

    def __init__(self, config: DictConfig | dict | None = None) -> None:
        super().__init__(config)
        if int(self.cfg.stages) < 1:
            raise ValueError(f"hdm stages (S) must be >= 1, got {self.cfg.stages!r}")
        mix = self.cfg.mixing
        if int(mix.epochs) < 1 or float(mix.lr) <= 0 or float(mix.lam) < 0:
            raise ValueError(f"hdm mixing needs epochs >= 1, lr > 0, lam >= 0; got {OmegaConf.to_container(mix)}")

    def _explain(self, model, images, selector, settings) -> Explanation:
        x0 = images
        stages, maps, history = [], [], {}
        passes = 0
        x = x0
        for s in range(1, int(self.cfg.stages) + 1):
            # Q(X_{s-1}): f_p keeps the class chosen on X_0; the reference is f_p(X_{s-1}) (SPEC).
            res, p = self._dm_run(model, selector, x, settings, prefix=f"dm{s}")
            passes += p
            maps.append(res.saliency)
            x = hierarchical_masked_image(x0, maps)  # Eq. 2
            res.masked = x
            stages.append(res)
            history.update({f"dm{s}/{k}": v for k, v in res.history.items()})
        stacked = torch.stack(maps, 1)  # [B, S, 1, H, W]
        mix = MixingModule(
            model,
            selector,
            x0,
            stacked,
            selector.reference,
            int(self.cfg.mixing.epochs),
            float(self.cfg.mixing.lr),
            float(self.cfg.mixing.lam),
            prefix="mix",
            log_every=settings.log_every,
            channels_last=settings.channels_last,
            optim=settings.optim,
        )
        fit_resumable(mix, "mix", settings)
        passes += mix.passes
        history["mix"] = mix.history.detach().clone()
        with torch.no_grad():
            v = mix.result_v().detach()
            mh = mix.mixed(v).detach()
            w = hdm_weights(v)
            w = w / w.sum(-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
        return Explanation(
            method="hdm",
            saliency=mh,
            binary=mh > 0,
            target=selector.targets,
            activation=selector.reference,
            probability=selector.probability,
            stages=stages,
            history=history,
            weights=w,
            mixing_v=v.clone(),
            passes_per_image=passes // images.shape[0],
        )


def build_explainer(method: str, config=None) -> _Explainer:
    """The explainer registered as ``method`` with its config merged with ``config``."""
    cls = EXPLAINERS.get(method)
    return cls(method_config(method, config))


def explain(
    model: nn.Module,
    images: Tensor,
    method: str = "hdm",
    target: Target = None,
    config=None,
    logger=None,
    callbacks=None,
    work_dir: str | Path | None = None,
) -> Explanation:
    """Explain ``model`` on ``images`` with HDM, DM or MDM.

    Args:
        model: any classifier ``nn.Module`` (kept frozen; its flags are restored afterwards).
        images: ``[B, C, H, W]`` float tensor, normalised as ``model`` expects.
        method: a registered explainer: ``"hdm"``, ``"dm"`` or ``"mdm"``.
        target: ``None`` (the predicted class), a class index or one per image, or a callable
            ``selector(model, x) -> Tensor[N]`` giving the activation to preserve.
        config: overrides of the method's settings: a dict, DictConfig, dataclass or a YAML path
            (``configs/methods/*.yaml``).
        logger: optional Lightning logger (e.g. ``WandbLogger``) for the per-stage loss curves.
        callbacks: optional Lightning callbacks passed to every fit.
        work_dir: optional folder for mid-stage checkpoints: an interrupted call repeated with the same
            arguments continues where it stopped (same maps as an uninterrupted call).

    Returns:
        :class:`~hdm_lightning.explainers.result.Explanation` with tensors on the model's device.
    """
    explainer = build_explainer(method, config)
    return explainer.explain(model, images, target, logger=logger, callbacks=callbacks, work_dir=work_dir)
