"""Images to explain: shipped demo photos, image folders, CUB-200-2011, image/mask pairs, synthetic shapes, batches."""

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
from hdm_lightning.data.synthetic import SHAPE_CLASSES, SyntheticShapesDataset, generate_shapes

__all__ = [
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "SHAPE_CLASSES",
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
    "SyntheticShapesDataset",
    "box_mask",
    "build_dataset",
    "demo_photos",
    "generate_shapes",
    "load_items",
    "load_mask",
    "load_rgb",
    "make_batch",
    "select",
]
