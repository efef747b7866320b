"""The classifier's layers from the output down, and their seeded re-initialisation (the sanity checks' cascade).

Adebayo et al., "Sanity Checks for Saliency Maps" (NeurIPS 2018, arXiv 1810.03292) re-initialise a trained
classifier layer by layer from the logits down. :func:`parameter_layers` lists the layers, :func:`cascade_points`
says how many each point of the cascade re-initialises, :func:`reinitialise` re-initialises one (seeded, the same on
every device) and :func:`restored` gives the model back bit-exactly afterwards.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["SETTING", "cascade_points", "layer_seed", "parameter_layers", "reinitialise", "restored"]

#: where the settings live in a run config (error messages name it)
SETTING = "evaluation.params.sanity"
_SETTING = SETTING


# ------------------------------------------------------------------------------------------------ layers


def parameter_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers of ``model`` from the output down: ``(name, module)`` for each module with parameters of its own.

    Assumption: ``named_modules()`` lists the modules in definition order and a network defines its layers from
    input to output (``nn.Sequential``, torchvision's ResNets, ViTs, :class:`~hdm_lightning.models.SmallCNN`), so
    its reverse starts at the logits. A module that only holds others (``nn.Sequential``, a residual block) is no
    layer; a ``BatchNorm`` with affine weights is one.
    """
    layers = [(n, m) for n, m in model.named_modules() if next(m.parameters(recurse=False), None) is not None]
    return layers[::-1]


def cascade_points(
    names: Sequence[str], steps: int | None = None, layers: Sequence[str] | None = None
) -> list[tuple[str, int]]:
    """``(point, count)``: each cascade point's name and how many layers (of ``names``, top-down) it re-initialises.

    ``steps``: points ``cascade1 .. cascade<steps - 1>``, ``full`` with ``ceil(L * j / steps)`` layers at point
    ``j`` (``L = len(names)``; the last is every layer). ``layers``: one point ``cascade<j>`` per given name, down to
    and including that layer, then ``full``.

    Raises:
        ValueError: more steps than layers, or a name that is not a layer, repeated or out of top-down order.
    """
    total = len(names)
    if layers is None:
        if steps > total:
            raise ValueError(
                f"{_SETTING}.steps = {steps} is more than the classifier's {total} layers with parameters: give "
                f"steps <= {total}, or name the layers in {_SETTING}.layers"
            )
        counts = [math.ceil(total * j / steps) for j in range(1, steps + 1)]
        return [(f"cascade{j}", c) for j, c in enumerate(counts[:-1], 1)] + [("full", counts[-1])]
    unknown = [n for n in layers if n not in names]
    if unknown:
        raise ValueError(
            f"{_SETTING}.layers names {unknown}, which are not modules with parameters of their own; the layers, "
            f"from the output down: {list(names)}"
        )
    counts = [names.index(n) + 1 for n in layers]
    if any(b <= a for a, b in zip(counts, counts[1:], strict=False)):
        raise ValueError(f"{_SETTING}.layers must be distinct and go from the output down, as in {list(names)}")
    return [(f"cascade{j}", c) for j, c in enumerate(counts, 1)] + [("full", total)]


def layer_seed(seed: int, name: str) -> int:
    """A 63-bit seed from ``seed`` and a name (a layer's, or an image id's): the same in every process."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@torch.no_grad()
def reinitialise(module: nn.Module, name: str, seed: int = 0) -> None:
    """Re-initialise ``module``'s own parameters in place, the same for a ``(seed, name)`` on any device.

    1. A module with ``reset_parameters()`` (convolutions, linear layers, norms; a norm's running statistics are
       reset too): a CPU copy is reset with the CPU generator seeded from ``(seed, name)``, and its own parameters
       and buffers are copied into the module. This is the layer's own initialisation, as Adebayo et al. re-draw
       each layer from its initialisation distribution.
    2. Any other module (e.g. a ViT's class token, position embedding): each own parameter is re-drawn from a
       normal with the parameter's own mean and standard deviation (1 when it has none), same seed.

    The global CPU generator is reseeded: call inside ``torch.random.fork_rng`` (as :class:`SanityChecks` does).
    """
    s = layer_seed(seed, name)
    if callable(getattr(module, "reset_parameters", None)):
        clone = copy.deepcopy(module).cpu()
        torch.default_generator.manual_seed(s)
        clone.reset_parameters()
        for key, p in module.named_parameters(recurse=False):
            p.copy_(clone._parameters[key])
        for key, b in module.named_buffers(recurse=False):
            b.copy_(clone._buffers[key])
        return
    gen = torch.Generator().manual_seed(s)
    for _, p in module.named_parameters(recurse=False):
        x = p.detach().double().cpu()
        std = float(x.std()) if x.numel() > 1 else 0.0
        std = std if math.isfinite(std) and std > 0 else 1.0
        p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * std + float(x.mean()))


@contextmanager
def restored(model: nn.Module) -> Iterator[nn.Module]:
    """Run a block that may write ``model``'s weights; afterwards every parameter and buffer is bit-exactly as before.

    Clones of every parameter and buffer (non-persistent buffers too) are taken first and copied back in place in
    a ``finally``: the same tensor objects, so hooks and modules that methods hold keep seeing the model.
    """
    saved = [(t, t.detach().clone()) for t in [*model.parameters(), *model.buffers()]]
    try:
        yield model
    finally:
        with torch.no_grad():
            for t, value in saved:
                t.copy_(value)
