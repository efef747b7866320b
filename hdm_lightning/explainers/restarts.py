"""Restarts: the expected map of DM/HDM/MDM as the mean of ``N`` runs from ``x + sigma * n_k``.

With the papers' dynamics a DM/HDM/MDM map of a real image is one sample of a chaotic optimisation: noise of 1e-6
on the input gives another map (docs/methods.md, "Stable maps"). The mean of ``N`` runs from independently
perturbed copies of the image estimates the expected map, and two such means agree the better the larger ``N``
(the Spearman-Brown rule for the single runs' agreement).

The ``N`` runs of an image are ``N`` rows of the same fits (row ``b * N + k`` is restart ``k`` of image ``b``), so
they are batched like images. The noise ``n_k`` of an image is drawn from a generator seeded by a digest of the
image's values and the seed, so it is the same whatever the batch, the process or a resumed run.

For HDM the runs are averaged **per stage**: restart ``k`` of stage ``s`` explains
``(1 - N(sum_{j<s} mean M_j)) * (X_0 + sigma * n_k)``, i.e. every stage sees the image masked by the previous
stages' *mean* maps (a stable input), and the mixing weights are learned once, on the mean maps.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Callable

import torch
from torch import Tensor

from hdm_lightning.explainers.result import StageResult
from hdm_lightning.explainers.selectors import ActivationSelector
from hdm_lightning.masks.ops import hierarchical_masked_image, mix_maps

__all__ = [
    "MAX_RESTARTS",
    "average_runs",
    "check_restarts",
    "mixed_spread",
    "repeat_selector",
    "restart_inputs",
    "restarted_run",
    "run_agreement",
]

MAX_RESTARTS = 1024
"""The largest ``restarts`` accepted: each restart costs a full run (1,024 runs of ``hdm_fast`` at 224 px are
about a million passes per image), and the agreement of two means is within 1e-3 of 1 long before that."""


def check_restarts(restarts: object, noise: object) -> tuple[int, float]:
    """``(restarts, restart_noise)`` as numbers, or a ``ValueError`` that names the bad value and the fix."""
    if isinstance(restarts, bool) or not isinstance(restarts, int) or not 1 <= restarts <= MAX_RESTARTS:
        raise ValueError(
            f"restarts must be an integer in [1, {MAX_RESTARTS}] (1: one run, as the papers), got {restarts!r}"
        )
    try:
        sigma = float(noise)
    except (TypeError, ValueError):
        raise ValueError(f"restart_noise must be a number >= 0, got {noise!r}") from None
    if not math.isfinite(sigma) or sigma < 0:
        raise ValueError(
            f"restart_noise must be a finite number >= 0 (std of the restarts' input noise in normalised units, "
            f"default 1e-6), got {noise!r}"
        )
    if restarts > 1 and sigma == 0:
        raise ValueError(
            f"restarts: {restarts} with restart_noise: 0 would run {restarts} identical fits of each image: "
            "set restart_noise > 0 (default 1e-6), or restarts: 1"
        )
    return restarts, sigma


def _image_seed(image: Tensor, seed: int) -> int:
    """A 63-bit seed from the image's values (as stored: dtype and bytes) and ``seed``."""
    h = hashlib.sha256(f"{seed}:{image.dtype}:{tuple(image.shape)}".encode())
    h.update(image.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return int.from_bytes(h.digest()[:8], "little") & ((1 << 63) - 1)


def restart_inputs(x: Tensor, restarts: int, sigma: float, seed: int = 0) -> Tensor:
    """The restarts' inputs ``[B * N, C, H, W]``: row ``b * N + k`` is ``x[b] + sigma * n_{b,k}``.

    ``n_{b,k}`` is standard normal noise (drawn in float64 on the CPU, then cast) from a generator seeded by
    :func:`_image_seed` of ``x[b]``: an image gets the same noise alone, in any batch and in any process, and
    its first ``n`` restarts get the same noise whatever ``N``.
    """
    if sigma == 0:
        return x.repeat_interleave(restarts, 0)
    rows = []
    for image in x:
        gen = torch.Generator().manual_seed(_image_seed(image, seed))
        # One draw per restart: restart k's noise is the same whatever N (the first n of N restarts are n restarts).
        noise = torch.stack([torch.randn(image.shape, generator=gen, dtype=torch.float64) for _ in range(restarts)])
        rows.append(image.unsqueeze(0) + (sigma * noise).to(device=x.device, dtype=x.dtype))
    return torch.cat(rows)


def repeat_selector(selector: ActivationSelector, restarts: int) -> ActivationSelector:
    """The same ``f_p`` for ``restarts`` consecutive rows per original image (the class chosen on ``X_0``)."""
    if restarts == 1:
        return selector
    out = copy.copy(selector)
    out.targets = selector.targets.repeat_interleave(restarts)
    out.reference = selector.reference.repeat_interleave(restarts)
    out.probability = selector.probability.repeat_interleave(restarts)
    return out


def run_agreement(runs: Tensor) -> Tensor:
    """Mean pairwise Pearson correlation of each image's runs, ``runs [B, N, ...]`` -> ``[B]`` (float64).

    Pairs with a constant run (an all-zero map) are left out; an image with no such pair scores NaN (as does
    ``N = 1``).
    """
    b, n = runs.shape[:2]
    flat = runs.detach().reshape(b, n, -1).double()
    centred = flat - flat.mean(-1, keepdim=True)
    norm = centred.norm(dim=-1, keepdim=True)
    z = centred / norm.clamp_min(torch.finfo(torch.float64).tiny)
    corr = z @ z.transpose(1, 2)  # [B, N, N]
    ok = (norm > 0) & (norm > 0).transpose(1, 2)
    pairs = ok & ~torch.eye(n, dtype=torch.bool, device=runs.device)
    total = torch.where(pairs, corr, torch.zeros_like(corr)).sum((1, 2))
    count = pairs.sum((1, 2))
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


def _mean(t: Tensor, n: int) -> Tensor:
    """``[B * N, ...]`` -> the mean over each image's ``N`` consecutive rows, ``[B, ...]`` (dtype kept)."""
    return t.reshape(-1, n, *t.shape[1:]).mean(1, dtype=t.dtype if t.is_floating_point() else torch.float32)


def average_runs(res: StageResult, clean: Tensor, restarts: int, selector: ActivationSelector) -> StageResult:
    """One stage's ``N`` runs of each image (``res`` has ``B * N`` rows) as the stage's expected map.

    ``saliency``, ``combined``, ``gamma`` and every vector are the means over the runs; ``binary`` is the mean
    map's support (the union of the runs' binary masks); ``history`` the runs' mean loss per (step, vector,
    image); ``input`` the stage's input without noise and ``reference`` its ``f_p``. ``runs`` keeps the single
    runs' maps ``[B, N, 1, H, W]``, ``spread`` their per-pixel standard deviation and ``agreement`` their mean
    pairwise Pearson correlation.
    """
    n = restarts
    runs = res.saliency.reshape(-1, n, *res.saliency.shape[1:])
    saliency = runs.mean(1)
    return StageResult(
        saliency=saliency,
        binary=saliency > 0,
        combined=_mean(res.combined, n),
        gamma=_mean(res.gamma, n),
        vectors={k: _mean(v, n) for k, v in res.vectors.items()},
        input=clean,
        reference=selector.evaluate(clean),
        history={k: h.reshape(*h.shape[:-1], -1, n).mean(-1) for k, h in res.history.items()},
        vector_names=res.vector_names,
        runs=runs,
        spread=runs.std(1, correction=1) if n > 1 else torch.zeros_like(saliency),
        agreement=run_agreement(runs),
    )


def mixed_spread(stage_runs: list[Tensor | None], v: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """HDM with restarts: ``(spread, agreement)`` of each restart's stage maps mixed with the learned ``v``.

    ``stage_runs`` holds each stage's runs ``[B, N, 1, H, W]`` (``None`` without restarts: ``(None, None)``).
    """
    if stage_runs[0] is None:
        return None, None
    stacked = torch.stack(stage_runs, 2)  # [B, N, S, 1, H, W]
    b, n = stacked.shape[:2]
    mixed = mix_maps(stacked.flatten(0, 1), v.repeat_interleave(n, 0)).view(b, n, *stacked.shape[3:])
    return mixed.std(1, correction=1), run_agreement(mixed)


def restarted_run(
    run: Callable[[ActivationSelector, Tensor], tuple[StageResult, int]],
    selector: ActivationSelector,
    x0: Tensor,
    maps: list[Tensor],
    restarts: int,
    sigma: float,
    seed: int,
) -> tuple[StageResult, int]:
    """One DM/MDM run ``Q(X_{s-1})`` on ``X_{s-1} = (1 - N(sum maps)) X_0`` (``X_0`` when ``maps`` is empty).

    ``run(selector, images)`` is one DM/MDM run of a batch and returns ``(result, passes)``. With ``restarts > 1``
    it runs once on ``B * restarts`` rows, restart ``k`` of image ``b`` on ``(1 - N(sum maps)) (X_0 + sigma n_k)``
    (:func:`restart_inputs`), and the result is their mean (:func:`average_runs`).
    """
    x = hierarchical_masked_image(x0, maps) if maps else x0
    if restarts == 1:
        return run(selector, x)
    noisy = restart_inputs(x0, restarts, sigma, seed)
    rows = hierarchical_masked_image(noisy, [m.repeat_interleave(restarts, 0) for m in maps]) if maps else noisy
    res, passes = run(repeat_selector(selector, restarts), rows)
    return average_runs(res, x, restarts, selector), passes
