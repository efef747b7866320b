"""Dataset kind ``pairs``: images with ground-truth masks of the same file stem (iChallenge-PM style)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hdm_lightning.data.files import IMAGE_EXTENSIONS, existing_dir, list_images
from hdm_lightning.data.images import fit_mask, load_mask, load_rgb
from hdm_lightning.data.items import DatasetError, Item, ItemDataset
from hdm_lightning.data.kinds import register_dataset_kind
from hdm_lightning.models.preprocess import Preprocess

__all__ = ["MaskPairDataset"]


@register_dataset_kind("pairs")
class MaskPairDataset(ItemDataset):
    """Images with ground-truth masks of the same file stem (iChallenge-PM style: fundus ``.jpg``, lesion ``.bmp``).

    Images are the image files directly in ``root/images_dir``; the mask of ``a.jpg`` is the image file in
    ``root/masks_dir`` whose stem is ``a`` (any extension). An image without a mask gets ``mask=None``
    (``describe()`` says how many have one). Nonzero mask pixels are foreground (``invert_masks`` for masks
    drawn with the object in black). Labels are ``-1``.

    Args:
        root: the dataset folder.
        images_dir: sub-folder of ``root`` holding the images.
        masks_dir: sub-folder of ``root`` holding the masks.
        preprocess: the classifier's preprocessing.
        invert_masks: foreground = zero pixels (e.g. PALM/iChallenge lesion masks: lesion 0, background 255).

    Raises:
        DatasetError: a missing folder, no images, or two masks with the same stem.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        images_dir: str,
        masks_dir: str,
        preprocess: Preprocess,
        invert_masks: bool = False,
    ) -> None:
        self.root = existing_dir(root, "image/mask pairs")
        self.images_dir = existing_dir(self.root / images_dir, f"images (data.images_dir={images_dir!r})")
        masks_path = self.root / masks_dir
        if not masks_path.is_dir():
            raise DatasetError(
                f"masks folder {str(masks_path)!r} does not exist: set data.masks_dir to the sub-folder of "
                f"{str(self.root)!r} that holds the masks"
            )
        self.masks_dir = masks_path
        self.preprocess = preprocess
        self.invert_masks = invert_masks
        self._paths = list_images(self.images_dir, recursive=False)
        if not self._paths:
            raise DatasetError(
                f"no images in {str(self.images_dir)!r} (looked for {', '.join(IMAGE_EXTENSIONS)}, any case): "
                "set data.images_dir to the sub-folder that holds the images"
            )
        masks: dict[str, Path] = {}
        for m in list_images(self.masks_dir, recursive=False):
            if m.stem in masks:
                raise DatasetError(
                    f"two masks for {m.stem!r}: {masks[m.stem].name} and {m.name} in {str(self.masks_dir)!r}; keep one"
                )
            masks[m.stem] = m
        self._masks = [masks.get(p.stem) for p in self._paths]
        self.ids = [p.name for p in self._paths]
        self.labels = [-1] * len(self._paths)
        self.class_names = None

    @classmethod
    def from_config(cls, cfg: Any, preprocess: Preprocess) -> MaskPairDataset:  # noqa: D102
        invert = bool(getattr(cfg, "masks_invert", False))  # a config key the schema may add later
        return cls(cfg.root, cfg.images_dir, cfg.masks_dir, preprocess, invert_masks=invert)

    @property
    def num_masks(self) -> int:
        """How many images have a mask file."""
        return sum(m is not None for m in self._masks)

    def has_mask(self, i: int) -> bool:  # noqa: D102
        return self._masks[i] is not None

    def load_item(self, i: int) -> Item:  # noqa: D102
        path, mask_path = self._paths[i], self._masks[i]
        image = load_rgb(path)
        mask = None
        if mask_path is not None:
            mask_image = fit_mask(load_mask(mask_path, invert=self.invert_masks), image.size, mask_path)
            mask = self.preprocess.mask(mask_image)
        return Item(
            id=self.ids[i],
            image=self.preprocess(image),
            label=-1,
            mask=mask,
            path=str(path),
            mask_source=None if mask is None else "file",
        )

    def describe(self) -> str:  # noqa: D102
        return (
            f"image/mask pairs: {len(self)} images ({self.num_masks} with masks) at {self.root} "
            f"({self.images_dir.name}/, {self.masks_dir.name}/)"
        )
