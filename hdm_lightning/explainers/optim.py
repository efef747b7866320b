"""The mask optimiser: Adam with the papers' settings, plus the settings that make maps stable (plain torch).

The papers train every mask vector with Adam at a constant learning rate and report the last iterate.
In float32 that dynamic is chaotic: a change of the input far below one grey level, another batch,
another thread count changes the map (see docs/methods.md, "Stable maps"). This module keeps the papers'
dynamics exactly (``MaskOptim()``: ``torch.optim.Adam``'s update, constant ``lr``, last iterate; the
default of every method) and offers the remedies measured there, each a setting (together the
``optim.dynamics: stable`` of a method config):

- ``eps_relative``: Adam's ``eps`` as a fraction of the root-mean-square of ``sqrt(v_hat)`` over each
  vector of each image, so elements whose gradient is small next to the rest of their vector take
  proportionally small steps instead of full ``lr`` steps (Adam's first step is ``lr * sign(g)``);
- ``schedule``: ``cosine`` decays the learning rate to zero over the fit after a linear ``warmup``;
- ``average_tail``: the result is the mean of the iterates of the last fraction of the steps
  (Polyak-Ruppert averaging) instead of the last iterate.

Every setting acts per (vector, image) row, so training vectors and images together still equals
training each alone. Measured at 224x224 (docs/results.md, "Stability of the maps"): the stable settings
keep a map under 1e-6 input noise, another batch or process count, but they do so mostly by hardly moving
the masks from their initial value, and the maps then score near a random map on deletion and Average Drop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class MaskOptim:
    """How mask vectors are optimised (see the module docstring).

    Args:
        betas: Adam's ``(beta1, beta2)``.
        eps: Adam's absolute ``eps`` (the papers: PyTorch's default 1e-8).
        eps_relative: ``None`` (absolute ``eps`` only) or a fraction: ``eps`` becomes
            ``eps + eps_relative * rms(sqrt(v_hat))`` over each row's vector.
        schedule: ``constant`` (the papers) or ``cosine`` (to zero at the last step).
        warmup: fraction of each fit's steps with a linear warm-up from ``lr / warmup_steps``.
        average_tail: fraction of the last steps whose iterates are averaged into the result (0: last iterate).
    """

    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    eps_relative: float | None = None
    schedule: str = "constant"
    warmup: float = 0.0
    average_tail: float = 0.0

    def __post_init__(self) -> None:
        b1, b2 = self.betas
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"optim betas must be in [0, 1), got {self.betas!r}")
        if self.eps < 0 or (self.eps_relative is not None and self.eps_relative < 0):
            raise ValueError(f"optim eps and eps_relative must be >= 0, got {self.eps!r} / {self.eps_relative!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"Unknown optim schedule {self.schedule!r}. Available: {list(SCHEDULES)}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"optim warmup is a fraction of the steps in [0, 1), got {self.warmup!r}")
        if not 0.0 <= self.average_tail <= 1.0:
            raise ValueError(f"optim average_tail is a fraction of the steps in [0, 1], got {self.average_tail!r}")

    @property
    def is_paper(self) -> bool:
        """Whether this is exactly ``torch.optim.Adam`` at a constant rate, last iterate (the papers)."""
        return self.eps_relative is None and self.schedule == "constant" and self.warmup == 0 and not self.average_tail

    def lr_factor(self, step: int, steps: int) -> float:
        """Multiplier of the base learning rate at optimiser step ``step`` (0-based) of ``steps``."""
        warm = int(round(self.warmup * steps))
        if step < warm:
            return (step + 1) / warm
        if self.schedule == "constant":
            return 1.0
        span = max(steps - warm, 1)
        return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / span))

    def average_start(self, steps: int) -> int:
        """First step whose iterate enters the average (``steps`` when nothing is averaged)."""
        return steps - int(round(self.average_tail * steps))


class RowAdam(torch.optim.Optimizer):
    """Adam over mask tensors ``[B, 1, a, b]`` whose rows (images) are independent.

    With ``eps_relative=None`` the update is ``torch.optim.Adam``'s (same formula, same order of
    operations). With ``eps_relative`` the denominator of each row is
    ``sqrt(v_hat) + eps + eps_relative * rms_row(sqrt(v_hat))``.
    """

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, eps_relative: float | None = None):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, eps_relative=eps_relative))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102
        for group in self.param_groups:
            b1, b2 = group["betas"]
            lr, eps, rel = group["lr"], group["eps"], group["eps_relative"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = torch.zeros((), dtype=torch.float64)
                    st["exp_avg"] = torch.zeros_like(p)
                    st["exp_avg_sq"] = torch.zeros_like(p)
                st["step"] += 1
                t = float(st["step"])
                m, v = st["exp_avg"], st["exp_avg_sq"]
                m.lerp_(p.grad, 1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                bc1, bc2 = 1 - b1**t, 1 - b2**t
                denom = (v.sqrt() / math.sqrt(bc2)).add_(eps)
                if rel is not None:
                    rms = (v / bc2).flatten(1).mean(1).sqrt().view(-1, *([1] * (p.dim() - 1)))
                    denom.add_(rel * rms)
                p.addcdiv_(m, denom, value=-lr / bc1)
        return None


def build_optimizer(groups: list[dict], optim: MaskOptim) -> torch.optim.Optimizer:
    """``torch.optim.Adam`` for the papers' dynamics, :class:`RowAdam` otherwise (per-group ``lr`` kept)."""
    if optim.eps_relative is None:
        return torch.optim.Adam(groups, betas=optim.betas, eps=optim.eps)
    return RowAdam(groups, lr=groups[0]["lr"], betas=optim.betas, eps=optim.eps, eps_relative=optim.eps_relative)


def set_lr(opt: torch.optim.Optimizer, base: list[float], factor: float) -> None:
    """Set each group's learning rate to its base rate times ``factor``."""
    for g, lr in zip(opt.param_groups, base, strict=True):
        g["lr"] = lr * factor


class TailAverage:
    """Running mean of a list of tensors over the steps from ``start`` on (Polyak-Ruppert averaging)."""

    def __init__(self, start: int) -> None:
        self.start = int(start)
        self.count = 0
        self.sums: list[Tensor] | None = None

    def update(self, step: int, values: list[Tensor]) -> None:
        """Add the iterate after optimiser step ``step`` (0-based) when it is in the tail."""
        if step < self.start:
            return
        if self.sums is None:
            self.sums = [v.detach().clone() for v in values]
        else:
            for s, v in zip(self.sums, values, strict=True):
                s.add_(v.detach())
        self.count += 1

    def result(self, values: list[Tensor]) -> list[Tensor]:
        """The average (the current ``values`` when no iterate was averaged)."""
        if self.sums is None or self.count == 0:
            return [v.detach().clone() for v in values]
        return [s / self.count for s in self.sums]

    def state(self) -> dict:
        """Plain tensors and numbers (``weights_only`` loadable)."""
        return {"count": self.count, "sums": None if self.sums is None else [s.clone() for s in self.sums]}

    def load(self, state: dict) -> None:
        """Continue from :meth:`state`."""
        self.count = int(state["count"])
        self.sums = None if state["sums"] is None else [s.clone() for s in state["sums"]]


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
