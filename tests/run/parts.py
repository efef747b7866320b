"""Small real parts for the run-part tests: a tiny classifier, items, and a method that records its calls."""

from __future__ import annotations

import torch
from torch import nn

from hdm_lightning.contract import RunContext, SaliencyMethod
from hdm_lightning.data import Item
from hdm_lightning.models import Classifier, Preprocess
from hdm_lightning.run.plan import MethodRun

S = 16


def tiny_classifier(num_classes: int = 3) -> Classifier:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes)
    ).eval()
    names = [f"class{i}" for i in range(num_classes)]
    return Classifier(
        model=model,
        preprocess=Preprocess(size=S, resize=S),
        num_classes=num_classes,
        class_names=names,
        name="tiny",
        source="test",
    )


def items(n: int, seed: int = 0) -> list[Item]:
    gen = torch.Generator().manual_seed(seed)
    return [
        Item(
            id=f"img{i}.png",
            image=torch.randn(3, S, S, generator=gen),
            label=i % 3,
            mask=None,
            box=None,
            path=f"img{i}.png",
            index=i,
        )
        for i in range(n)
    ]


class Recording(SaliencyMethod):
    """A real (unregistered) method: the map is the image's channel mean; records the contexts it is given."""

    name = "recording"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.contexts: list[RunContext | None] = []
        self.batches: list[int] = []

    def explain(self, images, target=None, context=None):  # noqa: D102
        self.contexts.append(context)
        self.batches.append(images.shape[0])
        return super().explain(images, target, context)

    def attribute(self, images, target):  # noqa: D102
        self.model(images)  # one counted forward
        return images.mean(1, keepdim=True)


def method_run(label: str, root, model: nn.Module) -> MethodRun:
    return MethodRun(label, root, Recording(model))
