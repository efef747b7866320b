"""Mask maths in plain torch: no Lightning, no numpy in the autograd path.

Notation follows the papers (HDM paper, arXiv 2301.04970, §3 and appendix Algorithms 1-2; MDM paper,
arXiv 2207.08046, §3): ``g`` upsampling, ``N`` per-image min-max normalisation, ``J`` activation consistency,
``L_R`` mean absolute mask value, HDM weights ``w_j = sum_{k>=j} v_k^2`` (Eq. 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

UPSAMPLE_MODES = ("bilinear", "nearest")
THRESHOLD_KINDS = ("quantile", "value")


def upsample(v: Tensor, height: int, width: int, mode: str = "bilinear") -> Tensor:
    """``g(v, h, w)``: upsample mask vectors ``[..., a, b]`` to ``[..., h, w]``.

    Project decision (docs/methods.md): bilinear with ``align_corners=False``; nearest selectable. Leading
    dimensions are flattened into the batch so any ``[B, 1, a, b]`` or ``[n, B, 1, a, b]`` works.
    """
    if mode not in UPSAMPLE_MODES:
        raise ValueError(f"Unknown upsample mode {mode!r}. Available: {list(UPSAMPLE_MODES)}")
    if v.shape[-2:] == (height, width):
        return v
    lead = v.shape[:-2]
    flat = v.reshape(-1, 1, *v.shape[-2:])
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    out = F.interpolate(flat, size=(height, width), mode=mode, **kwargs)
    return out.reshape(*lead, height, width)


def normalize(x: Tensor, eps: float = 0.0) -> Tensor:
    """``N(x) = (x - min x) / (max x - min x)`` per image over the last three dims.

    A constant image (max == min) maps to zeros rather than NaN (a project decision: guard max = min).
    """
    flat = x.flatten(start_dim=-3) if x.dim() >= 3 else x.flatten()
    lo = flat.min(dim=-1, keepdim=True).values
    hi = flat.max(dim=-1, keepdim=True).values
    span = hi - lo
    safe = torch.where(span > eps, span, torch.ones_like(span))
    out = torch.where(span > eps, (flat - lo) / safe, torch.zeros_like(flat))
    return out.reshape(x.shape)


@dataclass(frozen=True)
class Threshold:
    """Threshold ``gamma``: an absolute value or a per-image quantile of the map.

    Args:
        kind: ``"quantile"`` (``value`` in [0, 1], e.g. 0.7 keeps the top 30 % of pixels) or
            ``"value"`` (an absolute level, e.g. MDM's ``gamma = 5`` on the sum of 27 masks).
        value: the quantile or the level.
    """

    kind: str = "quantile"
    value: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in THRESHOLD_KINDS:
            raise ValueError(f"Unknown threshold kind {self.kind!r}. Available: {list(THRESHOLD_KINDS)}")
        if self.kind == "quantile" and not 0.0 <= float(self.value) <= 1.0:
            raise ValueError(f"threshold quantile must be in [0, 1], got {self.value!r}")

    def gamma(self, x: Tensor) -> Tensor:
        """Per-image ``gamma`` shaped ``[B, 1, 1, 1]`` for maps ``x`` of shape ``[B, 1, H, W]``."""
        if self.kind == "value":
            return torch.full((x.shape[0], 1, 1, 1), float(self.value), dtype=x.dtype, device=x.device)
        q = torch.quantile(x.flatten(1).float(), float(self.value), dim=1).to(x.dtype)
        return q.view(-1, 1, 1, 1)


def consistency(activation: Tensor, reference: Tensor) -> Tensor:
    """``J = (f_p(M X) - f_p(X))^2`` elementwise (one term per masked image)."""
    return (activation - reference) ** 2


def l1_mean(m: Tensor) -> Tensor:
    """``L_R(M) = mean |M|`` over the last two dims (HDM paper Eq. 4, MDM paper Eq. 6): ``[..., h, w] -> [...]``."""
    return m.abs().mean(dim=(-2, -1))


def total_variation(v: Tensor) -> Tensor:
    """Mean absolute difference of neighbouring elements of ``v`` (``[B, 1, a, b]``), per row ``[B, 1]``.

    Anisotropic total variation, averaged over the vector's horizontal and vertical neighbour pairs (0 for a
    constant vector, and for a 1 x 1 one).
    """
    terms = []
    if v.shape[-1] > 1:
        terms.append((v[..., :, 1:] - v[..., :, :-1]).abs().flatten(2).mean(-1))
    if v.shape[-2] > 1:
        terms.append((v[..., 1:, :] - v[..., :-1, :]).abs().flatten(2).mean(-1))
    if not terms:
        return v.new_zeros(v.shape[:2])
    return torch.stack(terms).sum(0) / len(terms)


def vector_mask(
    p: Tensor,
    guide: Tensor | None,
    height: int,
    width: int,
    reg_on: str = "upsampled",
    mode: str = "bilinear",
    l2: float = 0.0,
    tv: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Applied mask and ``L_R`` term of one mask vector ``p`` (``[B, 1, a, b]``) for ``height x width`` images.

    The mask is ``g(p, H, W)`` (HDM paper Eq. 6), or ``g(p * guide, H, W)`` with a frozen guide ``g(c^{k-1}, a, b)``
    (Eq. 8). ``L_R`` is taken on the upsampled vector itself (``reg_on="upsampled"``: Eq. 6/8, the guide not
    included) or on ``p`` (``reg_on="vector"``: MDM paper Eq. 6). The per-image fits
    (:class:`~hdm_lightning.explainers.modules.MaskStageModule`) and the amortised predictor
    (:mod:`hdm_lightning.amortised`) both build their masks here.

    Two optional terms join ``L_R`` (both 0 in the papers): ``l2 * mean(M^2)`` of the same tensor (an elastic net,
    Zou & Hastie 2005: among correlated evidence the L1 term picks one arbitrarily, the L2 term spreads the mask
    over the group) and ``tv * TV(p)``, the :func:`total_variation` of the vector itself (smooth masks).

    Returns:
        ``(mask [B, 1, H, W], L_R [B])``.
    """
    gated = p if guide is None else p * guide
    m = upsample(gated, height, width, mode)
    if reg_on == "vector":
        on = p
    elif guide is None:
        on = m
    else:
        on = upsample(p, height, width, mode)
    reg = l1_mean(on)
    if l2:
        reg = reg + l2 * (on * on).flatten(2).mean(-1)
    if tv:
        reg = reg + tv * total_variation(p)
    return m, reg[:, 0]


def dm_row_loss(
    activation: Tensor, reference: Tensor, reg: Tensor, consistency_weight: Tensor | float, reg_weight: Tensor | float
) -> Tensor:
    """The DM loss of each (vector, image) row: ``w_J * (f_p(M X) - f_p(X))^2 + eta * L_R(M)`` (HDM paper Eq. 6, 8).

    With ``w_J = lambda_1`` and ``eta = lambda_2`` it is MDM's loss (MDM paper Eq. 1). One function for the per-image
    fits and the amortised predictor, so both minimise the same objective.
    """
    j = consistency(activation, reference)
    return consistency_weight * j + reg_weight * reg.to(j.dtype)


def hdm_weights(v: Tensor) -> Tensor:
    """HDM stage weights ``w_j = sum_{k=j..S} v_k^2`` (HDM paper Eq. 3, HDM appx. Alg. 2 l.16-19).

    ``v`` is ``[..., S]``; the result is non-increasing in ``j`` by construction.
    """
    sq = v**2
    return sq.flip(-1).cumsum(-1).flip(-1)


def mix_maps(maps: Tensor, v: Tensor) -> Tensor:
    """``M_h = sum_j w_j M_j / sum_j w_j`` for ``maps [B, S, 1, H, W]`` and ``v [B, S]``."""
    w = hdm_weights(v)
    total = w.sum(-1).clamp_min(torch.finfo(w.dtype).tiny)
    return (w[..., None, None, None] * maps).sum(1) / total[:, None, None, None]


def hierarchical_masked_image(x0: Tensor, maps: list[Tensor] | Tensor) -> Tensor:
    """``X_i = (1 - N(sum_{j<=i} M_j)) * X_0`` (HDM paper Eq. 2)."""
    total = torch.stack(list(maps), 0).sum(0) if isinstance(maps, list | tuple) else maps
    return (1.0 - normalize(total)) * x0


def dm_combine_threshold(mc: Tensor, threshold: Threshold) -> tuple[Tensor, Tensor, Tensor]:
    """``M_b = N((M_c - gamma) * {M_c >= gamma})`` (HDM paper Eq. 10, HDM appx. Alg. 1 l.35-36).

    Returns ``(M_b, binary {M_c >= gamma}, gamma [B])``.
    """
    gamma = threshold.gamma(mc)
    keep = mc >= gamma
    return normalize((mc - gamma) * keep), keep, gamma.flatten()


def mdm_combine_threshold(mf_sum: Tensor, threshold: Threshold) -> tuple[Tensor, Tensor, Tensor]:
    """``M^h = N({sum g(d_i) >= gamma} * sum g(d_i))``, ``M^b = {sum >= gamma}`` (MDM paper Eq. 2).

    Returns ``(M^h, M^b, gamma [B])``.
    """
    gamma = threshold.gamma(mf_sum)
    keep = mf_sum >= gamma
    return normalize(mf_sum * keep), keep, gamma.flatten()


def levels(height: int, width: int, a: int, b: int, t: int) -> int:
    """Number of auxiliary levels ``K_j^i`` for a vector of size ``a x b`` and factor ``t``.

    ``K = min(floor((ln H - ln a) / ln t), floor((ln W - ln b) / ln t))`` (HDM paper §3.2),
    evaluated in exact integer arithmetic (largest ``k`` with ``t^k a <= H`` and ``t^k b <= W``),
    so exact powers such as ``7 * 2^5 = 224`` are not lost to floating-point rounding.
    """
    if t < 2:
        raise ValueError(f"auxiliary factor t must be an integer >= 2, got {t!r}")
    if a < 1 or b < 1:
        raise ValueError(f"mask vector size must be positive, got {(a, b)!r}")
    k = 0
    while a * t ** (k + 1) <= height and b * t ** (k + 1) <= width:
        k += 1
    return k
