"""Where a CAM looks: the default target layer per architecture, dotted module paths, activation reshapes.

The choices follow the grad-cam README ("Choosing the layer(s)"): the last spatial feature map of each known
family (torchvision and timm), with a reshape for token (ViT) and channels-last (Swin) activations.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor, nn

from hdm_lightning.models.prototype import PrototypeNet
from hdm_lightning.models.small_cnn import SmallCNN

__all__ = ["TokenReshape", "default_target_layer", "module_path", "nhwc_to_nchw", "reshape_for", "resolve_module"]


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
    import timm.models as tm  # optional at import time: only CAM users need the model zoos loaded
    import torchvision.models as tv

    # Choices follow the grad-cam README ("Choosing the layer(s)": ResNet layer4[-1]; VGG, DenseNet, MobileNet
    # features[-1]; ViT blocks[-1].norm1; Swin layers[-1].blocks[-1].norm1): the last spatial feature map.
    if isinstance(model, SmallCNN):
        return "features.-1", None
    if isinstance(model, PrototypeNet):  # the trunk's last block, before the add-on layers (as for its backbone)
        trunk = model.features
        if isinstance(trunk, nn.Sequential):
            return "features.-1", None
        inner = _architecture_target(getattr(trunk, "model", trunk))
        return None if inner is None else (f"features.model.{inner[0]}", inner[1])
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
    ``SmallCNN`` ``features[-1]``; a prototype network its trunk's last block; ViT ``encoder.layers[-1].ln_1`` /
    ``blocks[-1].norm1`` with :class:`TokenReshape`; Swin ``features[-1][-1].norm1`` /
    ``layers[-1].blocks[-1].norm1`` with :func:`nhwc_to_nchw`. A wrapper module with exactly one such child is
    looked through.

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
