"""Batches of items to explain, tolerant of unreadable images.

A failed image must not stop a run over thousands: :func:`load_items` reads items and sets the failures
aside as ``(index, id, message)``; :func:`make_batch` stacks the good ones into the batch dict; the
:class:`ExplainDataModule`'s loader does both inside its workers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from hdm_lightning.data.images import ImageReadError
from hdm_lightning.data.items import Item, ItemDataset
from hdm_lightning.data.kinds import build_dataset
from hdm_lightning.models.preprocess import Preprocess

__all__ = ["ExplainDataModule", "Failure", "load_items", "make_batch"]

Failure = tuple[int, str, str]  # (index in the dataset, item id, error message)


def load_items(dataset: ItemDataset, indices: Iterable[int]) -> tuple[list[Item], list[Failure]]:
    """Read ``dataset[i]`` for each index, setting aside the ones whose image cannot be read.

    Args:
        dataset: a dataset of :mod:`hdm_lightning.data`.
        indices: positions in ``dataset``, in the order wanted.

    Returns:
        ``(items, failed)``: the readable items in order (``item.index`` is their index), and
        ``(index, id, message)`` for each :class:`ImageReadError` and for each image whose reading or
        preprocessing ran out of memory (an image too large for this machine is a bad file too). Other
        exceptions propagate: they are bugs, not bad files.
    """
    items, failed = [], []
    for i in indices:
        i = int(i)
        try:
            items.append(dataset[i])
        except ImageReadError as e:
            failed.append((i, dataset.ids[i], str(e)))
        except (MemoryError, torch.OutOfMemoryError) as e:
            message = (
                f"{dataset.ids[i]}: out of memory while reading and preprocessing this image ({type(e).__name__}: "
                f"{e}): shrink the image file, or lower classifier.preprocess.resize"
            )
            failed.append((i, dataset.ids[i], message))
    return items, failed


def make_batch(items: Sequence[Item], failed: Sequence[Failure] = (), size: int | None = None) -> dict[str, Any]:
    """Stack items into the batch dict the explain runner consumes.

    Args:
        items: readable items (all of the same image size).
        failed: the failures of this batch, passed through.
        size: image side, used only to shape an empty ``image`` when every item failed.

    Returns:
        ``{"index": LongTensor[B], "id": list[str], "image": Tensor[B, 3, S, S], "label": LongTensor[B],
        "mask": BoolTensor[B, S, S] or None, "has_mask": BoolTensor[B], "box": list[tuple | None],
        "path": list[str], "failed": list[(index, id, message)]}``, ``B`` = number of good items. ``mask``
        is ``None`` when no item has one; when only some do, the others get an all-False mask and
        ``has_mask`` tells them apart.
    """
    has_mask = torch.tensor([it.mask is not None for it in items], dtype=torch.bool)
    if items:
        image = torch.stack([it.image for it in items])
    else:
        side = size or 0
        image = torch.empty(0, 3, side, side)
    mask = None
    if bool(has_mask.any()):
        blank = torch.zeros(image.shape[-2:], dtype=torch.bool)
        mask = torch.stack([it.mask if it.mask is not None else blank for it in items])
    return {
        "index": torch.tensor([it.index for it in items], dtype=torch.long),
        "id": [it.id for it in items],
        "image": image,
        "label": torch.tensor([it.label for it in items], dtype=torch.long),
        "mask": mask,
        "has_mask": has_mask,
        "box": [it.box for it in items],
        "path": [it.path for it in items],
        "failed": list(failed),
    }


class _Tolerant(Dataset):
    """``dataset[i]`` as ``(i, Item)`` or ``(i, (i, id, message))``: a failure travels as plain data.

    Plain tuples rather than the exception object, so nothing in a DataLoader worker's result depends on
    pickling an exception with its traceback.
    """

    def __init__(self, dataset: ItemDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[int, Item | Failure]:
        items, failed = load_items(self.dataset, [i])
        return i, (items[0] if items else failed[0])


class _Collate:
    """DataLoader collate over ``_Tolerant`` pairs (a class, not a closure, so workers can pickle it)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, pairs: list[tuple[int, Item | Failure]]) -> dict[str, Any]:
        items = [r for _, r in pairs if isinstance(r, Item)]
        failed = [r for _, r in pairs if not isinstance(r, Item)]
        return make_batch(items, failed, self.size)


class ExplainDataModule(L.LightningDataModule):
    """The configured dataset in order, for ``Trainer.predict`` or a plain loop.

    Args:
        cfg: a :class:`~hdm_lightning.config.DataConfig` (or DictConfig): see
            :func:`~hdm_lightning.data.kinds.build_dataset`.
        preprocess: the classifier's preprocessing.
        batch_size: items per batch (failed items leave their batch smaller).
        num_workers: DataLoader worker processes (0: read in the main process).
    """

    def __init__(self, cfg: Any, preprocess: Preprocess, batch_size: int, num_workers: int = 0) -> None:
        super().__init__()
        if int(batch_size) < 1 or int(num_workers) < 0:
            raise ValueError(f"need batch_size >= 1 and num_workers >= 0, got {batch_size!r} and {num_workers!r}")
        self.cfg = cfg
        self.preprocess = preprocess
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.dataset: ItemDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        """Build the dataset once (no image is read)."""
        if self.dataset is None:
            self.dataset = build_dataset(self.cfg, self.preprocess)

    def predict_dataloader(self) -> DataLoader:
        """Batches (see :func:`make_batch`) of the dataset in order, without shuffling."""
        self.setup()
        return DataLoader(
            _Tolerant(self.dataset),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=_Collate(self.preprocess.size),
        )
