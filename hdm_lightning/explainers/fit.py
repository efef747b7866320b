"""LightningModules whose parameters are mask vectors, with the frozen classifier inside.

One module = one stage = one ``Trainer.fit``. Every (vector, image) pair of the stage is a row of
one batched forward/backward; the loss is the *sum* of the rows' losses, so each vector receives
exactly the gradient it would get alone, and Adam (elementwise) keeps the vectors independent
(SPEC 'Independence is the performance lever'). The classifier must stay in ``eval()``.

The classifier is held as a plain attribute, not a registered submodule, so that Lightning's
device, precision, checkpoint and DDP machinery never touches the user's weights: checkpoints of
these modules hold the masks only.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import lightning as L
import torch
from lightning.fabric.plugins.environments import LightningEnvironment
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset

from hdm_lightning.explainers.optim import MaskOptim, TailAverage, build_optimizer, set_lr
from hdm_lightning.masks.ops import l1_mean, mix_maps, upsample
from hdm_lightning.schedules.base import MaskVector, Stage


def loss_dtype(dtype: torch.dtype) -> torch.dtype:
    """Losses are kept in at least float32; float64 models keep float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class _Ticks(IterableDataset):
    """An endless stream of dummy batches: the data is the module's own images."""

    def __iter__(self):
        return itertools.repeat(0)


@dataclass
class EarlyStop:
    """Per-row plateau stop (see :class:`hdm_lightning.config.EarlyStopConfig`)."""

    min_steps: int = 2000
    patience: int = 200
    min_delta: float = 0.0


class _FrozenClassifierFit(L.LightningModule):
    """Shared glue: manual optimisation, endless loader, loss history, frozen classifier."""

    check_every = 25  # steps between (device-syncing) checks whether every row has stopped

    def __init__(
        self,
        classifier: nn.Module,
        selector,
        steps: int,
        prefix: str,
        log_every: int = 50,
        channels_last: bool = False,
        optim: MaskOptim | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        object.__setattr__(self, "classifier", classifier)  # deliberately not a submodule
        self.selector = selector
        self.steps = int(steps)
        self.prefix = prefix
        self.log_every = max(int(log_every), 1)
        self.channels_last = channels_last
        self._step = 0
        self._stopped_early = False
        self._resume_optimizer: dict | None = None
        self.in_step = False  # True while a training step runs: its state is not consistent then
        self.optim = optim if optim is not None else MaskOptim()
        self._average = TailAverage(self.optim.average_start(self.steps))
        self._base_lr: list[float] = []

    # ---- resumable work state (mid-stage checkpoints) ------------------------------------------

    @property
    def remaining_steps(self) -> int:
        """Optimiser steps still to run (all of them unless restored from a work state)."""
        return self.steps - self._step

    @property
    def finished(self) -> bool:
        """Whether every step ran (or every row stopped early): the stage's result is final."""
        return self._step >= self.steps or self._stopped_early

    def work_state(self) -> dict:
        """Everything needed to continue this fit exactly where it is: step, parameters, Adam, history.

        Plain tensors, numbers and dicts only, so it loads with ``torch.load(..., weights_only=True)``.
        """
        opt = self.trainer.optimizers[0] if self._trainer is not None and self.trainer.optimizers else None
        return {
            "step": self._step,
            "stopped_early": self._stopped_early,
            "passes": self.passes,
            "params": [p.detach().clone() for p in self.parameters()],
            "optimizer": None if opt is None else opt.state_dict(),
            "history": self.history[: self._step].detach().clone(),
            "average": self._average.state(),
            "extra": self._extra_state(),
        }

    @torch.no_grad()
    def load_work_state(self, state: dict) -> None:
        """Continue from :meth:`work_state` (call before the fit; Adam's state is restored when it starts)."""
        params = list(self.parameters())
        saved = state["params"]
        if len(saved) != len(params) or any(a.shape != b.shape for a, b in zip(saved, params, strict=True)):
            raise ValueError(f"work state of {self.prefix!r} does not fit this stage (different vectors or batch)")
        for p, v in zip(params, saved, strict=True):
            p.copy_(v)
        self._step = int(state["step"])
        self._stopped_early = bool(state["stopped_early"])
        self.passes = int(state["passes"])
        self.history[: self._step] = state["history"].to(self.history)
        self._load_extra_state(state["extra"])
        self._average.load(state["average"])
        self._resume_optimizer = state["optimizer"]

    def setup(self, stage: str) -> None:
        """Refuse a multi-process strategy: it would average the mask gradients of different images."""
        if self.trainer.world_size > 1:
            raise RuntimeError(
                f"{type(self).__name__} ({self.prefix!r}) was given a Trainer with {self.trainer.world_size} "
                f"processes ({type(self.trainer.strategy).__name__}). Its parameters are the masks of single "
                "images: DDP would average the gradients of different images' masks across processes and "
                "give wrong maps. Fit it on one device per process, and share images, not masks, between "
                "processes: explain.py trainer.devices=N does that (hdm_lightning.distributed)."
            )

    def on_train_start(self) -> None:  # noqa: D102
        opt = self.trainer.optimizers[0]
        if self._resume_optimizer is not None:
            opt.load_state_dict(self._resume_optimizer)
            self._resume_optimizer = None
        self._base_lr = [g.get("initial_lr", g["lr"]) for g in opt.param_groups]
        for g, lr in zip(opt.param_groups, self._base_lr, strict=True):
            g["initial_lr"] = lr  # the schedule's base; a resumed Adam state carries the scaled lr

    def _optimizer_step(self, opt) -> None:
        """One step at this step's scheduled learning rate (a pure function of the step: resumable)."""
        set_lr(opt, self._base_lr, self.optim.lr_factor(self._step, self.steps))
        opt.step()

    def _track(self, values: list[Tensor]) -> None:
        """Feed the iterate after this step to the tail average."""
        self._average.update(self._step, values)

    def _result(self, values: list[Tensor]) -> list[Tensor]:
        return self._average.result(values)

    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, extra: dict) -> None:
        pass

    def train(self, mode: bool = True):  # noqa: D102 - the classifier never leaves eval mode
        super().train(mode)
        self.classifier.eval()
        return self

    def train_dataloader(self) -> DataLoader:  # noqa: D102
        return DataLoader(_Ticks(), batch_size=None)

    def _forward_rows(self, x: Tensor, targets: Tensor | None) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        act = self.selector(x, targets)
        # Losses in at least float32 (bf16/fp16 autocast outputs are promoted), float64 stays float64.
        return act.float() if act.dtype in (torch.float16, torch.bfloat16) else act

    def _log_loss(self, loss: Tensor) -> None:
        # Straight to the loggers at this fit's own step (not ``self.log``): Lightning's step count and
        # flush schedule restart with every Trainer, including one that continues a checkpointed fit.
        if self._logging and (self._step % self.log_every == 0 or self._step + 1 == self.steps):
            value = float(loss)
            for logger in self.trainer.loggers:
                logger.log_metrics({f"{self.prefix}/loss": value}, step=self._step)

    @property
    def _logging(self) -> bool:
        return self._trainer is not None and self.trainer.logger is not None and not self.trainer.barebones


class MaskStageModule(_FrozenClassifierFit):
    """Trains every vector of one :class:`Stage` for every image of a batch, together.

    Args:
        classifier: frozen classifier (eval mode, ``requires_grad`` off).
        selector: resolved :class:`~hdm_lightning.explainers.selectors.ActivationSelector`.
        images: the images the masks multiply, ``[B, C, H, W]``.
        stage: the plan of this fit.
        init: initial values per vector, ``[B, 1, a, b]`` each.
        guides: ``g(c^{k-1}, a, b)`` per guided vector (frozen), ``[B, 1, a, b]``.
        reference: consistency target per (vector, image), ``[n_vectors, B]``.
        upsample_mode: ``g``'s interpolation.
        max_rows: masked images per forward/backward (``None``: all rows at once).
        early_stop: optional per-row plateau stop.
    """

    def __init__(
        self,
        classifier: nn.Module,
        selector,
        images: Tensor,
        stage: Stage,
        init: list[Tensor],
        guides: list[Tensor | None],
        reference: Tensor,
        upsample_mode: str = "bilinear",
        max_rows: int | None = None,
        early_stop: EarlyStop | None = None,
        prefix: str = "stage",
        log_every: int = 50,
        channels_last: bool = False,
        optim: MaskOptim | None = None,
    ) -> None:
        super().__init__(classifier, selector, stage.steps, prefix, log_every, channels_last, optim)
        self.stage = stage
        self.vectors: list[MaskVector] = list(stage.vectors)
        self.masks = nn.ParameterList([nn.Parameter(v.detach().clone()) for v in init])
        self.register_buffer("images", images, persistent=False)
        self.guides = guides
        dtype = loss_dtype(images.dtype)
        self.register_buffer("reference", reference.detach().to(dtype), persistent=False)
        self.upsample_mode = upsample_mode
        self.early = early_stop
        n, b = len(self.vectors), images.shape[0]
        self.register_buffer(
            "history", torch.zeros(self.steps, n, b, device=images.device, dtype=dtype), persistent=False
        )
        self.passes = 0
        self._chunks = self._plan_chunks(n, b, max_rows)
        dev = images.device
        self._wc = torch.tensor([v.consistency_weight for v in self.vectors], device=dev, dtype=dtype)
        self._wr = torch.tensor([v.reg_weight for v in self.vectors], device=dev, dtype=dtype)
        if self.early is not None:
            self._best = torch.full((n, b), float("inf"), device=dev, dtype=dtype)
            self._since = torch.zeros((n, b), dtype=torch.long, device=dev)
            self._active = torch.ones((n, b), dtype=torch.bool, device=dev)
            self._frozen = [p.detach().clone() for p in self.masks]

    @staticmethod
    def _plan_chunks(n: int, b: int, max_rows: int | None) -> list[tuple[int, int, int, int]]:
        """Rectangles ``(v0, v1, b0, b1)`` of (vector, image) rows, each at most ``max_rows``."""
        if max_rows is None or n * b <= max_rows:
            return [(0, n, 0, b)]
        max_rows = max(int(max_rows), 1)
        if b <= max_rows:
            per = max_rows // b
            return [(v, min(v + per, n), 0, b) for v in range(0, n, per)]
        return [(v, v + 1, i, min(i + max_rows, b)) for v in range(n) for i in range(0, b, max_rows)]

    def configure_optimizers(self):  # noqa: D102
        groups = [{"params": [p], "lr": v.lr} for p, v in zip(self.masks, self.vectors, strict=True)]
        return build_optimizer(groups, self.optim)

    def result_masks(self) -> list[Tensor]:
        """The trained vectors: the last iterate, or the tail average (``optim.average_tail``)."""
        return self._result(list(self.masks))

    def vector_mask(self, idx: int, p: Tensor, b0: int, b1: int) -> tuple[Tensor, Tensor]:
        """Applied mask ``[nb, 1, H, W]`` and ``L_R`` term ``[nb]`` of vector ``idx`` (Eq. 6 / Eq. 8)."""
        v = self.vectors[idx]
        h, w = self.images.shape[-2:]
        guide = self.guides[idx]
        gated = p if guide is None else p * guide[b0:b1]
        m = upsample(gated, h, w, self.upsample_mode)
        if v.reg_on == "vector":
            reg = l1_mean(p)
        elif guide is None:
            reg = l1_mean(m)
        else:
            reg = l1_mean(upsample(p, h, w, self.upsample_mode))
        return m, reg[:, 0]

    def chunk_losses(self, v0: int, v1: int, b0: int, b1: int) -> Tensor:
        """Per-row losses ``[v1 - v0, b1 - b0]`` for one rectangle of rows."""
        ms, regs = zip(*(self.vector_mask(i, self.masks[i][b0:b1], b0, b1) for i in range(v0, v1)), strict=True)
        m = torch.stack(ms)  # [nv, nb, 1, H, W]
        x = (m * self.images[b0:b1].unsqueeze(0)).flatten(0, 1)
        targets = self.selector.targets[b0:b1].repeat(v1 - v0) if self.selector.fn is None else None
        act = self._forward_rows(x, targets).view(v1 - v0, b1 - b0)
        j = (act - self.reference[v0:v1, b0:b1]) ** 2
        return self._wc[v0:v1, None] * j + self._wr[v0:v1, None] * torch.stack(regs).to(j.dtype)

    def training_step(self, batch, batch_idx):  # noqa: D102
        self.in_step = True
        opt = self.optimizers()
        opt.zero_grad(set_to_none=True)
        step = self._step
        total = 0.0
        for v0, v1, b0, b1 in self._chunks:
            losses = self.chunk_losses(v0, v1, b0, b1)
            self.manual_backward(losses.sum())
            self.history[step, v0:v1, b0:b1] = losses.detach()
            total = total + losses.detach().sum()
            self.passes += (v1 - v0) * (b1 - b0)
        self._optimizer_step(opt)
        with torch.no_grad():
            for p in self.masks:
                p.clamp_(0.0, 1.0)  # SPEC decision: projected onto [0, 1] after every step
            if self.early is not None:
                self._early_stop_update(step)
            self._track(list(self.masks))
        self._log_loss(total / self.history[step].numel())
        self._step += 1
        self.in_step = False

    def _extra_state(self) -> dict:
        if self.early is None:
            return {}
        return {"best": self._best, "since": self._since, "active": self._active, "frozen": list(self._frozen)}

    def _load_extra_state(self, extra: dict) -> None:
        if self.early is not None:
            self._best, self._since, self._active = extra["best"], extra["since"], extra["active"]
            self._frozen = list(extra["frozen"])

    def _early_stop_update(self, step: int) -> None:
        cur = self.history[step]
        improved = cur < self._best - self.early.min_delta
        self._best = torch.where(improved, cur, self._best)
        self._since = torch.where(improved, torch.zeros_like(self._since), self._since + 1)
        # Rows stopped earlier keep their values (Adam still moves them, so put them back).
        for i, p in enumerate(self.masks):
            keep = self._active[i].view(-1, 1, 1, 1)
            p.copy_(torch.where(keep, p, self._frozen[i]))
        if step + 1 >= self.early.min_steps:
            newly = self._active & (self._since >= self.early.patience)
            for i, p in enumerate(self.masks):
                self._frozen[i] = torch.where(newly[i].view(-1, 1, 1, 1), p, self._frozen[i])
            self._active = self._active & ~newly
        if (step + 1) % self.check_every == 0 and not bool(self._active.any()):
            self.history[step + 1 :] = self.history[step]
            self._stopped_early = True
            self.trainer.should_stop = True

    @torch.no_grad()
    def final_activations(self) -> Tensor:
        """``f_p`` of each vector's final applied mask times the images, ``[n_vectors, B]``."""
        out = torch.empty_like(self.reference)
        masks = self.result_masks()
        for v0, v1, b0, b1 in self._chunks:
            ms = [self.vector_mask(i, masks[i][b0:b1], b0, b1)[0] for i in range(v0, v1)]
            x = (torch.stack(ms) * self.images[b0:b1].unsqueeze(0)).flatten(0, 1)
            targets = self.selector.targets[b0:b1].repeat(v1 - v0) if self.selector.fn is None else None
            out[v0:v1, b0:b1] = self._forward_rows(x, targets).view(v1 - v0, b1 - b0)
        return out


class MixingModule(_FrozenClassifierFit):
    """HDM's learned combination (HDM paper Eq. 3-5, HDM appx. Alg. 2 lines 11-32).

    Parameters ``v`` are ``[B, S]``, initialised to ones (SPEC decision); the mix
    ``M_h = sum_j w_j M_j / sum_j w_j`` with ``w_j = sum_{k>=j} v_k^2`` keeps ``w`` non-increasing.
    """

    def __init__(
        self,
        classifier: nn.Module,
        selector,
        images: Tensor,
        maps: Tensor,
        reference: Tensor,
        epochs: int,
        lr: float,
        lam: float,
        prefix: str = "mix",
        log_every: int = 50,
        channels_last: bool = False,
        optim: MaskOptim | None = None,
    ) -> None:
        super().__init__(classifier, selector, epochs, prefix, log_every, channels_last, optim)
        b, s = maps.shape[:2]
        self.v = nn.Parameter(torch.ones(b, s, device=images.device, dtype=maps.dtype))
        self.register_buffer("images", images, persistent=False)
        self.register_buffer("maps", maps, persistent=False)
        dtype = loss_dtype(images.dtype)
        self.register_buffer("reference", reference.detach().to(dtype), persistent=False)
        self.register_buffer(
            "history", torch.zeros(self.steps, 1, b, device=images.device, dtype=dtype), persistent=False
        )
        self.lr, self.lam = float(lr), float(lam)
        self.passes = 0

    def configure_optimizers(self):  # noqa: D102
        return build_optimizer([{"params": [self.v], "lr": self.lr}], self.optim)

    def result_v(self) -> Tensor:
        """The trained ``v``: the last iterate, or the tail average (``optim.average_tail``)."""
        return self._result([self.v])[0]

    def mixed(self, v: Tensor | None = None) -> Tensor:
        """``M_h`` for ``v`` (default: the current iterate), ``[B, 1, H, W]``."""
        return mix_maps(self.maps, self.v if v is None else v)

    def training_step(self, batch, batch_idx):  # noqa: D102
        self.in_step = True
        opt = self.optimizers()
        opt.zero_grad(set_to_none=True)
        mh = self.mixed()
        targets = self.selector.targets if self.selector.fn is None else None
        act = self._forward_rows(mh * self.images, targets)
        losses = (act - self.reference) ** 2 + self.lam * l1_mean(mh)[:, 0].to(act.dtype)
        self.manual_backward(losses.sum())
        self._optimizer_step(opt)
        with torch.no_grad():
            self._track([self.v])
        self.history[self._step, 0] = losses.detach()
        self.passes += mh.shape[0]
        self._log_loss(losses.detach().mean())
        self._step += 1
        self.in_step = False


@contextmanager
def quiet_lightning():
    """Silence Lightning's per-fit banners and the warnings that are expected here."""
    names = [
        "lightning.pytorch.utilities.rank_zero",
        "lightning.pytorch.accelerators.cuda",
        "lightning.fabric.utilities.rank_zero",
        "lightning.pytorch.trainer.connectors.signal_connector",
    ]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=r".*`training_step` returned `None`.*")
            # Lightning's own use of a deprecated torch pytree API (not ours to fix).
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
            yield
    finally:
        for lg, lvl in zip(loggers, levels, strict=True):
            lg.setLevel(lvl)


def run_fit(
    module: _FrozenClassifierFit,
    device: torch.device,
    precision: str = "32-true",
    logger=None,
    callbacks=None,
    progress_bar: bool = False,
) -> None:
    """One ``Trainer.fit`` of ``module`` on ``device`` for ``module.steps`` optimiser steps."""
    if device.type == "cuda":
        accelerator, devices = "gpu", [device.index if device.index is not None else torch.cuda.current_device()]
    elif device.type == "mps":
        accelerator, devices = "mps", 1
    else:
        accelerator, devices = "cpu", 1
    bare = logger is None and not callbacks and not progress_bar
    kwargs = dict(
        accelerator=accelerator,
        devices=devices,
        # One process, whatever the job around it: no SLURM/torchelastic validation or requeue signals here.
        plugins=[LightningEnvironment()],
        max_steps=module.remaining_steps,
        max_epochs=1,
        precision=precision,
        num_sanity_val_steps=0,
        inference_mode=False,
    )
    if bare:
        # Nothing to log or show: barebones skips Lightning's per-step bookkeeping (overhead).
        kwargs.update(
            barebones=True,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
    else:
        kwargs.update(
            logger=logger if logger is not None else False,
            callbacks=list(callbacks or []),
            enable_checkpointing=False,
            enable_progress_bar=progress_bar,
            enable_model_summary=False,
            log_every_n_steps=module.log_every,
        )
    if module.finished:  # restored from a work state saved after its last step
        return
    with quiet_lightning():
        L.Trainer(**kwargs).fit(module)
    # Lightning's teardown moves a GPU-fitted module to the CPU; its masks, buffers and history are read next
    # together with tensors that stay on the device (images, guides, the classifier): bring it back.
    module.to(device)
    if not module.finished:
        # Only an interruption ends a fit early (a callback setting should_stop, a signal handler):
        # its masks are not final, so nothing downstream may use them.
        raise RuntimeError(
            f"fit {module.prefix!r} stopped after {module._step} of {module.steps} steps; rerun to continue"
        )
