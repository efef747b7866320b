"""DM, HDM and MDM: registered saliency methods whose parameters are mask vectors, trained in sequential fits."""

from hdm_lightning.explainers.mask_methods import DM, HDM, MDM
from hdm_lightning.explainers.result import Explanation, StageResult
from hdm_lightning.explainers.selectors import ActivationSelector

__all__ = ["DM", "HDM", "MDM", "ActivationSelector", "Explanation", "StageResult"]
