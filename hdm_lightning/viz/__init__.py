"""Pictures: JET heatmap overlays (as in the papers' figures) and HDM stage strips."""

from hdm_lightning.viz.images import jet, overlay, save_png, stage_strip

__all__ = ["jet", "overlay", "save_png", "stage_strip"]
