"""Runs a schedule's stages as sequential fits and combines the trained vectors (plain torch + fits)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from hdm_lightning.callbacks.checkpoint import MaskCheckpoint, WorkStore
from hdm_lightning.explainers.fit import EarlyStop, FrozenClassifierFit, run_fit
from hdm_lightning.explainers.modules import MaskStageModule
from hdm_lightning.explainers.optim import MaskOptim
from hdm_lightning.masks.ops import upsample
from hdm_lightning.schedules.base import MaskSchedule, Stage, validate_plan

AUX_REFERENCES = ("original", "previous")


@dataclass
class FitSettings:
    """Engine settings shared by every fit of one ``explain`` call."""

    device: torch.device
    precision: str = "32-true"
    channels_last: bool = False
    max_rows: int | None = None
    progress_bar: bool = False
    log_every: int = 50
    logger: object = None
    callbacks: list = field(default_factory=list)
    store: WorkStore | None = None  # mid-stage checkpoints of this batch (None: nothing saved)
    checkpoint_every_n_steps: int | None = None
    checkpoint_every_n_seconds: float | None = 60.0
    optim: MaskOptim = field(default_factory=MaskOptim)  # the mask optimiser's dynamics


def fit_resumable(module: FrozenClassifierFit, key: str, settings: FitSettings) -> None:
    """``run_fit`` that continues from the store's in-flight state of ``key`` and checkpoints as it goes."""
    callbacks = list(settings.callbacks)
    if settings.store is not None:
        state = settings.store.load_partial(key)
        if state is not None:
            module.load_work_state(state)
        every_steps, every_s = settings.checkpoint_every_n_steps, settings.checkpoint_every_n_seconds
        callbacks.append(MaskCheckpoint(settings.store, key, every_steps, every_s))
    run_fit(module, settings.device, settings.precision, settings.logger, callbacks, settings.progress_bar)


@dataclass
class ScheduleOutcome:
    """Trained vectors of one schedule run, their histories, and the passes spent."""

    vectors: dict[str, Tensor]
    history: dict[str, Tensor]
    names: dict[str, list[str]]
    plan: list[Stage]
    passes: int


def train_schedule(
    classifier: nn.Module,
    selector,
    images: Tensor,
    reference: Tensor,
    schedule: MaskSchedule,
    *,
    tau: float,
    upsample_mode: str,
    aux_reference: str,
    early_stop: EarlyStop | None,
    settings: FitSettings,
    prefix: str,
    initial: dict[str, Tensor] | None = None,
) -> ScheduleOutcome:
    """Train every stage of ``schedule`` on ``images`` (one fit per stage).

    Args:
        classifier: the frozen classifier.
        selector: the resolved activation selector.
        images: the images the masks multiply, ``[B, C, H, W]``.
        reference: ``f_p(images)``, ``[B]``, the consistency target (Eq. 6, 8; MDM paper Eq. 1).
        aux_reference: ``"original"``: guided vectors also match ``f_p(images)`` (Eq. 8, default);
            ``"previous"``: they match their guide's masked activation ``A^{(k-1,j)}`` (Alg. 1 l.19).
        schedule: the plan of stages.
        tau: initial value of vectors without ``init_from``.
        upsample_mode: ``g``'s interpolation.
        early_stop: optional per-row plateau stop.
        settings: device, precision, chunking, logger and callbacks.
        prefix: log-key prefix (``"dm1"``).
        initial: starting values by name (``init: amortised``: a predictor's benchmark vectors, and its auxiliary
            levels when it predicts them), clamped to [0, 1]; they replace ``tau`` and Eq. 7's ``init_from``.
    """
    if aux_reference not in AUX_REFERENCES:
        raise ValueError(f"aux_reference must be one of {list(AUX_REFERENCES)}, got {aux_reference!r}")
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau (initial mask value) must be in [0, 1], got {tau!r}")
    h, w = images.shape[-2:]
    plan = schedule.plan(h, w)
    validate_plan(plan, h, w)
    run = _ScheduleRun(classifier, selector, images, reference, tau, upsample_mode, aux_reference, early_stop, settings)
    run.initial = dict(initial or {})
    history: dict[str, Tensor] = {}
    names: dict[str, list[str]] = {}
    passes = 0
    for stage in plan:
        key = f"{prefix}/{stage.name}"
        state = settings.store.load_finished(key) if settings.store is not None else None
        if state is None:  # not finished before an interruption: train it
            state = run.train(stage, key)
            if settings.store is not None:
                settings.store.save_finished(key, state)
        run.trained.update(state["vectors"])
        run.final_act.update(state["final_act"])
        history[stage.name] = state["history"]
        names[stage.name] = [v.name for v in stage.vectors]
        passes += int(state["passes"])
    return ScheduleOutcome(run.trained, history, names, plan, passes)


@dataclass
class _ScheduleRun:
    """One schedule run's fixed inputs and what its finished stages trained (vectors, final activations)."""

    classifier: nn.Module
    selector: object
    images: Tensor
    reference: Tensor
    tau: float
    upsample_mode: str
    aux_reference: str
    early_stop: EarlyStop | None
    settings: FitSettings
    trained: dict[str, Tensor] = field(default_factory=dict)
    initial: dict[str, Tensor] = field(default_factory=dict)
    final_act: dict[str, Tensor] = field(default_factory=dict)

    def inputs(self, stage: Stage) -> tuple[list[Tensor], list[Tensor | None], Tensor]:
        """Initial values, guides and consistency targets of the stage's vectors (HDM paper Eq. 7-8)."""
        b = self.images.shape[0]
        init, guides, refs = [], [], []
        for v in stage.vectors:
            a, bb = v.size
            if v.name in self.initial:  # a given start (a predictor's vector) replaces tau and Eq. 7 alike
                init.append(self.initial[v.name].to(self.images).clamp(0.0, 1.0))
            elif v.init_from is not None:
                init.append(upsample(self.trained[v.init_from], a, bb, self.upsample_mode).clamp(0.0, 1.0))
            elif stage.steps == 0:
                raise ValueError(
                    f"stage {stage.name!r} has 0 steps, so vector {v.name!r} would stay at tau: give it steps, or "
                    "start it from a predictor (init: amortised)"
                )
            else:
                init.append(
                    torch.full((b, 1, a, bb), float(self.tau), dtype=self.images.dtype, device=self.images.device)
                )
            guides.append(None if v.guide is None else upsample(self.trained[v.guide], a, bb, self.upsample_mode))
            use_prev = self.aux_reference == "previous" and v.guide is not None
            refs.append(self.final_act[v.guide] if use_prev else self.reference)
        return init, guides, torch.stack(refs)

    def train(self, stage: Stage, key: str) -> dict:
        """Fit the stage (continuing a checkpointed fit of ``key``); its state as the work store keeps it."""
        init, guides, refs = self.inputs(stage)
        s = self.settings
        module = MaskStageModule(
            self.classifier,
            self.selector,
            self.images,
            stage,
            init,
            guides,
            refs,
            upsample_mode=self.upsample_mode,
            max_rows=s.max_rows,
            early_stop=self.early_stop,
            prefix=key,
            log_every=s.log_every,
            channels_last=s.channels_last,
            optim=s.optim,
        )
        fit_resumable(module, key, s)
        vectors = {v.name: p.detach().clone() for v, p in zip(stage.vectors, module.result_masks(), strict=True)}
        acts = {}
        if self.aux_reference == "previous":
            out = module.final_activations()
            acts = {v.name: out[i] for i, v in enumerate(stage.vectors)}
        return {
            "vectors": vectors,
            "final_act": acts,
            "history": module.history.detach().clone(),
            "passes": module.passes,
        }


def combine(outcome: ScheduleOutcome, height: int, width: int, upsample_mode: str) -> Tensor:
    """``M_c = sum_v combine_weight_v * g(v, H, W)`` (HDM paper Eq. 9; MDM paper ``sum g(d_i)``)."""
    total = None
    for stage in outcome.plan:
        for v in stage.vectors:
            if v.combine_weight == 0:
                continue
            term = v.combine_weight * upsample(outcome.vectors[v.name], height, width, upsample_mode)
            total = term if total is None else total + term
    if total is None:
        raise ValueError("the schedule marks no vector for the combined map (all combine_weight == 0)")
    return total
