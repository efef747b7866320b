"""Selecting items of a dataset by id and count (``data.ids``, ``data.limit``) without reading an image."""

from __future__ import annotations

from collections.abc import Sequence

from hdm_lightning.data.items import DatasetError, Item, ItemDataset

__all__ = ["DatasetSubset", "select"]


class DatasetSubset(ItemDataset):
    """Items ``indices`` of ``dataset``, keeping ``ids``, ``labels``, classes and ``describe`` consistent.

    ``Item.index`` of a returned item is its position in the subset.
    """

    def __init__(self, dataset: ItemDataset, indices: Sequence[int], note: str = "") -> None:
        self.dataset = dataset
        self.indices = [int(i) for i in indices]
        self.ids = [dataset.ids[i] for i in self.indices]
        self.labels = [dataset.labels[i] for i in self.indices]
        self.class_names = dataset.class_names
        self.root = dataset.root
        self.note = note

    def load_item(self, i: int) -> Item:  # noqa: D102
        return self.dataset[self.indices[i]]

    def has_mask(self, i: int) -> bool | None:  # noqa: D102
        return self.dataset.has_mask(self.indices[i])

    def describe(self) -> str:  # noqa: D102
        note = f" ({self.note})" if self.note else ""
        return f"{self.dataset.describe()}; {len(self)} selected{note}"


def select(dataset: ItemDataset, ids: Sequence[str] | None = None, limit: int | None = None) -> ItemDataset:
    """Keep the items named in ``ids`` (in dataset order), then the first ``limit``; no image is read.

    Args:
        dataset: any dataset of this module.
        ids: item ids to keep, or ``None`` for all.
        limit: keep at most this many items (after ``ids``), or ``None`` for all.

    Returns:
        ``dataset`` itself when nothing is filtered, else a :class:`DatasetSubset`.

    Raises:
        DatasetError: an empty ``ids``, ids not in the dataset (up to 5 are named), or a ``limit`` < 1.
    """
    indices = list(range(len(dataset)))
    notes = []
    if ids is not None:
        wanted = [str(i) for i in ids]
        if not wanted:
            raise DatasetError("data.ids is empty: list item ids to explain, or leave data.ids unset for all")
        known = set(dataset.ids)
        unknown = [i for i in dict.fromkeys(wanted) if i not in known]
        if unknown:
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise DatasetError(
                f"{len(unknown)} id(s) in data.ids are not in {dataset.describe()}: {unknown[:5]}{more}. Ids are "
                f"item names such as {dataset.ids[:2]} (CUB: the path in images.txt; folders: the path under root)"
            )
        keep = set(wanted)
        indices = [i for i in indices if dataset.ids[i] in keep]
        notes.append(f"{len(keep)} ids")
    if limit is not None:
        if int(limit) < 1:
            raise DatasetError(f"data.limit must be a positive number of items, got {limit!r}; unset it for all")
        indices = indices[: int(limit)]
        notes.append(f"limit {int(limit)}")
    if len(indices) == len(dataset):
        return dataset
    return DatasetSubset(dataset, indices, note=", ".join(notes))
