"""Amortised dynamic masks: a network trained on the DM loss predicts each image's mask vectors in one pass.

- :mod:`~hdm_lightning.amortised.predictor`: the predictor (classifier features + class -> ``d_i``).
- :mod:`~hdm_lightning.amortised.module`: its training on the DM loss (a LightningModule; ``train_explainer.py``).
- :mod:`~hdm_lightning.amortised.explainer`: a trained predictor with its DM settings, and the ``explainer.pt`` file.
- :mod:`~hdm_lightning.amortised.method`: the registered method ``amortised``; ``dm``/``hdm`` take ``init: amortised``.

After Dabkowski & Gal, "Real Time Image Saliency for Black Box Classifiers" (NeurIPS 2017, arXiv 1705.07857), with
the mask vectors and loss of "Hierarchical Dynamic Masks for Visual Explanation of Neural Networks" (arXiv 2301.04970).
"""

from hdm_lightning.amortised.explainer import AmortisedExplainer, benchmark_vectors, load_explainer
from hdm_lightning.amortised.method import Amortised
from hdm_lightning.amortised.module import AmortisedMaskModule, predictor_loss
from hdm_lightning.amortised.predictor import FeatureTap, MaskPredictor

__all__ = [
    "Amortised",
    "AmortisedExplainer",
    "AmortisedMaskModule",
    "FeatureTap",
    "MaskPredictor",
    "benchmark_vectors",
    "load_explainer",
    "predictor_loss",
]
