"""A prototype network (ProtoPNet) on any backbone of :func:`~hdm_lightning.models.backbones.build_backbone`.

Chen, Li, Tao, Barnett, Su, Rudin, "This Looks Like That: Deep Learning for Interpretable Image Recognition"
(NeurIPS 2019, arXiv 1806.10574), §2, implemented from the paper:

- the backbone's last feature map, then the **add-on layers** (two 1x1 convolutions, ReLU between, a sigmoid at
  the end) give ``z = f(x)`` of shape ``[B, D, h, w]``;
- ``m`` **prototypes per class**, each a ``D x 1 x 1`` patch ``p_j``; ``d_j(z) = ||z - p_j||^2`` at every
  position, the **similarity** ``log((d + 1) / (d + eps))``, max-pooled over positions (the prototype's
  *activation*, the unit the MDM paper explains);
- the **last layer** maps the ``P = m K`` activations to the ``K`` logits, initialised to +1 from a prototype to
  its own class and -0.5 to the others;
- the **loss** (:func:`prototype_loss`): cross-entropy + ``lambda_1`` cluster cost (mean over the images of the
  smallest distance from the image's patches to a prototype of its class) - ``lambda_2`` separation cost (the
  same for the prototypes of the other classes) + ``lambda`` L1 of the last layer's weights from a prototype to
  the other classes (the last-layer phase);
- the **push** (:func:`push_prototypes`): each prototype is projected onto its nearest training patch of its
  class, so that it *is* a patch of a training image.

The training phases (warm-up, joint, push, last layer) are in :mod:`hdm_lightning.models.prototype_training`.
:class:`PrototypeUnits` is the same network with the prototype activations as its outputs: every saliency method
that explains "output ``k``" then explains prototype ``k``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hdm_lightning.models.backbones import build_backbone

__all__ = [
    "PROTOTYPE_HEAD",
    "PrototypeNet",
    "PrototypeUnits",
    "PushResult",
    "backbone_trunk",
    "build_prototype_net",
    "prototype_loss",
    "push_prototypes",
]

PROTOTYPE_HEAD = "prototype"
"""``model.head`` of a prototype network (``train_classifier.py``) and the checkpoint's ``head.kind``."""


class _TimmTrunk(nn.Module):
    """A timm model's ``forward_features`` (convolutional models: ``[B, C, h, w]``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.model.forward_features(x)


def backbone_trunk(model: nn.Module) -> nn.Module:
    """The convolutional trunk of a classifier built by ``build_backbone``: ``[B, 3, H, W] -> [B, C, h, w]``.

    ``small_cnn``, VGG, DenseNet, EfficientNet, MobileNet, ConvNeXt: their ``features``; ResNet-like torchvision
    models (``avgpool`` and ``fc``): every child before them; timm models: ``forward_features``.

    Raises:
        ValueError: a model without a convolutional feature map (a vision transformer).
    """
    if isinstance(getattr(model, "features", None), nn.Module):
        return model.features
    names = [n for n, _ in model.named_children()]
    if names[-2:] == ["avgpool", "fc"]:
        return nn.Sequential(*list(model.children())[:-2])
    if hasattr(model, "forward_features") and not hasattr(model, "patch_embed"):
        return _TimmTrunk(model)
    raise ValueError(
        f"a prototype head needs a convolutional feature map, and {type(model).__name__} has none this project "
        "knows (features / avgpool+fc / timm forward_features; vision transformers are not supported): choose a CNN "
        "backbone (small_cnn, resnet50, timm/resnet18, ...)"
    )


class PrototypeNet(nn.Module):
    """ProtoPNet: ``[B, 3, H, W]`` normalised images -> ``[B, K]`` logits through ``P = m K`` prototypes.

    Args:
        trunk: the backbone's convolutional trunk (:func:`backbone_trunk`).
        trunk_channels: channels of the trunk's feature map.
        num_classes: ``K``.
        prototypes_per_class: ``m`` (the paper: 10 on CUB-200-2011).
        prototype_shape: ``[D, 1, 1]``: channels of a prototype (and of the add-on layers' output); prototypes
            are 1x1 patches, as in the paper.
        eps: the similarity's ``eps`` (the paper: 1e-4).

    Attributes:
        features: the trunk (its last block is where Grad-CAM of a prototype looks).
        add_on: the add-on layers.
        prototypes: ``[P, D]``; prototype ``j`` belongs to class ``prototype_class[j] = j // m``.
        last_layer: ``Linear(P, K)`` without bias.
    """

    def __init__(
        self,
        trunk: nn.Module,
        trunk_channels: int,
        num_classes: int,
        prototypes_per_class: int = 10,
        prototype_shape: Iterable[int] = (128, 1, 1),
        eps: float = 1e-4,
    ) -> None:
        super().__init__()
        shape = [int(s) for s in prototype_shape]
        if len(shape) != 3 or shape[0] < 1 or shape[1:] != [1, 1]:
            raise ValueError(f"prototype_shape must be [channels, 1, 1] (1x1 patches, as ProtoPNet), got {shape}")
        if int(prototypes_per_class) < 1 or int(num_classes) < 1:
            raise ValueError(
                f"prototypes_per_class and num_classes must be >= 1, got {prototypes_per_class}, {num_classes}"
            )
        m, k, d = int(prototypes_per_class), int(num_classes), shape[0]
        self.num_classes, self.prototypes_per_class, self.eps = k, m, float(eps)
        self.features = trunk
        self.add_on = nn.Sequential(nn.Conv2d(int(trunk_channels), d, 1), nn.ReLU(), nn.Conv2d(d, d, 1), nn.Sigmoid())
        self.prototypes = nn.Parameter(torch.rand(m * k, d))  # the paper: uniform on [0, 1], the sigmoid's range
        self.register_buffer("prototype_class", torch.arange(k).repeat_interleave(m), persistent=False)
        self.last_layer = nn.Linear(m * k, k, bias=False)
        with torch.no_grad():
            own = F.one_hot(self.prototype_class, k).T.float()  # [K, P]
            self.last_layer.weight.copy_(own - 0.5 * (1 - own))
        for module in self.add_on.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    @property
    def num_prototypes(self) -> int:
        """``P = m K``."""
        return self.prototypes.shape[0]

    def feature_map(self, x: Tensor) -> Tensor:
        """``z = f(x)``: ``[B, D, h, w]`` in (0, 1)."""
        return self.add_on(self.features(x))

    def distances(self, z: Tensor) -> Tensor:
        """Squared L2 distances from every position of ``z`` to every prototype: ``[B, P, h, w]``, >= 0."""
        p = self.prototypes
        cross = F.conv2d(z, p[:, :, None, None])  # [B, P, h, w]
        d = z.pow(2).sum(1, keepdim=True) - 2 * cross + p.pow(2).sum(1)[None, :, None, None]
        return d.clamp_min(0)

    def similarity(self, d: Tensor) -> Tensor:
        """``log((d + 1) / (d + eps))``: large for a close patch, 0 for a far one."""
        return torch.log((d + 1) / (d + self.eps))

    def min_distances(self, x: Tensor) -> Tensor:
        """Each prototype's smallest distance to a patch of each image: ``[B, P]``."""
        return self.distances(self.feature_map(x)).flatten(2).amin(2)

    def activations(self, x: Tensor) -> Tensor:
        """Each prototype's activation, ``max_positions similarity = similarity(min distance)``: ``[B, P]``."""
        return self.similarity(self.min_distances(x))

    def similarity_maps(self, x: Tensor) -> Tensor:
        """Every prototype's similarity at every position of the feature map: ``[B, P, h, w]``."""
        return self.similarity(self.distances(self.feature_map(x)))

    def logits(self, min_distances: Tensor) -> Tensor:
        """``[B, K]`` logits from the ``[B, P]`` smallest distances."""
        return self.last_layer(self.similarity(min_distances))

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.logits(self.min_distances(x))


def build_prototype_net(
    backbone: str, num_classes: int, head: Mapping[str, Any], model: nn.Module | None = None
) -> PrototypeNet:
    """A :class:`PrototypeNet` on ``backbone``'s trunk (``model``: an already built and initialised backbone).

    ``head`` holds ``prototypes_per_class`` and ``prototype_shape`` (the checkpoint's ``head`` entry).
    """
    model = model if model is not None else build_backbone(backbone, num_classes)
    trunk = backbone_trunk(model)
    was_training = trunk.training
    with torch.no_grad():
        channels = int(trunk.eval()(torch.zeros(1, 3, 64, 64)).shape[1])
    trunk.train(was_training)
    return PrototypeNet(
        trunk,
        channels,
        num_classes,
        prototypes_per_class=int(head["prototypes_per_class"]),
        prototype_shape=list(head["prototype_shape"]),
    )


class PrototypeUnits(nn.Module):
    """A :class:`PrototypeNet` whose outputs are its ``P`` prototype activations instead of the class logits.

    ``explain.py`` with ``target: {prototype: k}`` explains output ``k`` of this model with every method.
    """

    def __init__(self, net: PrototypeNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.net.activations(x)


def prototype_loss(
    net: PrototypeNet,
    x: Tensor,
    y: Tensor,
    cluster: float = 0.8,
    separation: float = 0.08,
    l1: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """ProtoPNet's loss on one batch: ``CE + cluster * Clst - separation * Sep + l1 * L1``, and its terms.

    ``Clst`` is the mean over the images of the smallest distance from any patch to a prototype of the image's
    class, ``Sep`` the same for the prototypes of the other classes, ``L1`` the sum of the absolute last-layer
    weights from a prototype to the classes it does not belong to (used in the last-layer phase).

    Returns:
        ``(loss, {"logits", "cross_entropy", "cluster", "separation", "l1"})``.
    """
    min_d = net.min_distances(x)  # [B, P]
    logits = net.logits(min_d)
    own = net.prototype_class[None, :] == y[:, None]  # [B, P]
    inf = torch.finfo(min_d.dtype).max
    clst = min_d.masked_fill(~own, inf).amin(1).mean()
    sep = min_d.masked_fill(own, inf).amin(1).mean() if net.num_classes > 1 else min_d.new_zeros(())
    ce = F.cross_entropy(logits, y)
    other = 1 - F.one_hot(net.prototype_class, net.num_classes).T.to(net.last_layer.weight)  # [K, P]
    l1_term = (net.last_layer.weight * other).abs().sum()
    loss = ce + cluster * clst - separation * sep + l1 * l1_term
    return loss, {"logits": logits, "cross_entropy": ce, "cluster": clst, "separation": sep, "l1": l1_term}


@dataclass
class PushResult:
    """Where each prototype was projected to: its nearest training patch of its class.

    Attributes:
        index: ``[P]`` position in the iterated data of the image holding the patch.
        position: ``[P, 2]`` ``(row, column)`` of the patch in the feature map.
        distance: ``[P]`` squared distance before the projection.
        feature_size: ``(h, w)`` of the feature map.
    """

    index: Tensor
    position: Tensor
    distance: Tensor
    feature_size: tuple[int, int]


@torch.no_grad()
def push_prototypes(net: PrototypeNet, batches: Iterable[tuple[Tensor, Tensor]]) -> PushResult:
    """Project every prototype onto its nearest patch among the training images of its class (ProtoPNet §2.2).

    Args:
        net: the network; its ``prototypes`` are replaced in place.
        batches: ``(images, labels)`` batches of the training images, in a fixed order and without augmentation
            (the images the network is evaluated on); image ``i`` of the iteration is ``PushResult.index == i``.

    Raises:
        ValueError: a class without a training image (its prototypes would have no patch to become).
    """
    was_training = net.training
    net.eval()
    p, dev = net.num_prototypes, net.prototypes.device
    best = torch.full((p,), float("inf"), device=dev, dtype=torch.float64)
    vectors = net.prototypes.detach().clone()
    index = torch.full((p,), -1, dtype=torch.long)
    position = torch.zeros(p, 2, dtype=torch.long)
    seen, size = 0, (0, 0)
    for images, labels in batches:
        images, labels = images.to(dev), labels.to(dev)
        z = net.feature_map(images)  # [B, D, h, w]
        d = net.distances(z)  # [B, P, h, w]
        size = (d.shape[2], d.shape[3])
        own = net.prototype_class[None, :] == labels[:, None]  # [B, P]
        flat = d.flatten(2).masked_fill(~own[:, :, None], float("inf"))  # only patches of the prototype's class
        per_image, where = flat.min(2)  # [B, P]
        value, image = per_image.min(0)  # [P]
        better = value.double() < best
        for j in torch.nonzero(better).flatten().tolist():
            b, pos = int(image[j]), int(where[image[j], j])
            best[j] = value[j].double()
            row, col = divmod(pos, size[1])
            vectors[j] = z[b, :, row, col]
            index[j], position[j] = seen + b, torch.tensor([row, col])
        seen += images.shape[0]
    missing = sorted({int(c) for c in net.prototype_class[index < 0].tolist()})
    if missing:
        raise ValueError(
            f"push: classes {missing[:10]} have no training image, so their prototypes have no patch to become: "
            "train on data with every class in the training split"
        )
    net.prototypes.copy_(vectors)
    net.train(was_training)
    return PushResult(index=index, position=position, distance=best.float().cpu(), feature_size=size)
