"""hdm_lightning: Hierarchical Dynamic Masks, Dynamic Masks and Multiple Dynamic Mask on Lightning.

Every saliency method (DM, HDM, MDM and the baselines) is one registered :class:`SaliencyMethod`
(:mod:`hdm_lightning.contract`); importing the package registers them all. :func:`explain` runs any of them on a
batch and returns an :class:`Attribution`; :func:`compare` runs several on the same images, scores them with the
papers' metrics and returns a :class:`Comparison` (the tables of ``explain.py``'s comparisons).
"""

from hdm_lightning import amortised as _amortised  # noqa: F401  (registers amortised)
from hdm_lightning import baselines as _baselines  # noqa: F401  (registers the baselines)
from hdm_lightning.compare import Comparison, compare
from hdm_lightning.config import method_config
from hdm_lightning.contract import (
    METHODS,
    Attribution,
    RunContext,
    SaliencyMethod,
    available_methods,
    build_method,
    explain,
    mask_methods,
    register_method,
)
from hdm_lightning.explainers import DM, HDM, MDM, Explanation, StageResult
from hdm_lightning.schedules import (
    MaskSchedule,
    MaskVector,
    Stage,
    available_schedules,
    build_schedule,
    register_schedule,
)

__version__ = "0.1.0"

__all__ = [
    "DM",
    "HDM",
    "MDM",
    "METHODS",
    "Attribution",
    "Comparison",
    "Explanation",
    "MaskSchedule",
    "MaskVector",
    "RunContext",
    "SaliencyMethod",
    "Stage",
    "StageResult",
    "available_methods",
    "available_schedules",
    "build_method",
    "build_schedule",
    "compare",
    "explain",
    "mask_methods",
    "method_config",
    "register_method",
    "register_schedule",
]
