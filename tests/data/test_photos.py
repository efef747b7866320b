"""The real photos shipped inside scikit-image / scikit-learn (no network)."""

from __future__ import annotations

import sys
import types

import pytest
from PIL import Image

from hdm_lightning.data import demo_photos

pytest.importorskip("skimage")


@pytest.fixture(scope="module")
def photos():
    return demo_photos()


def test_demo_photos_are_rgb_and_include_the_classics(photos):
    assert {"chelsea", "coffee", "rocket", "astronaut"} <= set(photos)
    for name, img in photos.items():
        assert isinstance(img, Image.Image) and img.mode == "RGB" and min(img.size) >= 200, name


def test_demo_photos_use_sklearn_when_installed(monkeypatch):
    import numpy as np

    datasets = types.ModuleType("sklearn.datasets")
    images = [np.zeros((427, 640, 3), np.uint8), np.full((427, 640, 3), 255, np.uint8)]
    datasets.load_sample_images = lambda: types.SimpleNamespace(
        filenames=["/x/china.jpg", "/x/flower.jpg"], images=images
    )
    monkeypatch.setitem(sys.modules, "sklearn", types.ModuleType("sklearn"))
    monkeypatch.setitem(sys.modules, "sklearn.datasets", datasets)
    photos = demo_photos()
    assert {"china", "flower", "chelsea"} <= set(photos) and photos["flower"].getpixel((0, 0)) == (255, 255, 255)
