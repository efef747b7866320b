"""Mask schedules and their registry (the one list of schedules)."""

from hdm_lightning.schedules.base import (
    SCHEDULES,
    MaskSchedule,
    MaskVector,
    Stage,
    available_schedules,
    build_schedule,
    register_schedule,
    validate_plan,
)
from hdm_lightning.schedules.builtin import DMSchedule, MDMSchedule, parse_sizes

__all__ = [
    "SCHEDULES",
    "DMSchedule",
    "MDMSchedule",
    "MaskSchedule",
    "MaskVector",
    "Stage",
    "available_schedules",
    "build_schedule",
    "parse_sizes",
    "register_schedule",
    "validate_plan",
]
