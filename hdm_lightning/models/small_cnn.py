"""A small CNN for 64 px inputs, trained in about a minute on two CPU cores: the synthetic shapes' classifier.

Four conv-BN-ReLU blocks (16, 32, 64, 128 channels; 2x2 max pooling after the first three), global average
pooling and a linear head: about 100k parameters, a 38 px receptive field at the last block (enough to see a
whole key object of :mod:`hdm_lightning.data.synthetic` at 64 px). Every ReLU is its own, non in-place module,
because attribution methods that hook modules (captum's DeepLift) need one module per use.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from hdm_lightning.models.preprocess import Preprocess

__all__ = ["SMALL_CNN_NAME", "SmallCNN", "small_cnn_preprocess"]

SMALL_CNN_NAME = "small_cnn"
"""The backbone name of :class:`SmallCNN` for ``build_backbone`` / ``classifier.name``."""


def small_cnn_preprocess() -> Preprocess:
    """The preprocessing :class:`SmallCNN` is trained with: 64 px (no crop), bilinear, inputs in [-1, 1]."""
    return Preprocess(size=64, resize=64, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear")


class SmallCNN(nn.Module):
    """``[B, 3, H, W]`` normalised images -> ``[B, num_classes]`` logits (any ``H, W`` >= 8; trained at 64).

    Attributes:
        features: ``nn.Sequential`` of the conv blocks; ``features[-1]`` is the last one (a Grad-CAM target layer).
        pool: global average pooling.
        head: the linear classifier on the pooled last block.

    Args:
        num_classes: number of logits.
        widths: output channels of the conv blocks (a max pooling follows every block but the last).
    """

    def __init__(self, num_classes: int, widths: Sequence[int] = (16, 32, 64, 128)) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        widths = [int(w) for w in widths]
        if not widths or min(widths) < 1:
            raise ValueError(f"widths must be a non-empty list of positive channel counts, got {widths!r}")
        blocks = []
        channels = 3
        for i, width in enumerate(widths):
            layers: list[nn.Module] = [
                nn.Conv2d(channels, width, kernel_size=3, padding=1, bias=False),  # BN supplies the bias
                nn.BatchNorm2d(width),
                nn.ReLU(),  # a new, not in-place ReLU per block (DeepLift)
            ]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            blocks.append(nn.Sequential(*layers))
            channels = width
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.head(self.pool(self.features(x)).flatten(1))
