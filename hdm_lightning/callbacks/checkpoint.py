"""Mid-stage checkpoints of the mask fits: a resumed run continues a stage where it stopped.

A :class:`WorkStore` is one batch's work folder: every finished stage fit (its trained vectors,
losses and pass count) and the state of the fit in flight (step, parameters, Adam's moments, loss
history). :class:`MaskCheckpoint` is the Lightning callback that saves the fit in flight every
``every_n_steps`` steps or ``every_n_seconds`` seconds, and when the fit is interrupted. Everything
is written atomically and read with ``weights_only=True``; restoring the exact Adam state makes a
resumed batch's maps equal those of an uninterrupted run.
"""

from __future__ import annotations

import shutil
import time
import warnings
from pathlib import Path

import lightning as L

from hdm_lightning.io import atomic_torch_save, atomic_write_text, load_tensors

__all__ = ["MaskCheckpoint", "WorkStore"]


class WorkStore:
    """Finished stage fits and the fit in flight of one batch, under ``folder``.

    Args:
        folder: the batch's work folder (created on the first save).
        fingerprint: what the work belongs to (images, config, model, target); a folder holding work
            with another fingerprint is emptied first.
    """

    INFLIGHT = "inflight.pt"
    FINGERPRINT = "fingerprint.txt"

    def __init__(self, folder: str | Path, fingerprint: str | None = None) -> None:
        self.folder = Path(folder)
        self.fingerprint = fingerprint
        if fingerprint is not None:
            mark = self.folder / self.FINGERPRINT
            if self.folder.exists() and (not mark.is_file() or mark.read_text() != fingerprint):
                # Work of other images, another config or another model: never mix it into these maps.
                self.clear()
            if not mark.is_file():
                atomic_write_text(fingerprint, mark)

    def _path(self, key: str) -> Path:
        return self.folder / (key.replace("/", "__") + ".pt")

    def _load(self, path: Path) -> dict | None:
        if not path.is_file():
            return None
        try:
            return load_tensors(path)
        except Exception as e:  # an unreadable work file costs a recomputation, never the run
            warnings.warn(f"ignoring unreadable work file {path} ({e}); that fit is recomputed", stacklevel=2)
            return None

    def load_finished(self, key: str) -> dict | None:
        """The saved outcome of the finished fit ``key`` (``"dm2/level3"``, ``"mix"``), or ``None``."""
        return self._load(self._path(key))

    def save_finished(self, key: str, state: dict) -> None:
        """Save a finished fit's outcome; the in-flight state it came from is dropped."""
        atomic_torch_save(state, self._path(key))
        inflight = self._load(self.folder / self.INFLIGHT)
        if inflight is not None and inflight.get("key") == key:
            (self.folder / self.INFLIGHT).unlink(missing_ok=True)

    def load_partial(self, key: str) -> dict | None:
        """The saved state of fit ``key`` if it was the one in flight, else ``None``."""
        saved = self._load(self.folder / self.INFLIGHT)
        return saved["state"] if saved is not None and saved.get("key") == key else None

    def save_partial(self, key: str, state: dict) -> None:
        """Save the state of fit ``key`` in flight (one in-flight file per batch)."""
        atomic_torch_save({"key": key, "state": state}, self.folder / self.INFLIGHT)

    def clear(self) -> None:
        """Remove the folder (the batch's outputs are written)."""
        shutil.rmtree(self.folder, ignore_errors=True)


class MaskCheckpoint(L.Callback):
    """Save the fit in flight every ``every_n_steps`` steps and/or ``every_n_seconds``, and on interruption.

    Args:
        store: the batch's :class:`WorkStore`.
        key: the fit's key in the store.
        every_n_steps: save after every this many steps (``None``: by time only).
        every_n_seconds: save when this much time passed since the last save (``None``: by steps only).
    """

    def __init__(
        self, store: WorkStore, key: str, every_n_steps: int | None = None, every_n_seconds: float | None = 60.0
    ) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"checkpoint every_n_steps must be >= 1 or None, got {every_n_steps!r}")
        self.store, self.key = store, key
        self.every_n_steps, self.every_n_seconds = every_n_steps, every_n_seconds
        self._last = time.monotonic()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        self._last = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:  # noqa: D102
        if pl_module.finished:
            return  # the engine saves the finished outcome itself
        by_steps = self.every_n_steps is not None and pl_module.steps_done % self.every_n_steps == 0
        by_time = self.every_n_seconds is not None and time.monotonic() - self._last >= self.every_n_seconds
        if by_steps or by_time:
            self.save(pl_module)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:  # noqa: D102
        # Only at a step boundary: an exception inside a step leaves parameters and counters out of step.
        if not pl_module.finished and not pl_module.in_step and pl_module.steps_done > 0:
            self.save(pl_module)

    def save(self, pl_module) -> None:
        """Write the fit's work state now."""
        self.store.save_partial(self.key, pl_module.work_state())
        self._last = time.monotonic()
