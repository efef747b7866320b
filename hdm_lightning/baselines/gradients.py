"""Gradient-type baselines through captum: Gradient, Integrated Gradients, DeepLIFT.

- Gradient (vanilla saliency): Simonyan, Vedaldi & Zisserman, "Deep Inside Convolutional Networks: Visualising Image
  Classification Models and Saliency Maps", ICLR workshop 2014, arXiv 1312.6034 (captum ``Saliency``).
- Integrated Gradients: Sundararajan, Taly & Yan, "Axiomatic Attribution for Deep Networks", ICML 2017,
  arXiv 1703.01365 (captum ``IntegratedGradients``).
- DeepLIFT (rescale rule): Shrikumar, Greenside & Kundaje, "Learning Important Features Through Propagating Activation
  Differences", ICML 2017, arXiv 1704.02685 (captum ``DeepLift``).

Post-processing: captum returns ``[B, C, H, W]`` attributions; the map is the absolute value summed over channels,
then ``N`` per image. That is captum's own image visualisation (``visualization.visualize_image_attr`` with
``sign="absolute_value"`` sums ``|attr|`` over channels); Simonyan et al. 2014 §3.1 take the maximum of ``|grad|``
over channels instead, selectable as ``channels="max"``.

Baselines (IG, DeepLIFT): the all-zero tensor in the normalised space, i.e. the dataset's mean colour (the
evaluation's baseline as well, docs/methods.md).

captum's DeepLift hooks every ReLU module and needs each to be called once per forward; torchvision ResNets call one
``relu`` module two (BasicBlock) or three (Bottleneck) times. :func:`distinct_relus` makes a patched copy for it.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from hdm_lightning.contract import SaliencyMethod, register_method
from hdm_lightning.core import model_device_dtype

__all__ = ["DeepLift", "DistinctBasicBlock", "DistinctBottleneck", "Gradient", "IntegratedGradients", "distinct_relus"]

CHANNEL_REDUCTIONS = ("sum", "max")
IG_METHODS = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")


class _GradientFamily(SaliencyMethod):
    """``|attr|`` reduced over channels (``sum``: captum's visualisation; ``max``: Simonyan et al. §3.1)."""

    def __init__(self, model: nn.Module, channels: str = "sum") -> None:
        super().__init__(model)
        if channels not in CHANNEL_REDUCTIONS:
            raise ValueError(f"channels must be one of {list(CHANNEL_REDUCTIONS)}, got {channels!r}")
        self.channels = channels

    def reduce(self, attr: Tensor) -> Tensor:
        """``[B, C, H, W]`` attributions -> ``[B, 1, H, W]`` magnitudes."""
        a = attr.detach().abs()
        return a.sum(1, keepdim=True) if self.channels == "sum" else a.amax(1, keepdim=True)


@register_method("gradient")
class Gradient(_GradientFamily):
    """Vanilla gradient saliency ``|d y_c / d x|`` (Simonyan et al. 2014): B forwards, B backwards.

    Args:
        model: the classifier.
        channels: ``"sum"`` (default) or ``"max"`` of ``|grad|`` over the colour channels.
    """

    def attribute(self, images: Tensor, target: Tensor) -> Tensor:  # noqa: D102
        from captum.attr import Saliency

        attr = Saliency(self.model).attribute(images.clone().requires_grad_(), target=target, abs=True)
        return self.reduce(attr)


@register_method("integrated_gradients")
class IntegratedGradients(_GradientFamily):
    """Integrated Gradients from the zero (mean colour) baseline: ``n_steps`` x B forwards and backwards.

    Args:
        model: the classifier.
        n_steps: points on the path (captum's default 50).
        internal_batch_size: most images per forward/backward (memory bound; at least B is used). ``None``: all
            ``n_steps x B`` at once.
        method: captum's path integral rule (default ``"gausslegendre"``, captum's default).
        channels: ``"sum"`` (default) or ``"max"`` of ``|attr|`` over the colour channels.
    """

    def __init__(
        self,
        model: nn.Module,
        n_steps: int = 50,
        internal_batch_size: int | None = 64,
        method: str = "gausslegendre",
        channels: str = "sum",
    ) -> None:
        super().__init__(model, channels)
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
            raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}")
        if internal_batch_size is not None and (not isinstance(internal_batch_size, int) or internal_batch_size < 1):
            raise ValueError(f"internal_batch_size must be a positive integer or None, got {internal_batch_size!r}")
        if method not in IG_METHODS:
            raise ValueError(f"method must be one of {list(IG_METHODS)}, got {method!r}")
        self.n_steps, self.internal_batch_size, self.method = n_steps, internal_batch_size, method

    def attribute(self, images: Tensor, target: Tensor) -> Tensor:  # noqa: D102
        from captum.attr import IntegratedGradients as CaptumIG

        ibs = None if self.internal_batch_size is None else max(self.internal_batch_size, images.shape[0])
        attr = CaptumIG(self.model).attribute(
            images.clone().requires_grad_(),
            baselines=torch.zeros_like(images),
            target=target,
            n_steps=self.n_steps,
            method=self.method,
            internal_batch_size=ibs,
        )
        return self.reduce(attr)


@register_method("deeplift")
class DeepLift(_GradientFamily):
    """DeepLIFT (rescale rule) from the zero (mean colour) baseline, on a :func:`distinct_relus` copy of the model.

    Costs 2B forwards and 2B backwards (captum runs images and baselines as one batch) plus the 1-image probe
    forwards of :func:`distinct_relus` (1 when no module is reused, 2 when it patched a torchvision ResNet). On models
    whose nonlinearities are not modules captum knows (GELU, the softmax inside ``nn.MultiheadAttention``: ViT, Swin)
    captum propagates plain gradients through them, so the result is DeepLIFT only on the ReLU / max-pool / sigmoid /
    tanh / softmax modules it hooks.

    Args:
        model: the classifier.
        channels: ``"sum"`` (default) or ``"max"`` of ``|attr|`` over the colour channels.
    """

    def attribute(self, images: Tensor, target: Tensor) -> Tensor:  # noqa: D102
        from captum.attr import DeepLift as CaptumDeepLift

        net, probes = _distinct_relus(self.model, images[:1])
        self.counter.add(forward=probes)  # distinct_relus' 1-image probe forwards on its copy
        self.counter.watch(net)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Setting forward, backward hooks and attributes on non-linear")
            attr = CaptumDeepLift(net).attribute(
                images.clone().requires_grad_(), baselines=torch.zeros_like(images), target=target
            )
        return self.reduce(attr)


# ------------------------------------------------------------------------------------------------ distinct ReLUs


def _deeplift_module_types() -> tuple[type[nn.Module], ...]:
    """Module types captum's DeepLift hooks (each must be called once per forward)."""
    try:
        from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR

        return tuple(SUPPORTED_NON_LINEAR)
    except ImportError:  # pragma: no cover - a captum without that private table
        return (nn.ReLU, nn.ELU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.MaxPool2d, nn.Softmax)


def _count_calls(net: nn.Module, example: Tensor, types: tuple[type[nn.Module], ...]) -> dict[str, int]:
    """How often each module of ``types`` is called in one forward of ``example`` (eval mode, no grad)."""
    counts: dict[str, int] = {}
    handles = []
    for name, m in net.named_modules():
        if isinstance(m, types):

            def hook(mod, args, out, name=name):
                counts[name] = counts.get(name, 0) + 1

            handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            net(example)
    finally:
        for h in handles:
            h.remove()
    return counts


def _basic_forward(self, x: Tensor) -> Tensor:
    """The torchvision ``BasicBlock.forward`` with one ReLU module per use (and no in-place add)."""
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu1(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return self.relu2(out + identity)


def _bottleneck_forward(self, x: Tensor) -> Tensor:
    """The torchvision ``Bottleneck.forward`` with one ReLU module per use (and no in-place add)."""
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu1(self.bn1(self.conv1(x)))
    out = self.relu2(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return self.relu3(out + identity)


class DistinctBasicBlock(BasicBlock):
    """torchvision ``BasicBlock`` calling ``relu1`` and ``relu2`` (made by :func:`distinct_relus`, never built)."""

    forward = _basic_forward


class DistinctBottleneck(Bottleneck):
    """torchvision ``Bottleneck`` calling ``relu1``, ``relu2``, ``relu3`` (made by :func:`distinct_relus`)."""

    forward = _bottleneck_forward


# Exact classes only: a subclass of a torchvision block may have its own forward.
_PATCHES = {BasicBlock: (DistinctBasicBlock, 2), Bottleneck: (DistinctBottleneck, 3)}


def distinct_relus(model: nn.Module, example: Tensor | None = None) -> nn.Module:
    """A deep copy of ``model`` in which no ReLU module is called more than once per forward (for captum's DeepLift).

    Reuse is found by counting calls of every module DeepLift hooks (ReLU, max pooling, sigmoid, ...) during one
    forward of ``example`` (on the copy, in eval mode, without gradient). A reused ``relu`` of a torchvision
    ``BasicBlock`` / ``Bottleneck`` is replaced by ``relu1``, ``relu2`` (``relu3``) and the block's forward patched to
    use them; any other reuse is an error. Every ReLU in the copy is made non in-place. The original is untouched and
    the copy computes the same logits.

    Args:
        model: the classifier.
        example: one input batch for the probe forward (its device and dtype must suit the model); default a
            ``[1, 3, 224, 224]`` zero image.

    Raises:
        ValueError: a reused module that is not a torchvision ResNet block's ``relu`` (named in the message).
    """
    return _distinct_relus(model, example)[0]


def _distinct_relus(model: nn.Module, example: Tensor | None) -> tuple[nn.Module, int]:
    """:func:`distinct_relus` and the number of probe forwards it ran (1, or 2 when it patched and re-checked)."""
    net = copy.deepcopy(model)
    modes = {m: m.training for m in net.modules()}
    net.eval()
    if example is None:
        device, dtype = model_device_dtype(net)
        example = torch.zeros(1, 3, 224, 224, device=device, dtype=dtype)
    example = example.detach()
    for m in net.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    types = _deeplift_module_types()
    counts = _count_calls(net, example, types)
    modules = dict(net.named_modules())
    probes = 1
    for name, n in counts.items():
        if n < 2:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = modules[parent_name] if parent_name else None
        kind = type(parent) if parent is not None else None
        if attr == "relu" and kind in _PATCHES:
            patched, relus = _PATCHES[kind]
            training = modes[parent.relu]  # the mode it had before the probe (net is in eval now)
            parent.__class__ = patched
            del parent.relu
            for i in range(1, relus + 1):
                relu = nn.ReLU()
                relu.training = training
                setattr(parent, f"relu{i}", relu)
        else:
            raise ValueError(
                f"module {name!r} ({type(modules[name]).__name__}) is called {n} times per forward; captum's DeepLift "
                "needs one module per use. distinct_relus only patches torchvision BasicBlock/Bottleneck: give the "
                "model a separate activation module for every use (as SmallCNN does)"
            )
    if any(n > 1 for n in counts.values()):
        probes += 1
        left = {k: v for k, v in _count_calls(net, example, types).items() if v > 1}
        if left:  # pragma: no cover - a block whose forward is not torchvision's
            raise ValueError(f"modules still called more than once per forward after patching: {left}")
    for m, mode in modes.items():
        m.training = mode
    return net, probes
