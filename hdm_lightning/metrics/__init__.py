"""Saliency-map evaluation metrics as ``torchmetrics.Metric`` s, one registered class per family (docs/methods.md).

Every family describes itself (:class:`~hdm_lightning.metrics.family.MetricFamily`: columns and their direction,
what it needs, its config) and is registered in :data:`METRICS`, the one list of families; importing this package
registers the built-in ones:

- ``drop_increase`` (:class:`AverageDropIncrease`, :mod:`.drop_increase`): Average Drop / Increase (HDM §4.5).
- ``deletion_insertion`` (:class:`DeletionInsertion`, :mod:`.deletion_insertion`): deletion / insertion AUC.
- ``road`` (:class:`ROAD`, :mod:`.road`): ROAD, MoRF / LeRF with noisy linear imputation (arXiv 2202.00449).
- ``proportion`` (:class:`Proportion`, :mod:`.proportion`): energy-based pointing game (HDM §4.6).
- ``pointing_game`` (:class:`PointingGame`, :mod:`.pointing`): pointing game hit rate, all and difficult images.
- ``segmentation`` (:class:`SegmentationScores`, :mod:`.segmentation`): Dice, IoU, PPV, Sensitivity (MDM §4.2).
- ``stability`` (:class:`MapStability`, :mod:`.stability`): agreement of a method's maps with its own reruns.
- ``sanity`` (:class:`SanityChecks`, :mod:`.sanity`): similarity of a method's maps with its maps of a randomised
  classifier (cascading, from the logits down) and of a random other class; lower is better.

The map families share :mod:`.base` (the ``update(images, saliency, target, mask=None)`` contract) and
:mod:`.perturbation` (ranking, canvases); :func:`saliency_metrics` builds a ``MetricCollection`` of them.
"""

from hdm_lightning.metrics.base import ModelMetric, SaliencyMetric
from hdm_lightning.metrics.deletion_insertion import DeletionInsertion
from hdm_lightning.metrics.drop_increase import AverageDropIncrease
from hdm_lightning.metrics.family import (
    EVALUATION_FAMILIES,
    METRIC_FAMILIES,
    METRICS,
    MetricFamily,
    build_family,
    families,
    register_metric,
    saliency_metrics,
)
from hdm_lightning.metrics.pointing import PointingGame
from hdm_lightning.metrics.proportion import Proportion
from hdm_lightning.metrics.road import ROAD
from hdm_lightning.metrics.sanity import SanityChecks
from hdm_lightning.metrics.segmentation import SegmentationScores
from hdm_lightning.metrics.stability import MapStability, map_agreement, rerun_conditions

__all__ = [
    "EVALUATION_FAMILIES",
    "METRICS",
    "METRIC_FAMILIES",
    "AverageDropIncrease",
    "DeletionInsertion",
    "MapStability",
    "MetricFamily",
    "ModelMetric",
    "PointingGame",
    "Proportion",
    "ROAD",
    "SaliencyMetric",
    "SanityChecks",
    "SegmentationScores",
    "build_family",
    "families",
    "map_agreement",
    "register_metric",
    "rerun_conditions",
    "saliency_metrics",
]
