"""Logging of explain runs: a W&B logger whose step axis spans every fit, and a stage-aware progress bar.

An explain run is many short Lightning fits (one per stage, per batch); each new Trainer restarts its
step at 0, which W&B would reject as going back in time. :class:`RunWandbLogger` shifts each fit's
steps past the previous fit's, so ``dm1/benchmark/loss``, ``dm1/level1/loss``, ... ``mix/loss`` lie
one after another on one axis, batch after batch.
"""

from __future__ import annotations

from collections.abc import Mapping

import lightning as L
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

__all__ = ["RunWandbLogger", "StageProgress"]


class RunWandbLogger(WandbLogger):
    """Lightning's :class:`WandbLogger` with one step axis across the sequential fits of a run.

    ``position`` is the next free step; the runner logs its per-batch metrics and images there.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        if self._wandb_init.get("anonymous") is None:
            # Lightning always passes anonymous=None, which wandb >= 0.19 answers with a deprecation warning.
            self._wandb_init.pop("anonymous", None)
        self.position = 0
        self._fit_max_step = -1

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:  # noqa: D102
        if step is None:
            step = self.position
        else:
            self._fit_max_step = max(self._fit_max_step, step)
            step = self.position + step
        super().log_metrics(metrics, step)

    @rank_zero_only
    def finalize(self, status: str) -> None:  # noqa: D102 - called by Lightning at the end of every fit
        self.position += self._fit_max_step + 1
        self._fit_max_step = -1
        super().finalize(status)

    @rank_zero_only
    def log_run(self, metrics: Mapping[str, object]) -> None:
        """Log run-level values (per batch) at the current position, then move past it."""
        super().log_metrics(dict(metrics), self.position)
        self.position += 1


class StageProgress(L.Callback):
    """Shows the fit in flight (``dm2/level3 40/800``) in the postfix of the run's progress bar."""

    def __init__(self, bar, every_n_steps: int = 10) -> None:
        self.bar, self.every = bar, max(int(every_n_steps), 1)

    def _show(self, module) -> None:
        self.bar.set_postfix_str(f"{module.prefix} {module.steps_done}/{module.steps}", refresh=True)

    def on_train_start(self, trainer, pl_module) -> None:  # noqa: D102
        self._show(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:  # noqa: D102
        if pl_module.steps_done % self.every == 0:
            self._show(pl_module)
