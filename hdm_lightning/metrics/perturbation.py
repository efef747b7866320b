"""Plain torch for the saliency metrics: pixel ranking, kept-pixel counts, canvases, chunked scoring.

The metric classes of the map families (:mod:`hdm_lightning.metrics`) are thin ``torchmetrics`` glue around these
functions, so the maths can be tested without a metric or a Trainer.

Project decisions (the papers leave them open; docs/methods.md; every metric follows them):

- **Pixel ranking.** Pixels are ordered by saliency, descending, ties broken in one fixed pseudo-random order of
  the positions (``ties="shuffled"``, the default; ``"raster"``: by raster index). A constant map therefore has
  a defined order and two maps that differ by a strictly increasing transform rank identically, so every
  rank-based score is equal for both. Raster ties would rank a sparse map's zeros from the top rows down, which
  scores the map by where its zeros happen to lie.
- **Top p %.** The first ``round(p / 100 * H * W)`` pixels of that order, rounded half up in exact rational
  arithmetic (12.5 % of 4 pixels keeps 1 pixel, not Python's banker's 0).
- **Binarising at percentile q** keeps the top ``(100 - q) %`` pixels by rank. Thresholding ``map >= value``
  instead would keep every tied pixel (all of them for a constant map) and make the kept share depend on ties.
- **Canvases** (what replaces removed pixels) are built in the normalised tensor the model sees: ``zero`` (0 =
  the dataset mean colour), ``mean`` (the image's own per-channel mean), ``blur`` (Gaussian blur, which
  commutes with the per-channel affine normalisation because its weights sum to 1) and ``black`` (raw pixel
  value 0, i.e. ``(0 - mean) / std`` per channel; needs the classifier's preprocessing mean and std).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from fractions import Fraction
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF

from hdm_lightning.config.run import DEFAULT_TIES, EARLIER_TIES, TIES

__all__ = [
    "BASELINES",
    "TIES",
    "black_canvas",
    "blur_kernel_size",
    "DEFAULT_TIES",
    "EARLIER_TIES",
    "check_ties",
    "check_inputs",
    "class_probabilities",
    "eval_mode",
    "evaluation_ties",
    "gaussian_blur_canvas",
    "keep_count",
    "make_canvas",
    "mean_canvas",
    "rank_order",
    "rank_positions",
    "step_counts",
    "top_mask",
]

BASELINES = ("zero", "mean", "blur", "black")
TIE_SEED = 0  # the one pixel order of ``ties="shuffled"``: the same for every image, run and batch


def check_ties(ties: Any, family: str) -> str:
    """``ties`` if it is one of :data:`TIES`, else a ``ValueError`` naming ``evaluation.ties`` and the family."""
    if ties not in TIES:
        raise ValueError(
            f"{family}: ties must be one of {list(TIES)} (evaluation.ties, or evaluation.params.{family}.ties), "
            f"got {ties!r}"
        )
    return ties


def evaluation_ties(evaluation: Any) -> str:
    """The run's ``evaluation.ties`` (:data:`DEFAULT_TIES` for a config section without it), for ``from_evaluation``."""
    return getattr(evaluation, "ties", DEFAULT_TIES)


def rank_order(saliency: Tensor, ties: str = DEFAULT_TIES) -> Tensor:
    """Pixel indices (raster, ``y * W + x``) from most to least salient.

    Args:
        saliency: ``[B, 1, H, W]`` maps, any real range.
        ties: how equal values are ordered: ``"raster"`` (row by row from the top left) or ``"shuffled"``
            (the default: one fixed pseudo-random order of the ``H * W`` positions, drawn from :data:`TIE_SEED`,
            the same for every image, so a map's ranks never depend on its batch). A sparse map's zeros are one
            large tie: on the synthetic shapes DM's maps are 74 % zeros and their deletion AUC is 0.286 with
            raster ties and 0.187 shuffled (docs/results.md, "Amortised masks").

    Returns:
        LongTensor ``[B, H * W]``; row ``b`` is a permutation of ``0 .. H*W - 1``.
    """
    if ties not in TIES:
        raise ValueError(f"ties must be one of {list(TIES)}, got {ties!r}")
    # ``+ 0.0`` turns -0.0 into +0.0: a radix sort (CUDA) would otherwise order -0.0 below +0.0 and break ties.
    flat = saliency.flatten(1) + 0.0
    if ties == "raster":
        return torch.sort(flat, dim=1, descending=True, stable=True).indices
    perm = torch.randperm(flat.shape[1], generator=torch.Generator().manual_seed(TIE_SEED)).to(flat.device)
    return perm[torch.sort(flat[:, perm], dim=1, descending=True, stable=True).indices]


def rank_positions(saliency: Tensor, ties: str = DEFAULT_TIES) -> Tensor:
    """Rank of every pixel (0 = most salient), the inverse permutation of :func:`rank_order`: ``[B, H * W]``."""
    order = rank_order(saliency, ties)
    positions = torch.empty_like(order)
    ranks = torch.arange(order.shape[1], device=order.device).expand_as(order)
    return positions.scatter_(1, order, ranks)


def keep_count(percent: float, n_pixels: int) -> int:
    """``round(percent / 100 * n_pixels)`` rounded half up, in exact arithmetic (no float drift at ``.5``).

    Args:
        percent: share of pixels in ``[0, 100]``.
        n_pixels: ``H * W``.
    """
    p = Fraction(str(percent if isinstance(percent, int) else float(percent)))
    if not 0 <= p <= 100:
        raise ValueError(f"percent must be in [0, 100], got {percent!r}")
    return math.floor(p * n_pixels / 100 + Fraction(1, 2))


def step_counts(steps: int, n_pixels: int) -> list[int]:
    """Pixels changed after step ``k = 0 .. steps``: ``round(k / steps * n_pixels)`` half up (0 first, all last)."""
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    return [(2 * k * n_pixels + steps) // (2 * steps) for k in range(steps + 1)]


def top_mask(saliency: Tensor, percent: float, ties: str = DEFAULT_TIES) -> Tensor:
    """Keep the top ``percent`` % of pixels by rank (``ties`` as in :func:`rank_order`): bool ``[B, 1, H, W]``."""
    n = keep_count(percent, saliency.shape[-2] * saliency.shape[-1])
    return (rank_positions(saliency, ties) < n).view(saliency.shape)


def blur_kernel_size(height: int, width: int) -> int:
    """Odd Gaussian kernel side of about a tenth of the image's shorter side, at least 3 (224 px -> 23)."""
    k = max(3, round(min(height, width) / 10))
    return k if k % 2 else k + 1


def gaussian_blur_canvas(images: Tensor, kernel_size: int | None = None, sigma: float | None = None) -> Tensor:
    """The images blurred by a Gaussian (reflect padding), the ``blur`` canvas.

    Args:
        images: ``[B, C, H, W]``, normalised or raw (the blur commutes with the normalisation).
        kernel_size: odd kernel side; ``None`` = :func:`blur_kernel_size` (about a tenth of the side).
        sigma: standard deviation in pixels; ``None`` = torchvision's (OpenCV's) rule ``0.15 k + 0.35``
            (``k = 23`` gives 3.8).
    """
    height, width = images.shape[-2:]
    k = blur_kernel_size(height, width) if kernel_size is None else int(kernel_size)
    if k < 1 or k % 2 == 0:
        raise ValueError(f"blur kernel_size must be a positive odd integer, got {kernel_size!r}")
    # Reflect padding needs pad < side; shrink the kernel on tiny images rather than fail.
    k = min(k, 2 * (min(height, width) - 1) + 1)
    if k < 3:
        return images.clone()
    return TF.gaussian_blur(images, [k, k], None if sigma is None else [float(sigma), float(sigma)])


def mean_canvas(images: Tensor) -> Tensor:
    """Every pixel set to the image's own per-channel mean, the ``mean`` canvas."""
    return images.mean(dim=(-2, -1), keepdim=True).expand_as(images)


def black_canvas(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Raw pixel value 0 in the normalised tensor: ``(0 - mean) / std`` per channel, the ``black`` canvas."""
    value = (-mean / std).to(device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    if value.shape[1] != images.shape[1]:
        raise ValueError(
            f"mean/std have {value.shape[1]} channels but images have {images.shape[1]}; "
            "pass the classifier's preprocessing mean and std (Preprocess.mean / Preprocess.std)"
        )
    return value.expand_as(images)


def make_canvas(
    kind: str,
    images: Tensor,
    mean: Tensor | None = None,
    std: Tensor | None = None,
    blur_kernel: int | None = None,
    blur_sigma: float | None = None,
) -> Tensor:
    """The canvas ``kind`` (one of :data:`BASELINES`) for ``images [B, C, H, W]``."""
    if kind == "zero":
        return torch.zeros_like(images)
    if kind == "mean":
        return mean_canvas(images)
    if kind == "blur":
        return gaussian_blur_canvas(images, blur_kernel, blur_sigma)
    if kind == "black":
        if mean is None or std is None:
            raise ValueError("the 'black' canvas needs the classifier's preprocessing mean and std")
        return black_canvas(images, mean, std)
    raise ValueError(f"Unknown baseline {kind!r}. Available: {list(BASELINES)}")


def as_channel_tensor(values: Sequence[float] | Tensor | None, name: str) -> Tensor | None:
    """``mean``/``std`` given as numbers or a tensor -> float64 ``[C]`` (``None`` stays ``None``)."""
    if values is None:
        return None
    t = torch.as_tensor(values, dtype=torch.float64).flatten()
    if t.numel() == 0:
        raise ValueError(f"{name} needs one value per channel, got {values!r}")
    if name == "std" and not bool((t > 0).all()):
        raise ValueError(f"std must be positive, got {values!r}")
    return t


def check_inputs(
    images: Tensor,
    saliency: Tensor,
    target: Tensor | None = None,
    mask: Tensor | None = None,
    *,
    need_mask: bool = False,
    metric: str = "metric",
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Validate the shared ``update`` inputs; return ``saliency``, ``target`` and ``mask`` on the images' device.

    Raises:
        ValueError: with the expected shape/dtype and how to get it.
    """
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{metric}: images must be a [B, C, H, W] tensor, got {shape}")
    B, _, H, W = images.shape
    if not isinstance(saliency, Tensor) or tuple(saliency.shape) != (B, 1, H, W):
        shape = list(saliency.shape) if isinstance(saliency, Tensor) else type(saliency).__name__
        raise ValueError(
            f"{metric}: saliency must be [B, 1, H, W] = {[B, 1, H, W]} to match images {list(images.shape)}, "
            f"got {shape}; upsample the map to the image size (hdm_lightning.masks.ops.upsample) and keep one channel"
        )
    if saliency.is_complex() or not bool(torch.isfinite(saliency).all()):
        raise ValueError(f"{metric}: saliency contains NaN or infinite values; rank-based scores need finite maps")
    saliency = saliency.to(images.device)
    if target is not None:
        if not isinstance(target, Tensor) or tuple(target.shape) != (B,) or target.is_floating_point():
            shape = list(target.shape) if isinstance(target, Tensor) else type(target).__name__
            raise ValueError(
                f"{metric}: target must be an integer tensor [B] = [{B}] (the explained class per image), got {shape}"
            )
        target = target.to(images.device, torch.long)
    if mask is None:
        if need_mask:
            raise ValueError(
                f"{metric} needs a ground-truth mask: call update(images, saliency, target, mask=BoolTensor[B, H, W]); "
                "leave this metric out on data without masks"
            )
    else:
        if not isinstance(mask, Tensor) or tuple(mask.shape) != (B, H, W) or mask.dtype != torch.bool:
            desc = f"{mask.dtype} {list(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(
                f"{metric}: mask must be a BoolTensor [B, H, W] = {[B, H, W]} (True = foreground), got {desc}; "
                "convert with mask != 0 and drop the channel dimension"
            )
        mask = mask.to(images.device)
    return saliency, target, mask


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode without gradients, then restore every submodule's own train/eval flag.

    Eval mode because BatchNorm in train mode would couple the perturbed copies of a batch (each image must be
    scored alone); restoring per submodule because ``model.train(flag)`` would overwrite a caller's mixed setting.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, flag in flags:
            m.training = flag


def class_probabilities(
    model: nn.Module,
    n_samples: int,
    make_inputs: Callable[[int, int], tuple[Tensor, Tensor]],
    batch_size: int,
) -> Tensor:
    """Softmax probability of each sample's class, computed in chunks of at most ``batch_size`` samples.

    Args:
        model: classifier returning logits ``[N, K]``; called in eval mode without gradients.
        n_samples: number of (perturbed) samples.
        make_inputs: ``(start, stop) -> (inputs [stop - start, C, H, W], classes [stop - start])``, so the
            perturbed copies are built one chunk at a time instead of all at once (101 copies of a batch of
            224 px images would need gigabytes).
        batch_size: largest chunk.

    Returns:
        ``[n_samples]`` probabilities ``Y_c`` in float64.

    Raises:
        ValueError: if the model does not return ``[N, K]`` logits or a class is outside ``[0, K)``.
    """
    out = []
    with eval_mode(model):
        for start in range(0, n_samples, batch_size):
            stop = min(start + batch_size, n_samples)
            inputs, classes = make_inputs(start, stop)
            logits = model(inputs)
            if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != stop - start:
                shape = list(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
                raise ValueError(
                    f"the classifier must return logits [N, K] for N = {stop - start} inputs, got {shape}; "
                    "wrap it so that it returns the class logits"
                )
            n_classes = logits.shape[1]
            if bool(((classes < 0) | (classes >= n_classes)).any()):
                raise ValueError(
                    f"target classes must be in [0, {n_classes}) for this classifier, got {classes.tolist()}"
                )
            probs = torch.softmax(logits.double(), dim=1)
            out.append(probs.gather(1, classes.view(-1, 1)).squeeze(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)
