"""The saliency-method contract, its registry, exact pass counting and Grad-CAM target layers.

Every baseline the papers compare against (HDM paper §4.1: Gradient, DeepLIFT, Integrated Gradients, RISE, Mask,
Grad-CAM, Grad-CAM++, Score-CAM, XGrad-CAM, FullGrad, Eigen-CAM, Ablation-CAM, Layer-CAM) and our own DM/HDM/MDM are
a :class:`SaliencyMethod`: built from ``name`` + ``params`` (the ``__init__`` signature is the schema), called on a
batch of normalised images and one target class per image, returning ``[B, 1, H, W]`` float32 maps in ``[0, 1]``
(per-image min-max ``N``, SPEC notation) on the images' device.

A call leaves the model exactly as given (:func:`preserved`): eval mode during the call; every ``training`` and
``requires_grad`` flag, every ``.grad``, the module tree and the hook dictionaries restored afterwards. Parameters are
frozen during the call: attributions need gradients with respect to inputs and activations, never weights, so
libraries get an input that requires grad instead.

Cost accounting (:class:`PassCounter`): samples, not calls. A forward hook on the model adds the batch size of each
forward; a hook on the output tensor (when it requires grad) adds the same batch size when a gradient reaches it,
i.e. when a backward pass runs through the whole batch of that forward.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ClassVar

import torch
from torch import Tensor, nn

from hdm_lightning.explainers.methods import check_images, model_device_dtype
from hdm_lightning.masks.ops import normalize
from hdm_lightning.registry import Registry

__all__ = [
    "METHODS",
    "PassCounter",
    "SaliencyMethod",
    "TokenReshape",
    "available_methods",
    "build_method",
    "default_target_layer",
    "method_params",
    "nhwc_to_nchw",
    "preserved",
    "register_method",
    "resolve_module",
]

METHODS: Registry[type[SaliencyMethod]] = Registry("saliency method")
"""The one list of saliency methods (baselines and DM/HDM/MDM): the CLI, the docs and the tests read it."""


def register_method(name: str) -> Callable[[type[SaliencyMethod]], type[SaliencyMethod]]:
    """Register a :class:`SaliencyMethod` subclass under ``name`` (a duplicate name is an error).

    Example:
        >>> @register_method("my_method")  # doctest: +SKIP
        ... class MyMethod(SaliencyMethod):
        ...     def attribute(self, images, target): ...
    """

    def deco(cls: type[SaliencyMethod]) -> type[SaliencyMethod]:
        cls.name = name
        return METHODS.register(name)(cls)

    return deco


def available_methods() -> list[str]:
    """Names of the registered saliency methods, sorted."""
    return METHODS.names()


def method_params(name: str) -> dict[str, object]:
    """The parameters of method ``name`` and their defaults (``inspect.Parameter.empty`` when required)."""
    sig = inspect.signature(METHODS.get(name).__init__)
    return {k: p.default for k, p in list(sig.parameters.items())[2:] if p.kind is p.POSITIONAL_OR_KEYWORD}


def build_method(name: str, model: nn.Module, params: dict | None = None) -> SaliencyMethod:
    """Instantiate the method registered as ``name`` for ``model`` with ``params``.

    Args:
        name: a registered name (:data:`METHODS`).
        model: the classifier to explain.
        params: keyword arguments of the method's ``__init__`` (its signature is the schema).

    Raises:
        KeyError: unknown name (the message lists the registered ones).
        ValueError: an unknown parameter (the message lists the known ones) or a bad value.
    """
    cls = METHODS.get(name)
    params = dict(params or {})
    known = list(method_params(name))
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for saliency method {name!r}. Known parameters: {known}")
    return cls(model, **params)


# ------------------------------------------------------------------------------------------------ model guard

# Hook dictionaries of nn.Module (torch 2.x); attributes missing from an older torch are skipped.
_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks_with_kwargs",
)


@contextmanager
def preserved(model: nn.Module) -> Iterator[nn.Module]:
    """Run a block with ``model`` in eval mode and frozen; afterwards leave it exactly as it was given.

    Restored on exit (also after an exception): every submodule's ``training`` flag, every parameter's
    ``requires_grad`` and ``.grad`` (grad-cam calls ``model.zero_grad()``), every submodule's children (Ablation-CAM
    swaps its target layer out and back), and every hook dictionary (hooks added inside the block are removed, so a
    library that forgets one cannot leave it behind). Weights are never written by any method.
    """
    modules = list(model.modules())
    modes = {m: m.training for m in modules}
    params = list(model.parameters())
    flags = {p: p.requires_grad for p in params}
    grads = {p: p.grad for p in params}
    children = {m: dict(m._modules) for m in modules}
    hooks = {m: {a: set(getattr(m, a)) for a in _HOOK_DICTS if hasattr(m, a)} for m in modules}
    model.eval()
    for p in params:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for m, kids in children.items():
            if dict(m._modules) != kids:
                m._modules.clear()
                m._modules.update(kids)
        for m, saved in hooks.items():
            for attr, keys in saved.items():
                d = getattr(m, attr)
                for k in [k for k in d if k not in keys]:
                    del d[k]
        for m, mode in modes.items():
            m.training = mode
        for p in params:
            p.requires_grad_(flags[p])
            p.grad = grads[p]


# ------------------------------------------------------------------------------------------------ pass counting


def _first_tensor(obj: object) -> Tensor | None:
    """The first tensor in a (nested) tuple / list / dict, or ``obj`` itself."""
    if isinstance(obj, Tensor):
        return obj
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, list | tuple):
        for item in obj:
            t = _first_tensor(item)
            if t is not None:
                return t
    return None


class PassCounter:
    """Count forward and backward passes through models, in samples.

    A forward hook on each watched model adds ``input.shape[0]`` per forward. When that forward's output requires
    grad, a tensor hook on it adds the same number each time a gradient reaches the output: a backward pass through
    the network runs over the whole batch of that forward, whichever rows the loss used. Forwards under
    ``torch.no_grad`` count 0 backwards.

    Use as a context manager; :meth:`watch` adds further models (e.g. a patched copy of the classifier) until exit;
    :meth:`add` books passes that ran outside watched models.

    Attributes:
        forward: samples pushed forward so far.
        backward: samples whose outputs received a gradient so far.
    """

    def __init__(self, *models: nn.Module) -> None:
        self.forward = 0
        self.backward = 0
        self._models = list(models)
        self._handles: list = []
        self._active = False

    def __enter__(self) -> PassCounter:
        self._active = True
        for m in self._models:
            self._attach(m)
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._active = False

    def watch(self, model: nn.Module) -> None:
        """Count the passes through ``model`` too (until the counter exits)."""
        self._models.append(model)
        if self._active:
            self._attach(model)

    def add(self, forward: int = 0, backward: int = 0) -> None:
        """Book passes that ran through no watched model."""
        self.forward += int(forward)
        self.backward += int(backward)

    def _attach(self, model: nn.Module) -> None:
        self._handles.append(model.register_forward_hook(self._on_forward, with_kwargs=True))

    def _on_forward(self, module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        x = _first_tensor(args) if args else _first_tensor(kwargs)
        n = int(x.shape[0]) if x is not None and x.dim() > 0 else 1
        self.forward += n
        out = _first_tensor(output)
        if out is not None and out.requires_grad:
            out.register_hook(lambda grad, n=n: self._on_backward(n))

    def _on_backward(self, n: int) -> None:
        self.backward += n


# ------------------------------------------------------------------------------------------------ the contract


def as_targets(target: object, batch: int, device: torch.device) -> Tensor | None:
    """``target`` as a LongTensor ``[batch]`` on ``device`` (a single int is broadcast); ``None`` stays ``None``."""
    if target is None:
        return None
    t = torch.as_tensor(target)
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.dtype.is_complex:
        raise ValueError(f"target class indices must be integers, got dtype {t.dtype}")
    t = t.reshape(-1).long()
    if t.numel() == 1:
        t = t.expand(batch).clone()
    if t.numel() != batch:
        raise ValueError(f"target gives {t.numel()} class indices for {batch} images: give one per image")
    if (t < 0).any():
        raise ValueError(f"target class indices must be >= 0, got {t.tolist()}")
    return t.to(device)


class SaliencyMethod:
    """Base class of every saliency method: subclasses override :meth:`attribute` (and ``__init__`` for params).

    Args:
        model: the classifier, ``[B, C, H, W]`` normalised images -> ``[B, classes]`` logits. It is used in place
            (hooks where a library needs them) and left exactly as given after every call.

    Attributes:
        name: the registry name (set by :func:`register_method`).
        forward_passes: samples pushed forward through the model by the last call.
        backward_passes: samples whose outputs received a gradient in the last call.
        seconds: wall-clock time of the last call.
    """

    name: ClassVar[str] = ""

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.forward_passes = 0
        self.backward_passes = 0
        self.seconds = 0.0
        self._counter: PassCounter | None = None

    def __call__(self, images: Tensor, target: Tensor | int | None = None) -> Tensor:
        """Saliency maps ``[B, 1, H, W]``, float32, in ``[0, 1]`` (per-image min-max ``N``), on the images' device.

        Args:
            images: ``[B, C, H, W]`` float tensor, normalised as the model expects (0 = the dataset mean colour).
            target: LongTensor ``[B]`` of class indices (an int is used for every image); ``None`` explains the
                predicted class (one extra forward pass, counted).
        """
        check_images(images)
        device, dtype = model_device_dtype(self.model)
        x = images.detach().to(device=device, dtype=dtype)
        b, _, h, w = x.shape
        t = as_targets(target, b, device)
        start = time.perf_counter()
        with preserved(self.model), PassCounter(self.model) as counter, torch.enable_grad():
            self._counter = counter
            try:
                if t is None:
                    with torch.no_grad():
                        t = self.model(x).argmax(1)
                maps = self.attribute(x, t)
            finally:
                self._counter = None
        self.forward_passes, self.backward_passes = counter.forward, counter.backward
        self.seconds = time.perf_counter() - start
        maps = maps.detach()
        if maps.dim() == 3:
            maps = maps[:, None]
        if tuple(maps.shape) != (b, 1, h, w):
            raise RuntimeError(
                f"saliency method {self.name!r} returned shape {tuple(maps.shape)}; expected {(b, 1, h, w)}"
            )
        maps = maps.float()
        if not torch.isfinite(maps).all():
            raise RuntimeError(
                f"saliency method {self.name!r} produced NaN or inf values (check the model's outputs for these "
                "images and the method's params)"
            )
        return normalize(maps).to(images.device)

    def attribute(self, images: Tensor, target: Tensor) -> Tensor:
        """The raw map ``[B, 1, H, W]`` (or ``[B, H, W]``); :meth:`__call__` normalises it per image.

        Runs with the model in eval mode, parameters frozen, gradients enabled and passes counted. ``images`` are on
        the model's device and dtype; ``target`` is a LongTensor ``[B]`` on the same device.
        """
        raise NotImplementedError

    @property
    def counter(self) -> PassCounter:
        """The pass counter of the call in progress (for :meth:`PassCounter.watch` / :meth:`PassCounter.add`)."""
        if self._counter is None:
            raise RuntimeError("the pass counter exists only during a call of the method")
        return self._counter

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={getattr(self, k, '?')!r}" for k in method_params(self.name)) if self.name else ""
        return f"{type(self).__name__}({params})"


# ------------------------------------------------------------------------------------------------ target layers


def resolve_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at dotted ``path``; integer parts index (negative ones too): ``"layer4.1"``, ``"features.-1"``.

    Raises:
        ValueError: a part names no child (the message lists the children there).
    """
    if not isinstance(path, str) or not path:
        raise ValueError(f"target_layer must be a dotted module path such as 'layer4.1', got {path!r}")
    current = model
    done: list[str] = []
    for part in path.split("."):
        kids = current._modules
        if part in kids and kids[part] is not None:
            current = kids[part]
        elif part.lstrip("-").isdigit() and isinstance(current, nn.Sequential | nn.ModuleList) and len(current):
            i = int(part)
            if not -len(current) <= i < len(current):
                where = ".".join(done) or "the model"
                raise ValueError(f"target_layer {path!r}: index {i} is out of range for {where} ({len(current)} items)")
            current = current[i]
        else:
            where = ".".join(done) or "the model"
            raise ValueError(
                f"target_layer {path!r}: {where} has no submodule {part!r}; its children are {list(kids)} "
                "(see model.named_modules())"
            )
        done.append(part)
    return current


def module_path(model: nn.Module, module: nn.Module) -> str | None:
    """The dotted name of ``module`` inside ``model`` (``""`` for the model itself), ``None`` if absent."""
    for name, m in model.named_modules():
        if m is module:
            return name
    return None


def nhwc_to_nchw(x: Tensor) -> Tensor:
    """Swin blocks (torchvision and timm) work on ``[B, H, W, C]``: bring channels first for the CAM libraries."""
    return x.permute(0, 3, 1, 2)


class TokenReshape:
    """ViT tokens ``[B, prefix + h*w, C]`` -> ``[B, C, h, w]``: drop the class (prefix) tokens, fold the patch grid.

    Args:
        prefix: leading non-patch tokens (1 class token for torchvision ViT; timm's ``num_prefix_tokens``).
        grid: ``(h, w)`` patch grid; ``None`` (or a grid that does not match the token count) takes a square grid.
    """

    def __init__(self, prefix: int = 1, grid: tuple[int, int] | None = None) -> None:
        self.prefix = int(prefix)
        self.grid = tuple(int(g) for g in grid) if grid is not None else None

    def __call__(self, x: Tensor) -> Tensor:
        """``[B, prefix + h*w, C]`` -> ``[B, C, h, w]``."""
        if x.dim() != 3:
            raise ValueError(f"a ViT token reshape expects [B, tokens, C] activations, got shape {tuple(x.shape)}")
        tokens = x[:, self.prefix :]
        n = tokens.shape[1]
        if self.grid is not None and self.grid[0] * self.grid[1] == n:
            h, w = self.grid
        else:
            h = w = math.isqrt(n)
            if h * w != n:
                raise ValueError(
                    f"{n} patch tokens (after dropping {self.prefix} prefix tokens) do not form a square grid: "
                    "use square images or a model whose patch grid is known"
                )
        return tokens.reshape(x.shape[0], h, w, x.shape[2]).permute(0, 3, 1, 2)

    def __repr__(self) -> str:
        return f"TokenReshape(prefix={self.prefix}, grid={self.grid})"


def _architecture_target(model: nn.Module) -> tuple[str, Callable[[Tensor], Tensor] | None] | None:
    """``(dotted path, reshape)`` of the CAM target layer for a known architecture, else ``None``."""
    import timm.models as tm
    import torchvision.models as tv

    from hdm_lightning.models.small_cnn import SmallCNN

    # Choices follow the grad-cam README ("Choosing the layer(s)": ResNet layer4[-1]; VGG, DenseNet, MobileNet
    # features[-1]; ViT blocks[-1].norm1; Swin layers[-1].blocks[-1].norm1): the last spatial feature map.
    if isinstance(model, SmallCNN):
        return "features.-1", None
    if isinstance(model, tv.ResNet | tm.ResNet):
        return "layer4.-1", None
    if isinstance(model, tv.DenseNet | tv.VGG | tv.EfficientNet | tv.MobileNetV2 | tv.MobileNetV3 | tv.ConvNeXt):
        return "features.-1", None  # DenseNet: norm5; VGG: the last max pool; ConvNeXt: the last stage (NCHW)
    if isinstance(model, tm.DenseNet):
        return "features.-1", None  # norm5 (BatchNormAct2d: normalised and activated)
    if isinstance(model, tm.EfficientNet):
        return "bn2", None  # after conv_head: the last spatial map, normalised and activated
    if isinstance(model, tm.MobileNetV3):
        return "blocks.-1", None  # timm's conv_head runs after global pooling: the blocks end the spatial part
    if isinstance(model, tm.ConvNeXt):
        return "stages.-1", None
    if isinstance(model, tv.VisionTransformer):
        grid = model.image_size // model.patch_size
        return "encoder.layers.-1.ln_1", TokenReshape(1, (grid, grid))
    if isinstance(model, tm.VisionTransformer):
        grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
        return "blocks.-1.norm1", TokenReshape(model.num_prefix_tokens, grid)
    if isinstance(model, tv.SwinTransformer):
        return "features.-1.-1.norm1", nhwc_to_nchw
    if isinstance(model, tm.SwinTransformer):
        return "layers.-1.blocks.-1.norm1", nhwc_to_nchw
    return None


def _find_target(model: nn.Module) -> tuple[str, Callable[[Tensor], Tensor] | None] | None:
    found = _architecture_target(model)
    if found is not None:
        return found
    # A thin wrapper (e.g. nn.Sequential(normalise, backbone)): exactly one known child.
    hits = [(name, _architecture_target(child)) for name, child in model.named_children()]
    hits = [(name, t) for name, t in hits if t is not None]
    if len(hits) == 1:
        name, (path, reshape) = hits[0]
        return f"{name}.{path}", reshape
    return None


def reshape_for(model: nn.Module) -> Callable[[Tensor], Tensor] | None:
    """The activation reshape a CAM needs for ``model``'s architecture (token or NHWC layouts), else ``None``."""
    found = _find_target(model)
    return None if found is None else found[1]


def default_target_layer(model: nn.Module) -> tuple[nn.Module, Callable[[Tensor], Tensor] | None]:
    """The CAM target layer for ``model`` and the reshape that turns its output into ``[B, C, h, w]``.

    Known families (torchvision and timm where both exist): ResNet ``layer4[-1]``; DenseNet ``features[-1]``
    (``norm5``); VGG, EfficientNet (torchvision), MobileNet v2/v3 (torchvision), ConvNeXt (torchvision)
    ``features[-1]``; timm EfficientNet ``bn2``, MobileNetV3 ``blocks[-1]``, ConvNeXt ``stages[-1]``;
    ``SmallCNN`` ``features[-1]``; ViT ``encoder.layers[-1].ln_1`` / ``blocks[-1].norm1`` with
    :class:`TokenReshape`; Swin ``features[-1][-1].norm1`` / ``layers[-1].blocks[-1].norm1`` with
    :func:`nhwc_to_nchw`. A wrapper module with exactly one such child is looked through.

    Raises:
        ValueError: an unknown architecture; the message says to pass ``target_layer``.
    """
    found = _find_target(model)
    if found is None:
        raise ValueError(
            f"no default CAM target layer for {type(model).__name__}: pass params target_layer='<dotted path>' "
            "naming the last spatial feature layer (e.g. 'layer4.1' or 'features.-1'; see model.named_modules())"
        )
    path, reshape = found
    return resolve_module(model, path), reshape
