"""Builders of tiny on-disk datasets and odd image files for tests (deterministic: seeded numpy).

Geometry shared by the builders (default ``size=(40, 30)``, i.e. 40 wide, 30 high): image ``k`` (0-based)
has the box ``cub_box(k)`` = ``(10 + k % 3, 8, 20, 14)`` (x, y, w, h), well inside the image.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def cub_box(k: int) -> tuple[float, float, float, float]:
    """The box of the ``k``-th (0-based) image of ``make_cub_tree``: ``(x, y, w, h)`` in pixels."""
    return (10.0 + k % 3, 8.0, 20.0, 14.0)


def _random_rgb(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    w, h = size
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def make_cub_tree(
    root: str | Path,
    classes: int = 3,
    per_class: int = 2,
    size: tuple[int, int] = (40, 30),
    segmentations: bool = True,
    train_every: int = 2,
) -> Path:
    """Write a CUB-200-2011-format tree: ``images/``, the five metadata files, and ``segmentations/``.

    Classes are ``"001.Bird_1"``, ``"002.Bird_2"``, ...; image ids count from 1 in class order; image id
    ``i`` is a training image when ``i % train_every == 0`` (so 3 train / 3 test with the defaults).
    Segmentations (``L`` PNGs) are soft like CUB's: 255 inside the box shrunk by one pixel, 100 on the
    box's one-pixel border (below the 127 threshold), 0 outside.

    Returns:
        ``root``, the ``CUB_200_2011``-like folder.
    """
    root = Path(root)
    rng = np.random.default_rng(0)
    w, h = size
    names = [f"{c + 1:03d}.Bird_{c + 1}" for c in range(classes)]
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, labels, split, boxes = [], [], [], []
    for c, name in enumerate(names):
        (root / "images" / name).mkdir(exist_ok=True)
        for j in range(per_class):
            k = c * per_class + j
            image_id = k + 1
            rel = f"{name}/Bird_{c + 1}_{j:04d}_{image_id}.jpg"
            _random_rgb(rng, size).save(root / "images" / rel, quality=90)
            box = cub_box(k)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c + 1}")
            split.append(f"{image_id} {int(image_id % train_every == 0)}")
            boxes.append(f"{image_id} " + " ".join(f"{v:.1f}" for v in box))
            if segmentations:
                seg = np.zeros((h, w), np.uint8)
                x, y, bw, bh = (int(v) for v in box)
                seg[y : y + bh, x : x + bw] = 100
                seg[y + 1 : y + bh - 1, x + 1 : x + bw - 1] = 255
                path = root / "segmentations" / Path(rel).with_suffix(".png")
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(seg, "L").save(path)
    (root / "classes.txt").write_text("".join(f"{c + 1} {n}\n" for c, n in enumerate(names)))
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (root / "bounding_boxes.txt").write_text("\n".join(boxes) + "\n")
    return root


def make_folder_tree(
    root: str | Path,
    classes: tuple[str, ...] | None = ("cat", "dog"),
    per_class: int = 2,
    size: tuple[int, int] = (40, 30),
) -> Path:
    """Write an image folder: ``root/<class>/<class>_<j>.jpg``, or ``root/img_<j>.jpg`` when ``classes`` is None."""
    root = Path(root)
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    if classes is None:
        for j in range(per_class):
            _random_rgb(rng, size).save(root / f"img_{j}.jpg")
        return root
    for name in classes:
        (root / name).mkdir(exist_ok=True)
        for j in range(per_class):
            _random_rgb(rng, size).save(root / name / f"{name}_{j}.jpg")
    return root


def make_pairs_tree(root: str | Path, n: int = 3, size: tuple[int, int] = (40, 30), mask_ext: str = ".bmp") -> Path:
    """Write ``root/images/img_<j>.jpg`` and ``root/masks/img_<j><mask_ext>``; mask ``j``: 255 inside ``cub_box(j)``."""
    root = Path(root)
    rng = np.random.default_rng(2)
    w, h = size
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for j in range(n):
        _random_rgb(rng, size).save(root / "images" / f"img_{j}.jpg")
        mask = np.zeros((h, w), np.uint8)
        x, y, bw, bh = (int(v) for v in cub_box(j))
        mask[y : y + bh, x : x + bw] = 255
        Image.fromarray(mask, "L").save(root / "masks" / f"img_{j}{mask_ext}")
    return root


def write_corrupt_image(path: str | Path) -> Path:
    """A truncated JPEG: the first half of a valid one (PIL opens it, ``load()`` fails)."""
    path = Path(path)
    buffer = io.BytesIO()
    _random_rgb(np.random.default_rng(3), (40, 30)).save(buffer, "JPEG")
    data = buffer.getvalue()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_16bit_png(path: str | Path, value: int = 51400, size: tuple[int, int] = (8, 6)) -> Path:
    """A 16-bit grey PNG (PIL mode ``I;16``) of constant ``value`` (51400 = 200 * 257)."""
    path = Path(path)
    w, h = size
    Image.fromarray(np.full((h, w), value, np.uint16)).save(path)
    return path


def write_rgba_png(path: str | Path, size: tuple[int, int] = (8, 6)) -> Path:
    """An RGBA PNG: left half opaque (200, 100, 50), right half the same colour at alpha 0."""
    path = Path(path)
    w, h = size
    arr = np.zeros((h, w, 4), np.uint8)
    arr[..., :3] = (200, 100, 50)
    arr[:, : w // 2, 3] = 255
    Image.fromarray(arr, "RGBA").save(path)
    return path


def write_grey_jpeg(path: str | Path, value: int = 120, size: tuple[int, int] = (8, 6)) -> Path:
    """A greyscale (mode ``L``) JPEG of constant ``value``."""
    path = Path(path)
    w, h = size
    Image.fromarray(np.full((h, w), value, np.uint8), "L").save(path, quality=95)
    return path
