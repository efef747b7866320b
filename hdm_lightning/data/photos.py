"""Dataset kind ``photos``: real demo photos that ship inside installed packages (scikit-image, scikit-learn).

No network: only images bundled in the packages' wheels are used (scikit-image's pooch-fetched extras are not).
:func:`demo_photos` returns them by name; :class:`PhotoDataset` is the ``photos`` dataset kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hdm_lightning.data.items import DatasetError, Item, ItemDataset
from hdm_lightning.data.kinds import register_dataset_kind
from hdm_lightning.models.preprocess import Preprocess

__all__ = ["PhotoDataset", "demo_photos"]

# scikit-image photos, name -> skimage.data loader. Comments: what they show, and EfficientNet-Lite0's top-1 on them.
_SKIMAGE_PHOTOS = {
    "chelsea": "chelsea",  # a tabby cat: tiger cat / Egyptian cat / tabby (282 / 285 / 281)
    "coffee": "coffee",  # a cup of espresso on a saucer: espresso (967)
    "rocket": "rocket",  # a rocket on its launch pad: missile (657), then projectile, space shuttle
    "motorcycle": "stereo_motorcycle",  # a motorbike, left view of the stereo pair: moped (665)
    "camera": "camera",  # greyscale "cameraman" behind a camera on a tripod: tripod (872)
    "astronaut": "astronaut",  # portrait of Eileen Collins: no single clear ImageNet object (a hard case)
}


def _skimage_photos() -> dict[str, Image.Image]:
    try:
        from skimage import data
    except ImportError:
        return {}
    photos = {}
    for name, loader in _SKIMAGE_PHOTOS.items():
        array = getattr(data, loader)()
        if isinstance(array, tuple):  # stereo_motorcycle -> (left, right, disparity)
            array = array[0]
        photos[name] = Image.fromarray(np.ascontiguousarray(array)).convert("RGB")
    return photos


def _sklearn_photos() -> dict[str, Image.Image]:
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        return {}
    bunch = load_sample_images()
    photos = {}
    for filename, array in zip(bunch.filenames, bunch.images, strict=True):  # china.jpg, flower.jpg
        photos[Path(str(filename)).stem] = Image.fromarray(np.ascontiguousarray(array)).convert("RGB")
    return photos


def demo_photos() -> dict[str, Image.Image]:
    """Real RGB photos bundled with the installed packages, by name.

    scikit-image: ``chelsea`` (cat), ``coffee`` (espresso), ``rocket``, ``motorcycle``, ``camera`` (a man behind a
    camera on a tripod; greyscale, returned as RGB), ``astronaut`` (a portrait). scikit-learn, only if it is
    installed: ``china`` (a temple), ``flower``. Nothing is downloaded; a package that is not installed contributes
    nothing.

    Returns:
        ``{name: PIL RGB image}``, at the photos' original sizes, in a fixed order.

    Raises:
        RuntimeError: if neither package is installed, so that there is no photo at all.
    """
    photos = {**_skimage_photos(), **_sklearn_photos()}
    if not photos:
        raise RuntimeError("No demo photos: install scikit-image (`pip install scikit-image`) for the bundled photos")
    return photos


@register_dataset_kind("photos")
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
    masks = False

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

    def load_item(self, i: int) -> Item:  # noqa: D102
        name = self.ids[i]
        return Item(id=name, image=self.preprocess(self._photos[name]), label=-1, path=f"demo:{name}")

    def describe(self) -> str:  # noqa: D102
        return f"shipped demo photos: {len(self)} ({', '.join(self.ids)})"
