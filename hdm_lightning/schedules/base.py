"""Mask schedules: stateless plans of which mask vectors are trained in which stage.

A schedule returns plain data (:class:`Stage` of :class:`MaskVector`); the explainers own all
training state. Stages run one after another as separate Lightning fits; the vectors inside a
stage are independent of each other and are trained together in one batched forward/backward.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from hdm_lightning.registry import Registry

REG_ON = ("upsampled", "vector")


@dataclass(frozen=True)
class MaskVector:
    """One trainable mask vector and how it is trained.

    Args:
        name: unique within a schedule, used in logs and results (``"d1"``, ``"d1/t2/k1"``).
        size: ``(a, b)``, rows x columns of the vector.
        lr: Adam learning rate.
        reg_weight: weight of ``L_R`` (``eta_i`` in HDM paper Eq. 6/8, ``lambda_2`` in MDM paper).
        consistency_weight: weight of ``J`` (1 in DM, ``lambda_1`` in MDM).
        reg_on: ``"upsampled"``: ``L_R(g(v, H, W))`` (HDM paper Eq. 6, 8);
            ``"vector"``: ``L_R(v)`` on the vector itself (MDM paper Eq. 6).
        guide: name of an earlier (frozen) vector ``c^{k-1}``; the applied mask becomes
            ``g(v * g(guide, a, b), H, W)`` (HDM paper Eq. 8). ``None``: ``g(v, H, W)``.
        init_from: name of an earlier vector whose trained values, upsampled to ``size``, initialise
            this one (HDM paper Eq. 7). ``None``: every element starts at the explainer's ``tau``.
        combine_weight: how many times ``g(v, H, W)`` enters the combined map ``M_c`` (HDM paper
            Eq. 9 counts ``c^0_j(i) = d_i`` once per factor ``t_j``); 0 leaves it out.
        l2_weight: an L2 term next to ``L_R``'s L1: ``L_R + l2_weight * mean(M^2)`` (0 in the papers).
        tv_weight: a total-variation term on the vector: ``+ tv_weight * TV(v)`` (0 in the papers).
    """

    name: str
    size: tuple[int, int]
    lr: float
    reg_weight: float
    consistency_weight: float = 1.0
    reg_on: str = "upsampled"
    guide: str | None = None
    init_from: str | None = None
    combine_weight: float = 1.0
    l2_weight: float = 0.0
    tv_weight: float = 0.0

    def __post_init__(self) -> None:
        a, b = self.size
        if int(a) != a or int(b) != b or a < 1 or b < 1:
            raise ValueError(f"mask vector {self.name!r}: size must be two positive integers, got {self.size!r}")
        if not 0 < self.lr < math.inf:
            raise ValueError(f"mask vector {self.name!r}: lr must be > 0 and finite, got {self.lr!r}")
        weights = (self.reg_weight, self.consistency_weight, self.l2_weight, self.tv_weight)
        if not all(0 <= w < math.inf for w in weights):
            raise ValueError(f"mask vector {self.name!r}: loss weights must be finite numbers >= 0, got {weights}")
        if self.reg_on not in REG_ON:
            raise ValueError(f"mask vector {self.name!r}: reg_on must be one of {list(REG_ON)}, got {self.reg_on!r}")


@dataclass(frozen=True)
class Stage:
    """A set of independent vectors trained together for ``steps`` optimiser steps (one fit).

    ``steps: 0`` keeps the vectors at their start (no fit): meaningful only when each starts from a given value (a
    predictor's, ``init: amortised``) or from Eq. 7's ``init_from``; a vector that would stay at ``tau`` is refused
    when the stage runs.
    """

    name: str
    vectors: tuple[MaskVector, ...]
    steps: int
    meta: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not self.vectors:
            raise ValueError(f"stage {self.name!r} has no vectors")
        if int(self.steps) != self.steps or self.steps < 0:
            raise ValueError(f"stage {self.name!r}: steps must be an integer >= 0, got {self.steps!r}")


def validate_plan(stages: list[Stage], height: int, width: int) -> None:
    """Check a plan: unique names, guides/inits trained in an earlier stage, sizes fit the image."""
    seen: set[str] = set()
    for stage in stages:
        here: set[str] = set()
        for v in stage.vectors:
            if v.name in seen or v.name in here:
                raise ValueError(f"mask vector name {v.name!r} appears twice in the plan")
            for ref, what in ((v.guide, "guide"), (v.init_from, "init_from")):
                if ref is not None and ref not in seen:
                    raise ValueError(f"mask vector {v.name!r}: its {what} {ref!r} must be trained in an earlier stage")
            a, b = v.size
            if a > height or b > width:
                raise ValueError(f"mask vector {v.name!r} of size {v.size} is larger than the image ({height}x{width})")
            here.add(v.name)
        seen |= here


class MaskSchedule(ABC):
    """Base class: validate arguments in ``__init__`` and return the plan from :meth:`plan`."""

    @abstractmethod
    def plan(self, height: int, width: int) -> list[Stage]:
        """Stages to train, in order, for an image of ``height x width``."""

    def passes_per_image(self, height: int, width: int) -> int:
        """Forward/backward sample passes this plan costs per image (rows x steps, summed)."""
        return sum(len(s.vectors) * s.steps for s in self.plan(height, width))


SCHEDULES: Registry[type[MaskSchedule]] = Registry("mask schedule")


def register_schedule(name: str):
    """Register a :class:`MaskSchedule` subclass under ``name`` (duplicate names are an error).

    Example:
        >>> @register_schedule("my_ladder")  # doctest: +SKIP
        ... class MyLadder(MaskSchedule): ...
    """
    return SCHEDULES.register(name)


def build_schedule(name: str, params: dict | None = None) -> MaskSchedule:
    """Instantiate the schedule registered as ``name`` with ``params`` (its ``__init__`` is the schema)."""
    cls = SCHEDULES.get(name)
    params = dict(params or {})
    try:
        return cls(**params)
    except TypeError as e:
        import inspect

        sig = inspect.signature(cls.__init__)
        known = [p for p in sig.parameters if p != "self"]
        raise ValueError(f"bad parameters for mask schedule {name!r}: {e}. Known parameters: {known}") from None


def available_schedules() -> list[str]:
    """Names of the registered mask schedules."""
    return SCHEDULES.names()
