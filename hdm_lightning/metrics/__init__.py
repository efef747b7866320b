"""Saliency-map evaluation metrics (SPEC "Evaluation") as ``torchmetrics.Metric`` s; see :mod:`.saliency`."""

from hdm_lightning.metrics.saliency import (
    EVALUATION_FAMILIES,
    METRIC_FAMILIES,
    AverageDropIncrease,
    DeletionInsertion,
    Proportion,
    SegmentationScores,
    saliency_metrics,
)
from hdm_lightning.metrics.stability import MapStability, map_agreement, rerun_conditions

__all__ = [
    "EVALUATION_FAMILIES",
    "METRIC_FAMILIES",
    "AverageDropIncrease",
    "DeletionInsertion",
    "MapStability",
    "Proportion",
    "SegmentationScores",
    "map_agreement",
    "rerun_conditions",
    "saliency_metrics",
]
