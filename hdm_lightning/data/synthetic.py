"""Synthetic shapes with ground-truth masks: the class is the shape of the one red object, whose pixels are known.

Each image has a cluttered, muted background (smooth colour field, stripes, soft blobs, pixel noise), 2-4
distractor objects of any of the four shapes in non-red colours (blue, green, yellow, grey, cyan),
and one *key* object in red. The label is the key object's shape (:data:`SHAPE_CLASSES`); nothing else in
the image carries information about it: distractors draw their shape independently of the label, and all
shapes of a given size have the same area, so neither the shapes around it nor the amount of red tells the
class. A classifier that solves the task must look at the key object, so a correct saliency map puts its
energy on :attr:`Item.mask <hdm_lightning.data.items.Item.mask>`.

An image is a pure function of ``(index, size, seed, split)`` (:func:`generate_shapes`): any item can be
made alone, in any order, by any process, and the train / val / test splits are disjoint streams.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from hdm_lightning.bounds import MAX_SYNTHETIC_SIZE, WHY_SYNTHETIC
from hdm_lightning.data.images import ImageReadError, load_mask, load_rgb
from hdm_lightning.data.items import DatasetError, Item, ItemDataset
from hdm_lightning.data.kinds import register_dataset_kind
from hdm_lightning.models.preprocess import Preprocess

__all__ = [
    "GENERATOR_VERSION",
    "KEY_COLOR",
    "MIN_SIZE",
    "SHAPE_CLASSES",
    "SYNTHETIC_SPLITS",
    "SyntheticShapesDataset",
    "generate_shapes",
    "shape_label",
]

SHAPE_CLASSES = ("circle", "square", "triangle", "cross")
"""Class names: label ``i`` is the key object's shape ``SHAPE_CLASSES[i]``."""
SYNTHETIC_SPLITS = {"train": 0, "val": 1, "test": 2}
"""Split name -> the split's id in the random seed ``[seed, split_id, index]``."""
MIN_SIZE = 16  # pixels; below this the smallest key object is a few pixels and its shape is unreadable
GENERATOR_VERSION = 1  # part of cached file names: bump when the drawing changes so old caches are not reused

KEY_COLOR = (220, 30, 30)
"""The key object's red (RGB); each image jitters it by up to ``_KEY_JITTER`` per channel."""
_KEY_JITTER = 15
# Distractor colours, saturated like the key but at least ~45 degrees of hue away from red (or grey), so
# that "the red object" is well defined: red - max(green, blue) is at most 60 on a distractor, at most ~70
# on the muted background (noise included), and at least 160 on the key object.
_DISTRACTOR_COLORS = np.array(
    [(40, 80, 210), (40, 165, 60), (215, 195, 40), (130, 130, 130), (40, 175, 195)],
    dtype=np.float64,
)
_DISTRACTOR_JITTER = 20
# Object size: the diameter of the circle of equal area, as a fraction of the image side. Every shape of
# a given size has the same area (see _UNIT_AREA), so the number of red pixels does not reveal the class.
_KEY_SIZE = (0.20, 0.32)
_DISTRACTOR_SIZE = (0.16, 0.30)
_DISTRACTORS = (2, 4)  # inclusive range of distractors per image
_PLACEMENT_TRIES = 60  # per distractor; one that finds no free place is left out (never seen in 6000 images)
_GAP = 1.5  # pixels between the key object's bounding circle and any distractor's

# Shape geometry on circumradius 1 (the shape fits in the unit circle, so a circumradius R placed R pixels
# from the border lies fully inside the image).
_CROSS_HALF_WIDTH = 0.30  # arm half-width
_CROSS_HALF_LENGTH = float(np.sqrt(1.0 - _CROSS_HALF_WIDTH**2))  # arm tips touch the unit circle
_UNIT_AREA = {
    "circle": np.pi,
    "square": 2.0,  # half-side 1/sqrt(2)
    "triangle": 3.0 * np.sqrt(3.0) / 4.0,  # equilateral, inscribed
    "cross": 8.0 * _CROSS_HALF_LENGTH * _CROSS_HALF_WIDTH - 4.0 * _CROSS_HALF_WIDTH**2,
}
_SYMMETRY = {"circle": 0.0, "square": np.pi / 2, "triangle": 2 * np.pi / 3, "cross": np.pi / 2}  # rotation period


# ---------------------------------------------------------------------------------------------- generation


def _check_args(size: Any, seed: Any, split: Any) -> None:
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or not MIN_SIZE <= size <= MAX_SYNTHETIC_SIZE:
        raise DatasetError(
            f"synthetic image size must be an integer of at least {MIN_SIZE} pixels (the shapes need room) and at "
            f"most {MAX_SYNTHETIC_SIZE} ({WHY_SYNTHETIC.split('; ')[0]}), got {size!r}: set data.synthetic.size=64"
        )
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise DatasetError(f"synthetic seed must be a non-negative integer, got {seed!r}: set data.synthetic.seed=0")
    if split not in SYNTHETIC_SPLITS:
        raise DatasetError(f"unknown synthetic split {split!r}: use one of {list(SYNTHETIC_SPLITS)} (data.split)")


def _check_index(index: Any) -> None:
    if isinstance(index, bool) or not isinstance(index, int | np.integer) or index < 0:
        raise DatasetError(f"synthetic image index must be a non-negative integer, got {index!r}")


def _rng(index: int, seed: int, split: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), SYNTHETIC_SPLITS[split], int(index)])


def shape_label(index: int, seed: int, split: str) -> int:
    """The label of image ``index`` without drawing it (the first draw of its generator, as in :func:`generate_shapes`).

    Raises:
        DatasetError: a negative seed or index, or an unknown split.
    """
    _check_args(MIN_SIZE, seed, split)
    _check_index(index)
    return int(_rng(index, seed, split).integers(len(SHAPE_CLASSES)))


def _shape_mask(
    shape: str, cx: float, cy: float, radius: float, angle: float, xs: np.ndarray, ys: np.ndarray
) -> np.ndarray:
    """Bool mask of the pixel centres ``(xs, ys)`` inside ``shape`` (circumradius ``radius``, centre ``(cx, cy)``)."""
    dx, dy = xs - cx, ys - cy
    if shape == "circle":
        return dx * dx + dy * dy <= radius * radius
    cos, sin = np.cos(angle), np.sin(angle)
    u = (cos * dx + sin * dy) / radius  # coordinates in the shape's own frame, unit circumradius
    v = (-sin * dx + cos * dy) / radius
    if shape == "square":
        h = 1.0 / np.sqrt(2.0)
        return (np.abs(u) <= h) & (np.abs(v) <= h)
    if shape == "triangle":
        # Inside all three edges: each edge's outward normal points between two vertices, at distance 1/2.
        inside = np.ones(xs.shape, dtype=bool)
        for k in range(3):
            a = np.pi / 3 + k * 2 * np.pi / 3
            inside &= u * np.cos(a) + v * np.sin(a) <= 0.5
        return inside
    w, length = _CROSS_HALF_WIDTH, _CROSS_HALF_LENGTH
    au, av = np.abs(u), np.abs(v)
    return ((au <= w) & (av <= length)) | ((av <= w) & (au <= length))


def _muted_colors(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` muted RGB colours (0..255): low saturation, hue at least ~30 degrees away from red."""
    hue = rng.uniform(0.08, 0.92, n)  # fraction of the colour wheel; red is 0 (= 1)
    sat = rng.uniform(0.05, 0.35, n)
    val = rng.uniform(0.30, 0.85, n)
    # HSV -> RGB (the standard sector formula), vectorised.
    h6 = hue * 6.0
    sector = np.floor(h6).astype(int) % 6
    f = h6 - np.floor(h6)
    p, q, t = val * (1 - sat), val * (1 - sat * f), val * (1 - sat * (1 - f))
    sectors = ((val, t, p), (q, val, p), (p, val, t), (p, q, val), (t, p, val), (val, p, q))
    table = np.stack([np.stack(c, -1) for c in sectors])  # [6, n, 3]
    return table[sector, np.arange(n)] * 255.0


def _background(rng: np.random.Generator, size: int, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """A cluttered float RGB background ``[size, size, 3]``: smooth colour field, stripes, soft blobs, noise."""
    cells = int(rng.integers(3, 7))
    field = _muted_colors(rng, cells * cells).reshape(cells, cells, 3).astype(np.uint8)
    img = np.asarray(Image.fromarray(field, "RGB").resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64)
    if rng.random() < 0.7:
        # Grey stripes (equal in all channels, so they change brightness, not hue).
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(0.08, 0.3) * size
        amplitude = rng.uniform(10, 30)
        phase = rng.uniform(0, 2 * np.pi)
        img += amplitude * np.sin(2 * np.pi * (xs * np.cos(angle) + ys * np.sin(angle)) / period + phase)[..., None]
    for color in _muted_colors(rng, int(rng.integers(1, 4))):
        cx, cy = rng.uniform(0, size, 2)
        rx, ry = rng.uniform(0.08, 0.25, 2) * size
        alpha = 0.6 * np.exp(-(((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2))
        img = img * (1 - alpha[..., None]) + color * alpha[..., None]
    img += rng.normal(0.0, 5.0, img.shape)
    return img


def _random_shape(rng: np.random.Generator, shape: str, size: int, frac: tuple[float, float]) -> tuple[float, float]:
    """``(circumradius, angle)`` of a ``shape`` whose equal-area circle has a diameter in ``frac`` of ``size``."""
    diameter = rng.uniform(*frac) * size
    area = np.pi * diameter * diameter / 4.0
    radius = float(np.sqrt(area / _UNIT_AREA[shape]))
    angle = float(rng.uniform(0, _SYMMETRY[shape])) if _SYMMETRY[shape] else 0.0
    return radius, angle


def generate_shapes(index: int, size: int, seed: int, split: str) -> tuple[np.ndarray, int, np.ndarray]:
    """Draw synthetic image ``index`` of ``split``: a pure function of its arguments.

    The generator is ``numpy.random.default_rng([seed, split_id, index])`` (``train`` 0, ``val`` 1, ``test``
    2), so the splits are disjoint streams and any image can be made alone. Its first draw is the label
    (:func:`shape_label` repeats just that draw). Then, in order: the key object (shape = label; size: the
    equal-area circle's diameter is 20-32 % of the side; random rotation; fully inside the image), the
    background, and 2-4 distractors (any shape, 16-30 % of the side, saturated non-red colours, possibly
    cut by the border, never touching the key object's bounding circle). Objects are drawn without
    anti-aliasing, so the mask is exactly the set of pixels painted in the key red.

    Args:
        index: the image's index in its split (>= 0).
        size: image side in pixels (>= 16).
        seed: dataset seed (>= 0).
        split: ``"train"``, ``"val"`` or ``"test"``.

    Returns:
        ``(rgb, label, mask)``: uint8 ``[size, size, 3]``, the class index into :data:`SHAPE_CLASSES`, and
        bool ``[size, size]``, True on the key object.

    Raises:
        DatasetError: a bad size, seed, index or split.
    """
    label, background, distractors, (mask, key_color) = _layers(index, size, seed, split)
    return _compose(background, distractors, mask, key_color), label, mask


_Layer = tuple[np.ndarray, np.ndarray]  # (bool mask [size, size], RGB colour)


def _layers(index: int, size: int, seed: int, split: str) -> tuple[int, np.ndarray, list[_Layer], _Layer]:
    """The parts of image ``index``: ``(label, float background, distractor layers in drawing order, key layer)``.

    Kept apart from :func:`_compose` so that a sanity check can paint the key object (or a distractor) over
    with the background, from exactly the same random draws: a classifier that uses the key object drops to
    chance without it and does not care about the distractors.
    """
    _check_args(size, seed, split)
    _check_index(index)
    rng = _rng(index, seed, split)
    label = int(rng.integers(len(SHAPE_CLASSES)))  # first draw: shape_label repeats exactly this
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5  # pixel centres

    shape = SHAPE_CLASSES[label]
    radius, angle = _random_shape(rng, shape, size, _KEY_SIZE)
    margin = radius + 0.5
    cx, cy = rng.uniform(margin, size - margin, 2)
    mask = _shape_mask(shape, cx, cy, radius, angle, xs, ys)
    key_color = np.clip(np.asarray(KEY_COLOR) + rng.integers(-_KEY_JITTER, _KEY_JITTER + 1, 3), 0, 255)

    background = _background(rng, size, xs, ys)
    distractors = []
    for _ in range(int(rng.integers(_DISTRACTORS[0], _DISTRACTORS[1] + 1))):
        d_shape = SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))]
        d_radius, d_angle = _random_shape(rng, d_shape, size, _DISTRACTOR_SIZE)
        color = _DISTRACTOR_COLORS[int(rng.integers(len(_DISTRACTOR_COLORS)))]
        color = color + rng.integers(-_DISTRACTOR_JITTER, _DISTRACTOR_JITTER + 1, 3)
        for _ in range(_PLACEMENT_TRIES):
            # The centre stays inside the image; the shape may be cut by the border.
            dx, dy = rng.uniform(0, size, 2)
            if np.hypot(dx - cx, dy - cy) >= radius + d_radius + _GAP:
                distractors.append((_shape_mask(d_shape, dx, dy, d_radius, d_angle, xs, ys), color))
                break
    return label, background, distractors, (mask, key_color)


def _compose(
    background: np.ndarray, distractors: list[_Layer], mask: np.ndarray | None, key_color: np.ndarray
) -> np.ndarray:
    """Paint the layers over the background (``mask=None`` leaves the key object out): uint8 RGB."""
    img = background.copy()
    for d_mask, color in distractors:
        img[d_mask] = color
    if mask is not None:
        img[mask] = key_color  # never overlaps a distractor; last anyway, so the key object is always intact
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------- dataset


def _write_png_atomic(image: Image.Image, path: Path) -> None:
    """Write ``path`` through a temporary file in the same folder, so readers see no half-written PNG."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@register_dataset_kind("synthetic")
class SyntheticShapesDataset(ItemDataset):
    """Generated shapes (:func:`generate_shapes`) with ground-truth masks: ``data.kind: synthetic``.

    Ids are ``"<split>/<index:06d>"`` (``"test/000123"``); ``labels`` are known without drawing an image.
    ``Item.mask`` is the key object (``mask_source="synthetic"``), put through the same geometry as the
    image (``preprocess.mask``), so with ``Preprocess(size=S, resize=S)`` for images of side ``S`` both
    are the generated pixels.

    With ``cache_dir``, each image is drawn once and kept as ``<cache_dir>/<seed>/<split>/<index>_<size>px_v<N>.png``
    plus ``..._mask.png`` (written atomically, so concurrent DataLoader workers are safe); a cached file that
    cannot be read is drawn and written again. Without it, every access draws the image (about a
    millisecond at 64 px).

    Args:
        num_images: items in the split (indices ``0 .. num_images - 1``).
        size: image side in pixels (>= 16).
        seed: dataset seed (>= 0); the images are a function of ``(seed, split, index)``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        preprocess: the classifier's preprocessing.
        cache_dir: optional folder caching the generated images as PNG.

    Raises:
        DatasetError: a bad count, size, seed or split (the message names the config key to fix).
    """

    needs_root = False
    masks = True

    def __init__(
        self,
        num_images: int,
        size: int,
        seed: int,
        split: str,
        preprocess: Preprocess,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        if isinstance(num_images, bool) or not isinstance(num_images, int | np.integer) or num_images < 1:
            raise DatasetError(
                f"synthetic num_images must be a positive integer, got {num_images!r}: set data.synthetic.num_images"
            )
        _check_args(size, seed, split)
        self.num_images, self.size, self.seed, self.split = int(num_images), int(size), int(seed), split
        self.preprocess = preprocess
        self.cache_dir = None if cache_dir is None else Path(cache_dir).expanduser() / str(self.seed) / split
        self.ids = [f"{split}/{i:06d}" for i in range(self.num_images)]
        self.labels = [shape_label(i, self.seed, split) for i in range(self.num_images)]
        self.class_names = list(SHAPE_CLASSES)
        self.root = None

    @classmethod
    def from_config(cls, cfg: Any, preprocess: Preprocess) -> SyntheticShapesDataset:
        """Build from a ``DataConfig``: ``split`` and ``synthetic.{num_images, size, seed, cache_dir}``."""
        split = str(cfg.split)
        if split not in SYNTHETIC_SPLITS:
            raise DatasetError(
                f"data.split={split!r} is not a synthetic split: use one of {list(SYNTHETIC_SPLITS)} "
                "for data.kind=synthetic"
            )
        s = cfg.synthetic
        cache_dir = None if s.cache_dir is None else str(s.cache_dir)
        return cls(int(s.num_images), int(s.size), int(s.seed), split, preprocess, cache_dir=cache_dir)

    def cache_paths(self, i: int) -> tuple[Path, Path]:
        """``(image, mask)`` PNG paths of item ``i`` in the cache (only meaningful with ``cache_dir``)."""
        if self.cache_dir is None:
            raise ValueError("this dataset has no cache_dir: set data.synthetic.cache_dir to cache the images")
        stem = f"{i:06d}_{self.size}px_v{GENERATOR_VERSION}"
        return self.cache_dir / f"{stem}.png", self.cache_dir / f"{stem}_mask.png"

    def _draw(self, i: int) -> tuple[Image.Image, np.ndarray]:
        """Image ``i`` as a PIL image and its bool mask, from the cache when there is one."""
        if self.cache_dir is None:
            rgb, _, mask = generate_shapes(i, self.size, self.seed, self.split)
            return Image.fromarray(rgb, "RGB"), mask
        image_path, mask_path = self.cache_paths(i)
        if image_path.is_file() and mask_path.is_file():
            try:
                image, mask = load_rgb(image_path), np.asarray(load_mask(mask_path)) > 0
                if image.size == (self.size, self.size) and mask.shape == (self.size, self.size):
                    return image, mask
            except ImageReadError:
                pass  # a damaged cache entry: draw it again below and overwrite it
        rgb, _, mask = generate_shapes(i, self.size, self.seed, self.split)
        image = Image.fromarray(rgb, "RGB")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        # Mask first: the image file's presence is what marks an entry, and both are checked on reading anyway.
        _write_png_atomic(Image.fromarray(mask.astype(np.uint8) * 255, "L"), mask_path)
        _write_png_atomic(image, image_path)
        return image, mask

    def load_item(self, i: int) -> Item:  # noqa: D102
        image, mask = self._draw(i)
        return Item(
            id=self.ids[i],
            image=self.preprocess(image),
            label=self.labels[i],
            mask=self.preprocess.mask(torch.from_numpy(mask)),
            path=f"synthetic:{self.ids[i]}",
            mask_source="synthetic",
        )

    def describe(self) -> str:  # noqa: D102
        cache = f", cached at {self.cache_dir}" if self.cache_dir is not None else ""
        return (
            f"synthetic shapes {self.split} split: {len(self)} images {self.size}x{self.size}, "
            f"{len(SHAPE_CLASSES)} classes (seed {self.seed}{cache})"
        )
