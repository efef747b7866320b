"""The fit machinery shared by the mask modules: manual optimisation, early stop, one ``Trainer.fit``.

One module = one stage = one ``Trainer.fit`` (:func:`run_fit`); the modules themselves (a DM/MDM stage, HDM's
mixing) are in :mod:`hdm_lightning.explainers.modules`. The classifier must stay in ``eval()``.

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

from hdm_lightning.explainers.optim import MaskOptim, TailAverage, set_lr


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


class FrozenClassifierFit(L.LightningModule):
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
        self.steps_done = 0
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
        return self.steps - self.steps_done

    @property
    def finished(self) -> bool:
        """Whether every step ran (or every row stopped early): the stage's result is final."""
        return self.steps_done >= self.steps or self._stopped_early

    def work_state(self) -> dict:
        """Everything needed to continue this fit exactly where it is: step, parameters, Adam, history.

        Plain tensors, numbers and dicts only, so it loads with ``torch.load(..., weights_only=True)``.
        """
        opt = self.trainer.optimizers[0] if self._trainer is not None and self.trainer.optimizers else None
        return {
            "step": self.steps_done,
            "stopped_early": self._stopped_early,
            "passes": self.passes,
            "params": [p.detach().clone() for p in self.parameters()],
            "optimizer": None if opt is None else opt.state_dict(),
            "history": self.history[: self.steps_done].detach().clone(),
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
        self.steps_done = int(state["step"])
        self._stopped_early = bool(state["stopped_early"])
        self.passes = int(state["passes"])
        self.history[: self.steps_done] = state["history"].to(self.history)
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
        set_lr(opt, self._base_lr, self.optim.lr_factor(self.steps_done, self.steps))
        opt.step()

    def _track(self, values: list[Tensor]) -> None:
        """Feed the iterate after this step to the tail average."""
        self._average.update(self.steps_done, values)

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
        if self._logging and (self.steps_done % self.log_every == 0 or self.steps_done + 1 == self.steps):
            value = float(loss)
            for logger in self.trainer.loggers:
                logger.log_metrics({f"{self.prefix}/loss": value}, step=self.steps_done)

    @property
    def _logging(self) -> bool:
        return self._trainer is not None and self.trainer.logger is not None and not self.trainer.barebones


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
    module: FrozenClassifierFit,
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
            f"fit {module.prefix!r} stopped after {module.steps_done} of {module.steps} steps; rerun to continue"
        )
