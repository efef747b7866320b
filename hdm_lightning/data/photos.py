"""Real demo photos that ship inside installed packages (scikit-image, and scikit-learn when present).

No network: only images bundled in the packages' wheels are used (scikit-image's pooch-fetched extras are not).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["demo_photos"]

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
