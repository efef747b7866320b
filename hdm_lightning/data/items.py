"""What every dataset kind shares: the :class:`Item` it returns, the :class:`ItemDataset` base, :class:`DatasetError`.

Every dataset lists its items (``ids``, ``labels``, ``class_names``) without reading an image, so a
run over 5794 CUB test images starts at once and ``ids`` / ``limit`` select items before anything is
decoded. ``dataset[i]`` reads one image and returns an :class:`Item`; an unreadable file raises
:class:`~hdm_lightning.data.images.ImageReadError`, which a runner records as failed before going on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor
from torch.utils.data import Dataset

from hdm_lightning.models.preprocess import Preprocess

__all__ = ["DatasetError", "Item", "ItemDataset"]


class DatasetError(ValueError):
    """A dataset that cannot be built as configured (missing folder or file, malformed metadata, bad option)."""


@dataclass
class Item:
    """One preprocessed image with what is known about it.

    Attributes:
        id: stable, unique name of the item, used for output file names. CUB: the relative path from
            ``images.txt`` (``"001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg"``); folders
            and pairs: the path relative to the image folder with ``/`` separators; photos: the photo name.
        image: normalised float ``[3, S, S]`` (``Preprocess``).
        label: 0-based class index, ``-1`` when unknown.
        mask: ground-truth foreground, bool ``[S, S]`` at the crop geometry of ``image``, or ``None``.
        box: CUB bounding box ``(x, y, width, height)`` in original pixels, or ``None``.
        path: the image file (photos: ``"demo:<name>"``).
        index: position of the item in the dataset that returned it (after ``ids`` / ``limit``).
        mask_source: where ``mask`` came from: ``"segmentation"`` (CUB), ``"box"`` (CUB bounding box
            rasterised), ``"file"`` (a pairs mask), or ``None``.
    """

    id: str
    image: Tensor
    label: int = -1
    mask: Tensor | None = None
    box: tuple[float, float, float, float] | None = None
    path: str = ""
    index: int = -1
    mask_source: str | None = None


class ItemDataset(Dataset):
    """Base of the datasets: the item list is known up front; ``__getitem__`` reads one image.

    Subclasses set ``ids``, ``labels``, ``class_names`` (``None`` when there are no classes) and
    ``root`` in ``__init__`` and implement :meth:`load_item` and :meth:`describe`. A subclass registered as a
    dataset kind (:func:`~hdm_lightning.data.kinds.register_dataset_kind`) also implements :meth:`from_config`.
    """

    needs_root: ClassVar[bool] = True  # whether ``data.root`` is required for this kind
    root_hint: ClassVar[str] = "/path/to/the/folder"  # example data.root in the "data.root is required" error
    # whether the items carry a ground-truth mask: True (every item), False (none), None (unknown: see has_mask)
    masks: ClassVar[bool | None] = None

    ids: list[str]
    labels: list[int]
    class_names: list[str] | None = None
    root: Path | None = None

    @classmethod
    def from_config(cls, cfg: Any, preprocess: Preprocess) -> ItemDataset:
        """Build from a ``DataConfig`` (or a DictConfig with its fields)."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int | None:
        """Number of classes, ``None`` when the items have no classes."""
        return None if self.class_names is None else len(self.class_names)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Item:
        """Read and preprocess item ``index`` (negative indices count from the end).

        Raises:
            ImageReadError: the image (or its mask) cannot be read.
            IndexError: ``index`` out of range.
        """
        n = len(self)
        i = int(index)
        if not -n <= i < n:
            raise IndexError(f"item index {index} out of range for a dataset of {n} items")
        i %= n
        return dataclasses.replace(self.load_item(i), index=i)

    def has_mask(self, i: int) -> bool | None:
        """Whether item ``i`` comes with a ground-truth mask, known without reading it (``None``: unknown)."""
        return self.masks

    def load_item(self, i: int) -> Item:
        """Read and preprocess item ``i`` (``dataset[i]`` calls it and sets the item's ``index``)."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line saying what this is, how many items and classes, and where."""
        raise NotImplementedError
