"""A frozen classifier prepared for mask fits: batch norm folded into the convolution before it.

A mask fit runs the same frozen classifier, in eval mode, thousands of times; a batch norm in eval mode is an affine
map per channel, so when it directly follows a convolution it can be folded into that convolution's weights and
bias once (``W' = W * g / sqrt(v + eps)``, ``b' = (b - m) * g / sqrt(v + eps) + beta``: exact in real arithmetic,
only round-off changes). The folding itself is torch's (:func:`torch.nn.utils.fusion.fuse_conv_bn_weights`); what is
written here is finding the pairs without tracing the model (timm's TF-"same" convolutions and norm+activation
layers do not trace): a convolution and a batch norm registered one after the other in the same parent
(torchvision's ``Conv2dNormActivation``, ResNet's ``conv1``/``bn1``, timm's ``conv_pw``/``bn1``, ``BatchNormAct2d``
with its activation kept). Because registration order need not be the order of the forward pass, every
preparation is verified: the folded copy must give the original's outputs on the images it will explain, in
float64, to 1e-9 relative; otherwise the original is used and the reason is reported.

The user's model is never modified: the preparation is a copy (forward hooks are not carried over).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

__all__ = ["COMPILE_MODES", "Prepared", "compiled", "hook_free_copy", "prepare_classifier"]

HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
TOLERANCE = 1e-9  # relative float64 difference of the logits that proves a folding exact
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
"""``explainer.engine.compile``: no compilation, or a ``torch.compile`` mode."""


@dataclass
class Prepared:
    """What :func:`prepare_classifier` made.

    Attributes:
        model: the prepared copy (or the original model when nothing was folded or the check failed).
        folded: names of the batch norms folded into their convolution.
        note: one line for logs: what was folded, or why the original is used.
    """

    model: nn.Module
    folded: list[str] = field(default_factory=list)
    note: str = ""


def _pairs(model: nn.Module) -> list[tuple[nn.Module, str, nn.Conv2d, nn.BatchNorm2d]]:
    """Every (parent, BN name, Conv2d, BatchNorm2d) registered consecutively in one parent, foldable by shape."""
    pairs = []
    for parent in model.modules():
        children = list(parent.named_children())
        for (_, conv), (bn_name, bn) in zip(children, children[1:], strict=False):
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
                continue
            if bn.running_mean is None or bn.num_features != conv.out_channels or conv.padding_mode != "zeros":
                continue
            pairs.append((parent, bn_name, conv, bn))
    return pairs


def _fold_pairs(model: nn.Module) -> list[str]:
    """Fold every pair of :func:`_pairs` in place; the batch norms' names."""
    names = {id(m): n for n, m in model.named_modules()}
    folded = []
    for parent, bn_name, conv, bn in _pairs(model):
        conv.weight, conv.bias = fuse_conv_bn_weights(
            conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
        )
        rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
        setattr(parent, bn_name, nn.Sequential(*rest) if rest else nn.Identity())  # timm's BatchNormAct2d
        folded.append(f"{names[id(parent)]}.{bn_name}".lstrip("."))
    return folded


def _outputs(model: nn.Module, images: Tensor) -> Tensor:
    with torch.no_grad():
        out = model(images)
    return out if isinstance(out, Tensor) else torch.as_tensor(float("nan"))


def hook_free_copy(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """A copy of ``model`` (in ``dtype``) without its hooks."""
    out = copy.deepcopy(model) if dtype is None else copy.deepcopy(model).to(dtype)
    for m in out.modules():
        for hooks in HOOKS:
            getattr(m, hooks, {}).clear()
    return out


def prepare_classifier(model: nn.Module, images: Tensor) -> Prepared:
    """A copy of the frozen ``model`` with batch norm folded, checked on ``images`` (see the module docstring).

    The folding is done in float64 and checked there (the folded copy's logits against the original's on the first
    two images, to 1e-9 relative: a pair that is not conv -> BN in the forward pass fails it), then cast to the
    model's dtype, so the float32 weights are the exactly folded ones rounded once.

    Args:
        model: the classifier in eval mode (its flags and weights are left as they are).
        images: the batch the fits will explain.

    Returns:
        :class:`Prepared`: the copy, or ``model`` itself when there is nothing to fold or the check fails.
    """
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    if not _pairs(model):  # no copy of a model with nothing to fold (a ViT)
        return Prepared(model, [], "no batch norm after a convolution: the classifier runs as given")
    folded_model = hook_free_copy(model, torch.float64)
    folded = _fold_pairs(folded_model)
    if not folded:
        return Prepared(model, [], "no batch norm after a convolution: the classifier runs as given")
    probe = images[:2].detach().double()
    want, got = _outputs(hook_free_copy(model, torch.float64), probe), _outputs(folded_model, probe)
    scale = want.abs().max().clamp_min(torch.finfo(torch.float64).tiny)
    error = float((got - want).abs().max() / scale) if got.shape == want.shape else float("inf")
    if not error <= TOLERANCE:
        return Prepared(model, [], f"folding batch norm changed the outputs (relative {error:.1e}): run as given")
    prepared = folded_model.to(dtype).requires_grad_(False)
    return Prepared(prepared, folded, f"{len(folded)} batch norms folded into their convolutions")


def compiled(model: nn.Module, mode: str) -> nn.Module:
    """``torch.compile(model)`` in ``mode`` (:data:`COMPILE_MODES`; ``"none"``: ``model`` itself)."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"engine.compile must be one of {list(COMPILE_MODES)}, got {mode!r}")
    return model if mode == "none" else torch.compile(model, mode=None if mode == "default" else mode)
