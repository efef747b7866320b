"""Images to explain: shipped demo photos, image folders, CUB-200-2011, image/mask pairs, synthetic shapes, batches.

Each dataset kind (``data.kind``) is one module that registers itself in :data:`DATASETS`
(:mod:`hdm_lightning.data.kinds`); importing this package imports every built-in kind, so the registry is
complete whenever any part of the package is in use. To add a kind, see :mod:`hdm_lightning.data.kinds`.
"""

from hdm_lightning.data.cub import CUBDataset, box_mask
from hdm_lightning.data.datamodule import ExplainDataModule, Failure, load_items, make_batch
from hdm_lightning.data.files import IMAGE_EXTENSIONS
from hdm_lightning.data.image_folder import ImageFolderDataset
from hdm_lightning.data.images import ImageReadError, load_mask, load_rgb
from hdm_lightning.data.items import DatasetError, Item, ItemDataset
from hdm_lightning.data.kinds import DATASETS, available_dataset_kinds, build_dataset, register_dataset_kind
from hdm_lightning.data.pairs import MaskPairDataset
from hdm_lightning.data.photos import PhotoDataset, demo_photos
from hdm_lightning.data.selection import DatasetSubset, select
from hdm_lightning.data.synthetic import SHAPE_CLASSES, SyntheticShapesDataset, generate_shapes
from hdm_lightning.data.tensors import TensorImages

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
    "TensorImages",
    "available_dataset_kinds",
    "box_mask",
    "build_dataset",
    "demo_photos",
    "generate_shapes",
    "load_items",
    "load_mask",
    "load_rgb",
    "make_batch",
    "register_dataset_kind",
    "select",
]
