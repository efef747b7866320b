"""A prototype network's own explanation of a prototype: its similarity map upsampled to the image.

ProtoPNet (Chen et al., "This Looks Like That", arXiv 1806.10574, §2.3) shows where a prototype is in an image by
upsampling the prototype's similarity map ``log((d + 1)/(d + eps))`` over the last feature map to the image size
(bicubic). The MDM paper (arXiv 2207.08046, Tables 4-6) compares MDM's map of the prototype's activation against
exactly this map, so it is registered as the baseline ``prototype_upsample``: run it with
``target: {prototype: k}`` (the model is then the network's prototype activations).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from hdm_lightning.contract import SaliencyMethod, register_method
from hdm_lightning.models.prototype import PrototypeNet, PrototypeUnits

__all__ = ["PrototypeUpsample"]


@register_method("prototype_upsample")
class PrototypeUpsample(SaliencyMethod):
    """Prototype ``target``'s similarity map, upsampled bicubically to the image: one forward pass, no backward.

    Args:
        model: a prototype network's activations (:class:`~hdm_lightning.models.prototype.PrototypeUnits`, what
            ``target: {prototype: k}`` explains); a bare :class:`~hdm_lightning.models.prototype.PrototypeNet` is
            taken as its activations too.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        net = model.net if isinstance(model, PrototypeUnits) else model
        if not isinstance(net, PrototypeNet):
            raise ValueError(
                "prototype_upsample needs a prototype network explained for a prototype: train one with "
                "train_classifier.py model.head=prototype and run with target={prototype: <index>}"
            )
        self.net = net

    def attribute(self, images: Tensor, target: Tensor) -> Tensor:  # noqa: D102
        similarity = self.net.similarity_maps(images)  # [B, P, h, w]
        self.counter.add(forward=images.shape[0])
        picked = similarity.gather(1, target[:, None, None, None].expand(-1, 1, *similarity.shape[2:]))
        return F.interpolate(picked, size=images.shape[-2:], mode="bicubic", align_corners=False)
