"""Tiny classifiers for tests: a random CNN, and hand-built nets whose decision uses known regions."""

from __future__ import annotations

import torch
from torch import nn


def tiny_cnn(classes: int = 5, seed: int = 0, dtype=torch.float64) -> nn.Module:
    """A small conv net with BatchNorm and dropout (so eval mode matters), left in train mode."""
    torch.manual_seed(seed)
    m = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, classes),
    )
    with torch.no_grad():  # non-trivial BatchNorm statistics, and logits that react to the input
        m[1].running_mean.uniform_(-0.2, 0.2)
        m[1].running_var.uniform_(0.5, 1.5)
        m[-1].weight.mul_(20.0)
    return m.to(dtype).train()


class RegionNet(nn.Module):
    """Logits depend only on pixels inside given boxes: ``relu(conv(x))`` pooled over each box.

    Args:
        boxes: ``[(y0, y1, x0, x1), ...]`` pixel boxes; box ``i`` feeds the logits with weight ``gains[i]``.
        size: image side.
        gains: how strongly each box drives the decision.
        redundant: combine the boxes' pooled features with a max instead of a sum, so that either box
            alone suffices for the decision (the situation HDM's later stages are built for).
    """

    def __init__(self, boxes, size: int, gains=None, classes: int = 3, seed: int = 0, redundant: bool = False) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, classes)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.5)
            self.conv.bias.zero_()
            self.fc.weight.copy_(torch.randn(self.fc.weight.shape, generator=g) * 3.0)
            self.fc.bias.zero_()
        gains = gains or [1.0] * len(boxes)
        weight = torch.zeros(len(boxes), 1, size, size)
        for i, ((y0, y1, x0, x1), gain) in enumerate(zip(boxes, gains, strict=True)):
            weight[i, :, y0:y1, x0:x1] = gain / ((y1 - y0) * (x1 - x0))
        self.register_buffer("weight", weight)
        self.redundant = redundant

    def forward(self, x):
        f = torch.relu(self.conv(x))  # [B, 8, H, W]
        pooled = (f[:, None] * self.weight[None]).sum((3, 4))  # [B, boxes, 8]
        return self.fc(pooled.amax(1) if self.redundant else pooled.sum(1))


def box_mask(boxes, size: int, pad: int = 1) -> torch.Tensor:
    """Bool ``[1, 1, size, size]`` of the boxes grown by ``pad`` pixels (the conv's reach)."""
    m = torch.zeros(1, 1, size, size, dtype=torch.bool)
    for y0, y1, x0, x1 in boxes:
        m[..., max(y0 - pad, 0) : y1 + pad, max(x0 - pad, 0) : x1 + pad] = True
    return m
