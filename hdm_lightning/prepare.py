"""A frozen classifier prepared for mask fits: batch norm folded, static TF-"same" padding, activations out of place.

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

Two more rewrites, both exact (at most round-off changes: Lite0's float32 outputs stay bit for bit, its input
gradients move by 1.5e-7):

- **Static TF-"same" padding.** timm's ``Conv2dSame`` (the TF EfficientNets' strided convolutions) pads every call
  with ``F.pad``, a padded copy of its input (in channels_last, three times slower than a plain copy), and its
  backward another. For the input size the fit runs at (known here: the images), the padding is one row/column
  more after than before, or the same; a kernel with one more zero tap in front and symmetric padding computes the
  same sums with no padded copy (:class:`StaticSameConv2d`; another input size falls back to the dynamic padding).
- **Activations out of place.** An in-place activation whose gradient needs its input (``ReLU6(inplace=True)``,
  SiLU, hard-swish: :data:`CLONING`) is cloned by autograd first; out of place writes the result once.

Measured side by side on the CPU (``python -m benchmarks.prepared_pass``; docs/results.md).

The user's model is never modified: the preparation is a copy (forward hooks are not carried over).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

__all__ = [
    "CLONING", "COMPILE_MODES", "Prepared", "StaticSameConv2d", "compiled", "hook_free_copy", "prepare_classifier"
]  # fmt: skip

HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
TOLERANCE = 1e-9  # relative float64 difference of the logits that proves a folding exact
CLONING = (nn.Hardtanh, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Mish)
"""Activations whose gradient needs their input, so autograd clones it before their in-place form (ReLU6 is a
Hardtanh; ReLU, ELU and LeakyReLU need only their output and stay in place)."""
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
"""``explainer.engine.compile``: no compilation, or a ``torch.compile`` mode."""


@dataclass
class Prepared:
    """What :func:`prepare_classifier` made.

    Attributes:
        model: the prepared copy (or the original model when nothing was folded or the check failed).
        folded: names of the batch norms folded into their convolution.
        static: names of the TF-"same" convolutions given static padding.
        out_of_place: how many in-place activations were made out of place.
        note: one line for logs: what was done, or why the original is used.
    """

    model: nn.Module
    folded: list[str] = field(default_factory=list)
    static: list[str] = field(default_factory=list)
    out_of_place: int = 0
    note: str = ""


def _same_pad(size: int, kernel: int, stride: int, dilation: int) -> int:
    """TF "SAME" padding in total along one axis (timm's ``get_same_padding``)."""
    return max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


class StaticSameConv2d(nn.Conv2d):
    """A TF-"same" convolution (dilation 1) for one input size, without the padded copy of its input.

    TF pads ``p`` in total, ``p // 2`` before and the rest after; when ``p`` is odd, a kernel with one zero tap in
    front and ``p - p // 2`` zeros on both sides puts the same weights on the same pixels (the extra tap's weight is
    zero), so the output is the same and the padding is the convolution's own.

    Args:
        conv: the dynamic ``Conv2dSame`` (its weights are copied).
        size: the input height and width this layer sees; any other size is padded dynamically, as before.
    """

    def __init__(self, conv: nn.Conv2d, size: tuple[int, int]) -> None:
        pads = [_same_pad(n, k, s, 1) for n, k, s in zip(size, conv.kernel_size, conv.stride, strict=True)]
        self.extra = (pads[0] % 2, pads[1] % 2)
        weight = F.pad(conv.weight.detach(), (self.extra[1], 0, self.extra[0], 0))
        super().__init__(
            conv.in_channels, conv.out_channels, tuple(weight.shape[-2:]), conv.stride,
            (pads[0] - pads[0] // 2, pads[1] - pads[1] // 2), groups=conv.groups, bias=conv.bias is not None,
            device=weight.device, dtype=weight.dtype,
        )  # fmt: skip
        with torch.no_grad():
            self.weight.copy_(weight)
            if conv.bias is not None:
                self.bias.copy_(conv.bias)
        if conv.weight.is_contiguous(memory_format=torch.channels_last):  # keep the model's memory format
            self.weight.data = self.weight.data.contiguous(memory_format=torch.channels_last)
        self.size = tuple(size)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        if tuple(x.shape[-2:]) == self.size:
            return super().forward(x)
        weight = self.weight[..., self.extra[0] :, self.extra[1] :]
        k, s = weight.shape[-2:], self.stride
        ph, pw = (_same_pad(n, k[i], s[i], 1) for i, n in enumerate(x.shape[-2:]))
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return F.conv2d(x, weight, self.bias, s, 0, 1, self.groups)


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


def _same_convs(model: nn.Module) -> list[str]:
    """Names of timm's dynamic TF-"same" convolutions with dilation 1."""
    return [n for n, m in model.named_modules() if isinstance(m, Conv2dSame) and m.dilation == (1, 1)]


def _outputs(model: nn.Module, images: Tensor, watch: list[str] = ()) -> tuple[Tensor, dict[str, set]]:
    """The logits of ``images``, and the input sizes each module named in ``watch`` saw."""
    sizes: dict[str, set] = {n: set() for n in watch}
    handles = [
        model.get_submodule(n).register_forward_pre_hook(lambda _, a, n=n: sizes[n].add(tuple(a[0].shape[-2:])))
        for n in watch
    ]
    with torch.no_grad():
        out = model(images)
    for h in handles:
        h.remove()
    return (out if isinstance(out, Tensor) else torch.as_tensor(float("nan"))), sizes


def hook_free_copy(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """A copy of ``model`` (in ``dtype``) without its hooks."""
    out = copy.deepcopy(model) if dtype is None else copy.deepcopy(model).to(dtype)
    for m in out.modules():
        for hooks in HOOKS:
            getattr(m, hooks, {}).clear()
    return out


def _make_static(model: nn.Module, sizes: dict[str, set]) -> list[str]:
    """Swap every TF-"same" convolution that saw one input size for its :class:`StaticSameConv2d`; their names."""
    static = []
    for name, seen in sizes.items():
        if len(seen) == 1:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, StaticSameConv2d(model.get_submodule(name), next(iter(seen))))
            static.append(name)
    return static


def _out_of_place(model: nn.Module) -> int:
    """Turn off ``inplace`` on the activations of :data:`CLONING`; how many had it on."""
    flagged = [m for m in model.modules() if isinstance(m, CLONING) and getattr(m, "inplace", None) is True]
    for m in flagged:
        m.inplace = False
    return len(flagged)


def prepare_classifier(
    model: nn.Module, images: Tensor, *, static_padding: bool = True, out_of_place: bool = True
) -> Prepared:
    """A copy of the frozen ``model`` prepared for the fits (see the module docstring), checked on ``images``.

    The rewrites are done in float64 and checked there (the copy's logits against the original's on the first two
    images, to 1e-9 relative: a pair that is not conv -> BN in the forward pass fails it), then the copy is cast to
    the model's dtype, so the float32 weights are the exactly folded ones rounded once.

    Args:
        model: the classifier in eval mode (its flags and weights are left as they are).
        images: the batch the fits will explain (its size fixes the static padding).
        static_padding: give TF-"same" convolutions static padding (the benchmark measures each step apart).
        out_of_place: make in-place activations out of place.

    Returns:
        :class:`Prepared`: the copy, or ``model`` itself when there is nothing to fold or the check fails.
    """
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    same = _same_convs(model) if static_padding else []
    if not _pairs(model) and not same:  # no copy of a model with nothing to fold (a ViT)
        return Prepared(model, note="no batch norm after a convolution: the classifier runs as given")
    probe = images[:2].detach().double()
    prepared = hook_free_copy(model, torch.float64)
    want, sizes = _outputs(prepared, probe, same)  # the original's logits, before the copy is rewritten
    done = Prepared(prepared, _fold_pairs(prepared), _make_static(prepared, sizes))
    done.out_of_place = _out_of_place(prepared) if out_of_place else 0
    got, _ = _outputs(prepared, probe)
    scale = want.abs().max().clamp_min(torch.finfo(torch.float64).tiny)
    error = float((got - want).abs().max() / scale) if got.shape == want.shape else float("inf")
    if not error <= TOLERANCE:
        note = f"preparing the classifier changed the outputs (relative {error:.1e}): run as given"
        return Prepared(model, note=note)
    done.model = prepared.to(dtype).requires_grad_(False)
    done.note = (
        f"{len(done.folded)} batch norms folded into their convolutions, {len(done.static)} TF-'same' paddings "
        f"made static, {done.out_of_place} activations out of place"
    )
    return done


def compiled(model: nn.Module, mode: str) -> nn.Module:
    """``torch.compile(model)`` in ``mode`` (:data:`COMPILE_MODES`; ``"none"``: ``model`` itself)."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"engine.compile must be one of {list(COMPILE_MODES)}, got {mode!r}")
    return model if mode == "none" else torch.compile(model, mode=None if mode == "default" else mode)
