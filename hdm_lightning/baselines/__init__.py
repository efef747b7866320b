"""Saliency baselines the papers compare against, and DM/HDM/MDM, behind one contract and one registry.

>>> from hdm_lightning.baselines import METHODS, build_method  # doctest: +SKIP
>>> method = build_method("gradcam", model)  # doctest: +SKIP
>>> maps = method(images, target)  # [B, 1, H, W] in [0, 1]  # doctest: +SKIP
>>> method.forward_passes, method.backward_passes  # samples spent by that call  # doctest: +SKIP

Families: :mod:`.gradients` (captum), :mod:`.cam` (grad-cam), :mod:`.rise`, :mod:`.perturbation` (Fong & Vedaldi's
mask), :mod:`.masks` (DM, HDM, MDM adapters and the random map). Importing this package registers them all.
"""

from hdm_lightning.baselines.base import (
    METHODS,
    PassCounter,
    SaliencyMethod,
    TokenReshape,
    available_methods,
    build_method,
    default_target_layer,
    method_params,
    nhwc_to_nchw,
    preserved,
    register_method,
    resolve_module,
)
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
from hdm_lightning.baselines.gradients import DeepLift, Gradient, IntegratedGradients, distinct_relus
from hdm_lightning.baselines.masks import DM, HDM, MDM, RandomMap
from hdm_lightning.baselines.perturbation import MeaningfulPerturbation
from hdm_lightning.baselines.rise import RISE, rise_masks

__all__ = [
    "DM",
    "HDM",
    "MDM",
    "METHODS",
    "RISE",
    "AblationCAM",
    "DeepLift",
    "EigenCAM",
    "FullGrad",
    "GradCAM",
    "GradCAMPlusPlus",
    "Gradient",
    "IntegratedGradients",
    "LayerCAM",
    "MeaningfulPerturbation",
    "PassCounter",
    "RandomMap",
    "SaliencyMethod",
    "ScoreCAM",
    "TokenReshape",
    "XGradCAM",
    "available_methods",
    "build_method",
    "default_target_layer",
    "distinct_relus",
    "fullgrad_unsupported_reason",
    "method_params",
    "nhwc_to_nchw",
    "preserved",
    "register_method",
    "resolve_module",
    "rise_masks",
]
