"""Dataset kind ``cub``: CUB-200-2011 in its official layout, with segmentation or bounding-box masks."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hdm_lightning.data.files import existing_dir
from hdm_lightning.data.images import fit_mask, load_mask, load_rgb
from hdm_lightning.data.items import DatasetError, Item, ItemDataset
from hdm_lightning.data.kinds import register_dataset_kind
from hdm_lightning.models.preprocess import Preprocess

__all__ = ["CUB_FILES", "CUB_SEGMENTATION_THRESHOLD", "CUB_SPLITS", "CUBDataset", "box_mask"]

# The official CUB-200-2011 metadata files (the Caltech-UCSD Birds-200-2011 release).
CUB_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt", "classes.txt")
CUB_LAYOUT = "expected the official CUB-200-2011 layout: images/, " + ", ".join(CUB_FILES)
CUB_SPLITS = ("test", "train", "all")
# CUB segmentations are the average of several annotators' binary masks (0..255); > 127 keeps a pixel
# that more than half of them marked as bird.
CUB_SEGMENTATION_THRESHOLD = 127


def box_mask(box: Sequence[float], width: int, height: int) -> Tensor:
    """Rasterise a box ``(x, y, w, h)`` (pixel coordinates, 0-based) to a bool ``[height, width]`` mask.

    A pixel is inside when its centre is: ``x <= col + 0.5 < x + w`` (likewise for rows), so an integer
    box ``(10, 8, 20, 14)`` covers columns 10..29 and rows 8..21, and the box is clipped to the image.
    """
    x, y, w, h = (float(v) for v in box)
    cols = torch.arange(width, dtype=torch.float64) + 0.5
    rows = torch.arange(height, dtype=torch.float64) + 0.5
    in_x = (cols >= x) & (cols < x + w)
    in_y = (rows >= y) & (rows < y + h)
    return in_y[:, None] & in_x[None, :]


def _read_rows(path: Path, columns: int, split_last: bool = False) -> list[tuple[int, list[str]]]:
    """Non-blank lines of a whitespace-separated metadata file as ``(line number, fields)``.

    Raises:
        DatasetError: a line with the wrong number of fields (names the file and line).
    """
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            fields = line.split(maxsplit=columns - 1) if split_last else line.split()
            if split_last:
                fields = [s.strip() for s in fields]
            if len(fields) != columns:
                raise DatasetError(
                    f"{path.name} line {number} is malformed ({line.strip()!r}): expected {columns} fields; "
                    f"re-download the CUB-200-2011 metadata ({path})"
                )
            rows.append((number, fields))
    return rows


def _parse(path: Path, number: int, value: str, kind: type) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise DatasetError(
            f"{path.name} line {number}: {value!r} is not a valid {kind.__name__}; "
            f"re-download the CUB-200-2011 metadata ({path})"
        ) from None


def _by_image_id(path: Path, columns: int, kinds: Sequence[type]) -> dict[int, tuple]:
    """``{image id: parsed values}`` from a CUB metadata file keyed by its first column."""
    table = {}
    for number, fields in _read_rows(path, columns):
        image_id = _parse(path, number, fields[0], int)
        if image_id in table:
            raise DatasetError(f"{path.name} line {number}: image id {image_id} appears twice; re-download the file")
        table[image_id] = tuple(_parse(path, number, v, k) for v, k in zip(fields[1:], kinds, strict=True))
    return table


def _cub_root(root: str | os.PathLike) -> Path:
    """The ``CUB_200_2011`` folder (``root``, or its ``CUB_200_2011/``), checked for ``images/`` and the metadata."""
    root = existing_dir(root, "CUB-200-2011")
    if not (root / "images.txt").exists() and (root / "CUB_200_2011" / "images.txt").exists():
        root = root / "CUB_200_2011"  # pointed at the folder the archive was unpacked in
    for name in ("images", *CUB_FILES):
        if not (root / name).exists():
            raise DatasetError(
                f"{name}{'/' if name == 'images' else ''} is missing from {str(root)!r}: {CUB_LAYOUT}. "
                "Point data.root at the unpacked CUB_200_2011 folder, or re-download CUB_200_2011.tgz"
            )
    return root


def _read_class_names(root: Path) -> list[str]:
    """``classes.txt``'s names in order (``"001.Black_footed_Albatross"``), checked to be numbered 1..N."""
    classes = _read_rows(root / "classes.txt", 2, split_last=True)
    class_ids = [_parse(root / "classes.txt", n, f[0], int) for n, f in classes]
    if class_ids != list(range(1, len(classes) + 1)):
        raise DatasetError(f"classes.txt must number its classes 1..N in order: re-download it ({root})")
    return [f[1] for _, f in classes]


def _read_split(root: Path, split: str, num_classes: int) -> list[tuple[int, str, int, tuple]]:
    """``(image id, relative path, 0-based label, box)`` of the images of ``split``, in ``images.txt``'s order.

    Raises:
        DatasetError: an image id twice, an image missing from a metadata file, a class out of range or a
            train/test flag other than 0 / 1.
    """
    labels = _by_image_id(root / "image_class_labels.txt", 2, [int])
    is_train = _by_image_id(root / "train_test_split.txt", 2, [int])
    boxes = _by_image_id(root / "bounding_boxes.txt", 5, [float] * 4)
    rows = []
    seen = set()
    for number, (id_text, relpath) in _read_rows(root / "images.txt", 2, split_last=True):
        image_id = _parse(root / "images.txt", number, id_text, int)
        if image_id in seen:
            raise DatasetError(f"images.txt line {number}: image id {image_id} appears twice; re-download it")
        seen.add(image_id)
        for table, name in ((labels, "image_class_labels.txt"), (is_train, "train_test_split.txt")):
            if image_id not in table:
                raise DatasetError(
                    f"image id {image_id} (images.txt line {number}) has no line in {name}: re-download it"
                )
        if image_id not in boxes:
            raise DatasetError(
                f"image id {image_id} (images.txt line {number}) has no line in bounding_boxes.txt: re-download it"
            )
        (label,), (train,), box = labels[image_id], is_train[image_id], boxes[image_id]
        if not 1 <= label <= num_classes:
            raise DatasetError(
                f"image_class_labels.txt: image id {image_id} has class {label}, but classes.txt has "
                f"{num_classes} classes; re-download the metadata"
            )
        if train not in (0, 1):
            raise DatasetError(f"train_test_split.txt: image id {image_id} has {train}, expected 1 (train) or 0 (test)")
        if split == "all" or (split == "train") == (train == 1):
            rows.append((image_id, relpath, label - 1, box))
    return rows


@register_dataset_kind("cub")
class CUBDataset(ItemDataset):
    """CUB-200-2011 (Wah et al. 2011) in its official layout, with ground-truth masks.

    ``root`` holds ``images/`` and the metadata files :data:`CUB_FILES`. Labels are 0-based (``classes.txt``
    counts from 1), ``class_names`` are ``classes.txt``'s names (``"001.Black_footed_Albatross"``), and
    items follow ``images.txt``'s order. A ``root`` that holds a ``CUB_200_2011/`` folder is accepted too.

    Masks: when the separately downloaded segmentations are found (``segmentations``, else
    ``root/segmentations``, else a ``segmentations/`` folder beside ``root``, which is where the two
    archives unpack side by side), ``Item.mask`` is the segmentation thresholded at > 127 (more than half
    the annotators; see :data:`CUB_SEGMENTATION_THRESHOLD`), and a missing or unreadable segmentation file
    fails its item. Otherwise ``Item.mask`` is the bounding box rasterised at the original resolution.
    Either way ``Item.box`` is the box ``(x, y, w, h)`` in original pixels. Image files are not checked at
    construction; a missing one fails its item with :class:`ImageReadError`.

    Args:
        root: the ``CUB_200_2011`` folder.
        split: ``"test"`` (5794 images), ``"train"`` (5994) or ``"all"``, from ``train_test_split.txt``.
        preprocess: the classifier's preprocessing.
        segmentations: a folder of segmentation PNGs (``<class>/<name>.png``); ``None`` looks in the default
            places above.

    Raises:
        DatasetError: missing folder or metadata file, malformed metadata, or an unknown split.
    """

    root_hint = "/path/to/CUB_200_2011"
    masks = True  # a segmentation, else the bounding box

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        preprocess: Preprocess,
        segmentations: str | os.PathLike | None = None,
    ) -> None:
        if split not in CUB_SPLITS:
            raise DatasetError(f"unknown CUB split {split!r}: set data.split to one of {list(CUB_SPLITS)}")
        self.root = _cub_root(root)
        self.split = split
        self.preprocess = preprocess
        self.class_names = _read_class_names(self.root)
        rows = _read_split(self.root, split, len(self.class_names))
        self.image_ids = [image_id for image_id, _, _, _ in rows]
        self.ids = [relpath for _, relpath, _, _ in rows]
        self.labels = [label for _, _, label, _ in rows]
        self.boxes = [box for _, _, _, box in rows]
        self.segmentations = self._find_segmentations(segmentations)

    def _find_segmentations(self, given: str | os.PathLike | None) -> Path | None:
        if given is not None:
            return existing_dir(given, "CUB segmentations")
        for candidate in (self.root / "segmentations", self.root.parent / "segmentations"):
            # A sibling 'segmentations' folder must look like CUB's (class folders), not an unrelated one.
            if candidate.is_dir() and (not self.ids or (candidate / Path(self.ids[0]).parent).is_dir()):
                return candidate
        return None

    @classmethod
    def from_config(cls, cfg: Any, preprocess: Preprocess) -> CUBDataset:  # noqa: D102
        return cls(cfg.root, cfg.split, preprocess, segmentations=getattr(cfg, "segmentations", None))

    def load_item(self, i: int) -> Item:  # noqa: D102
        path = self.root / "images" / self.ids[i]
        image = load_rgb(path)
        box = self.boxes[i]
        if self.segmentations is not None:
            seg_path = (self.segmentations / self.ids[i]).with_suffix(".png")
            mask_image = fit_mask(load_mask(seg_path, threshold=CUB_SEGMENTATION_THRESHOLD), image.size, seg_path)
            mask, source = self.preprocess.mask(mask_image), "segmentation"
        else:
            mask, source = self.preprocess.mask(box_mask(box, *image.size)), "box"
        return Item(
            id=self.ids[i],
            image=self.preprocess(image),
            label=self.labels[i],
            mask=mask,
            box=box,
            path=str(path),
            mask_source=source,
        )

    def describe(self) -> str:  # noqa: D102
        masks = f"segmentations at {self.segmentations}" if self.segmentations else "bounding boxes"
        return (
            f"CUB-200-2011 {self.split} split: {len(self)} images, {self.num_classes} classes at {self.root} "
            f"(masks: {masks})"
        )
