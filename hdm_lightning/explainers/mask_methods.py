"""DM, HDM and MDM: registered saliency methods (:mod:`hdm_lightning.contract`) built on sequential Lightning fits.

- DM: "Hierarchical Dynamic Masks for Visual Explanation of Neural Networks" (arXiv 2301.04970) §3.2, Algorithm 1.
- HDM: the same paper, §3.1 Eq. 1-5 and appendix Algorithm 2; restarts: :mod:`hdm_lightning.explainers.restarts`.
- MDM: "Multiple Dynamic Mask" (arXiv 2207.08046) §3, Algorithm 1.

Each is built once from its structured config (``config_class``; a dict, DictConfig, dataclass or YAML preset of
overrides) and called with ``(images, targets)``; the :class:`~hdm_lightning.contract.Attribution` it returns
carries the full :class:`~hdm_lightning.explainers.result.Explanation` (stages, mixing weights, loss histories).
"""

from __future__ import annotations

import hashlib
import warnings
from typing import ClassVar

import lightning as L
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from hdm_lightning.allocator import retain_freed_memory
from hdm_lightning.callbacks.checkpoint import WorkStore
from hdm_lightning.config import DMConfig, HDMConfig, MDMConfig, method_config
from hdm_lightning.config.methods import check_init
from hdm_lightning.contract import (
    RunContext,
    SaliencyMethod,
    register_method,
)
from hdm_lightning.core import PassCounter, frozen
from hdm_lightning.explainers.engine import AUX_REFERENCES, FitSettings, combine, fit_resumable, train_schedule
from hdm_lightning.explainers.fit import EarlyStop
from hdm_lightning.explainers.initializers import build_initializer
from hdm_lightning.explainers.modules import MixingModule
from hdm_lightning.explainers.optim import MaskOptim, mask_optim
from hdm_lightning.explainers.restarts import check_restarts, mixed_spread, restarted_run
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
from hdm_lightning.prepare import COMPILE_MODES, compiled, hook_free_copy, prepare_classifier
from hdm_lightning.schedules.base import build_schedule

__all__ = ["DM", "HDM", "MDM"]


class _MaskMethod(SaliencyMethod):
    """Common glue of DM/HDM/MDM: config, input checks, frozen classifier, selector, fit settings, pass counts.

    Args:
        model: the classifier (kept frozen; every flag restored after each call).
        config: overrides of the method's structured config (:attr:`config_class`): a dict, DictConfig, dataclass
            or the path of a YAML preset (``configs/methods/*.yaml``). Checked here, so a bad key or value fails
            when the method is built, not in the middle of a run.
    """

    def __init__(self, model: nn.Module, config: object = None) -> None:
        super().__init__(model)
        self.config = config
        self.cfg = method_config(self.name, config)
        self.threshold, self.schedule, self.early, self.optim = self.check_config(self.cfg)
        self.initializer = self._initializer(self.cfg)

    @classmethod
    def check_config(cls, cfg) -> tuple[Threshold, object, EarlyStop | None, MaskOptim]:
        """Check a merged config and build its parts: threshold, mask schedule, early stop, optimiser dynamics.

        A bad value fails here: when a method is built, or when a run config is loaded (before any data or model).
        """
        if cfg.upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {list(UPSAMPLE_MODES)}, got {cfg.upsample!r}")
        init, init_checkpoint, aux_reference = cls.start(cfg)
        if aux_reference not in AUX_REFERENCES:
            raise ValueError(f"aux_reference must be one of {list(AUX_REFERENCES)}, got {aux_reference!r}")
        if cfg.engine.compile not in COMPILE_MODES:
            raise ValueError(f"engine.compile must be one of {list(COMPILE_MODES)}, got {cfg.engine.compile!r}")
        if not 0.0 <= float(cfg.tau) <= 1.0:
            raise ValueError(f"tau (initial mask value) must be in [0, 1], got {cfg.tau!r}")
        threshold = Threshold(cfg.threshold.kind, float(cfg.threshold.value))
        schedule = build_schedule(cfg.schedule.name, OmegaConf.to_container(cfg.schedule.params))
        es = cfg.early_stop
        early = EarlyStop(es.min_steps, es.patience, es.min_delta) if es.enabled else None
        check_init(init, init_checkpoint)
        check_restarts(cfg.restarts, cfg.restart_noise)
        if init != "amortised" and schedule.plan(10**6, 10**6)[0].steps == 0:
            raise ValueError(
                f"schedule {cfg.schedule.name!r} has 0 steps for its first vectors: they would stay at tau "
                f"({cfg.tau}). Set epochs >= 1, or start them from a predictor (init: amortised, init_checkpoint: ...)"
            )
        return threshold, schedule, early, mask_optim(cfg.optim)

    @classmethod
    def start(cls, cfg) -> tuple[str, str | None, str]:
        """``(init, init_checkpoint, aux_reference)`` of DM and HDM (MDM has neither guides nor a predictor)."""
        return cfg.init, cfg.init_checkpoint, cfg.aux_reference

    def _initializer(self, cfg):
        """The registered initialiser whose vectors start the fits (e.g. ``init: amortised``), else ``None``."""
        init = self.start(cfg)[0]
        return None if init == "tau" else build_initializer(init, cfg, self.schedule, self.name)

    def run(self, images: Tensor, target: Target, context: RunContext) -> tuple[Tensor, Explanation]:
        """The fits of one call (inside :meth:`SaliencyMethod.explain`'s guards): the map and its explanation.

        ``target``: ``None`` (the predicted class), a class index or one per image, or a callable
        ``selector(model, x) -> Tensor[N]`` giving the activation to preserve. ``context.work_dir``: finished stage
        fits and the fit in flight are checkpointed there (:mod:`hdm_lightning.callbacks.checkpoint`); calling
        again with the same images, config and ``work_dir`` after an interruption continues where it stopped and
        gives the same maps.
        """
        if self.cfg.engine.retain_memory:
            retain_freed_memory()
        settings = self._settings(images.device, images, target, context)
        devices = [images.device] if images.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), frozen(self.model, self.cfg.engine.channels_last):
            L.seed_everything(int(self.cfg.engine.seed), verbose=False)
            selector = ActivationSelector(self._prepared(images, target), images, target)
            out = self._explain(images, selector, settings)
        self._check(out, self.counter, images.shape[0], resumed=context.work_dir is not None)
        return out.saliency, out

    def _prepared(self, images: Tensor, target: Target) -> nn.Module:
        """The classifier the fits run: the prepared copy (``engine.prepare``), compiled (``engine.compile``).

        Its passes are counted. A callable selector may use the model's own methods: it gets the model as given.
        """
        eng = self.cfg.engine
        if callable(target) or not (eng.prepare or eng.compile != "none"):
            return self.model
        model = prepare_classifier(self.model, images).model if eng.prepare else self.model
        if eng.compile != "none":
            model = compiled(hook_free_copy(model) if model is self.model else model, eng.compile)
        if model is not self.model:
            self.counter.watch(model)
        return model

    def _settings(self, device: torch.device, images: Tensor, target: Target, context: RunContext) -> FitSettings:
        eng = self.cfg.engine
        store = None if context.work_dir is None else WorkStore(context.work_dir, self.fingerprint(images, target))
        return FitSettings(
            device=device,
            precision=eng.precision,
            channels_last=eng.channels_last,
            max_rows=eng.max_rows,
            progress_bar=eng.progress_bar,
            log_every=eng.log_every_n_steps,
            logger=context.logger,
            callbacks=list(context.callbacks or []),
            store=store,
            checkpoint_every_n_steps=eng.checkpoint_every_n_steps,
            checkpoint_every_n_seconds=eng.checkpoint_every_n_seconds,
            optim=self.optim,
        )

    def _check(self, out: Explanation, counter: PassCounter, batch: int, resumed: bool) -> None:
        """Warn about all-zero maps, and about a pass count that disagrees with the explanation's."""
        empty = int((out.saliency.flatten(1).amax(1) <= 0).sum())
        if empty:
            t = self.cfg.threshold
            if t.kind == "quantile" and t.value <= 0.5:  # at or below the median already: the mask is flat
                fix = f"or lower threshold.value below {t.value:g} (the masks hardly moved from tau)"
            else:
                fix = "or lower threshold.value (e.g. threshold: {kind: quantile, value: 0.5})"
            warnings.warn(
                f"{self.name}: {empty} of {batch} maps are all zero: the threshold gamma "
                f"({t.kind} {t.value:g}) is at or above every value of the combined mask. Train longer (more "
                f"epochs, a larger lr), {fix}",
                stacklevel=4,
            )
        expected = out.passes_per_image * batch
        # A call that continues checkpointed work legitimately spends fewer passes than it reports; with the
        # per-row stop the images' passes differ and the per-image figure is the mean, rounded down.
        if counter.backward // batch != out.passes_per_image and not resumed:
            warnings.warn(
                f"{self.name}: counted {counter.backward} backward samples but the explanation reports "
                f"{out.passes_per_image} per image x {batch} images = {expected}",
                RuntimeWarning,
                stacklevel=4,
            )

    def fingerprint(self, images: Tensor, target: Target) -> str:
        """A digest of what determines the maps: config, images, target and the model's weights."""
        h = hashlib.sha256()
        h.update(OmegaConf.to_yaml(self.cfg).encode())
        h.update(repr((tuple(images.shape), images.dtype, target if not callable(target) else "callable")).encode())
        if isinstance(target, Tensor):
            h.update(target.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        h.update(images.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        with torch.no_grad():  # weights summarised cheaply: shapes and float64 sums per tensor
            for name, t in self.model.state_dict().items():
                h.update(f"{name}{tuple(t.shape)}{t.double().sum().item() if t.numel() else 0.0!r}".encode())
            if self.initializer is not None:  # init: amortised: the predictor's weights, not only its file name
                for t in self.initializer.predictor.state_dict().values():
                    h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def _dm_run(self, selector, x: Tensor, settings: FitSettings, prefix: str) -> tuple[StageResult, int]:
        """One DM/MDM run ``Q(x)``: train the schedule on ``x`` against ``f_p(x)``."""
        reference = selector.evaluate(x)
        initial = None
        if self.initializer is not None:  # init: amortised: one forward pass predicts the vectors
            if selector.fn is not None:
                raise ValueError("init: amortised explains classes: pass class targets, not a callable selector")
            initial, _ = self.initializer.predict(self.model, x, selector.targets)
        outcome = train_schedule(
            selector.model,
            selector,
            x,
            reference,
            self.schedule,
            tau=float(self.cfg.tau),
            upsample_mode=self.cfg.upsample,
            aux_reference=self.start(self.cfg)[2],
            early_stop=self.early,
            settings=settings,
            prefix=prefix,
            initial=initial,
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

    def _stage_run(self, selector, x0: Tensor, maps: list[Tensor], settings: FitSettings, prefix: str):
        """``Q(X_{s-1})`` on ``(1 - N(sum maps)) X_0``; with restarts the mean of N runs (:func:`restarted_run`)."""
        n, sigma, seed = int(self.cfg.restarts), float(self.cfg.restart_noise), int(self.cfg.engine.seed)
        return restarted_run(lambda sel, x: self._dm_run(sel, x, settings, prefix), selector, x0, maps, n, sigma, seed)

    def _explain(self, images: Tensor, selector: ActivationSelector, settings: FitSettings) -> Explanation:
        """One DM/MDM run on ``images`` (with restarts: the mean of several); HDM overrides it."""
        res, passes = self._stage_run(selector, images, [], settings, prefix=self.name)
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
            restarts=int(self.cfg.restarts),
            spread=res.spread,
            agreement=res.agreement,
        )


@register_method("dm")
class DM(_MaskMethod):
    """Dynamic masks: ``M_b = N((M_c - gamma) {M_c >= gamma})`` (HDM paper §3.2, Eq. 9-10).

    Args:
        model: the classifier.
        config: overrides of :class:`~hdm_lightning.config.DMConfig`.
    """

    config_class: ClassVar[type] = DMConfig


@register_method("mdm")
class MDM(_MaskMethod):
    """Multiple dynamic mask: ``M^h = N({sum g(d_i) >= gamma} sum g(d_i))`` (MDM paper §3, Eq. 2).

    Args:
        model: the classifier.
        config: overrides of :class:`~hdm_lightning.config.MDMConfig`.
    """

    config_class: ClassVar[type] = MDMConfig

    @classmethod
    def start(cls, cfg) -> tuple[str, None, str]:  # noqa: D102
        return "tau", None, "original"  # every mask starts at tau; no auxiliary vectors to guide


@register_method("hdm")
class HDM(_MaskMethod):
    """Hierarchical dynamic masks: ``S`` DM runs on progressively masked images, then a learned mix (HDM paper §3.1).

    Args:
        model: the classifier.
        config: overrides of :class:`~hdm_lightning.config.HDMConfig`.
    """

    config_class: ClassVar[type] = HDMConfig

    @classmethod
    def check_config(cls, cfg) -> tuple[Threshold, object, EarlyStop | None, MaskOptim]:  # noqa: D102
        if int(cfg.stages) < 1:
            raise ValueError(f"hdm stages (S) must be >= 1, got {cfg.stages!r}")
        mix = cfg.mixing
        if int(mix.epochs) < 1 or float(mix.lr) <= 0 or float(mix.lam) < 0:
            raise ValueError(f"hdm mixing needs epochs >= 1, lr > 0, lam >= 0; got {OmegaConf.to_container(mix)}")
        return super().check_config(cfg)

    def _explain(self, images: Tensor, selector: ActivationSelector, settings: FitSettings) -> Explanation:
        x0 = images
        stages, maps, history = [], [], {}
        passes = 0
        for s in range(1, int(self.cfg.stages) + 1):
            # Q(X_{s-1}): f_p keeps the class chosen on X_0; the reference is f_p(X_{s-1}) (docs/methods.md).
            # With restarts, maps holds the stages' mean maps, so every stage sees the same X_{s-1}.
            res, p = self._stage_run(selector, x0, maps, settings, prefix=f"dm{s}")
            passes += p
            maps.append(res.saliency)
            x = hierarchical_masked_image(x0, maps)  # Eq. 2
            res.masked = x
            stages.append(res)
            history.update({f"dm{s}/{k}": v for k, v in res.history.items()})
        stacked = torch.stack(maps, 1)  # [B, S, 1, H, W]
        mix = MixingModule(
            selector.model,
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
            spread, agreement = mixed_spread([st.runs for st in stages], v)  # (None, None) without restarts
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
            restarts=int(self.cfg.restarts),
            spread=spread,
            agreement=agreement,
        )
