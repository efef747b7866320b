"""The registry of dataset kinds (``data.kind`` in a config) and :func:`build_dataset`, which the runner calls.

:data:`DATASETS` is the one list of dataset kinds. A kind is an :class:`~hdm_lightning.data.items.ItemDataset`
subclass registered under its ``data.kind`` name; it lives in its own module (``photos``, ``image_folder``, ``cub``,
``pairs``, ``synthetic`` in this package), and :mod:`hdm_lightning.data` imports each built-in one, so they are
registered whenever anything of the package is imported. Nothing here lists the kinds: :func:`build_dataset` looks
``data.kind`` up in the registry.

Adding a kind is one module plus one registration; no central code changes. For example, a folder of ``.npy``
arrays::

    # my_kinds.py (list it under ``imports:`` in the run config, or import it before building the dataset)
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from hdm_lightning.data import Item, ItemDataset, register_dataset_kind


    @register_dataset_kind("npy")
    class NpyDataset(ItemDataset):
        def __init__(self, root, preprocess):
            self.root, self.preprocess = Path(root), preprocess
            self._paths = sorted(self.root.glob("*.npy"))
            self.ids = [p.name for p in self._paths]
            self.labels = [-1] * len(self._paths)  # 0-based class indices, -1 when unknown
            self.class_names = None  # or one name per class

        @classmethod
        def from_config(cls, cfg, preprocess):  # cfg: the DataConfig (data.root, data.split, ...)
            return cls(cfg.root, preprocess)

        def load_item(self, i):
            image = Image.fromarray(np.load(self._paths[i])).convert("RGB")
            return Item(id=self.ids[i], image=self.preprocess(image), path=str(self._paths[i]))

        def describe(self):
            return f"npy arrays: {len(self)} at {self.root}"

Then ``data.kind: npy`` with ``data.root: /path/to/arrays`` works in any config. Set ``needs_root = False`` on a
kind that reads no folder (as ``photos`` and ``synthetic`` do), ``root_hint`` to the example path its
"data.root is required" error shows, and ``masks`` to ``True`` or ``False`` when every item or none carries a
ground-truth mask (or override ``has_mask(i)``): the mask metrics are refused on data that has none. A kind reads its
options from the existing ``DataConfig`` fields (``root``, ``split``, ...): the config schema refuses unknown keys.
Registering a name twice is an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hdm_lightning.data.items import DatasetError, ItemDataset
from hdm_lightning.data.selection import select
from hdm_lightning.models.preprocess import Preprocess
from hdm_lightning.registry import Registry

__all__ = ["DATASETS", "available_dataset_kinds", "build_dataset", "register_dataset_kind"]

DATASETS: Registry[type[ItemDataset]] = Registry("dataset kind")


def register_dataset_kind(name: str):
    """Register an :class:`ItemDataset` subclass as ``data.kind: name`` (duplicate names are an error).

    Example:
        >>> @register_dataset_kind("my_kind")  # doctest: +SKIP
        ... class MyDataset(ItemDataset): ...
    """
    return DATASETS.register(name)


def available_dataset_kinds() -> list[str]:
    """Names of the registered dataset kinds, sorted."""
    return DATASETS.names()


def build_dataset(cfg: Any, preprocess: Preprocess) -> ItemDataset:
    """Build the dataset that ``cfg`` describes, with its ``ids`` and ``limit`` applied.

    Args:
        cfg: a :class:`~hdm_lightning.config.DataConfig`, or a DictConfig with the same fields.
        preprocess: the classifier's preprocessing (images and masks share its geometry).

    Raises:
        KeyError: an unknown ``cfg.kind`` (lists the registered kinds).
        DatasetError: a missing or absent ``root``, or any problem the dataset reports.
    """
    kind = str(cfg.kind)
    cls = DATASETS.get(kind)
    if cls.needs_root:
        if cfg.root is None:
            raise DatasetError(f"data.root is required for kind {kind!r}: set data.root={cls.root_hint}")
        if not Path(str(cfg.root)).expanduser().exists():
            raise DatasetError(f"data.root {str(cfg.root)!r} does not exist (kind {kind!r}): check the path")
    dataset = cls.from_config(cfg, preprocess)
    ids = None if cfg.ids is None else list(cfg.ids)
    return select(dataset, ids=ids, limit=cfg.limit)
