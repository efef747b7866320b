"""Class activation maps through grad-cam (``pytorch_grad_cam``), one registered name per method.

- Grad-CAM: Selvaraju et al., ICCV 2017, arXiv 1610.02391
- Grad-CAM++: Chattopadhay et al., WACV 2018, arXiv 1710.11063
- Score-CAM: Wang et al., CVPR workshops 2020, arXiv 1910.01279
- XGrad-CAM: Fu et al., BMVC 2020, arXiv 2008.02312
- Ablation-CAM: Desai & Ramaswamy, "Ablation-CAM: Visual Explanations for Deep Convolutional Network via
  Gradient-free Localization", WACV 2020
- Eigen-CAM: Muhammad & Yeasin, IJCNN 2020, arXiv 2008.00299
- Layer-CAM: Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation Maps for Localization", IEEE TIP 2021
- FullGrad: Srinivas & Fleuret, NeurIPS 2019, arXiv 1905.00780

Post-processing: grad-cam returns ``[B, H, W]`` numpy maps already ReLU'd, resized to the input with bilinear
interpolation (``cv2.resize``) and min-max scaled per image (``scale_cam_image``); we only convert them to a tensor
on the images' device (the contract's ``N`` then makes the range exactly ``[0, 1]``).

Target layers: :func:`~hdm_lightning.baselines.layers.default_target_layer` per architecture (the grad-cam README's
choices), overridable by ``target_layer`` (a dotted path). ViT and Swin activations go through a reshape to
``[B, C, h, w]`` (class token dropped; NHWC permuted). The target is ``ClassifierOutputTarget(c)``: the logit of
class ``c``. Eigen-CAM ignores the target (first principal component of the activations).

grad-cam's CAM objects register hooks when built; we release them in ``finally`` rather than with ``with``: their
``__exit__`` swallows ``IndexError`` (it prints and returns True), which would hide a bad class index.
Score-CAM and Ablation-CAM print tqdm progress bars; they are silenced while the call runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import ClassVar

import torch
from torch import Tensor, nn

from hdm_lightning.baselines.layers import default_target_layer, module_path, reshape_for, resolve_module
from hdm_lightning.contract import SaliencyMethod, register_method

__all__ = [
    "AblationCAM",
    "EigenCAM",
    "FullGrad",
    "GradCAM",
    "GradCAMPlusPlus",
    "LayerCAM",
    "ScoreCAM",
    "XGradCAM",
    "fullgrad_unsupported_reason",
]


def _identity(iterable, *args, **kwargs):
    return iterable


@contextmanager
def _quiet_tqdm() -> Iterator[None]:
    """Silence the progress bars of grad-cam's Score-CAM / Ablation-CAM (their modules call ``tqdm.tqdm``)."""
    import pytorch_grad_cam.ablation_cam as ablation_module
    import pytorch_grad_cam.score_cam as score_module

    saved = [(m, m.tqdm) for m in (score_module, ablation_module)]
    for m, _ in saved:
        m.tqdm = SimpleNamespace(tqdm=_identity)
    try:
        yield
    finally:
        for m, original in saved:
            m.tqdm = original


class _CAMMethod(SaliencyMethod):
    """Common glue: target layer, reshape, ``ClassifierOutputTarget`` targets, hook release."""

    cam_class: ClassVar[str] = ""
    uses_gradients: ClassVar[bool] = True

    def __init__(self, model: nn.Module, target_layer: str | None = None) -> None:
        super().__init__(model)
        self.target_layer = target_layer
        if target_layer is None:
            self.layer, self.reshape = default_target_layer(model)
        else:
            self.layer, self.reshape = resolve_module(model, target_layer), reshape_for(model)
        self.layer_name = module_path(model, self.layer)

    def _build(self) -> object:
        import pytorch_grad_cam

        cls = getattr(pytorch_grad_cam, self.cam_class)
        return cls(model=self.model, target_layers=[self.layer], reshape_transform=self.reshape)

    def attribute(self, images: Tensor, target: Tensor) -> Tensor:  # noqa: D102
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        cam = self._build()
        try:
            # Parameters are frozen: gradients reach the activations through an input that requires grad.
            x = images.clone().requires_grad_(self.uses_gradients)
            targets = [ClassifierOutputTarget(int(c)) for c in target.tolist()]
            with _quiet_tqdm():
                out = cam(input_tensor=x, targets=targets)
        finally:
            cam.activations_and_grads.release()
        return torch.from_numpy(out).to(images.device)


@register_method("gradcam")
class GradCAM(_CAMMethod):
    """Grad-CAM: channel weights = spatial mean of the gradients. B forwards, B backwards.

    Args:
        model: the classifier.
        target_layer: dotted path of the layer (default: :func:`default_target_layer`).
    """

    cam_class = "GradCAM"


@register_method("gradcam++")
class GradCAMPlusPlus(_CAMMethod):
    """Grad-CAM++: weights from positive second/third-order gradient terms. B forwards, B backwards.

    Args:
        model: the classifier.
        target_layer: dotted path of the layer (default: :func:`default_target_layer`).
    """

    cam_class = "GradCAMPlusPlus"


@register_method("xgradcam")
class XGradCAM(_CAMMethod):
    """XGrad-CAM: gradients weighted by normalised activations. B forwards, B backwards.

    Args:
        model: the classifier.
        target_layer: dotted path of the layer (default: :func:`default_target_layer`).
    """

    cam_class = "XGradCAM"


@register_method("layercam")
class LayerCAM(_CAMMethod):
    """Layer-CAM: element-wise ``relu(grad) * activation``. B forwards, B backwards.

    Args:
        model: the classifier.
        target_layer: dotted path of the layer (default: :func:`default_target_layer`).
    """

    cam_class = "LayerCAM"


@register_method("eigencam")
class EigenCAM(_CAMMethod):
    """Eigen-CAM: first principal component of the activations (class-agnostic). B forwards, no backward.

    Args:
        model: the classifier.
        target_layer: dotted path of the layer (default: :func:`default_target_layer`).
    """

    cam_class = "EigenCAM"
    uses_gradients = False


@register_method("scorecam")
class ScoreCAM(_CAMMethod):
    """Score-CAM: channel weights = softmax over channels of the class logit on activation-masked inputs.

    Costs ``B * (1 + channels)`` forwards (``channels`` of the target layer), no backward.

    Args:
        model: the classifier.
        target_layer: dotted path of the layer (default: :func:`default_target_layer`).
        batch_size: masked images per forward.
    """

    cam_class = "ScoreCAM"
    uses_gradients = False

    def __init__(self, model: nn.Module, target_layer: str | None = None, batch_size: int = 32) -> None:
        super().__init__(model, target_layer)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size

    def _build(self) -> object:
        cam = super()._build()
        cam.batch_size = self.batch_size  # read by ScoreCAM.get_cam_weights
        return cam


@register_method("ablationcam")
class AblationCAM(_CAMMethod):
    """Ablation-CAM: channel weights = relative drop of the class logit when the channel is ablated.

    Costs ``B * (2 + channels)`` forwards, no backward. Token layouts (ViT, Swin) use grad-cam's
    ``AblationLayerVit``.

    Args:
        model: the classifier.
        target_layer: dotted path of the layer (default: :func:`default_target_layer`).
        batch_size: ablated copies per forward.
    """

    cam_class = "AblationCAM"
    uses_gradients = False

    def __init__(self, model: nn.Module, target_layer: str | None = None, batch_size: int = 32) -> None:
        super().__init__(model, target_layer)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size

    def _build(self) -> object:
        from pytorch_grad_cam import AblationCAM as LibAblationCAM
        from pytorch_grad_cam import AblationLayer, AblationLayerVit

        # A fresh ablation layer per call: the library's default argument is one instance shared by every call.
        layer = AblationLayer() if self.reshape is None else AblationLayerVit()
        return LibAblationCAM(
            model=self.model,
            target_layers=[self.layer],
            reshape_transform=self.reshape,
            ablation_layer=layer,
            batch_size=self.batch_size,
        )


def fullgrad_unsupported_reason(model: nn.Module) -> str | None:
    """Why FullGrad does not apply to ``model`` (``None`` when it does).

    FullGrad (Srinivas & Fleuret 2019, Eq. 5) sums the input-gradient term and the bias-gradient maps of the
    convolutional layers; grad-cam collects biases only from ``nn.Conv2d`` and ``nn.BatchNorm2d``. In attention and
    LayerNorm networks (ViT, Swin, ConvNeXt) most biases live in Linear / LayerNorm layers on tokens, which that
    collection misses, so the result would not be the full-gradient decomposition (on a torchvision ViT it would use
    the patch-embedding conv's bias alone).
    """
    for name, m in model.named_modules():
        kind = type(m).__name__
        if isinstance(m, nn.MultiheadAttention | nn.LayerNorm) or kind.endswith("Attention"):
            return (
                f"FullGrad needs a CNN whose biases are all in Conv2d/BatchNorm2d layers (the full-gradient "
                f"decomposition); {type(model).__name__} has {kind} {name!r} (attention / LayerNorm models such as "
                "ViT, Swin and ConvNeXt are not supported): use gradcam, layercam or integrated_gradients instead"
            )
    if not any(isinstance(m, nn.Conv2d | nn.BatchNorm2d) and m.bias is not None for m in model.modules()):
        return f"FullGrad needs Conv2d/BatchNorm2d layers with biases; {type(model).__name__} has none"
    return None


@register_method("fullgrad")
class FullGrad(SaliencyMethod):
    """FullGrad: ``|x * grad_x|`` plus ``|bias * grad|`` of every Conv2d/BatchNorm2d, no target layer.

    B forwards, B backwards. CNNs only: models with attention or LayerNorm (ViT, Swin, ConvNeXt) raise a ValueError
    (see :func:`fullgrad_unsupported_reason`).

    Args:
        model: the classifier.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        reason = fullgrad_unsupported_reason(model)
        if reason is not None:
            raise ValueError(reason)

    def attribute(self, images: Tensor, target: Tensor) -> Tensor:  # noqa: D102
        from pytorch_grad_cam import FullGrad as LibFullGrad
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        cam = LibFullGrad(model=self.model, target_layers=[])
        try:
            targets = [ClassifierOutputTarget(int(c)) for c in target.tolist()]
            out = cam(input_tensor=images.clone(), targets=targets)
        finally:
            cam.activations_and_grads.release()
        return torch.from_numpy(out).to(images.device)
