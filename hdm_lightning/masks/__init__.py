"""Plain-torch mask maths (HDM paper §3, MDM paper §3)."""

from hdm_lightning.masks.ops import (
    THRESHOLD_KINDS,
    UPSAMPLE_MODES,
    Threshold,
    consistency,
    dm_combine_threshold,
    dm_row_loss,
    hdm_weights,
    hierarchical_masked_image,
    l1_mean,
    levels,
    mdm_combine_threshold,
    mix_maps,
    normalize,
    upsample,
    vector_mask,
)

__all__ = [
    "THRESHOLD_KINDS",
    "UPSAMPLE_MODES",
    "Threshold",
    "consistency",
    "dm_combine_threshold",
    "dm_row_loss",
    "hdm_weights",
    "hierarchical_masked_image",
    "l1_mean",
    "levels",
    "mdm_combine_threshold",
    "mix_maps",
    "normalize",
    "upsample",
    "vector_mask",
]
