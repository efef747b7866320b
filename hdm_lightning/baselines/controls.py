"""Control maps: what a score looks like for maps that do not explain the classifier, or only smoothly.

- ``centre`` (:class:`CentreBias`): a centred Gaussian, the same for every image; the centre-bias baseline of the
  pointing game (Zhang et al., "Top-down Neural Attention by Excitation Backprop", arXiv 1608.00507). No pass.
- ``edges`` (:class:`SobelEdges`): the Sobel gradient magnitude of the image, model-independent by construction;
  Adebayo et al., "Sanity Checks for Saliency Maps" (arXiv 1810.03292) show edge detectors look like saliency maps.
  No pass.
- ``blurred`` (:class:`BlurredMap`): another method's map blurred by a Gaussian; how much of a score is
  smoothness (smoothing alone improves ROAD and ROAR: Song et al., arXiv 2304.13836). Its passes are the inner
  method's.
"""

from __future__ import annotations

import math
import time
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hdm_lightning.baselines.perturbation import gaussian_blur
from hdm_lightning.contract import METHODS, Attribution, RunContext, SaliencyMethod, build_method, register_method

__all__ = ["BlurredMap", "CentreBias", "SobelEdges", "centre_gaussian", "sobel_magnitude"]


def centre_gaussian(h: int, w: int, sigma: float, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """``exp(-((y - yc)^2 + (x - xc)^2) / (2 s^2))``, ``[H, W]``, with ``s = sigma * min(H, W)``.

    The centre is ``(yc, xc) = ((H - 1) / 2, (W - 1) / 2)``: an odd side has its maximum at the middle pixel, an
    even side at the two middle ones.
    """
    s = sigma * min(h, w)
    y = torch.arange(h, dtype=dtype, device=device) - (h - 1) / 2
    x = torch.arange(w, dtype=dtype, device=device) - (w - 1) / 2
    return torch.exp(-(y[:, None] ** 2 + x[None, :] ** 2) / (2 * s * s))


def sobel_magnitude(images: Tensor) -> Tensor:
    """Sobel gradient magnitude per channel, summed over the channels: ``[B, C, H, W] -> [B, 1, H, W]``.

    ``sum_c sqrt(gx_c^2 + gy_c^2)`` with the 3x3 Sobel kernels and replicate padding (the image border is no
    edge). Per channel, not of the grey image: an edge between two colours of equal brightness still counts.
    The images are taken as given (normalised, as the classifier sees them).
    """
    c = images.shape[1]
    gx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=images.dtype, device=images.device)
    kernels = torch.stack([gx, gx.T])[:, None].repeat(c, 1, 1, 1)  # [2C, 1, 3, 3]: x and y per channel
    g = F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernels, groups=c)  # [B, 2C, H, W]
    g = g.view(images.shape[0], c, 2, *images.shape[-2:])
    return g.pow(2).sum(2).sqrt().sum(1, keepdim=True)


@register_method("centre")
class CentreBias(SaliencyMethod):
    """A centred isotropic Gaussian, the same map for every image and class; no forward or backward pass.

    Args:
        model: the classifier (unused).
        sigma: the Gaussian's standard deviation as a fraction of the image's shorter side.
    """

    def __init__(self, model: nn.Module, sigma: float = 0.25) -> None:
        super().__init__(model)
        if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not math.isfinite(sigma) or sigma <= 0:
            raise ValueError(f"centre: sigma must be a fraction of the shorter side > 0 (e.g. 0.25), got {sigma!r}")
        self.sigma = float(sigma)

    def attribute(self, images: Tensor, target: Tensor) -> Tensor:  # noqa: D102
        b, _, h, w = images.shape
        g = centre_gaussian(h, w, self.sigma, images.dtype, images.device)
        return g.expand(b, 1, h, w).clone()


@register_method("edges")
class SobelEdges(SaliencyMethod):
    """The image's Sobel gradient magnitude (:func:`sobel_magnitude`); no forward or backward pass.

    Args:
        model: the classifier (unused: the map does not depend on it).
    """

    def attribute(self, images: Tensor, target: Tensor) -> Tensor:  # noqa: D102
        return sobel_magnitude(images.detach())


@register_method("blurred")
class BlurredMap(SaliencyMethod):
    """Another method's map blurred by a Gaussian of ``sigma`` pixels (reflect padding, radius ``3 sigma``).

    The inner method is ``build_method(of, model, params)``; each call is the inner method's call (with the run's
    context: logger, checkpoints), then the blur (:func:`~hdm_lightning.baselines.perturbation.gaussian_blur`,
    radius capped by the image) and the per-image min-max ``N``. The :class:`Attribution`'s passes and
    ``explanation`` are the inner call's, counted once.

    Args:
        model: the classifier.
        of: the registered method to blur (e.g. ``hdm``, ``gradcam``).
        sigma: the Gaussian's standard deviation in pixels.
        params: the inner method's parameters.
    """

    #: its ``of`` names an inner method built with ``params``: a run lends that method its own settings (plan.py)
    wraps: ClassVar[bool] = True

    def __init__(self, model: nn.Module, of: str = "hdm", sigma: float = 11.0, params: dict | None = None) -> None:
        super().__init__(model)
        if not isinstance(of, str) or of not in METHODS:
            raise ValueError(f"blurred: of={of!r} is not a saliency method: set params.of to one of {METHODS.names()}")
        if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not math.isfinite(sigma) or sigma <= 0:
            raise ValueError(f"blurred: sigma must be a blur width in pixels > 0 (e.g. 11), got {sigma!r}")
        if params is not None and not isinstance(params, dict):
            raise ValueError(f"blurred: params must be the parameters of {of!r} (a mapping), got {params!r}")
        self.of, self.sigma, self.params = of, float(sigma), params
        try:
            self.inner = build_method(of, model, params)
        except ValueError as e:
            raise ValueError(f"blurred: the inner method {of!r}: {e}") from None

    def explain(
        self, images: Tensor, target: Tensor | int | None = None, context: RunContext | None = None
    ) -> Attribution:
        """The inner method's :class:`Attribution` with its maps blurred and normalised again."""
        result = self.inner.explain(images, target, context)
        start = time.perf_counter()
        maps = gaussian_blur(result.maps.float(), self.sigma)
        maps = self._finish(maps, tuple(result.maps.shape), images.device)
        seconds = result.seconds + time.perf_counter() - start
        return Attribution(maps, seconds, result.forward_passes, result.backward_passes, result.explanation, self.name)
