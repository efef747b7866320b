"""Images to explain: shipped demo photos, image folders, CUB-200-2011, image/mask pairs, and their batches."""

from hdm_lightning.data.datamodule import ExplainDataModule, Failure, load_items, make_batch
from hdm_lightning.data.datasets import (
    DATASETS,
    IMAGE_EXTENSIONS,
    CUBDataset,
    DatasetError,
    DatasetSubset,
    ImageFolderDataset,
    Item,
    ItemDataset,
    MaskPairDataset,
    PhotoDataset,
    box_mask,
    build_dataset,
    select,
)
from hdm_lightning.data.images import ImageReadError, load_mask, load_rgb
from hdm_lightning.data.photos import demo_photos

__all__ = [
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "CUBDataset",
    "DatasetError",
    "DatasetSubset",
    "ExplainDataModule",
    "Failure",
    "ImageFolderDataset",
    "ImageReadError",
    "Item",
    "ItemDataset",
    "MaskPairDataset",
    "PhotoDataset",
    "box_mask",
    "build_dataset",
    "demo_photos",
    "load_items",
    "load_mask",
    "load_rgb",
    "make_batch",
    "select",
]
