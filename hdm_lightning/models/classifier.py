"""The :class:`Classifier` record (a network with its preprocessing and class names) and its class-count check.

Every way of getting a classifier (:mod:`~hdm_lightning.models.from_config`) returns one of these.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from hdm_lightning.models.preprocess import Preprocess

__all__ = ["BUNDLED_NAME", "Classifier", "check_num_classes"]

BUNDLED_NAME = "bundled_efficientnet_lite0"
"""``ClassifierConfig.name`` of the bundled ImageNet-pretrained EfficientNet-Lite0 (also the config default)."""


@dataclass
class Classifier:
    """A classifier ready to explain, with everything needed to feed it and to read its output.

    Attributes:
        model: the network in eval mode on the CPU, ``[B, 3, size, size]`` normalised images -> ``[B, num_classes]``
            logits.
        preprocess: how a PIL image becomes the network's input (and how a mask is aligned with it).
        num_classes: number of logits.
        class_names: ``class_names[i]`` names logit ``i``; ``None`` when the source does not say.
        name: backbone name: a torchvision model name, ``timm/<name>``, or :data:`BUNDLED_NAME`.
        source: one line saying where the weights came from (for logs and result files).
    """

    model: nn.Module
    preprocess: Preprocess
    num_classes: int
    class_names: list[str] | None
    name: str
    source: str

    def __post_init__(self) -> None:
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"classifier {self.name!r} has {self.num_classes} classes but {len(self.class_names)} class names: "
                "give one name per logit, or None"
            )

    def class_name(self, i: int) -> str:
        """The name of class ``i``, or ``str(i)`` when the classifier has no class names."""
        i = int(i)
        if not 0 <= i < self.num_classes:
            raise IndexError(f"class index {i} is out of range for a classifier with {self.num_classes} classes")
        return self.class_names[i] if self.class_names is not None else str(i)


def check_num_classes(classifier: Classifier, dataset_num_classes: int | None, dataset_desc: str) -> None:
    """Refuse a dataset whose class count differs from the classifier's (``None``: the dataset does not know).

    Args:
        classifier: the loaded classifier.
        dataset_num_classes: number of classes of the dataset, or ``None`` (e.g. a flat image folder).
        dataset_desc: how to name the dataset in the message (``"CUB-200-2011 at /data/cub"``).

    Raises:
        ValueError: the counts differ.
    """
    if dataset_num_classes is None or int(dataset_num_classes) == classifier.num_classes:
        return
    raise ValueError(
        f"the classifier has {classifier.num_classes} classes but {dataset_desc} has {dataset_num_classes}: use a "
        f"checkpoint trained on this dataset (train_classifier.py, then classifier.checkpoint=<file>), or explain "
        f"images of the classifier's own classes (classifier: {classifier.name}, {classifier.source})"
    )
