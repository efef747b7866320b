"""Extremal perturbations with smooth masks, in plain torch.

Fong, Patrick & Vedaldi, "Understanding Deep Networks via Extremal Perturbations and Smooth Masks", ICCV 2019,
arXiv 1910.08485 (§3: extremal perturbations, the area constraint, the perturbation operator, smooth masks).

For each image ``x``, class ``c`` and area ``a`` the preservation game finds a mask ``m: Omega -> [0, 1]``
(``m = 1`` keeps a pixel, ``0`` blurs it away) that keeps as much of the class score as a mask of that area can::

    m_a = argmax_m  Phi(m ⊗ x) - lambda * R_a(m)        R_a(m) = ||vecsort(m) - r_a||^2

From the paper:

- ``Phi``: the class score; here the **logit** of the target class, as the rest of this project uses.
- ``R_a``: the ranking-based area constraint. ``vecsort(m)`` is the mask's values sorted in non-decreasing order,
  ``r_a`` is ``(1 - a)|Omega|`` zeros followed by ``a|Omega|`` ones; ``R_a = 0`` exactly for a binary mask of area
  ``a``. It is taken on the full-resolution mask that perturbs the image.
- ``⊗``: blur where the mask is 0, keep where it is 1: a spatially varying Gaussian blur with
  ``sigma(u) = sigma_max * (1 - m(u))``, computed with a perturbation pyramid (the image blurred at a few levels,
  interpolated per pixel).
- Smooth masks: ``m`` is the smooth max-convolution of a low-resolution parameter ``m_bar`` (a grid with a stride of
  several pixels) with a Gaussian kernel ``k`` of unit height, ``m(u) = smax_{v; T} k(u - v) m_bar(v)``, where the
  smooth max is ``smax_T f = sum_v f(v) exp(f(v)/T) / sum_v exp(f(v)/T)`` (``T -> 0``: max; ``T -> inf``: mean).
  ``m`` stays in ``[0, 1]`` and cannot vary faster than the kernel allows.
- Adam on ``m_bar``, values projected to ``[0, 1]`` after every step; several areas, each its own optimisation.

This project's choices (constants the formulation leaves open; sizes given at the paper's 224 px and scaled with the
image's shorter side, like the ``mask`` baseline):

- ``R_a`` is the **mean** over pixels of the squared difference (not the sum), so ``lambda`` does not depend on the
  resolution; ``a|Omega|`` is rounded to whole pixels. Its gradient treats tied values alike (equal up to a few
  units of rounding, e.g. a uniform initial mask): each is pulled towards the mean of their targets in ``r_a``, not
  towards whichever target the sort happened to give it (Adam's first steps would otherwise follow the sort's
  order of tied pixels); the loss value is the paper's.
- ``lambda`` grows geometrically from ``lambda_start = 10`` to ``lambda_end = 10000`` over the iterations: the class
  score shapes the mask first, the area constraint is tight at the end (equal values give a constant ``lambda``).
- Smooth mask: grid stride 7 px (a 32 x 32 ``m_bar`` at 224; at least 1 px); kernel ``sigma`` = 3 strides (21 px at
  224); the smooth max runs over the kernel's window cut at ``2 sigma`` (not over all of ``Omega``: farther cells,
  ``k < 0.14``, would only dilute it); ``m_bar`` is extended past the image edge by replicating its border cells,
  so a uniform ``m_bar`` gives a uniform mask and the border is neither favoured nor penalised; temperature
  ``T = 0.02`` (a uniform ``m_bar = 1`` gives ``m = 0.987``); initial ``m_bar = 0.5`` everywhere. ``m`` is evaluated
  at the grid's cells and upsampled bilinearly (:func:`hdm_lightning.masks.ops.upsample`) to the image, which at 3
  strides per ``sigma`` loses nothing visible and keeps the smooth max's cost independent of the image size.
- Pyramid: ``levels = 8`` blurs ``sigma_l = sigma_max * l / (levels - 1)`` (level 0 is the image itself), linear
  interpolation between the two levels around ``sigma(u)``; ``sigma_max = 20`` px at 224;
  :func:`hdm_lightning.baselines.perturbation.gaussian_blur` (reflect padding), in the normalised space.
- Adam, ``lr = 0.05``, 300 iterations; areas 5 %, 10 %, 20 %.
- Saliency: the mean over the areas of the full-resolution masks ``m_a`` (then per-image min-max, as every map).
  All images x areas are optimised together as the rows of one batch: the loss is summed over rows and Adam is
  elementwise, so each row's mask follows its own gradient exactly as if alone. Nothing is random.

Cost: ``iterations * areas * B`` forwards and backwards (defaults: 900 of each per image).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hdm_lightning.baselines.perturbation import gaussian_blur
from hdm_lightning.contract import SaliencyMethod, register_method
from hdm_lightning.core import as_targets, check_images, model_device_dtype, preserved
from hdm_lightning.masks.ops import upsample

__all__ = ["ExtremalPerturbation", "area_loss", "perturb", "perturbation_pyramid", "smooth_max_conv"]

_REFERENCE_SIDE = 224  # the paper's input size; stride, kernel and blur defaults scale from it


def smooth_max_conv(m_bar: Tensor, sigma: float, temperature: float) -> Tensor:
    """Smooth max-convolution ``m(u) = smax_{v; T} k(u - v) m_bar(v)``, evaluated at the grid's cells.

    Args:
        m_bar: ``[N, 1, gh, gw]`` parameter values in ``[0, 1]``.
        sigma: the Gaussian kernel's standard deviation, in grid cells; the kernel has unit height (``k(0) = 1``)
            and the smooth max runs over its window cut at ``2 sigma``.
        temperature: ``T`` of the smooth max (smaller: closer to the max).

    Returns:
        ``[N, 1, gh, gw]`` in ``[0, 1]`` (a weighted mean of values in ``[0, 1]``). Cells past the grid's edge take
        the value of the nearest border cell.
    """
    n, _, gh, gw = m_bar.shape
    radius = max(1, math.ceil(2.0 * sigma))
    side = 2 * radius + 1
    d = torch.arange(-radius, radius + 1, device=m_bar.device, dtype=m_bar.dtype)
    kernel = torch.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2.0 * sigma**2)).reshape(1, -1, 1)  # [1, K, 1]
    padded = F.pad(m_bar, (radius, radius, radius, radius), mode="replicate")
    f = kernel * F.unfold(padded, side)  # [N, K, gh * gw]: k(u - v) m_bar(v) over each cell's window
    weights = torch.softmax(f / temperature, dim=1)
    return (weights * f).sum(1).reshape(n, 1, gh, gw)


def area_loss(masks: Tensor, areas: Tensor | float) -> Tensor:
    """``R_a(m) = mean_i (vecsort(m)_i - r_a,i)^2`` per mask: 0 exactly for a binary mask with a fraction ``a`` of ones.

    Args:
        masks: ``[N, ...]``, one mask per row (flattened).
        areas: the fraction ``a`` per row, ``[N]`` (or one float for every row); ``a|Omega|`` is rounded to pixels.

    Returns:
        ``[N]``, the paper's value. Its gradient treats tied values alike: each pixel is pulled towards the mean of
        the targets ``r_a`` over the sorted positions whose values equal its own (to a few units of rounding), not
        towards the target of whichever of those positions the sort happened to give it.
    """
    values = masks.flatten(1)
    n, size = values.shape
    a = torch.as_tensor(areas, dtype=values.dtype, device=values.device).expand(n)
    first_one = (size - torch.round(a * size)).long()[:, None]  # index of r_a's first 1
    s, _ = values.sort(dim=1)
    r = (torch.arange(size, device=values.device)[None] >= first_one).to(values.dtype)
    with torch.no_grad():  # per value: the fraction of r_a's ones among the sorted positions holding (about) it
        sd = s.detach().contiguous()
        tol = 16 * torch.finfo(values.dtype).eps * sd.abs().clamp(min=1.0)
        lo = torch.searchsorted(sd, sd - tol, right=False)
        hi = torch.searchsorted(sd, sd + tol, right=True)
        t = (hi - torch.maximum(lo, first_one)).clamp(min=0).to(values.dtype) / (hi - lo).to(values.dtype)
    tied = ((s - t) ** 2).mean(1)
    return tied + (((s - r) ** 2).mean(1) - tied).detach()


def perturbation_pyramid(images: Tensor, sigma_max: float, levels: int) -> Tensor:
    """``[B, levels, C, H, W]``: the images blurred at ``sigma_l = sigma_max * l / (levels - 1)`` (level 0 = as is)."""
    if levels < 2:
        raise ValueError(f"levels must be at least 2 (the image and its most blurred copy), got {levels!r}")
    return torch.stack([gaussian_blur(images, sigma_max * i / (levels - 1)) for i in range(levels)], dim=1)


def perturb(pyramid: Tensor, masks: Tensor, image_of_row: Tensor | None = None) -> Tensor:
    """``m ⊗ x``: each pixel blurred by ``sigma(u) = sigma_max (1 - m(u))``, interpolated in the pyramid.

    Args:
        pyramid: ``[B, L, C, H, W]`` from :func:`perturbation_pyramid`.
        masks: ``[N, 1, H, W]`` in ``[0, 1]`` (1 keeps the pixel, 0 gives the most blurred level).
        image_of_row: ``[N]`` index into the pyramid's images per mask row; ``None``: row ``i`` is image ``i``.

    Returns:
        ``[N, C, H, W]``, differentiable in ``masks`` (piecewise linear between levels).
    """
    b, levels, c, h, w = pyramid.shape
    n = masks.shape[0]
    rows = torch.arange(n, device=masks.device) if image_of_row is None else image_of_row.to(masks.device)
    level = (1.0 - masks) * (levels - 1)  # [N, 1, H, W] in [0, L - 1]
    low = level.detach().floor().clamp(0, levels - 2).long()
    frac = level - low
    flat = pyramid.reshape(b * levels, c, h * w)
    index = (rows.view(n, 1, 1) * levels + low.view(n, 1, h * w)).expand(n, c, h * w)
    lower = flat.gather(0, index).view(n, c, h, w)
    upper = flat.gather(0, index + 1).view(n, c, h, w)
    return lower + frac * (upper - lower)


def _positive_int(key: str, value: object, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key} must be a positive integer{hint}, got {value!r}")


def _positive_or_none(key: str, value: object, hint: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or not value > 0):
        raise ValueError(f"{key} must be > 0 (or None for {hint}), got {value!r}")


@register_method("extremal")
class ExtremalPerturbation(SaliencyMethod):
    """Fong, Patrick & Vedaldi's extremal perturbations (preservation game, smooth masks, blur pyramid).

    Saliency: ``N(mean_a m_a)``, the mean over ``areas`` of the learned full-resolution masks.

    Args:
        model: the classifier.
        iterations: Adam steps per mask.
        lr: Adam learning rate on ``m_bar``.
        areas: the fractions ``a`` of the image each mask keeps, each in ``(0, 1)``.
        stride: image pixels per ``m_bar`` cell; ``None``: 7 at 224, scaled with the image's shorter side (>= 1).
        mask_sigma: the smooth mask's Gaussian kernel in px; ``None``: 3 strides.
        temperature: ``T`` of the smooth max.
        sigma_max: the blur where the mask is 0, in px; ``None``: 20 at 224, scaled.
        levels: blur levels of the perturbation pyramid (>= 2, level 0 is the image itself).
        lambda_start: weight of the area constraint ``R_a`` at the first step.
        lambda_end: its weight at the last step (geometric growth in between; equal to ``lambda_start``: constant).
        init: initial value of every ``m_bar`` cell.
    """

    def __init__(
        self,
        model: nn.Module,
        iterations: int = 300,
        lr: float = 0.05,
        areas: Sequence[float] = (0.05, 0.1, 0.2),
        stride: int | None = None,
        mask_sigma: float | None = None,
        temperature: float = 0.02,
        sigma_max: float | None = None,
        levels: int = 8,
        lambda_start: float = 10.0,
        lambda_end: float = 10000.0,
        init: float = 0.5,
    ) -> None:
        super().__init__(model)
        _positive_int("iterations", iterations, " (Adam steps per mask)")
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
            raise ValueError(f"levels must be an integer >= 2 (the image and its most blurred copy), got {levels!r}")
        if stride is not None:
            _positive_int("stride", stride, " (pixels per mask cell; None for 7 px at 224, scaled)")
        _positive_or_none("mask_sigma", mask_sigma, "3 strides")
        _positive_or_none("sigma_max", sigma_max, "20 px at 224, scaled")
        for key, value in (("lr", lr), ("temperature", temperature), ("lambda_start", lambda_start)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"{key} must be a number > 0 (see the defaults for a scale), got {value!r}")
        if isinstance(lambda_end, bool) or not isinstance(lambda_end, int | float) or not lambda_end >= lambda_start:
            raise ValueError(
                f"lambda_end must be a number >= lambda_start ({lambda_start!r}): lambda only grows; got {lambda_end!r}"
            )
        if isinstance(areas, str | bytes) or not isinstance(areas, Sequence) or len(areas) == 0:
            raise ValueError(
                f"areas must be a non-empty list of fractions in (0, 1), e.g. [0.05, 0.1, 0.2]; got {areas!r}"
            )
        if not all(not isinstance(a, bool) and isinstance(a, int | float) and 0.0 < a < 1.0 for a in areas):
            raise ValueError(f"every area must be a fraction of the image in (0, 1), e.g. 0.1 for 10 %; got {areas!r}")
        if isinstance(init, bool) or not isinstance(init, int | float) or not 0.0 <= init <= 1.0:
            raise ValueError(f"init (the initial mask value) must be in [0, 1], got {init!r}")
        self.iterations, self.lr, self.areas = iterations, float(lr), tuple(float(a) for a in areas)
        self.stride, self.mask_sigma, self.temperature = stride, mask_sigma, float(temperature)
        self.sigma_max, self.levels, self.init = sigma_max, levels, float(init)
        self.lambda_start, self.lambda_end = float(lambda_start), float(lambda_end)

    def sizes(self, height: int, width: int) -> tuple[int, float, float]:
        """``(stride, mask_sigma, sigma_max)`` in px for an image of ``height x width`` (defaults scaled from 224)."""
        side = min(height, width)
        stride = self.stride if self.stride is not None else max(1, round(7 * side / _REFERENCE_SIDE))
        mask_sigma = float(self.mask_sigma) if self.mask_sigma is not None else 3.0 * stride
        sigma_max = float(self.sigma_max) if self.sigma_max is not None else 20.0 * side / _REFERENCE_SIDE
        return stride, mask_sigma, sigma_max

    def lambdas(self) -> list[float]:
        """``lambda`` at each step: geometric from ``lambda_start`` to ``lambda_end``."""
        steps = max(self.iterations - 1, 1)
        ratio = self.lambda_end / self.lambda_start
        return [self.lambda_start * ratio ** (i / steps) for i in range(self.iterations)]

    def area_masks(self, images: Tensor, target: Tensor | int) -> Tensor:
        """The learned full-resolution masks ``m_a``, ``[B, len(areas), H, W]`` in ``[0, 1]`` (model left as given).

        The saliency map is their mean over the areas; this exposes them (e.g. to check their areas). Passes are
        not counted here (use :meth:`explain` for the cost).
        """
        check_images(images)
        device, dtype = model_device_dtype(self.model)
        x = images.detach().to(device=device, dtype=dtype)
        t = as_targets(target, x.shape[0], device)
        if t is None:
            raise ValueError("area_masks needs target class indices (an int or one per image)")
        with preserved(self.model), torch.enable_grad():
            return self._optimise(x, t)

    def attribute(self, images: Tensor, target: Tensor) -> Tensor:  # noqa: D102
        return self._optimise(images, target).mean(1, keepdim=True)

    def _optimise(self, images: Tensor, target: Tensor) -> Tensor:
        b, _, h, w = images.shape
        n_areas = len(self.areas)
        stride, mask_sigma, sigma_max = self.sizes(h, w)
        gh, gw = math.ceil(h / stride), math.ceil(w / stride)
        sigma_cells = mask_sigma / stride
        with torch.no_grad():
            pyramid = perturbation_pyramid(images, sigma_max, self.levels)
        # rows = images x areas, image-major: row b * A + j is image b at area j
        image_of_row = torch.arange(b, device=images.device).repeat_interleave(n_areas)
        target_of_row = target.repeat_interleave(n_areas)
        areas = torch.tensor(self.areas, device=images.device, dtype=images.dtype).repeat(b)
        rows = torch.arange(b * n_areas, device=images.device)
        m_bar = torch.full((b * n_areas, 1, gh, gw), self.init, device=images.device, dtype=images.dtype)
        m_bar.requires_grad_(True)
        opt = torch.optim.Adam([m_bar], lr=self.lr)
        for lam in self.lambdas():
            m = upsample(smooth_max_conv(m_bar, sigma_cells, self.temperature), h, w)
            logits = self.model(perturb(pyramid, m, image_of_row))
            score = logits[rows, target_of_row].to(m.dtype)  # Phi(m ⊗ x): the target logit
            loss = -score + lam * area_loss(m, areas)
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()  # summed over rows: each mask gets its own gradient
            opt.step()
            with torch.no_grad():
                m_bar.clamp_(0.0, 1.0)
        with torch.no_grad():
            m = upsample(smooth_max_conv(m_bar.detach(), sigma_cells, self.temperature), h, w)
        return m.view(b, n_areas, h, w)
