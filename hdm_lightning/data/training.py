"""Train / validation data for ``train_classifier.py``: the same datasets as explain runs, with augmentation.

Splits: CUB-200-2011 and the synthetic shapes use their own splits (``train_split``/``val_split`` are
``data.split`` values); an image folder uses ``root/train`` and ``root/val`` (or ``root/test``) when it
has them, else a seeded ``val_fraction`` of its images. Augmentation works on the preprocessed tensor
(random resized crop and flip, or flip only), so every dataset kind trains the same way. An image that
cannot be read is left out of its batch with a warning, not a crash hours into training.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import OmegaConf
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from hdm_lightning.data.images import ImageReadError
from hdm_lightning.data.items import DatasetError, ItemDataset
from hdm_lightning.data.kinds import build_dataset
from hdm_lightning.data.selection import DatasetSubset, select
from hdm_lightning.models.preprocess import Preprocess

__all__ = ["ClassifierDataModule", "EpochSeededSampler", "augmentation"]


def augmentation(kind: str, size: int) -> v2.Transform | None:
    """Training augmentation on a normalised ``[3, size, size]`` tensor: ``standard``, ``flip`` or ``none``."""
    if kind == "none":
        return None
    flip = v2.RandomHorizontalFlip()
    if kind == "flip":
        return flip
    return v2.Compose([v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True), flip])


class _Labelled(Dataset):
    """``(image, label)`` pairs of an item dataset; an unreadable image gives ``None`` (dropped by the collate)."""

    def __init__(self, items: ItemDataset, transform: v2.Transform | None) -> None:
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        try:
            item = self.items[i]
        except ImageReadError as e:
            warnings.warn(f"skipping an unreadable training image: {e}", stacklevel=1)
            return None
        except (MemoryError, torch.OutOfMemoryError) as e:  # one image too large for this machine, as explain.py
            warnings.warn(
                f"skipping training image {self.items.ids[i]!r}: out of memory preprocessing it ({e})", stacklevel=1
            )
            return None
        x = item.image if self.transform is None else self.transform(item.image)
        return x, item.label


class _EpochSeeded(_Labelled):
    """:class:`_Labelled` keyed by ``(index, epoch)``: each image's augmentation is drawn from its own seed."""

    def __init__(self, items: ItemDataset, transform: v2.Transform | None, seed: int) -> None:
        super().__init__(items, transform)
        self.seed = seed

    def __getitem__(self, key):
        i, epoch = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(((self.seed * 1_000_003 + epoch) * 1_000_003 + i) % 2**63)
            return super().__getitem__(i)


class EpochSeededSampler(Sampler):
    """A shuffle drawn from ``(seed, epoch)`` that hands each index to the dataset with its epoch.

    The epoch is read when an epoch's iterator starts (``epoch()``, e.g. the trainer's ``current_epoch``), not from
    a counter the loop sets later, so the first epoch after a resume sees the order (and, through
    :class:`_EpochSeeded`, the augmentation) that an uninterrupted run saw. Nothing here draws from the global RNG.
    """

    def __init__(self, n: int, seed: int, epoch: Callable[[], int]) -> None:
        self.n, self.seed, self.epoch = n, seed, epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        epoch = int(self.epoch())
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
        return iter([(i, epoch) for i in torch.randperm(self.n, generator=g).tolist()])


def _collate(batch: list) -> tuple[Tensor, Tensor]:
    good = [b for b in batch if b is not None]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return torch.stack([x for x, _ in good]), torch.tensor([y for _, y in good], dtype=torch.long)


def _split_folder(dataset: ItemDataset, fraction: float, seed: int) -> tuple[ItemDataset, ItemDataset]:
    n = len(dataset)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, round(n * fraction))
    if n_val >= n:
        raise DatasetError(f"{dataset.describe()}: too few images ({n}) to hold out a validation share")
    return (
        DatasetSubset(dataset, sorted(perm[n_val:]), note=f"train, {1 - fraction:.0%} of the images"),
        DatasetSubset(dataset, sorted(perm[:n_val]), note=f"val, {fraction:.0%} of the images (seed {seed})"),
    )


class ClassifierDataModule(L.LightningDataModule):
    """Train and validation loaders for one dataset config.

    Args:
        data: a ``DataConfig`` (kind ``cub``, ``folder`` with class sub-folders, or ``synthetic``).
        preprocess: the classifier's evaluation preprocessing (training adds augmentation on top).
        batch_size: images per batch.
        augment: ``standard``, ``flip`` or ``none``.
        train_split: ``data.split`` for training (CUB: ``train``; synthetic: ``train``).
        val_split: ``data.split`` for validation (CUB: ``test``; synthetic: ``val``).
        val_fraction: held-out share of an image folder without ``train/`` and ``val/`` sub-folders.
        seed: seed of that split.
        num_workers: DataLoader workers.
        val_limit: validate on the first ``val_limit`` images only (``None``: all).
        epoch_seeded: shuffle and augment each epoch from ``(seed, epoch)`` alone (:class:`EpochSeededSampler`), so
            a resumed run trains on exactly the batches an uninterrupted one does.

    Raises:
        DatasetError: a dataset without labels (photos, image + mask pairs, a flat folder), a validation
            set with other classes than the training set, or any problem the dataset reports.
    """

    def __init__(
        self,
        data: Any,
        preprocess: Preprocess,
        batch_size: int,
        augment: str = "standard",
        train_split: str = "train",
        val_split: str = "test",
        val_fraction: float = 0.1,
        seed: int = 0,
        num_workers: int = 0,
        val_limit: int | None = None,
        epoch_seeded: bool = False,
    ) -> None:
        super().__init__()
        self.data, self.preprocess = data, preprocess
        self.seed, self.epoch_seeded = int(seed), bool(epoch_seeded)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.augment = augmentation(augment, preprocess.size)
        self.train_set, self.val_set = self._build(train_split, val_split, val_fraction, seed)
        if val_limit is not None:
            self.val_set = select(self.val_set, limit=int(val_limit))
        if self.train_set.class_names is None:
            raise DatasetError(
                f"{self.train_set.describe()} has no classes to learn: use data.kind=cub, synthetic, or an image "
                "folder with one sub-folder per class"
            )
        if self.val_set.class_names != self.train_set.class_names:
            raise DatasetError(
                f"the validation set's classes {self.val_set.class_names} differ from the training set's "
                f"{self.train_set.class_names}: give both the same class sub-folders"
            )

    def _with(self, **changes) -> ItemDataset:
        cfg = OmegaConf.merge(OmegaConf.structured(self.data) if not OmegaConf.is_config(self.data) else self.data)
        for k, v in changes.items():
            cfg[k] = v
        return build_dataset(cfg, self.preprocess)

    def _build(self, train_split: str, val_split: str, fraction: float, seed: int):
        kind = str(self.data.kind)
        if kind in ("cub", "synthetic"):
            return self._with(split=train_split), self._with(split=val_split)
        if kind == "folder":
            root = Path(str(self.data.root)) if self.data.root is not None else None
            if root is not None and (root / "train").is_dir():
                val = next((root / v for v in ("val", "test") if (root / v).is_dir()), None)
                if val is None:
                    raise DatasetError(f"{root} has train/ but no val/ or test/ folder: add one, or remove train/")
                return self._with(root=str(root / "train")), self._with(root=str(val))
            return _split_folder(self._with(), fraction, seed)
        raise DatasetError(
            f"data.kind={kind!r} has no class labels to train on: use cub, synthetic, or folder (class sub-folders)"
        )

    @property
    def class_names(self) -> list[str]:
        """The classes, in label order."""
        return list(self.train_set.class_names)

    def _epoch(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.current_epoch) if trainer is not None else 0

    def train_dataloader(self) -> DataLoader:  # noqa: D102
        if self.epoch_seeded:
            data = _EpochSeeded(self.train_set, self.augment, self.seed)
            order = {"sampler": EpochSeededSampler(len(self.train_set), self.seed, self._epoch)}
        else:
            data, order = _Labelled(self.train_set, self.augment), {"shuffle": True}
        return DataLoader(
            data,
            batch_size=self.batch_size,
            **order,
            drop_last=len(self.train_set) > self.batch_size,
            num_workers=self.num_workers,
            collate_fn=_collate,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:  # noqa: D102
        return DataLoader(
            _Labelled(self.val_set, None),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=_collate,
            persistent_workers=self.num_workers > 0,
        )
