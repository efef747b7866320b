"""The images to explain: shipped photos, image folders, CUB-200-2011 and image/mask pairs.

Every dataset lists its items (``ids``, ``labels``, ``class_names``) without reading an image, so a
run over 5794 CUB test images starts at once and ``ids`` / ``limit`` select items before anything is
decoded. ``dataset[i]`` reads one image and returns an :class:`Item`; an unreadable file raises
:class:`~hdm_lightning.data.images.ImageReadError`, which a runner records as failed before going on.

:data:`DATASETS` is the one list of dataset kinds (``data.kind`` in the config); :func:`build_dataset`
builds one from a :class:`~hdm_lightning.config.DataConfig`.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from hdm_lightning.data.images import ImageReadError, load_mask, load_rgb
from hdm_lightning.data.photos import demo_photos
from hdm_lightning.models.preprocess import Preprocess
from hdm_lightning.registry import Registry

__all__ = [
    "CUB_FILES",
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "CUBDataset",
    "DatasetError",
    "DatasetSubset",
    "ImageFolderDataset",
    "Item",
    "ItemDataset",
    "MaskPairDataset",
    "PhotoDataset",
    "box_mask",
    "build_dataset",
    "select",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")  # matched case-insensitively

# The official CUB-200-2011 metadata files (https://www.vision.caltech.edu/datasets/cub_200_2011/).
CUB_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt", "classes.txt")
CUB_LAYOUT = "expected the official CUB-200-2011 layout: images/, " + ", ".join(CUB_FILES)
CUB_SPLITS = ("test", "train", "all")
# CUB segmentations are the average of several annotators' binary masks (0..255); > 127 keeps a pixel
# that more than half of them marked as bird.
CUB_SEGMENTATION_THRESHOLD = 127


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
    ``root`` in ``__init__`` and implement :meth:`_load` and :meth:`describe`. A registered subclass
    also implements :meth:`from_config`.
    """

    needs_root: ClassVar[bool] = True  # whether ``data.root`` is required for this kind

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
        return dataclasses.replace(self._load(i), index=i)

    def _load(self, i: int) -> Item:
        raise NotImplementedError

    def describe(self) -> str:
        """One line saying what this is, how many items and classes, and where."""
        raise NotImplementedError


DATASETS: Registry[type[ItemDataset]] = Registry("dataset kind")


# ------------------------------------------------------------------------------------------ helpers


def _is_image_file(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _list_images(folder: Path, recursive: bool) -> list[Path]:
    """Image files under ``folder`` (hidden files and folders skipped), sorted by their relative path."""
    if not recursive:
        return sorted(p for p in folder.iterdir() if p.is_file() and _is_image_file(p.name))
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(Path(dirpath, f) for f in filenames if _is_image_file(f))
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _existing_dir(root: str | os.PathLike | None, what: str) -> Path:
    if root is None:
        raise DatasetError(f"{what} needs a folder: set data.root=/path/to/the/folder")
    path = Path(root).expanduser()
    if not path.exists():
        raise DatasetError(f"{what} folder {str(path)!r} does not exist: check data.root")
    if not path.is_dir():
        raise DatasetError(f"{what} root {str(path)!r} is not a folder: set data.root to the dataset folder")
    return path


def _fit_mask(mask: Image.Image, size: tuple[int, int], path: str | os.PathLike) -> Image.Image:
    """``mask`` at the image's ``size`` (W, H); a mask at another scale of the same aspect is resized (nearest).

    Raises:
        ImageReadError: the aspect ratios differ (by more than 2 %), so the mask cannot belong to the image.
    """
    if mask.size == size:
        return mask
    (mw, mh), (w, h) = mask.size, size
    if abs(mw / mh - w / h) > 0.02 * (w / h):
        raise ImageReadError(path, f"mask is {mw}x{mh} but its image is {w}x{h} (a different aspect ratio)")
    return mask.resize(size, Image.Resampling.NEAREST)


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


# ------------------------------------------------------------------------------------------- photos


@DATASETS.register("photos")
class PhotoDataset(ItemDataset):
    """The real photos shipped inside scikit-image / scikit-learn (:func:`~hdm_lightning.data.demo_photos`).

    Labels are ``-1``: the photos have no per-photo ImageNet class. The few bundled photos are decoded at
    construction (the only way to learn which are installed; it takes milliseconds).

    Args:
        photos: photo names, e.g. ``["chelsea", "coffee", "rocket"]``, in the order to explain them.
        preprocess: the classifier's preprocessing.

    Raises:
        DatasetError: an empty list, a repeated name, or a name that is not installed (the error lists
            the available ones).
    """

    needs_root = False

    def __init__(self, photos: Sequence[str], preprocess: Preprocess) -> None:
        names = [str(p) for p in photos]
        if not names:
            raise DatasetError("data.photos is empty: list photo names, e.g. data.photos=[chelsea,coffee]")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise DatasetError(f"data.photos lists {repeated} more than once: list each photo once")
        available = demo_photos()
        unknown = [n for n in names if n not in available]
        if unknown:
            raise DatasetError(f"unknown demo photo(s) {unknown}. Available: {sorted(available)}")
        self._photos = {n: available[n] for n in names}
        self.preprocess = preprocess
        self.ids = names
        self.labels = [-1] * len(names)
        self.class_names = None
        self.root = None

    @classmethod
    def from_config(cls, cfg: Any, preprocess: Preprocess) -> PhotoDataset:  # noqa: D102
        return cls(list(cfg.photos), preprocess)

    def _load(self, i: int) -> Item:
        name = self.ids[i]
        return Item(id=name, image=self.preprocess(self._photos[name]), label=-1, path=f"demo:{name}")

    def describe(self) -> str:  # noqa: D102
        return f"shipped demo photos: {len(self)} ({', '.join(self.ids)})"


# ------------------------------------------------------------------------------------------- folder


@DATASETS.register("folder")
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

    def __init__(self, root: str | os.PathLike, preprocess: Preprocess) -> None:
        self.root = _existing_dir(root, "image folder")
        self.preprocess = preprocess
        subdirs = sorted(d for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        per_class = {d.name: _list_images(d, recursive=True) for d in subdirs}
        if any(per_class.values()):
            empty = [name for name, files in per_class.items() if not files]
            if empty:
                raise DatasetError(
                    f"class folder(s) {empty} in {str(self.root)!r} hold no images ({', '.join(IMAGE_EXTENSIONS)}):"
                    " add images or remove the folder(s), since every sub-folder is taken as a class"
                )
            loose = _list_images(self.root, recursive=False)
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
            files = [(f, -1) for f in _list_images(self.root, recursive=False)]
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

    def _load(self, i: int) -> Item:
        path = self._paths[i]
        image = load_rgb(path)
        return Item(id=self.ids[i], image=self.preprocess(image), label=self.labels[i], path=str(path))

    def describe(self) -> str:  # noqa: D102
        classes = f"{self.num_classes} classes" if self.class_names is not None else "no classes (flat)"
        return f"image folder: {len(self)} images, {classes} at {self.root}"


# ---------------------------------------------------------------------------------------------- CUB


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


@DATASETS.register("cub")
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

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        preprocess: Preprocess,
        segmentations: str | os.PathLike | None = None,
    ) -> None:
        if split not in CUB_SPLITS:
            raise DatasetError(f"unknown CUB split {split!r}: set data.split to one of {list(CUB_SPLITS)}")
        root = _existing_dir(root, "CUB-200-2011")
        if not (root / "images.txt").exists() and (root / "CUB_200_2011" / "images.txt").exists():
            root = root / "CUB_200_2011"  # pointed at the folder the archive was unpacked in
        self.root = root
        self.split = split
        self.preprocess = preprocess
        for name in ("images", *CUB_FILES):
            if not (root / name).exists():
                raise DatasetError(
                    f"{name}{'/' if name == 'images' else ''} is missing from {str(root)!r}: {CUB_LAYOUT}. "
                    "Point data.root at the unpacked CUB_200_2011 folder, or re-download CUB_200_2011.tgz"
                )

        classes = _read_rows(root / "classes.txt", 2, split_last=True)
        class_ids = [_parse(root / "classes.txt", n, f[0], int) for n, f in classes]
        if class_ids != list(range(1, len(classes) + 1)):
            raise DatasetError(f"classes.txt must number its classes 1..N in order: re-download it ({root})")
        self.class_names = [f[1] for _, f in classes]

        labels = _by_image_id(root / "image_class_labels.txt", 2, [int])
        is_train = _by_image_id(root / "train_test_split.txt", 2, [int])
        boxes = _by_image_id(root / "bounding_boxes.txt", 5, [float] * 4)
        self.ids, self.labels, self.boxes, self.image_ids = [], [], [], []
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
            if not 1 <= label <= len(self.class_names):
                raise DatasetError(
                    f"image_class_labels.txt: image id {image_id} has class {label}, but classes.txt has "
                    f"{len(self.class_names)} classes; re-download the metadata"
                )
            if train not in (0, 1):
                raise DatasetError(
                    f"train_test_split.txt: image id {image_id} has {train}, expected 1 (train) or 0 (test)"
                )
            if split == "all" or (split == "train") == (train == 1):
                self.image_ids.append(image_id)
                self.ids.append(relpath)
                self.labels.append(label - 1)
                self.boxes.append(box)
        self.segmentations = self._find_segmentations(segmentations)

    def _find_segmentations(self, given: str | os.PathLike | None) -> Path | None:
        if given is not None:
            return _existing_dir(given, "CUB segmentations")
        for candidate in (self.root / "segmentations", self.root.parent / "segmentations"):
            # A sibling 'segmentations' folder must look like CUB's (class folders), not an unrelated one.
            if candidate.is_dir() and (not self.ids or (candidate / Path(self.ids[0]).parent).is_dir()):
                return candidate
        return None

    @classmethod
    def from_config(cls, cfg: Any, preprocess: Preprocess) -> CUBDataset:  # noqa: D102
        return cls(cfg.root, cfg.split, preprocess, segmentations=getattr(cfg, "segmentations", None))

    def _load(self, i: int) -> Item:
        path = self.root / "images" / self.ids[i]
        image = load_rgb(path)
        box = self.boxes[i]
        if self.segmentations is not None:
            seg_path = (self.segmentations / self.ids[i]).with_suffix(".png")
            mask_image = _fit_mask(load_mask(seg_path, threshold=CUB_SEGMENTATION_THRESHOLD), image.size, seg_path)
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


# -------------------------------------------------------------------------------------------- pairs


@DATASETS.register("pairs")
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
        self.root = _existing_dir(root, "image/mask pairs")
        self.images_dir = _existing_dir(self.root / images_dir, f"images (data.images_dir={images_dir!r})")
        masks_path = self.root / masks_dir
        if not masks_path.is_dir():
            raise DatasetError(
                f"masks folder {str(masks_path)!r} does not exist: set data.masks_dir to the sub-folder of "
                f"{str(self.root)!r} that holds the masks"
            )
        self.masks_dir = masks_path
        self.preprocess = preprocess
        self.invert_masks = invert_masks
        self._paths = _list_images(self.images_dir, recursive=False)
        if not self._paths:
            raise DatasetError(
                f"no images in {str(self.images_dir)!r} (looked for {', '.join(IMAGE_EXTENSIONS)}, any case): "
                "set data.images_dir to the sub-folder that holds the images"
            )
        masks: dict[str, Path] = {}
        for m in _list_images(self.masks_dir, recursive=False):
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

    def _load(self, i: int) -> Item:
        path, mask_path = self._paths[i], self._masks[i]
        image = load_rgb(path)
        mask = None
        if mask_path is not None:
            mask_image = _fit_mask(load_mask(mask_path, invert=self.invert_masks), image.size, mask_path)
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


# ----------------------------------------------------------------------------------- selection/build


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

    def _load(self, i: int) -> Item:
        return self.dataset[self.indices[i]]

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
            hint = "/path/to/CUB_200_2011" if kind == "cub" else "/path/to/the/folder"
            raise DatasetError(f"data.root is required for kind {kind!r}: set data.root={hint}")
        if not Path(str(cfg.root)).expanduser().exists():
            raise DatasetError(f"data.root {str(cfg.root)!r} does not exist (kind {kind!r}): check the path")
    dataset = cls.from_config(cfg, preprocess)
    ids = None if cfg.ids is None else list(cfg.ids)
    return select(dataset, ids=ids, limit=cfg.limit)
