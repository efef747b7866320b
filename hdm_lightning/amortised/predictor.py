"""The mask predictor: the frozen classifier's features and a class -> the DM benchmark vectors ``d_i``, in one pass.

The idea of Dabkowski & Gal, "Real Time Image Saliency for Black Box Classifiers" (NeurIPS 2017, arXiv 1705.07857)
applied to the DM objective of "Hierarchical Dynamic Masks for Visual Explanation of Neural Networks"
(arXiv 2301.04970, Eq. 6): instead of fitting each image's vectors by Adam, a small network learns over a dataset to
output them. Its inputs are the activations of one layer of the classifier it explains (by default the layer
Grad-CAM uses) and the class to explain, selected as in Dabkowski & Gal by a learned per-class embedding that scales
the feature channels. Because it reads the classifier's own features, its maps change when the classifier does (the
randomisation sanity checks).

Architecture (a project decision; nothing in the papers fixes it): per-image normalised features (a group norm with
one group: no batch statistics, so a map never depends on the other images of its batch) -> 1x1 conv to ``hidden``
channels -> times the class embedding (-> plus the reduced features of finer ``skips`` layers, at the finest
resolution) -> two 3x3 conv + ReLU -> per vector size ``(a, b)``: resampled to ``a x b``
(area average when shrinking, bilinear when growing), a 1x1 conv and a sigmoid (``output: sigmoid``, the default), or
DM's projection onto [0, 1] with its gradient passed straight through (``output: clamp``: the gradient is taken at the
projected values and applied to the unprojected ones, as DM's projected Adam does). The heads start at ``tau``
everywhere (zero weights), DM's own initial value. Measured on the synthetic shapes (64 training images fitted for
300 steps, DM loss per image; DM's own 30 steps reach 20.9): sigmoid 41.9, clamp 44.7 when ``eta`` applies from the
first step (the masks shrink before they learn to keep the class: most images end near empty), and 25.2 / 29.6 with
``eta`` ramped up over the first half (``optim.reg_warmup_epochs`` of ``train_explainer.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hdm_lightning.baselines.layers import default_target_layer, module_path, reshape_for, resolve_module
from hdm_lightning.config.explainer import OUTPUTS

__all__ = ["OUTPUTS", "FeatureTap", "MaskPredictor", "resample"]

STRETCH = 0.1  # the stretched sigmoid spans (-0.1, 1.1) before the projection onto [0, 1]


def resample(z: Tensor, size: tuple[int, int]) -> Tensor:
    """``z`` ``[B, C, h, w]`` at ``size``: area average where it shrinks, bilinear where it grows."""
    if tuple(z.shape[-2:]) == tuple(size):
        return z
    if z.shape[-2] >= size[0] and z.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(z, size)
    return F.interpolate(z, size=size, mode="bilinear", align_corners=False)


class FeatureTap:
    """The output of one layer of a classifier, captured during a forward pass (a forward hook, removed afterwards).

    Args:
        model: the classifier.
        layer: dotted path of the layer (``"features.-1"``, ``"layer4.1"``), or ``None``: the layer Grad-CAM uses
            for this architecture (:func:`~hdm_lightning.baselines.layers.default_target_layer`).

    Raises:
        ValueError: the path names no module, or there is no default for this architecture (the message says what
            to pass).
    """

    def __init__(self, model: nn.Module, layer: str | None = None, skips: Sequence[str] = ()) -> None:
        if layer is None:
            module, reshape = default_target_layer(model)
            layer = module_path(model, module)
        else:
            module = resolve_module(model, layer)
            reshape = reshape_for(model) if layer == module_path(model, default_target_layer(model)[0]) else None
        self.model, self.layer, self.module = model, layer, module
        self.reshape: Callable[[Tensor], Tensor] | None = reshape
        self.skips = [str(s) for s in skips]
        self.skip_modules = [resolve_module(model, s) for s in self.skips]

    @contextmanager
    def capture(self):
        """``with tap.capture() as got: model(x)``; then ``got["features"]`` is ``[B, C, h, w]``, ``got[skip]`` too."""
        got: dict[str, Tensor] = {}

        def hook_for(key: str, reshape: Callable[[Tensor], Tensor] | None):
            def hook(_module, _inputs, output):
                out = output[0] if isinstance(output, tuple | list) else output
                got[key] = out if reshape is None else reshape(out)

            return hook

        handles = [self.module.register_forward_hook(hook_for("features", self.reshape))]
        handles += [
            m.register_forward_hook(hook_for(k, None)) for k, m in zip(self.skips, self.skip_modules, strict=True)
        ]
        try:
            yield got
        finally:
            for handle in handles:
                handle.remove()

    def features(self, images: Tensor) -> tuple[list[Tensor], Tensor]:
        """``([main [B, C, h, w], *skips], logits [B, classes])`` of ``images`` in one forward pass."""
        with self.capture() as got:
            logits = self.model(images)
        out = []
        for key, name in [("features", self.layer), *((k, k) for k in self.skips)]:
            if key not in got:
                raise RuntimeError(f"layer {name!r} did not run in the forward pass: choose a layer the model uses")
            feats = got[key]
            if feats.dim() != 4:
                raise ValueError(
                    f"layer {name!r} gives activations of shape {tuple(feats.shape)}; the predictor needs "
                    "[B, C, h, w]: choose a spatial feature layer"
                )
            out.append(feats)
        return out, logits

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``(features [B, C, h, w], logits [B, classes])`` of ``images`` in one forward pass (main layer only)."""
        feats, logits = self.features(images)
        return feats[0], logits


class MaskPredictor(nn.Module):
    """Features ``[B, C, h, w]`` and classes ``[B]`` -> one vector ``[B, 1, a, b]`` per size (module docstring).

    Args:
        in_channels: channels of the feature layer.
        num_classes: classes of the classifier (the class embedding's rows).
        sizes: the benchmark vector sizes ``(a_i, b_i)`` of the DM schedule, in order.
        hidden: channels of the predictor's layers.
        tau: every element's value before training (DM's initial value).
        output: ``sigmoid``, ``clamp`` (DM's projection, gradient passed straight through) or ``stretched``: a
            sigmoid stretched to (-0.1, 1.1) and projected onto [0, 1] with the gradient passed straight through
            (the hard-concrete stretch of Louizos et al., "Learning Sparse Neural Networks through L0
            Regularization", arXiv 1712.01312): it reaches exact zeros, as DM's clamped vectors do.
        skip_channels: channels of earlier (finer) classifier layers that add spatial detail, as the upsampling
            path of Dabkowski & Gal's masking model: each is normalised, reduced to ``hidden`` channels by a 1x1
            conv and added to the class-selected main features, all at the finest of their resolutions.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        sizes: Sequence[tuple[int, int]],
        hidden: int = 64,
        tau: float = 0.5,
        output: str = "sigmoid",
        skip_channels: Sequence[int] = (),
    ) -> None:
        super().__init__()
        if in_channels < 1 or num_classes < 1 or hidden < 1 or not sizes:
            raise ValueError(
                f"MaskPredictor needs in_channels, num_classes, hidden >= 1 and at least one size; got {in_channels}, "
                f"{num_classes}, {hidden}, {list(sizes)}"
            )
        if not 0.0 < tau < 1.0:
            raise ValueError(f"tau must be in (0, 1), got {tau!r}")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {list(OUTPUTS)}, got {output!r}")
        self.output = output
        self.sizes = [(int(a), int(b)) for a, b in sizes]
        self.reduce = nn.Conv2d(in_channels, hidden, 1)
        self.skips = nn.ModuleList(nn.Conv2d(int(c), hidden, 1) for c in skip_channels)
        self.classes = nn.Embedding(num_classes, hidden)
        nn.init.normal_(self.classes.weight, mean=1.0, std=0.1)  # starts near "every class alike"
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(),
        )
        self.heads = nn.ModuleList(nn.Conv2d(hidden, 1, 1) for _ in self.sizes)
        for head in self.heads:
            nn.init.zeros_(head.weight)
            nn.init.constant_(head.bias, _inverse_output(tau, output))

    def forward(self, features: Tensor | Sequence[Tensor], targets: Tensor) -> list[Tensor]:
        """One vector ``[B, 1, a, b]`` per size from the main features (and the skip features, in order)."""
        return [self.activate(z) for z in self.logits(features, targets)]

    def logits(self, features: Tensor | Sequence[Tensor], targets: Tensor) -> list[Tensor]:
        """The heads' outputs before :meth:`activate`: one ``[B, 1, a, b]`` per size (what refinement optimises)."""
        feats = [features] if isinstance(features, Tensor) else list(features)
        if len(feats) != 1 + len(self.skips):
            raise ValueError(f"the predictor reads {1 + len(self.skips)} feature layers, got {len(feats)}")
        z = self.reduce(F.group_norm(feats[0], 1)) * self.classes(targets)[:, :, None, None]
        if self.skips:
            fine = max((tuple(f.shape[-2:]) for f in feats), key=lambda hw: hw[0] * hw[1])
            z = resample(z, fine)
            for conv, f in zip(self.skips, feats[1:], strict=True):
                z = z + resample(conv(F.group_norm(f, 1)), fine)
        z = self.body(z)
        return [head(resample(z, size)) for size, head in zip(self.sizes, self.heads, strict=True)]

    def activate(self, z: Tensor) -> Tensor:
        """A head's output ``z`` -> mask values in [0, 1] (sigmoid, or projected with a straight-through gradient)."""
        if self.output == "sigmoid":
            return torch.sigmoid(z)
        if self.output == "stretched":
            z = torch.sigmoid(z) * (1.0 + 2.0 * STRETCH) - STRETCH
        return z + (z.clamp(0.0, 1.0) - z).detach()  # projected; gradient straight through


def _inverse_output(value: float, output: str) -> float:
    """The head's pre-activation that gives ``value`` (the heads start at ``tau``)."""
    if output == "clamp":
        return value
    if output == "stretched":
        value = (value + STRETCH) / (1.0 + 2.0 * STRETCH)
    return math.log(value / (1.0 - value))
