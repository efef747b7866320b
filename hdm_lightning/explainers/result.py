"""Result objects returned by the explainers (tensors stay on the model's device)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch
from torch import Tensor


def _move(value, device):
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _move(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [_move(v, device) for v in value]
    return value


@dataclass
class StageResult:
    """One DM (or MDM) run on one input image batch.

    Attributes:
        saliency: the run's map in [0, 1], ``[B, 1, H, W]`` (``M_b`` for DM, ``M^h`` for MDM).
        binary: ``{M_c >= gamma}`` as bool, ``[B, 1, H, W]``.
        combined: ``M_c`` (DM, Eq. 9) or ``sum g(d_i)`` (MDM) before thresholding.
        gamma: the threshold used per image, ``[B]``.
        vectors: trained vectors by name, each ``[B, 1, a, b]`` in [0, 1].
        input: the images this run explained (``X_{i-1}`` in HDM), ``[B, C, H, W]``.
        masked: HDM only: ``X_i = (1 - N(sum_{j<=i} M_j)) X_0`` after this run.
        reference: ``f_p(input)``, the consistency target, ``[B]``.
        history: per fit stage, the loss of every (vector, image) row at every step,
            ``[steps, n_vectors, B]``; rows of vectors stopped early keep their last value.
        vector_names: per fit stage, the vector names in ``history``'s second dimension.
        runs: with ``restarts: N > 1``, the single runs' maps ``[B, N, 1, H, W]`` (``saliency`` is their mean,
            ``vectors``, ``combined``, ``gamma`` and ``history`` the runs' means); ``None`` for one run.
        spread: with restarts, the per-pixel standard deviation of the runs' maps, ``[B, 1, H, W]``.
        agreement: with restarts, the mean pairwise Pearson correlation of the runs' maps, ``[B]``.
    """

    saliency: Tensor
    binary: Tensor
    combined: Tensor
    gamma: Tensor
    vectors: dict[str, Tensor]
    input: Tensor
    reference: Tensor
    history: dict[str, Tensor]
    vector_names: dict[str, list[str]]
    masked: Tensor | None = None
    runs: Tensor | None = None
    spread: Tensor | None = None
    agreement: Tensor | None = None

    def to(self, device) -> StageResult:
        """A copy with every tensor on ``device``."""
        return replace(self, **{f.name: _move(getattr(self, f.name), device) for f in fields(self)})


@dataclass
class Explanation:
    """What ``explain`` returns for a batch of ``B`` images.

    Attributes:
        method: ``"hdm"``, ``"dm"`` or ``"mdm"``.
        saliency: final map in [0, 1], ``[B, 1, H, W]`` (``M_h``, ``M_b`` or ``M^h``).
        binary: the binary mask, bool ``[B, 1, H, W]`` (HDM: the support of ``M_h``, i.e. the
            union of the stages' ``{M_c > gamma}`` regions that keep a positive weight).
        target: explained class per image, ``[B]`` (-1 when a callable selector was used).
        activation: ``f_p(X_0)``, the selected activation (a logit by default), ``[B]``.
        probability: softmax probability of the target class, ``[B]`` (NaN for callables).
        stages: one :class:`StageResult` per DM/MDM run (HDM: ``S`` of them, in order).
        weights: HDM only: the mixing weights ``w_j`` normalised to sum to 1, ``[B, S]``.
        mixing_v: HDM only: the learned ``v``, ``[B, S]``.
        history: every fit's loss history, keyed ``"<run>/<stage>"`` (e.g. ``"dm2/level3"``,
            ``"mix"``), each ``[steps, n_vectors, B]``.
        passes_per_image: forward+backward sample passes spent per image.
        seconds: wall-clock seconds for the batch.
        restarts: how many runs each map averages (``restarts``; 1: one run, as the papers).
        spread: with restarts, the per-pixel standard deviation of the single runs' final maps, ``[B, 1, H, W]``
            (HDM: each restart's stage maps mixed with the learned weights).
        agreement: with restarts, the mean pairwise Pearson correlation of those maps, ``[B]``: how much the
            single runs disagreed (the expected map itself agrees much better with a rerun).
    """

    method: str
    saliency: Tensor
    binary: Tensor
    target: Tensor
    activation: Tensor
    probability: Tensor
    stages: list[StageResult]
    history: dict[str, Tensor] = field(default_factory=dict)
    weights: Tensor | None = None
    mixing_v: Tensor | None = None
    passes_per_image: int = 0
    seconds: float = 0.0
    restarts: int = 1
    spread: Tensor | None = None
    agreement: Tensor | None = None

    def to(self, device) -> Explanation:
        """A copy with every tensor on ``device``."""
        out = replace(self, **{f.name: _move(getattr(self, f.name), device) for f in fields(self)})
        out.stages = [s.to(device) for s in self.stages]
        return out

    def cpu(self) -> Explanation:
        """A copy on the CPU."""
        return self.to(torch.device("cpu"))
