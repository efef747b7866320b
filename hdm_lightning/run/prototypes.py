"""A prototype target's classifier: a prototype network with its prototype activations as the outputs."""

from __future__ import annotations

from typing import Any

from hdm_lightning.config import ConfigError
from hdm_lightning.models.classifier import Classifier
from hdm_lightning.models.prototype import PrototypeNet, PrototypeUnits
from hdm_lightning.targets import PrototypeTarget, parse_target

__all__ = ["explained_classifier", "prototype_units"]


def explained_classifier(classifier: Classifier, target: Any) -> Classifier:
    """The classifier whose outputs the methods explain for ``target:``: itself, or its prototype activations.

    Raises:
        ConfigError: a prototype target on a classifier without prototypes, or an index out of range.
    """
    target = parse_target(target)
    if not isinstance(target, PrototypeTarget):
        return classifier
    try:
        return prototype_units(classifier, target)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def prototype_units(classifier: Classifier, target: PrototypeTarget) -> Classifier:
    """The classifier with its prototype activations as outputs (output ``j`` named after prototype ``j``).

    Raises:
        ValueError: a classifier without prototypes, or a prototype index out of range.
    """
    net = classifier.model
    if not isinstance(net, PrototypeNet):
        raise ValueError(
            f"target {{prototype: ...}} explains a prototype's activation, and the classifier {classifier.name!r} "
            f"({classifier.source}) has no prototypes: train one with train_classifier.py model.head=prototype "
            "(configs/classifier/synthetic_prototype.yaml) and pass classifier.checkpoint=<its classifier.pt>"
        )
    p = net.num_prototypes
    if target.index is not None and target.index >= p:
        raise ValueError(
            f"target prototype {target.index} is out of range: the classifier has {p} prototypes (0..{p - 1}, "
            f"{net.prototypes_per_class} per class, class c's first is c * {net.prototypes_per_class})"
        )
    names = [f"prototype {j} ({classifier.class_name(int(c))})" for j, c in enumerate(net.prototype_class.tolist())]
    return Classifier(
        model=PrototypeUnits(net).eval(),
        preprocess=classifier.preprocess,
        num_classes=p,
        class_names=names,
        name=classifier.name,
        source=f"{classifier.source}, prototype activations",
    )
