"""Dataset kind ``folder``: an image folder with class sub-folders (like torchvision's ``ImageFolder``), or flat."""

from __future__ import annotations

import os
import warnings
from typing import Any

from hdm_lightning.data.files import IMAGE_EXTENSIONS, existing_dir, list_images
from hdm_lightning.data.images import load_rgb
from hdm_lightning.data.items import DatasetError, Item, ItemDataset
from hdm_lightning.data.kinds import register_dataset_kind
from hdm_lightning.models.preprocess import Preprocess

__all__ = ["ImageFolderDataset"]


@register_dataset_kind("folder")
class ImageFolderDataset(ItemDataset):
    """An image folder: class sub-folders (like torchvision's ``ImageFolder``) or a flat folder.

    If any (non-hidden) sub-folder of ``root`` holds images, every sub-folder is a class: the sorted folder
    names are ``class_names`` and an image's label is its class folder's index; images are found at any
    depth inside a class folder, and images directly in ``root`` are ignored (with a warning). Otherwise
    the images directly in ``root`` are the items, with label ``-1``. Extensions: :data:`IMAGE_EXTENSIONS`,
    any case; hidden files and folders are skipped. Items are sorted by their id (the path relative to
    ``root`` with ``/`` separators), so the order is the same on every machine.

    Args:
        root: the folder.
        preprocess: the classifier's preprocessing.

    Raises:
        DatasetError: ``root`` missing, no images found, or a class folder without images.
    """

    masks = False

    def __init__(self, root: str | os.PathLike, preprocess: Preprocess) -> None:
        self.root = existing_dir(root, "image folder")
        self.preprocess = preprocess
        subdirs = sorted(d for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        per_class = {d.name: list_images(d, recursive=True) for d in subdirs}
        if any(per_class.values()):
            empty = [name for name, files in per_class.items() if not files]
            if empty:
                raise DatasetError(
                    f"class folder(s) {empty} in {str(self.root)!r} hold no images ({', '.join(IMAGE_EXTENSIONS)}):"
                    " add images or remove the folder(s), since every sub-folder is taken as a class"
                )
            loose = list_images(self.root, recursive=False)
            if loose:
                warnings.warn(
                    f"{len(loose)} image(s) directly in {str(self.root)!r} are ignored: the sub-folders are the "
                    "classes; move them into a class folder to use them",
                    stacklevel=2,
                )
            self.class_names = list(per_class)
            files = [(f, label) for label, name in enumerate(self.class_names) for f in per_class[name]]
        else:
            self.class_names = None
            files = [(f, -1) for f in list_images(self.root, recursive=False)]
        if not files:
            raise DatasetError(
                f"no images in {str(self.root)!r} (looked for {', '.join(IMAGE_EXTENSIONS)}, any case, directly in "
                "the folder or in class sub-folders): point data.root at the image folder"
            )
        files.sort(key=lambda fl: fl[0].relative_to(self.root).as_posix())
        self._paths = [f for f, _ in files]
        self.ids = [f.relative_to(self.root).as_posix() for f in self._paths]
        self.labels = [label for _, label in files]

    @classmethod
    def from_config(cls, cfg: Any, preprocess: Preprocess) -> ImageFolderDataset:  # noqa: D102
        return cls(cfg.root, preprocess)

    def load_item(self, i: int) -> Item:  # noqa: D102
        path = self._paths[i]
        image = load_rgb(path)
        return Item(id=self.ids[i], image=self.preprocess(image), label=self.labels[i], path=str(path))

    def describe(self) -> str:  # noqa: D102
        classes = f"{self.num_classes} classes" if self.class_names is not None else "no classes (flat)"
        return f"image folder: {len(self)} images, {classes} at {self.root}"
