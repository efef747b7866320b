"""Saliency baselines the papers compare against, behind the one method contract and registry.

>>> from hdm_lightning.contract import build_method  # doctest: +SKIP
>>> result = build_method("gradcam", model).explain(images, target)  # doctest: +SKIP
>>> result.maps, result.forward_passes, result.backward_passes  # maps in [0, 1]; samples  # doctest: +SKIP

Families: :mod:`.gradients` (captum), :mod:`.cam` (grad-cam), :mod:`.rise`, :mod:`.perturbation` (Fong & Vedaldi's
mask), :mod:`.extremal` (Fong, Patrick & Vedaldi's extremal perturbations), :mod:`.random_map` (the floor),
:mod:`.controls` (``centre``, ``edges``, ``blurred``: maps that do not explain the classifier, or only smoothly),
:mod:`.prototype_map` (``prototype_upsample``: a prototype network's own map of a prototype).
Importing this package registers them all; DM, HDM and MDM are registered by :mod:`hdm_lightning.explainers`,
behind the same contract (:mod:`hdm_lightning.contract`).
"""

from hdm_lightning.baselines.cam import (
    AblationCAM,
    EigenCAM,
    FullGrad,
    GradCAM,
    GradCAMPlusPlus,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
    fullgrad_unsupported_reason,
)
from hdm_lightning.baselines.controls import BlurredMap, CentreBias, SobelEdges
from hdm_lightning.baselines.extremal import ExtremalPerturbation
from hdm_lightning.baselines.gradients import DeepLift, Gradient, IntegratedGradients, distinct_relus
from hdm_lightning.baselines.layers import TokenReshape, default_target_layer, nhwc_to_nchw, resolve_module
from hdm_lightning.baselines.perturbation import MeaningfulPerturbation
from hdm_lightning.baselines.prototype_map import PrototypeUpsample
from hdm_lightning.baselines.random_map import RandomMap
from hdm_lightning.baselines.rise import RISE, rise_masks

__all__ = [
    "RISE",
    "AblationCAM",
    "BlurredMap",
    "CentreBias",
    "DeepLift",
    "EigenCAM",
    "ExtremalPerturbation",
    "FullGrad",
    "GradCAM",
    "GradCAMPlusPlus",
    "Gradient",
    "IntegratedGradients",
    "LayerCAM",
    "MeaningfulPerturbation",
    "PrototypeUpsample",
    "RandomMap",
    "ScoreCAM",
    "SobelEdges",
    "TokenReshape",
    "XGradCAM",
    "default_target_layer",
    "distinct_relus",
    "fullgrad_unsupported_reason",
    "nhwc_to_nchw",
    "resolve_module",
    "rise_masks",
]
