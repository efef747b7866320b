"""The bottom layer under every saliency method: input checks, the frozen-model guards, pass counting.

Nothing here knows a method: :mod:`hdm_lightning.contract` (the method contract), the explainers (DM, HDM, MDM) and
the baselines build on it; it imports only torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

__all__ = ["PassCounter", "as_targets", "check_images", "frozen", "model_device_dtype", "preserved"]

# ------------------------------------------------------------------------------------------------ inputs


def check_images(images: object) -> None:
    """Reject what the explainers cannot explain, with a message that names the fix."""
    if not isinstance(images, Tensor):
        raise ValueError(f"images must be a torch.Tensor [B, C, H, W], got {type(images).__name__}")
    if images.dim() != 4:
        hint = " (a single image: images.unsqueeze(0))" if images.dim() == 3 else ""
        raise ValueError(f"images must have rank 4 [B, C, H, W]; got shape {tuple(images.shape)}{hint}")
    if not images.dtype.is_floating_point:
        raise ValueError(
            f"images must be a floating-point tensor, got dtype {images.dtype}: convert (e.g. x.float() / 255) "
            "and normalise as the classifier expects"
        )
    if images.shape[0] == 0 or images.shape[-1] < 1 or images.shape[-2] < 1:
        raise ValueError(f"images must hold at least one image with positive size; got shape {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or inf values: clean or re-load the input")


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and floating dtype of the first parameter (or buffer); CPU/float32 without any."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.dtype.is_floating_point:
            return t.device, t.dtype
    return torch.device("cpu"), torch.float32


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


# ------------------------------------------------------------------------------------------------ model guards

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


@contextmanager
def frozen(model: nn.Module, channels_last: bool = False):
    """Put ``model`` in eval mode with gradients off; restore every flag afterwards.

    The weights are never modified; each submodule's ``training`` flag and each parameter's
    ``requires_grad`` are restored exactly (no side effects on the caller's model).
    """
    modes = {m: m.training for m in model.modules()}
    grads = {p: p.requires_grad for p in model.parameters()}
    model.eval()
    for p in grads:
        p.requires_grad_(False)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        if channels_last:
            model.to(memory_format=torch.contiguous_format)
        for m, mode in modes.items():
            m.training = mode
        for p, g in grads.items():
            p.requires_grad_(g)


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
