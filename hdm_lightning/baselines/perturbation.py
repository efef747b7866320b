"""Meaningful perturbation ("Mask"): a learned deletion mask, in plain torch.

Fong & Vedaldi, "Interpretable Explanations of Black Boxes by Meaningful Perturbation", ICCV 2017,
arXiv 1704.03296 (§3-4; the authors' reference code perturb_explanations,
``code/caffe/python/optimize_mask.py`` and ``defaults.py``).

For each image ``x`` and class ``c`` a low-resolution mask ``m`` (``m = 1`` keeps a pixel, ``0`` deletes it) minimises
(paper Eq. 4, with the "deletion game" of §4)::

    lambda1 * ||1 - m||_1  +  lambda2 * sum_u ||grad m(u)||_beta^beta  +  E_tau[ P_c(Phi(x(. - tau); g(m))) ]
    Phi(x; M) = M * x + (1 - M) * blur(x)

Choices (reference-code defaults, which match the paper's numbers; sizes scaled from its 224 px):

- ``m`` is ``ceil(H / mask_scale) x ceil(W / mask_scale)`` (``mask_scale = 8``: 28 x 28 at 224), initialised to 1
  (nothing deleted), upsampled with :func:`hdm_lightning.masks.ops.upsample` (bilinear; the reference upsamples
  nearest and then blurs the mask with radius 5, which bilinear upsampling replaces).
- ``lambda1 = 1e-4`` on the sum over the low-resolution mask, ``lambda2 = 1e-2`` on the anisotropic
  ``sum |dm/dy|^beta + |dm/dx|^beta`` over it (the paper's ``||.||_beta^beta``; the reference code uses the isotropic
  ``(dy^2 + dx^2)^(beta/2)``), ``beta = 3``.
- ``P_c``: the softmax probability of class ``c`` (reference: the ``prob`` layer).
- ``blur``: Gaussian, ``sigma0 = 10`` px at 224 (scaled with the image side), reflect padding, in the normalised space
  (blur commutes with the per-channel affine normalisation away from the border).
- Adam, ``lr = 0.1``, 300 iterations (reference ``num_iters = 300``), values clamped to ``[0, 1]`` after every step
  (the same projection as our masks). All images of the batch are optimised together: the loss is summed over
  images, and Adam is elementwise, so each image's mask follows its own gradient exactly as if alone.
- Jitter ``tau``: the image (and its blurred copy) shifted by a random offset in ``[0, jitter)`` pixels each
  iteration (edge padding), the mask fixed; reference: 4 px at 224, scaled (so 0 shift below ~40 px).

Saliency: ``N(1 - g(m))``. Cost: ``iterations * B`` forwards and backwards.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hdm_lightning.contract import SaliencyMethod, register_method
from hdm_lightning.masks.ops import UPSAMPLE_MODES, upsample

__all__ = ["MeaningfulPerturbation", "gaussian_blur", "tv_beta"]

_REFERENCE_SIDE = 224  # the paper's input size; blur and jitter defaults scale from it


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``[B, C, H, W]`` with reflect padding (radius ``3 sigma``, capped by the image)."""
    if sigma <= 0:
        return x
    h, w = x.shape[-2:]
    radius = max(1, min(math.ceil(3 * sigma), h - 1, w - 1))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def tv_beta(m: Tensor, beta: float) -> Tensor:
    """``sum_u |dm/dy|^beta + |dm/dx|^beta`` per mask, ``[B, 1, a, b] -> [B]`` (paper Eq. 4's TV term)."""
    dy = (m[..., 1:, :] - m[..., :-1, :]).abs().pow(beta).flatten(1).sum(1)
    dx = (m[..., :, 1:] - m[..., :, :-1]).abs().pow(beta).flatten(1).sum(1)
    return dy + dx


@register_method("mask")
class MeaningfulPerturbation(SaliencyMethod):
    """Fong & Vedaldi's learned deletion mask (blur perturbation); saliency ``N(1 - upsampled mask)``.

    Args:
        model: the classifier.
        iterations: Adam steps (reference code: 300).
        lr: Adam learning rate (0.1).
        l1: ``lambda1``, weight of ``||1 - m||_1`` summed over the low-resolution mask (1e-4).
        tv: ``lambda2``, weight of the TV term (1e-2).
        beta: TV exponent (3).
        mask_scale: image pixels per mask cell (8: 28 x 28 at 224).
        blur_sigma: blur of the deleted pixels in px; ``None``: 10 px at 224, scaled with the image's shorter side.
        jitter: largest random shift + 1 in px; ``None``: 4 at 224, scaled; 0 or 1: no jitter.
        init: initial mask value (1: nothing deleted).
        upsample_mode: ``"bilinear"`` or ``"nearest"`` (:func:`hdm_lightning.masks.ops.upsample`).
        seed: seed of the jitter offsets.
    """

    def __init__(
        self,
        model: nn.Module,
        iterations: int = 300,
        lr: float = 0.1,
        l1: float = 1e-4,
        tv: float = 1e-2,
        beta: float = 3.0,
        mask_scale: int = 8,
        blur_sigma: float | None = None,
        jitter: int | None = None,
        init: float = 1.0,
        upsample_mode: str = "bilinear",
        seed: int = 0,
    ) -> None:
        super().__init__(model)
        for key, value in (("iterations", iterations), ("mask_scale", mask_scale)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        if float(lr) <= 0 or float(l1) < 0 or float(tv) < 0 or float(beta) < 1:
            raise ValueError(f"need lr > 0, l1 >= 0, tv >= 0, beta >= 1; got {lr=}, {l1=}, {tv=}, {beta=}")
        if blur_sigma is not None and float(blur_sigma) <= 0:
            raise ValueError(f"blur_sigma must be > 0 (or None for the scaled default), got {blur_sigma!r}")
        if jitter is not None and (isinstance(jitter, bool) or not isinstance(jitter, int) or jitter < 0):
            raise ValueError(f"jitter must be a non-negative integer (or None for the scaled default), got {jitter!r}")
        if not 0.0 <= float(init) <= 1.0:
            raise ValueError(f"init must be in [0, 1], got {init!r}")
        if upsample_mode not in UPSAMPLE_MODES:
            raise ValueError(f"upsample_mode must be one of {list(UPSAMPLE_MODES)}, got {upsample_mode!r}")
        self.iterations, self.lr, self.l1, self.tv, self.beta = iterations, float(lr), float(l1), float(tv), float(beta)
        self.mask_scale, self.blur_sigma, self.jitter, self.init = mask_scale, blur_sigma, jitter, float(init)
        self.upsample_mode, self.seed = upsample_mode, int(seed)

    def attribute(self, images: Tensor, target: Tensor) -> Tensor:  # noqa: D102
        b, _, h, w = images.shape
        side = min(h, w)
        sigma = self.blur_sigma if self.blur_sigma is not None else 10.0 * side / _REFERENCE_SIDE
        jitter = self.jitter if self.jitter is not None else max(1, round(4 * side / _REFERENCE_SIDE))
        with torch.no_grad():
            blurred = gaussian_blur(images, sigma)
        if jitter > 1:  # shifted crops of edge-padded copies: x(. - tau), tau in [0, jitter)
            pad = (0, jitter - 1, 0, jitter - 1)
            x_pad, blur_pad = F.pad(images, pad, mode="replicate"), F.pad(blurred, pad, mode="replicate")
        gen = torch.Generator().manual_seed(self.seed)
        mh, mw = math.ceil(h / self.mask_scale), math.ceil(w / self.mask_scale)
        m = torch.full((b, 1, mh, mw), self.init, device=images.device, dtype=images.dtype, requires_grad=True)
        opt = torch.optim.Adam([m], lr=self.lr)
        rows = torch.arange(b, device=images.device)
        for _ in range(self.iterations):
            if jitter > 1:
                dy, dx = torch.randint(0, jitter, (2,), generator=gen).tolist()
                x, ref = x_pad[..., dy : dy + h, dx : dx + w], blur_pad[..., dy : dy + h, dx : dx + w]
            else:
                x, ref = images, blurred
            big = upsample(m, h, w, self.upsample_mode)
            logits = self.model(big * x + (1.0 - big) * ref)  # Phi(x; g(m)): 1 keeps, 0 blurs
            prob = logits.float().softmax(1)[rows, target].to(m.dtype)
            loss = self.l1 * (1.0 - m).abs().flatten(1).sum(1) + self.tv * tv_beta(m, self.beta) + prob
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()  # summed over images: each mask gets its own gradient
            opt.step()
            with torch.no_grad():
                m.clamp_(0.0, 1.0)
        with torch.no_grad():
            return 1.0 - upsample(m.detach(), h, w, self.upsample_mode)
