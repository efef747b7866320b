"""Explainers as sequential Lightning fits over mask-vector parameters."""

from hdm_lightning.explainers.methods import (
    EXPLAINERS,
    DMExplainer,
    HDMExplainer,
    MDMExplainer,
    build_explainer,
    explain,
)
from hdm_lightning.explainers.result import Explanation, StageResult
from hdm_lightning.explainers.selectors import ActivationSelector

__all__ = [
    "EXPLAINERS",
    "ActivationSelector",
    "DMExplainer",
    "Explanation",
    "HDMExplainer",
    "MDMExplainer",
    "StageResult",
    "build_explainer",
    "explain",
]
