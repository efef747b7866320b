"""hdm_lightning: Hierarchical Dynamic Masks, Dynamic Masks and Multiple Dynamic Mask on Lightning."""

from hdm_lightning.config import method_config
from hdm_lightning.explainers import EXPLAINERS, Explanation, StageResult, build_explainer, explain
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
    "EXPLAINERS",
    "Explanation",
    "MaskSchedule",
    "MaskVector",
    "Stage",
    "StageResult",
    "available_schedules",
    "build_explainer",
    "build_schedule",
    "explain",
    "method_config",
    "register_schedule",
]
