"""Lightning callbacks: mid-stage mask checkpoints (and, for explain runs, logging)."""

from hdm_lightning.callbacks.checkpoint import MaskCheckpoint, WorkStore

__all__ = ["MaskCheckpoint", "WorkStore"]
