"""Saliency-map evaluation metrics (SPEC "Evaluation") as ``torchmetrics.Metric`` s; see :mod:`.saliency`."""

from hdm_lightning.metrics.saliency import (
    METRIC_FAMILIES,
    AverageDropIncrease,
    DeletionInsertion,
    Proportion,
    SegmentationScores,
    saliency_metrics,
)

__all__ = [
    "METRIC_FAMILIES",
    "AverageDropIncrease",
    "DeletionInsertion",
    "Proportion",
    "SegmentationScores",
    "saliency_metrics",
]
