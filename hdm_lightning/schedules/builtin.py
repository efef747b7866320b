"""Built-in schedules: ``dm`` (HDM paper §3.2, HDM appx. Alg. 1) and ``mdm`` (MDM paper §3)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from hdm_lightning.masks.ops import levels
from hdm_lightning.schedules.base import MaskSchedule, MaskVector, Stage, register_schedule


def parse_sizes(sizes: Sequence, what: str = "sizes") -> list[tuple[int, int]]:
    """Accept ``[6, 7, [4, 8]]``: an int is a square ``a x a``, a pair is ``a x b``; all distinct."""
    out: list[tuple[int, int]] = []
    for s in sizes:
        if isinstance(s, int) and not isinstance(s, bool):
            pair = (s, s)
        elif isinstance(s, Sequence) and not isinstance(s, str) and len(s) == 2:
            pair = (int(s[0]), int(s[1]))
        else:
            raise ValueError(f"{what}: each entry must be an int or an [a, b] pair, got {s!r}")
        if pair[0] < 1 or pair[1] < 1:
            raise ValueError(f"{what}: sizes must be positive, got {s!r}")
        out.append(pair)
    if not out:
        raise ValueError(f"{what} must not be empty")
    if len(set(out)) != len(out):
        raise ValueError(f"{what} must be distinct (papers: a_i != a_j or b_i != b_j), got {list(sizes)!r}")
    return out


def _positive(name: str, value: float) -> None:
    if value is None or not 0 < value < math.inf:
        raise ValueError(f"{name} must be > 0 and finite, got {value!r}")


@register_schedule("dm")
class DMSchedule(MaskSchedule):
    """Dynamic masks: benchmark vectors ``d_i`` then auxiliary levels ``c_j^k(i)``.

    Stage ``benchmark`` trains all ``d_i`` together; stage ``level{k}`` trains every ``(i, j)`` with
    ``K_j^i >= k`` together, ``c_j^{k-1}(i)`` frozen as its guide (HDM paper Eq. 7-8).

    Args:
        sizes: benchmark vector sizes (paper CUB: 6..11, ``a_i = i + 5``, ``D = 6``).
        factors: integer factors ``t_j`` (paper CUB ``{2, 3, 5}``, iChallenge-PM ``{2, 3}``).
        epochs: steps ``C`` per benchmark vector (paper: 800). 0 keeps the vectors at their start: only with
            ``init: amortised`` (a predictor's vectors; the method refuses it from ``tau``).
        lr: Adam learning rate (paper: 1e-2).
        eta: ``eta_i``, weight of ``L_R(g(d_i))`` (paper: 100).
        aux_epochs: steps per auxiliary level (``C_i^{(k,j)}``); default ``epochs`` (0: Eq. 7's start, or the
            predicted level).
        aux_lr: learning rate of auxiliary vectors (``eta_i^{(k,j)}`` in Alg. 1); default ``lr``.
        aux_eta: weight of ``L_R(g(c_j^k(i)))`` (``eta_i^{(k,j)}`` in Eq. 8); default ``eta``.
        max_level: optional cap on ``k`` (cheaper ablations); ``None`` uses ``K_j^i``.
        l2: weight of an L2 term next to ``L_R``'s L1, ``L_R + l2 * mean(g(v)^2)`` on every vector (an elastic
            net; 0: the papers).
        tv: weight of a total-variation term ``tv * TV(c_j^k(i))`` on the auxiliary levels ``k >= tv_from_level``
            (0: the papers).
        tv_from_level: the first level with the TV term (1: every auxiliary level).
    """

    def __init__(
        self,
        sizes: Sequence = (6, 7, 8, 9, 10, 11),
        factors: Sequence[int] = (2, 3, 5),
        epochs: int = 800,
        lr: float = 1e-2,
        eta: float = 100.0,
        aux_epochs: int | None = None,
        aux_lr: float | None = None,
        aux_eta: float | None = None,
        max_level: int | None = None,
        l2: float = 0.0,
        tv: float = 0.0,
        tv_from_level: int = 1,
    ) -> None:
        self.sizes = parse_sizes(sizes)
        self.factors = [int(t) for t in factors]
        self.l2, self.tv, self.tv_from_level = float(l2), float(tv), int(tv_from_level)
        if not (math.isfinite(self.l2) and math.isfinite(self.tv)) or self.l2 < 0 or self.tv < 0:
            raise ValueError(f"l2 and tv must be finite and >= 0, got {l2!r} / {tv!r}")
        if self.tv_from_level < 0:
            raise ValueError(f"tv_from_level must be >= 0, got {tv_from_level!r}")
        if any(t < 2 or t != f for t, f in zip(self.factors, factors, strict=True)):
            raise ValueError(f"factors must be integers >= 2, got {list(factors)!r}")
        if len(set(self.factors)) != len(self.factors):
            raise ValueError(f"factors must be distinct, got {list(factors)!r}")
        self.epochs = int(epochs)
        self.aux_epochs = int(aux_epochs) if aux_epochs is not None else self.epochs
        if self.epochs < 0 or self.aux_epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {epochs!r} / aux_epochs {aux_epochs!r}")
        self.lr, self.aux_lr = float(lr), float(aux_lr if aux_lr is not None else lr)
        _positive("lr", self.lr)
        _positive("aux_lr", self.aux_lr)
        self.eta, self.aux_eta = float(eta), float(aux_eta if aux_eta is not None else eta)
        if not (0 <= self.eta < math.inf and 0 <= self.aux_eta < math.inf):
            raise ValueError(f"eta must be a finite number >= 0, got {eta!r} / aux_eta {aux_eta!r}")
        if max_level is not None and int(max_level) < 0:
            raise ValueError(f"max_level must be >= 0 or None, got {max_level!r}")
        self.max_level = None if max_level is None else int(max_level)

    def level_table(self, height: int, width: int) -> dict[tuple[int, int], int]:
        """``K_j^i`` for every benchmark size ``(a_i, b_i)`` and factor ``t_j``: ``{((a, b), t): K}``."""
        table = {}
        for a, b in self.sizes:
            for t in self.factors:
                k = levels(height, width, a, b, t)
                table[((a, b), t)] = k if self.max_level is None else min(k, self.max_level)
        return table

    def plan(self, height: int, width: int) -> list[Stage]:
        """Benchmark stage, then one stage per auxiliary level ``k = 1..max K_j^i``."""
        n_factors = len(self.factors)
        bench = tuple(
            MaskVector(
                name=f"d{i}",
                size=(a, b),
                lr=self.lr,
                reg_weight=self.eta,
                l2_weight=self.l2,
                tv_weight=self.tv if self.tv_from_level == 0 else 0.0,
                # Eq. 9 sums c_j^0(i) = d_i once per factor t_j; with no factors d_i still counts once.
                combine_weight=float(max(n_factors, 1)),
            )
            for i, (a, b) in enumerate(self.sizes, start=1)
        )
        stages = [Stage("benchmark", bench, self.epochs)]
        table = self.level_table(height, width)
        k = 1
        while True:
            vecs = []
            for i, (a, b) in enumerate(self.sizes, start=1):
                for t in self.factors:
                    if table[((a, b), t)] >= k:
                        vecs.append(
                            MaskVector(
                                name=f"d{i}/t{t}/k{k}",
                                size=(t**k * a, t**k * b),
                                lr=self.aux_lr,
                                reg_weight=self.aux_eta,
                                l2_weight=self.l2,
                                tv_weight=self.tv if k >= self.tv_from_level else 0.0,
                                guide=f"d{i}" if k == 1 else f"d{i}/t{t}/k{k - 1}",
                                init_from=f"d{i}",
                            )
                        )
            if not vecs:
                break
            stages.append(Stage(f"level{k}", tuple(vecs), self.aux_epochs))
            k += 1
        return stages


@register_schedule("mdm")
class MDMSchedule(MaskSchedule):
    """Multiple dynamic mask: ``N`` independent vectors trained in one stage (MDM paper Eq. 1).

    Args:
        sizes: vector sizes (paper: ``a_i = b_i = 5 + i``, ``i = 1..27``, i.e. 6..32).
        steps: Adam iterations per vector (paper: 2000).
        lr: Adam learning rate (paper: 3e-3).
        consistency_weight: ``lambda_1`` (paper CUB: 1e-2; NIH: 1e-3).
        reg_weight: ``lambda_2`` on ``L_R(d_i)`` of the vector itself (paper: 1).
    """

    def __init__(
        self,
        sizes: Sequence = tuple(range(6, 33)),
        steps: int = 2000,
        lr: float = 3e-3,
        consistency_weight: float = 1e-2,
        reg_weight: float = 1.0,
    ) -> None:
        self.sizes = parse_sizes(sizes)
        self.steps = int(steps)
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps!r}")
        self.lr = float(lr)
        _positive("lr", self.lr)
        if consistency_weight < 0 or reg_weight < 0:
            raise ValueError("consistency_weight and reg_weight must be >= 0")
        self.consistency_weight, self.reg_weight = float(consistency_weight), float(reg_weight)

    def plan(self, height: int, width: int) -> list[Stage]:
        """One stage holding every ``d_i``."""
        vecs = tuple(
            MaskVector(
                name=f"d{i}",
                size=size,
                lr=self.lr,
                reg_weight=self.reg_weight,
                consistency_weight=self.consistency_weight,
                reg_on="vector",
            )
            for i, size in enumerate(self.sizes, start=1)
        )
        return [Stage("masks", vecs, self.steps)]
