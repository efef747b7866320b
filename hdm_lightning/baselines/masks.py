"""Our own methods behind the same contract (DM, HDM, MDM), and the random map (a sanity floor).

- DM and HDM: "Hierarchical Dynamic Masks for Visual Explanation of Neural Networks" (HDM paper §3, HDM appx.
  Algorithms 1-2); MDM: "Multiple Dynamic Mask" (MDM paper §3). They run through :func:`hdm_lightning.explain`;
  the map is the explanation's ``saliency`` (HDM: the mixed ``M_h``; DM: ``M_b``; MDM: ``M^h``), already in
  ``[0, 1]``, made float32 (the contract's ``N`` leaves a min-max normalised map as it is).
- Random: i.i.d. uniform noise per pixel, the floor any method must beat (e.g. Adebayo et al., "Sanity Checks for
  Saliency Maps", NeurIPS 2018, https://arxiv.org/abs/1810.03292, use random maps as the reference point).

Pass counts come from the :class:`~hdm_lightning.baselines.base.PassCounter` like every other method, and are
cross-checked against the explanation's ``passes_per_image`` (backward samples = ``passes_per_image * B``).
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor, nn

from hdm_lightning.baselines.base import SaliencyMethod, register_method

__all__ = ["DM", "HDM", "MDM", "RandomMap"]


class _DynamicMasks(SaliencyMethod):
    """Adapter to :func:`hdm_lightning.explain`; ``config`` is the method's config overrides."""

    method: ClassVar[str] = ""

    def __init__(self, model: nn.Module, config: dict | str | Path | None = None) -> None:
        super().__init__(model)
        from hdm_lightning.explainers.methods import build_explainer

        build_explainer(self.method, config)  # validate now: a bad key fails at build time, not mid-evaluation
        self.config = config
        self.last_explanation = None
        # Extra keyword arguments of ``explain`` (``logger``, ``callbacks``, ``work_dir``) set by a runner.
        self.explain_kwargs: dict = {}

    def attribute(self, images: Tensor, target: Tensor) -> Tensor:  # noqa: D102
        from hdm_lightning.explainers.methods import explain

        out = explain(self.model, images, self.method, target=target, config=self.config, **self.explain_kwargs)
        self.last_explanation = out
        expected = out.passes_per_image * images.shape[0]
        # A call that continues checkpointed work (work_dir) legitimately spends fewer passes than it reports.
        if self.counter.backward != expected and not self.explain_kwargs.get("work_dir"):
            warnings.warn(
                f"{self.method}: counted {self.counter.backward} backward samples but the explanation reports "
                f"{out.passes_per_image} per image x {images.shape[0]} images = {expected}",
                RuntimeWarning,
                stacklevel=2,
            )
        return out.saliency.float()


@register_method("dm")
class DM(_DynamicMasks):
    """Dynamic masks (HDM paper §3.2).

    Args:
        model: the classifier.
        config: overrides of the DM config (dict, DictConfig or YAML path; see ``hdm_lightning.config``).
    """

    method = "dm"


@register_method("hdm")
class HDM(_DynamicMasks):
    """Hierarchical dynamic masks (HDM paper §3.1).

    Args:
        model: the classifier.
        config: overrides of the HDM config (dict, DictConfig or YAML path; see ``hdm_lightning.config``).
    """

    method = "hdm"


@register_method("mdm")
class MDM(_DynamicMasks):
    """Multiple dynamic mask (MDM paper §3).

    Args:
        model: the classifier.
        config: overrides of the MDM config (dict, DictConfig or YAML path; see ``hdm_lightning.config``).
    """

    method = "mdm"


@register_method("random")
class RandomMap(SaliencyMethod):
    """Uniform noise maps; no forward or backward pass.

    Each image's map is drawn from a generator seeded with ``seed`` and a digest of the image, so the map is a
    pure function of the image: the same whatever the batch, the call order or a resumed run (drawn on the CPU, so
    every device gets the same maps).

    Args:
        model: the classifier (unused).
        seed: seed of the noise generator.
    """

    def __init__(self, model: nn.Module, seed: int = 0) -> None:
        super().__init__(model)
        self.seed = int(seed)

    def attribute(self, images: Tensor, target: Tensor) -> Tensor:  # noqa: D102
        _, _, h, w = images.shape
        maps = []
        for x in images.detach().cpu().contiguous():
            digest = hashlib.sha256(x.view(torch.uint8).numpy().tobytes()).digest()
            gen = torch.Generator().manual_seed(self.seed ^ int.from_bytes(digest[:7], "little"))
            maps.append(torch.rand(1, h, w, generator=gen))
        return torch.stack(maps).to(images.device)
